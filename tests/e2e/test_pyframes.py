"""Python frames in stored stacks, for real: every CPython 3.10+ of this machine (pyenv's shared-libpython
builds, Debian's static one) runs tests/pyframes_target.py -- ``main() -> train_step() -> alloc()`` calling
cudaMalloc through ctypes -- in its main thread, a second thread and a forked worker, all traced by one
session. The stored stack of each call must hold exactly those functions, files and current lines (read
from the target's own source), innermost first, after the native frames of the call."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, skip_or_fail
from tests.helpers import PYFRAMES_VERSIONS, cpythons

pytestmark = pytest.mark.bpf

TARGET = ROOT / "tests" / "pyframes_target.py"
CALLS = 3
MODES = ("main", "thread", "fork")


def marked_lines() -> dict[str, int]:
    """``# @name`` markers of the target -> their line numbers (the ground truth)."""
    out = {}
    for n, line in enumerate(TARGET.read_text().splitlines(), 1):
        m = re.search(r"# @(\w+)$", line)
        if m:
            out[m.group(1)] = n
    return out


def interpreters() -> dict[str, str]:
    found = cpythons()
    missing = [f"{a}.{b}" for a, b in PYFRAMES_VERSIONS if f"{a}.{b}" not in found]
    if missing:
        skip_or_fail(f"CPython {', '.join(missing)} missing (pyenv install; see scripts/setup.sh)")
    return found


def wait_for(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    from ingero.runtime.kernel import bpf_problem
    from ingero.tracer.session import TraceOptions, TraceSession
    from ingero.workload import wheel_libcudart

    if os.geteuid() != 0 or bpf_problem():
        skip_or_fail(bpf_problem() or "needs root")
    pythons = interpreters()
    lib = str(wheel_libcudart(12))
    db = tmp_path_factory.mktemp("pyframes") / "run.db"
    procs: dict[tuple[str, str], subprocess.Popen] = {}
    try:
        for label, exe in pythons.items():
            for mode in MODES:
                procs[label, mode] = subprocess.Popen([exe, str(TARGET), lib, mode, str(CALLS)], text=True,
                                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        for key, p in procs.items():
            assert p.stdout.readline().strip() == "ready", key
        session = TraceSession(TraceOptions(db=db, preattach=False, chains_every_s=3600),
                               pids=[p.pid for p in procs.values()]).start()
        runner = threading.Thread(target=session.run)
        runner.start()
        try:
            for p in procs.values():
                p.stdin.write("\n")
                p.stdin.flush()
            callers: dict[tuple[str, str], int] = {}
            for key, p in procs.items():
                line = p.stdout.readline()
                assert line.startswith("called pid="), (key, line)
                callers[key] = int(line.split("=")[1])
            want = CALLS * len(procs)
            wait_for(lambda: session.snapshot().by_op["cudaMalloc"] >= want, 60, f"{want} cudaMalloc events")
            for pid in callers.values():  # the frames are resolved as the events are stored: let them exit
                os.kill(pid, signal.SIGUSR1)
            for p in procs.values():
                p.wait(timeout=30)
            runner.join(timeout=60)
            assert not runner.is_alive()
        finally:
            session.stop("test over")
            runner.join(timeout=60)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    return db, callers, pythons, session.snapshot().python_lines


def stacks_of(db: Path, pid: int) -> list[tuple[int, list[dict]]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT e.stack_hash, COALESCE(st.frames, '') FROM events e LEFT JOIN stack_traces st "
                            "ON st.hash = e.stack_hash WHERE e.pid = ? AND e.source = 1 AND e.op = 1", (pid,))
        return [(h, json.loads(fr) if fr else []) for h, fr in rows]
    finally:
        conn.close()


@pytest.mark.parametrize("mode", MODES)
def test_the_stack_of_every_call_has_its_python_frames(traced, mode):
    db, callers, pythons, _ = traced
    lines = marked_lines()
    target = str(TARGET)
    for label in pythons:
        pid = callers[label, mode]
        got = stacks_of(db, pid)
        assert len(got) == CALLS, (label, mode, got)
        assert len({h for h, _ in got}) == 1, (label, mode)  # one call site: one stack
        frames = got[0][1]
        native = [f for f in frames if "pf" not in f and "pfn" not in f]
        py = [f for f in frames if "pfn" in f]
        assert frames[0].get("s", "").startswith("cudaMalloc") and frames[0]["f"] == "libcudart.so.12", frames
        # merged: the native frames of the call, then the Python ones (then the interpreter's, if unwound)
        first_py = frames.index(py[0])
        interp = [i for i, f in enumerate(frames) if re.match(r"(lib)?python3\.\d+", f.get("f", ""))]
        assert frames[first_py:first_py + len(py)] == py  # the Python frames together, in order
        assert frames[:first_py] == native[:first_py]
        assert (interp[0] == first_py + len(py)) if interp else (first_py + len(py) == len(frames)), frames
        chain = [(f["pfn"], f.get("pf"), f.get("pl")) for f in py[:3]]
        assert chain == [("alloc", target, lines["alloc"]), ("train_step", target, lines["train_step"]),
                         ("main", target, lines["main"])], (label, mode, frames)
        if mode == "thread":
            outer = py[3]
            assert os.path.basename(outer["pf"]) == "threading.py" and outer["pfn"].endswith("run"), outer
        else:
            assert (py[3]["pfn"], py[3]["pf"], py[3]["pl"]) == (
                "<module>", target, lines["module" if mode == "main" else "module_fork"]), (label, mode, py)
            assert len(py) == 4, py


def test_static_and_shared_libpython_both_covered(traced):
    _, _, pythons, _ = traced
    from ingero.pyframes.process import find_runtime

    # which of them link libpython statically is a fact of the builds; both kinds are traced above when present
    kinds = {}
    for label, exe in pythons.items():
        p = subprocess.Popen([exe, "-c", "import sys; sys.stdin.readline()"], stdin=subprocess.PIPE, text=True)
        try:
            wait_for(lambda p=p: "python" in Path(f"/proc/{p.pid}/maps").read_text(), 10, "the interpreter")
            rt = None
            deadline = time.monotonic() + 10
            while rt is None and time.monotonic() < deadline:
                rt = find_runtime(p.pid)
            assert rt is not None, label
            assert rt.version == tuple(int(x) for x in label.split("-")[0].split(".")), (label, rt.version)
            kinds[label] = rt.static
        finally:
            p.kill()
            p.wait()
    assert not any(kinds[f"3.{m}"] for _, m in PYFRAMES_VERSIONS)  # pyenv: shared libpython
    if "3.11-debian" in kinds:
        assert kinds["3.11-debian"]  # Debian's python3.11 carries libpython in the executable


def test_probe_count_by_pystack_and_stack_records_have_python_frames():
    """A DSL probe on cudaMalloc, every process: ``count by pystack`` gives, for each interpreter, exactly
    the calls per calling line; a recorded ``stack`` holds the same Python frames after the native ones."""
    from ingero.compiler import compile_spec
    from ingero.dsl import check
    from ingero.runtime.kernel import bpf_problem
    from ingero.runtime.probes import ProbeSession
    from ingero.workload import wheel_libcudart

    if os.geteuid() != 0 or bpf_problem():
        skip_or_fail(bpf_problem() or "needs root")
    pythons = interpreters()
    lib = str(wheel_libcudart(12))
    spec = (f"probe sites = {lib}:cudaMalloc\n    aggregate count by pystack\n"
            f"probe calls = {lib}:cudaMalloc\n    record size, stack, pystack\n")
    calls = 5
    procs = {label: subprocess.Popen([exe, str(TARGET), lib, "sites", str(calls)], text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE) for label, exe in pythons.items()}
    lines = marked_lines()
    target = str(TARGET)
    try:
        for p in procs.values():
            assert p.stdout.readline().strip() == "ready"
        session = ProbeSession(compile_spec(check(spec, "t.probe").resolved())).start()
        try:
            for p in procs.values():
                p.stdin.write("\n")
                p.stdin.flush()
            for p in procs.values():
                assert p.stdout.readline().startswith("called pid=")
            events = []
            deadline = time.monotonic() + 30
            while len(events) < calls * len(procs) and time.monotonic() < deadline:
                events += [e for e in session.poll(100) if e.pid in {p.pid for p in procs.values()}]
            rows = session.aggregates("sites")
        finally:
            session.close()
    finally:
        for p in procs.values():
            p.kill()
            p.wait()
    site = {"site_a": 2, "site_b": 3}  # i % 3 == 0 for i in 0..4: 0 and 3
    frames_of = {name: (f"alloc ({target}:{lines['alloc']})", f"two_sites ({target}:{lines[name]})",
                        f"<module> ({target}:{lines['module_sites']})") for name in site}
    want = {frames_of[name]: n * len(pythons) for name, n in site.items()}  # summed over the interpreters
    got = {}
    for r in rows:
        frames = r.key["pystack"]
        if frames and frames[-1].startswith("<module> (" + target):
            got[frames] = got.get(frames, 0) + r.count
    assert got == want
    assert len(events) == calls * len(procs)
    for e in events:
        py = e.fields["pystack"]
        assert py in want, py
        native = e.fields["stack"]
        assert "cudaMalloc" in native[0]
        i = native.index(py[0])
        assert tuple(native[i:i + len(py)]) == py  # the same Python frames, merged after the native ones
        assert all(" (" + target not in f for f in native[:i])


def test_torch_is_available_stack_shows_torch_frames_and_the_calling_line():
    """The real PyTorch (the fixture): cudaGetDeviceCount under ``torch.cuda.is_available()`` has
    ``torch/cuda/__init__.py`` frames and, outermost, the calling script's line."""
    from ingero.compiler import compile_spec
    from ingero.dsl import check
    from ingero.runtime.kernel import bpf_problem
    from ingero.runtime.probes import ProbeSession
    from tests.helpers import torch_python

    if os.geteuid() != 0 or bpf_problem():
        skip_or_fail(bpf_problem() or "needs root")
    exe = torch_python()
    script = ROOT / "tests" / "pyframes_torch_target.py"
    line = next(n for n, text in enumerate(script.read_text().splitlines(), 1) if text.endswith("# @is_available"))
    p = subprocess.Popen([str(exe), str(script)], text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert p.stdout.readline().strip() == "ready"
        spec = "probe gdc = libcudart:cudaGetDeviceCount\n    record stack, pystack\n"
        session = ProbeSession(compile_spec(check(spec, "t.probe", pid=p.pid).resolved()), pid=p.pid).start()
        try:
            p.stdin.write("\n")
            p.stdin.flush()
            assert p.stdout.readline().startswith("called")
            events = []
            deadline = time.monotonic() + 30
            while not events and time.monotonic() < deadline:
                events += session.poll(100)
        finally:
            session.close()
    finally:
        p.kill()
        p.wait()
    assert events, "no cudaGetDeviceCount call seen"
    py = events[0].fields["pystack"]
    assert py[-1] == f"<module> ({script}:{line})", py
    assert any("/torch/cuda/__init__.py:" in f for f in py), py
    assert py[0].split(" (")[1].split(":")[0].endswith("torch/cuda/__init__.py"), py
    native = events[0].fields["stack"]
    assert "cudaGetDeviceCount" in native[0], native
    i = native.index(py[0])
    assert tuple(native[i:i + len(py)]) == py, native


def test_the_database_replays_with_its_python_frames(traced):
    """The recorded database, read back: get_stacks renders the Python frames (upstream's format), groups by
    the innermost Python line with exact counts, and ``ingero stacks --by python-line`` prints it."""
    from ingero.analysis import top_stacks
    from ingero.mcp.format import format_stacks
    from ingero.store import TraceReader

    db, callers, _, _ = traced
    lines = marked_lines()
    target = str(TARGET)
    from ingero.analysis.chains import CausalChain, TimelineEntry, _with_python_lines
    from ingero.analysis.window import ALL

    r = TraceReader.open(db)
    try:
        stacks = top_stacks(r, op="cudaMalloc", limit=100)
        by_line = top_stacks(r, op="cudaMalloc", group="python_line")
        total = CALLS * len(callers)
        chain = CausalChain("tail-medium-cudaMalloc", "MEDIUM", "s", "r", "e", (),
                            (TimelineEntry("CUDA", "cudaMalloc", "p99=..."),), "cudaMalloc")
        chain = _with_python_lines(chain, r, ALL, (), total)
    finally:
        r.close()
    # a causal chain of cudaMalloc names the Python line of its calls, before its op's entry
    assert [(e.layer, e.detail) for e in chain.timeline] == [
        ("PYTHON", f"{total} of {total} cudaMalloc calls from {TARGET}:{marked_lines()['alloc']} in alloc"),
        ("CUDA", "p99=...")]
    assert sum(s.count for s in stacks) == CALLS * len(callers)
    for s in stacks:
        assert f"-> alloc ({target}:{lines['alloc']})" in s.frames, s.frames
        assert s.python_line == f"{target}:{lines['alloc']} in alloc"
    assert [(s.python_line, s.count) for s in by_line] == [(f"{target}:{lines['alloc']} in alloc",
                                                            CALLS * len(callers))]
    text = format_stacks(by_line, 10)
    assert f'"python_line":"[traced-data]{target}:{lines["alloc"]} in alloc[/traced-data]"' in text, text
    out = subprocess.run([str(ROOT / ".venv" / "bin" / "ingero"), "stacks", "--db", str(db), "--op", "cudaMalloc",
                          "--by", "python-line"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"{target}:{lines['alloc']} in alloc: n={CALLS * len(callers)} "), out.stdout
    assert f"    -> train_step ({target}:{lines['train_step']})" in out.stdout


def test_the_live_view_counts_calls_per_python_line(traced):
    """What ``ingero trace``'s live view shows (the session's snapshot): every call, by its Python line."""
    _, callers, _, got = traced
    lines = marked_lines()
    assert dict(got) == {f"{TARGET}:{lines['alloc']} in alloc": CALLS * len(callers)}


def test_a_probe_in_a_live_trace_records_python_frames(tmp_path):
    """A DSL probe attached by a live trace (``ingero trace --probe``, in its own process: bcc shares tables
    by name per process) shares the standard set's Python process table: its recorded ``pystack`` (stored in
    the probe's view) holds the exact calling lines, per call."""
    from ingero.runtime.kernel import bpf_problem
    from ingero.workload import wheel_libcudart

    if os.geteuid() != 0 or bpf_problem():
        skip_or_fail(bpf_problem() or "needs root")
    exe = interpreters()["3.12"]
    lib = str(wheel_libcudart(12))
    db = tmp_path / "live.db"
    spec = tmp_path / "sites.probe"
    spec.write_text(f"probe sites = {lib}:cudaMalloc\n    record pystack\n")
    lines = marked_lines()
    r = subprocess.run([str(ROOT / ".venv" / "bin" / "ingero"), "trace", "--db", str(db), "--quiet", "--probe",
                        str(spec), "--", exe, str(TARGET), lib, "sites", "5", "2"], input="", capture_output=True,
                       text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        got = [json.loads(v) for (v,) in conn.execute('SELECT pystack FROM "probe_sites" ORDER BY timestamp')]
    finally:
        conn.close()
    target = str(TARGET)
    site = [lines["site_a"], lines["site_b"], lines["site_b"], lines["site_a"], lines["site_b"]]
    assert got == [[f"alloc ({target}:{lines['alloc']})", f"two_sites ({target}:{n})",
                    f"<module> ({target}:{lines['module_sites']})"] for n in site]
