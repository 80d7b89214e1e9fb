"""Test helpers: drive the bundled CUDA workload as a child process, step by step."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys


class Workload:
    """``python -m ingero.workload`` as a child; ``go()`` releases it past its next wait point."""

    def __init__(self, *args: str, wait_load: bool = False, wait_calls: bool = True, env=None):
        cmd = [sys.executable, "-m", "ingero.workload", *args]
        if wait_load:
            cmd.append("--wait-load")
        if wait_calls:
            cmd.append("--wait-calls")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
        self.pid = self.proc.pid
        self.lines: list[str] = []

    def expect(self, prefix: str) -> str:
        """Read status lines until one starts with ``prefix``; return it."""
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"workload exited before '{prefix}': {self.lines}")
            line = line.rstrip("\n")
            self.lines.append(line)
            if line.startswith(prefix):
                return line

    def go(self) -> None:
        os.kill(self.pid, signal.SIGUSR1)

    def finish(self, timeout: float = 30) -> dict:
        line = self.expect("done ")
        self.proc.wait(timeout=timeout)
        return json.loads(line[len("done "):])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> Workload:
        return self

    def __exit__(self, *exc) -> None:
        self.kill()


def python_for(uid: int) -> str | None:
    """An interpreter of this Python version that ``uid`` can run (the venv's may live under /root)."""
    ver = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for cand in (sys.executable, f"/usr/bin/{ver}", f"/usr/local/bin/{ver}"):
        try:
            r = subprocess.run([cand, "-c", "print(1)"], capture_output=True, user=uid, group=uid, timeout=30)
        except OSError:
            continue
        if r.returncode == 0:
            return cand
    return None


NOBODY = 65534
# what a copy of the project needs beside the package: the data folders ingero.paths.data_dir reads,
# the scripts and the test clients that run as the other user
_PROJECT_PARTS = ("ingero", "grammar", "probe_templates", "bpf", "examples", "docs/dsl.md", "scripts",
                  "tests/e2e/mcp_replay_ro_client.py")


def _link_or_copy(src: str, dst: str) -> None:
    """A hard link where the file system allows one (fast, no space), else a copy."""
    import shutil

    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


class OtherUser:
    """Everything an unprivileged user needs to run ingero, given to it explicitly.

    The checkout may sit where only root can enter (root's home is mode 700, so is a ``mktemp -d``
    folder), and so may the venv. So this makes a folder of its own under /tmp (mode 755) with a copy of
    the project's files (``root``), of the venv's site-packages (``site``) and a home the user owns
    (``home``), and finds an interpreter of this Python version that the user can run. It checks that the
    user can import ingero and its dependencies from there, and fails saying what it could not reach.
    Use it as a context manager: the folder is removed on exit.
    """

    def __init__(self, uid: int = NOBODY):
        import shutil
        import site
        import tempfile
        from pathlib import Path

        from tests.conftest import ROOT, skip_or_fail

        self.uid = uid
        python = python_for(uid)
        if python is None:
            skip_or_fail(f"no python{sys.version_info.major}.{sys.version_info.minor} runnable by uid {uid}")
        self.python = python
        self.base = Path(tempfile.mkdtemp(prefix="ingero-other-user-", dir="/tmp"))
        os.chmod(self.base, 0o755)
        self.root = self.base / "project"
        for part in _PROJECT_PARTS:
            src, dst = ROOT / part, self.root / part
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.db-wal", "*.db-shm"))
            else:
                shutil.copy2(src, dst)
        self.site = self.base / "site-packages"
        # the venv's packages, without its .pth files (an editable install's finder points at the checkout)
        venv_site = Path(next(p for p in site.getsitepackages() if p.endswith("site-packages")))
        shutil.copytree(venv_site, self.site, symlinks=True, copy_function=_link_or_copy,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pth", "__editable__*", "ingero*"))
        self.home = self.base / "home"
        self.home.mkdir()
        os.chown(self.home, uid, uid)
        for d, _dirs, files in os.walk(self.base):
            if d.startswith(str(self.home)):
                continue
            os.chmod(d, 0o755)
            for f in files:
                p = os.path.join(d, f)
                if not os.path.islink(p):
                    os.chmod(p, os.stat(p).st_mode | 0o444)
        self.env = {"PATH": "/usr/bin:/bin", "HOME": str(self.home), "COLUMNS": "160",
                    "PYTHONPATH": f"{self.root}{os.pathsep}{self.site}",
                    "INGERO_STATE_DIR": str(self.home / "state"), "INGERO_CACHE_DIR": str(self.home / "cache")}
        probe = self.run(["-c", "import ingero, ingero.cli, mcp, lark, click; print(ingero.__file__)"], timeout=60)
        if probe.returncode != 0 or not probe.stdout.startswith(str(self.root)):
            self.close()
            raise AssertionError(f"uid {uid} cannot import ingero from {self.root} with {self.site} "
                                 f"using {python}: {probe.stdout}{probe.stderr[-1500:]}")

    def run(self, args: list[str], *, env: dict | None = None, cwd=None, timeout: float = 120):
        """``python ARGS`` as the other user, in its home unless ``cwd`` is given."""
        return subprocess.run([self.python, *args], capture_output=True, text=True, timeout=timeout,
                              env={**self.env, **(env or {})}, cwd=str(cwd or self.home), user=self.uid,
                              group=self.uid, extra_groups=[])

    def close(self) -> None:
        import shutil

        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> OtherUser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def wait_for_port(proc: subprocess.Popen, port: int, timeout: float) -> subprocess.Popen:
    """Return ``proc`` once something listens on 127.0.0.1:``port``; fail with its stderr if it exits."""
    import socket
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            if proc.poll() is not None:
                raise AssertionError(proc.stderr.read()) from None
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("the HTTP server did not start")


TORCH_FIXTURE_DEFAULT = "/var/cache/ingero-fixtures/torch-2.14.1-py3.11"


def torch_python():
    """The PyTorch fixture's interpreter (``make torch-fixture``, also run by ``make test``).

    Skips when the fixture is missing, except under CI=true, where it fails with the reason.
    """
    from pathlib import Path

    from tests.conftest import skip_or_fail

    root = Path(os.environ.get("TORCH_FIXTURE", TORCH_FIXTURE_DEFAULT))
    if not (root / ".ready").exists():
        skip_or_fail(f"the PyTorch fixture is not built at {root} (run: make torch-fixture)")
    return root / "bin" / "python"


#: the CPython versions the Python-frame tests need (issue 12); pyenv provides them, scripts/setup.sh checks
PYFRAMES_VERSIONS = ((3, 10), (3, 11), (3, 12), (3, 13))


def cpythons() -> dict[str, str]:
    """Every CPython 3.10+ interpreter on this machine, by label: pyenv's builds (shared libpython) as
    ``3.X``, and Debian's ``/usr/bin/python3.X`` (a static libpython) as ``3.X-debian``."""
    import glob
    import re

    root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    out: dict[str, str] = {}
    for d in sorted(glob.glob(f"{root}/versions/3.*"), key=lambda p: [int(x) for x in re.findall(r"\d+", p)]):
        m = re.fullmatch(r"3\.(\d+)\.\d+", os.path.basename(d))
        exe = f"{d}/bin/python3.{m.group(1)}" if m else ""
        if m and int(m.group(1)) >= 10 and os.access(exe, os.X_OK):
            out[f"3.{m.group(1)}"] = exe  # the newest patch release of each minor wins
    for exe in sorted(glob.glob("/usr/bin/python3.[0-9]*")):
        m = re.fullmatch(r"/usr/bin/python3\.(\d+)", exe)
        if m and int(m.group(1)) >= 10:
            out[f"3.{m.group(1)}-debian"] = exe
    return out


def db_rows(db, sql: str, params=()) -> list[tuple]:
    """Rows of a query on a trace database, read-only (ground truth read beside ingero's own readers)."""
    import sqlite3

    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()
