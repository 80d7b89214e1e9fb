"""Probes naming a library by stem or soname bind to the copies the traced processes map, when they map
them: two processes of one tree loading different copies are both probed; a library that never appears
says so; a soname spec on the real PyTorch process counts what the same spec on the mapped file's path
counts. Ground truth: the programs' own printouts, and the path spec on the same command."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ingero.store.schema import SOURCE_PROBE
from tests.conftest import skip_or_fail
from tests.helpers import torch_python

pytestmark = pytest.mark.bpf
INGERO = [str(Path(sys.executable).parent / "ingero")]

# parent and child each load their own copy of libz (the same soname) and call zlibVersion a number of
# times they print: the tree holds two different files named libz.so.1
TWO_COPIES = textwrap.dedent("""
    import ctypes, os, sys
    a, b = sys.argv[1], sys.argv[2]
    r, w = os.pipe()
    pid = os.fork()
    path, n = (b, 7) if pid == 0 else (a, 5)
    if pid == 0:
        os.read(r, 1)  # the parent first: one process at a time in the output
    lib = ctypes.CDLL(path)
    for _ in range(n):
        lib.zlibVersion()
    print("called", os.getpid(), n, flush=True)
    if pid:
        os.write(w, b"x")
        os.waitpid(pid, 0)
    else:
        os._exit(0)
""")


def _final(out: str) -> dict:
    for line in reversed(out.splitlines()):
        if line.startswith('{"final"'):
            return json.loads(line)["final"]
    raise AssertionError(f"no final results in:\n{out}")


def test_two_copies_in_one_tree_are_both_probed(need_bpf, tmp_path):
    """`trace --probe` on a command whose parent and forked child load different copies of libz.so.1:
    both copies are probed, each call counted under the process that made it."""
    import sqlite3

    system = subprocess.run(["/sbin/ldconfig", "-p"], capture_output=True, text=True).stdout
    src = next((ln.split(" => ")[1].strip() for ln in system.splitlines() if "libz.so.1 " in ln), None)
    if src is None:
        skip_or_fail("needs libz.so.1")
    copies = []
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        copies.append(str(shutil.copy(src, tmp_path / d / "libz.so.1")))
    (tmp_path / "prog.py").write_text(TWO_COPIES)
    spec = tmp_path / "z.probe"
    spec.write_text("probe z = libz.so.1:zlibVersion\n    record pid\n")
    db = tmp_path / "t.db"
    p = subprocess.run([*INGERO, "trace", "--quiet", "--db", str(db), "--probe", str(spec), "--", sys.executable,
                        "-S", str(tmp_path / "prog.py"), *copies], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    truth = {int(pid): int(n) for _, pid, n in (ln.split() for ln in p.stdout.splitlines()
                                                if ln.startswith("called "))}
    assert sorted(truth.values()) == [5, 7]
    conn = sqlite3.connect(db)
    try:
        counted = dict(conn.execute(f"SELECT pid, COUNT(*) FROM events WHERE source = {SOURCE_PROBE} "
                                    "GROUP BY pid").fetchall())
    finally:
        conn.close()
    # each process calls only the copy it loaded: both copies are probed, and only what was called counts
    assert counted == truth, (counted, truth, p.stderr)


def test_a_library_that_never_appears_says_so(need_bpf, tmp_path):
    spec = tmp_path / "z.probe"
    spec.write_text("probe z = libz.so.1:zlibVersion\n    aggregate count\n")
    p = subprocess.run([*INGERO, "probe", "run", str(spec), "--", "/bin/true"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "waiting for libz.so.1 in the traced tree" in p.stderr
    assert "probe z: 0 matched of 0 calls: not attached, libz.so.1 never appeared in the traced tree" in p.stdout


def test_soname_spec_counts_what_the_mapped_path_counts_in_torch(need_bpf, tmp_path):
    """`libcudart.so.13:cudaGetDeviceCount` with `probe run -- python -c 'import torch; ...'` binds the copy
    torch maps (not ingero's own venv copy): the same count as the spec on that file's path, above 0."""
    py = torch_python()
    prog = ("import torch, os; print(torch.cuda.is_available()); "
            "print([l.split()[-1] for l in open('/proc/self/maps') if 'libcudart.so' in l][0])")
    counts, mapped = {}, None
    for kind in ("soname", "path"):
        target = "libcudart.so.13" if kind == "soname" else mapped
        spec = tmp_path / f"{kind}.probe"
        spec.write_text(f"probe n = {target}:cudaGetDeviceCount\n    aggregate count\n")
        p = subprocess.run([*INGERO, "probe", "run", "--json", str(spec), "--", str(py), "-c", prog],
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        mapped = [ln for ln in p.stdout.splitlines() if ln.startswith("/")][0]
        final = _final(p.stdout)["n"]
        counts[kind] = final["stats"]["matched"]
        if kind == "soname":
            attached = [json.loads(ln) for ln in p.stdout.splitlines() if ln.startswith('{"attached"')]
            assert mapped in [a["path"] for a in attached], p.stdout
    assert counts["soname"] == counts["path"] > 0, counts
