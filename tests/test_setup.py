"""The setup script takes the fresh-machine path for real.

In a private mount namespace we hide /lib/modules (so the kernel header link is missing) and unmount
tracefs, run ``scripts/setup.sh system`` exactly as ``make`` does, and check that it put both back and
that BCC can compile a program there. The host's mounts are untouched (the namespace dies with the test).
"""

from __future__ import annotations

import platform
import subprocess
import textwrap

import pytest

from tests.conftest import ROOT
from tests.helpers import OtherUser


def test_setup_repairs_a_fresh_machine(need_root, python):
    kv = platform.release()
    script = textwrap.dedent(
        f"""
        set -eu
        mount --make-rprivate /
        mount -t tmpfs fresh /lib/modules           # no /lib/modules/{kv}: a machine never set up
        if mountpoint -q /sys/kernel/tracing; then umount /sys/kernel/tracing; fi
        test ! -e /lib/modules/{kv}/build
        ! mountpoint -q /sys/kernel/tracing
        echo BEFORE-OK
        scripts/setup.sh system
        test -e /lib/modules/{kv}/build/include/generated/autoconf.h
        test -e /lib/modules/{kv}/source/include/linux/kconfig.h
        mountpoint -q /sys/kernel/tracing
        {python} -c 'import bcc; bcc.BPF(text="int f(struct pt_regs *ctx) {{ return 0; }}"); print("BCC-OK")'
        scripts/setup.sh system                    # idempotent: a second run changes nothing and succeeds
        echo AGAIN-OK
        """
    )
    r = subprocess.run(
        ["unshare", "--mount", "bash", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "BEFORE-OK" in r.stdout and "BCC-OK" in r.stdout and "AGAIN-OK" in r.stdout
    assert "system ready" in r.stderr


@pytest.mark.other_user
def test_setup_refuses_without_root(need_root):
    with OtherUser() as nobody:
        script = nobody.root / "scripts" / "setup.sh"
        r = subprocess.run(["setpriv", f"--reuid={nobody.uid}", f"--regid={nobody.uid}", "--clear-groups", "bash",
                            str(script)], capture_output=True, text=True, cwd=nobody.home)
    assert r.returncode == 1, r.stderr
    assert "must run as root" in r.stderr


def test_ci_script_runs_exactly_the_readme_test_command():
    ci = (ROOT / ".ci/run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "export CI=true" in ci
    assert "XDG_CACHE_HOME" in ci and "XDG_STATE_HOME" in ci and "mktemp -d" in ci
    assert ci.rstrip().endswith("exec make test")
    assert "make test" in readme and "make demo" in readme
