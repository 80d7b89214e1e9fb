"""ingero.pyframes against the interpreters themselves: the offsets table against ``offsetof`` compiled
with each version's own headers (and 3.13's ``_Py_DebugOffsets`` read from a running 3.13), the line
computation against ``co_lines()`` of thousands of real code objects, the merge rule on stored frames."""

from __future__ import annotations

import json
import subprocess
import textwrap

import pytest

from ingero.pyframes import PyFrame, PyStack, merge
from ingero.pyframes.linetable import line_for
from ingero.pyframes.offsets import NONE, TABLE, from_debug_offsets
from ingero.pyframes.resolver import frame_bytes
from ingero.store import Frame
from tests.conftest import ROOT, skip_or_fail
from tests.helpers import PYFRAMES_VERSIONS, cpythons

OFFSETS_C = ROOT / "tests" / "native" / "pyoffsets.c"


def _pythons() -> dict[tuple[int, int], str]:
    found = cpythons()
    out = {v: found[f"{v[0]}.{v[1]}"] for v in PYFRAMES_VERSIONS if f"{v[0]}.{v[1]}" in found}
    missing = [v for v in PYFRAMES_VERSIONS if v not in out]
    if missing:
        skip_or_fail(f"CPython {missing} missing (see scripts/setup.sh)")
    return out


def _include_dir(exe: str) -> str:
    return subprocess.run([exe, "-c", "import sysconfig; print(sysconfig.get_paths()['include'])"],
                          capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.parametrize("version", PYFRAMES_VERSIONS, ids=lambda v: f"{v[0]}.{v[1]}")
def test_offsets_table_matches_the_headers(version, tmp_path):
    exe = _pythons()[version]
    inc = _include_dir(exe)
    out = tmp_path / "offsets"
    subprocess.run(["gcc", "-w", f"-I{inc}", f"-I{inc}/internal", str(OFFSETS_C), "-o", str(out)], check=True)
    measured = dict(line.split() for line in subprocess.run([str(out)], capture_output=True, text=True,
                                                            check=True).stdout.splitlines())
    table = TABLE[version]
    for name, value in measured.items():
        want = getattr(table, name)
        assert (want if want != NONE else 0) == int(value), (version, name, want, value)
    assert table.frame_read <= frame_bytes(version)


def test_debug_offsets_of_a_running_313_agree_with_the_table():
    from ingero.pyframes.process import find_runtime

    exe = _pythons()[(3, 13)]
    p = subprocess.Popen([exe, "-c", "import sys; print(1, flush=True); sys.stdin.readline()"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        p.stdout.readline()
        rt = find_runtime(p.pid)
    finally:
        p.kill()
        p.wait()
    if rt is None:
        skip_or_fail("cannot read another process's memory here (needs root or ptrace rights)")
    assert rt.version == (3, 13)
    assert rt.offsets == TABLE[(3, 13)]  # read from _Py_DebugOffsets, field by field


def test_debug_offsets_without_the_cookie_are_refused():
    with pytest.raises(ValueError, match="cookie"):
        from_debug_offsets(b"\0" * 1024)


DUMP = textwrap.dedent("""
    import importlib, json, sys, types
    def walk(co):
        yield co
        for c in co.co_consts:
            if isinstance(c, types.CodeType):
                yield from walk(c)
    out = []
    for name in ("json.decoder", "argparse", "dataclasses", "email.message"):
        src = importlib.import_module(name).__file__
        for c in walk(compile(open(src).read(), src, "exec")):
            out.append([c.co_linetable.hex(), c.co_firstlineno, [list(x) for x in c.co_lines()]])
    json.dump(out, sys.stdout)
""")


@pytest.mark.parametrize("version", PYFRAMES_VERSIONS, ids=lambda v: f"{v[0]}.{v[1]}")
def test_lines_agree_with_co_lines(version):
    """Every instruction of ~700 real code objects: our line == the interpreter's own ``co_lines()``."""
    exe = _pythons()[version]
    data = json.loads(subprocess.run([exe, "-c", DUMP], capture_output=True, text=True, check=True).stdout)
    checked = 0
    for table, first, lines in data:
        raw = bytes.fromhex(table)
        for start, end, line in lines:
            for off in range(start, end, 2):
                assert line_for(version, raw, first, off) == line, (version, off)
                checked += 1
    assert checked > 10_000


def test_merge_puts_python_frames_before_the_interpreter():
    native = [Frame(ip=1, symbol="cudaMalloc+0x0", file="/x/libcudart.so.12"), Frame(ip=2, file="libffi.so.8"),
              Frame(ip=3, symbol="_PyEval_EvalFrameDefault+0x10", file="/p/libpython3.12.so.1.0"),
              Frame(ip=4, symbol="main", file="/p/python3.12")]
    py = PyStack((PyFrame("alloc", "t.py", 20), PyFrame("main", "t.py", 29)))
    got = merge(native, py, Frame)
    assert [f.py_func or f.symbol for f in got] == ["cudaMalloc+0x0", "", "alloc", "main",
                                                     "_PyEval_EvalFrameDefault+0x10", "main"]
    # the native unwinding stopped short of the interpreter: the Python frames are outer to what it saw
    got = merge(native[:2], py, Frame)
    assert [f.py_func for f in got] == ["", "", "alloc", "main"]
    # labelled, never silently short
    got = merge(native[:1], PyStack(py.frames, truncated=True), Frame)
    assert got[-1].py_func.startswith("[more than 32 Python frames")
    got = merge(native[:1], PyStack((), missing="the process exited"), Frame)
    assert got[-1].py_func == "[Python frames not available: the process exited]"


def test_python_frames_are_stored_in_upstreams_shape():
    from ingero.store.records import frames_json

    stored = json.loads(frames_json([Frame(ip=0x10, symbol="cudaMalloc+0x0", file="/a/libcudart.so.12"),
                                     Frame(py_file="/w/train.py", py_func="<module>", py_line=84)]))
    assert stored == [{"s": "cudaMalloc+0x0", "f": "libcudart.so.12"},
                      {"pf": "/w/train.py", "pfn": "<module>", "pl": 84}]




def test_an_upstream_database_with_python_frames_reads_the_same(tmp_path):
    """None of the recorded upstream databases here holds Python frames, so one gets a stack in exactly the
    shape upstream's Go writer stores (Python-only frames, ``\\u003c`` escaping): get_stacks shows it as it
    shows ingero's own, and groups by its innermost Python line."""
    import shutil
    import sqlite3

    from ingero.analysis import top_stacks
    from ingero.store import TraceReader
    from ingero.store.records import frames_json

    src = ROOT.parent / "shared" / "data" / "ingero-dbs" / "pytorch-dataloader-starvation.db"
    if not src.exists():
        skip_or_fail(f"{src} missing")
    db = tmp_path / "upstream.db"
    shutil.copy(src, db)
    upstream = ('[{"s":"cudaMalloc+0x1cb","f":"libcudart.so.12"},{"pf":"/app/models/sdpa_attention.py",'
                '"pfn":"repeat_kv","pl":6},{"pf":"/app/train.py","pfn":"\\u003cmodule\\u003e","pl":84}]')
    ours = frames_json([Frame(ip=1, symbol="cudaMalloc+0x1cb", file="/x/libcudart.so.12"),
                        Frame(py_file="/app/models/sdpa_attention.py", py_func="repeat_kv", py_line=6),
                        Frame(py_file="/app/train.py", py_func="<module>", py_line=84)])
    assert ours == upstream  # ingero writes what upstream writes
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("INSERT INTO stack_traces (hash, ips, frames) VALUES (42, '', ?)", (upstream,))
        n = conn.execute("UPDATE events SET stack_hash = 42 WHERE source = 1 AND op = 1").rowcount
    conn.close()
    assert n > 0
    import io

    from ingero.export.perfetto import export_perfetto

    r = TraceReader.open(db)
    try:
        got = top_stacks(r, op="cudaMalloc")
        lines = top_stacks(r, op="cudaMalloc", group="python_line")
        out = io.StringIO()
        export_perfetto(r, out)
    finally:
        r.close()
    slices = [e for e in json.loads(out.getvalue())["traceEvents"] if e.get("name") == "cudaMalloc"]
    assert len(slices) == n
    assert all("-> repeat_kv (/app/models/sdpa_attention.py:6)" in e["args"]["stack"] for e in slices)
    assert got[0].frames == ("cudaMalloc+0x1cb at libcudart.so.12", "-> repeat_kv (/app/models/sdpa_attention.py:6)",
                             "-> <module> (/app/train.py:84)")
    assert got[0].count == n
    assert [(s.python_line, s.count) for s in lines] == [("/app/models/sdpa_attention.py:6 in repeat_kv", n)]
