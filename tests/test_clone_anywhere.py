"""``make test`` passes wherever a user clones the project.

The tests that drop privileges (marker ``other_user``) must not rely on the checkout's parents being
traversable: root's home is mode 700, and so is a ``mktemp -d`` folder. This clones the repository into a
mode-700 folder, under a path with a space, and runs those tests there with CI=true (so a skip would fail).
The clone is brought to this checkout's working tree (uncommitted edits and new files included, so the
test checks what is being changed); ``../shared`` (upstream's recorded databases) is linked beside it, as
it is beside every clone CI makes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import ROOT


def _git(*args: str) -> list[str]:
    out = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout
    return [p for p in out.split("\0") if p]


def _clone_into(parent: Path) -> Path:
    clone = parent / "ingero clone"
    [head] = _git("rev-parse", "HEAD")
    subprocess.run(["git", "clone", "-q", "--no-checkout", str(ROOT), str(clone)], check=True)
    subprocess.run(["git", "-C", str(clone), "checkout", "-q", head.strip()], check=True)
    for rel in _git("ls-files", "-z", "--deleted"):
        (clone / rel).unlink(missing_ok=True)
    for rel in set(_git("ls-files", "-z", "--modified", "--others", "--exclude-standard")) - set(
            _git("ls-files", "-z", "--deleted")):
        (clone / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, clone / rel)
    shared = ROOT.parent / "shared"
    if shared.is_dir():
        (parent / "shared").symlink_to(shared)
    return clone


def test_privilege_dropping_tests_pass_from_a_private_clone(need_root):
    base = Path(tempfile.mkdtemp(prefix="ingero-private-"))  # mode 700, like root's home
    try:
        parent = base / "my projects"
        parent.mkdir(mode=0o700)
        clone = _clone_into(parent)
        assert os.stat(base).st_mode & 0o777 == 0o700
        env = {**os.environ, "CI": "true", "PYTHONPATH": str(clone)}
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "other_user",
                            "tests"], cwd=clone, env=env, capture_output=True, text=True, timeout=600)
        out = r.stdout + r.stderr
        assert r.returncode == 0, out[-6000:]
        ran = [line for line in out.splitlines() if " passed" in line]
        assert ran and "deselected" in ran[-1], out[-2000:]
        passed = int(ran[-1].split(" passed")[0].split()[-1])
        marked = subprocess.run([sys.executable, "-m", "pytest", "-q", "--collect-only", "-m", "other_user",
                                 "tests"], cwd=ROOT, capture_output=True, text=True).stdout
        assert passed == marked.count("::") >= 4, (passed, marked)
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)


@pytest.mark.other_user
def test_this_checkout_is_where_the_tests_run():
    """Under the clone test, the package imported is the clone's own (not the editable install's)."""
    import ingero

    assert Path(ingero.__file__).resolve().parents[1] == ROOT
