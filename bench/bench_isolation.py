"""Only the traced tree pays: the per-call cost of a process OUTSIDE the trace calling a function that
ingero probes in another process, beside no ingero at all -- and the traced process's own cost -- in the
same run.

The function is ``cudaGetLastError`` of the wheel's libcudart.so.12, called in a C loop
(``bench/native/callloop.c``). The configurations:

* no ingero at all;
* ``ingero trace`` (a ``TraceSession``: the standard probe set with user stacks, every call stored)
  following a traced copy of the loop, with the function added to its probe set (recorded as a
  cudaMemcpy: two arguments read at entry), then also a DSL probe on the same function attached to the
  live trace (``attach_spec``, as ``--probe`` and MCP's ``attach_probe`` do);
* for reference, the same probes on every process: the same trace with a pid-0 link (what ingero did
  before per-process links), and ``ingero probe run`` without a pid.

Target: the untraced process's cost under ``ingero trace`` equal to no ingero within noise; the traced
process's cost as with the every-process links.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_overhead import SYMBOL, build  # noqa: E402  (the same C loop and function)
from bench_overhead import loop as untraced  # noqa: E402  (ns per call of a fresh, untraced loop)
from benchproc import notes_markdown, stop  # noqa: E402

SPEC = "probe gle = {lib}:cudaGetLastError\n    record retval, latency\n"


class Waiting:
    """A loop that has loaded the library and warmed up, waiting to run its timed calls."""

    def __init__(self, exe: str, lib: str, n: int) -> None:
        self.proc = subprocess.Popen([exe, lib, SYMBOL, str(n), "wait"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("ready"):
            raise RuntimeError(f"callloop did not start: {line!r}")
        self.pid = self.proc.pid

    def go(self) -> float:
        out, _ = self.proc.communicate("go\n", timeout=600)
        return float(out.split()[0])

    def close(self) -> None:
        stop(self.proc, "callloop")


def under_trace(exe: str, lib: str, n: int, tmp: str, *, every: bool) -> tuple[float, float, float, float, int, int]:
    """(untraced, traced, untraced with a DSL probe too, traced with it, events stored, lost) under a real
    ``TraceSession`` following two waiting loops. ``every``: instead of per-process links, the standard
    handlers on a pid-0 link (every process traps; the program drops other processes' calls after the
    trap), the loops in the targets map -- what ingero did before per-process links (no DSL probe then)."""
    import sqlite3

    from ingero.tracer.session import TraceOptions, TraceSession

    db = Path(tmp) / f"isolation-{time.monotonic_ns()}.db"
    first, second = Waiting(exe, lib, n), Waiting(exe, lib, n)
    # the trace starts on a process without CUDA, gets the function added to its set, then follows the loops
    # (which mapped the library already: a scan would otherwise attach it with the standard table first)
    idle = subprocess.Popen(["sleep", "600"])
    nan = float("nan")
    try:
        session = TraceSession(TraceOptions(db=db, preattach=False, chains_every_s=3600), pids=[idle.pid]).start()
        tracer = session.tracer
        tracer.attach_symbols(lib, {SYMBOL: 4})
        if every:
            for attached in tracer.libraries.values():
                attached.per_process.add(0)
            targets = tracer._bpf["ingero_targets"]
            for w in (first, second):
                targets[targets.Key(w.pid)] = targets.Leaf(1)
        else:
            tracer.follow(first.pid)
            tracer.follow(second.pid)
        runner = threading.Thread(target=session.run)
        runner.start()
        try:
            time.sleep(0.3)
            other = untraced(exe, lib, n)
            mine = first.go()
            other_dsl = mine_dsl = nan
            if not every:
                session.dynamic.attach(SPEC.format(lib=lib), name="gle", in_process=False)
                time.sleep(0.3)
                other_dsl = untraced(exe, lib, n)
                mine_dsl = second.go()
        finally:
            session.stop("done")
            runner.join()
    finally:
        first.close()
        second.close()
        stop(idle, "sleep")
    conn = sqlite3.connect(db)
    stored = conn.execute("SELECT COUNT(*) FROM events WHERE source IN (1, 100)").fetchone()[0]
    lost = conn.execute("SELECT COALESCE(SUM(count), 0) FROM lost_events").fetchone()[0]
    conn.close()
    return other, mine, other_dsl, mine_dsl, stored, lost


def probe_run_everywhere(exe: str, lib: str, n: int) -> float:
    """Untraced ns per call while a DSL probe runs without a pid (``ingero probe run`` without --pid)."""
    from ingero.compiler import compile_spec
    from ingero.dsl import check
    from ingero.runtime.probes import ProbeSession

    compiled = compile_spec(check(SPEC.format(lib=lib), "gle").resolved())
    with ProbeSession(compiled, pid=None) as session, _draining(lambda: session.read()):
        time.sleep(0.3)
        return untraced(exe, lib, n)


class _draining:
    """Read a tracer's events on a thread meanwhile (as ingero does), so its ring never fills."""

    def __init__(self, read) -> None:
        self.read = read
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        while not self.done.is_set():
            self.read()
            time.sleep(0.002)

    def __enter__(self) -> _draining:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    quick = ap.parse_args().quick
    n = 100_000 if quick else 300_000
    runs = 2 if quick else 3
    from ingero.workload import wheel_libcudart

    lib = str(wheel_libcudart(12))
    med = statistics.median
    cases: dict[str, list[float]] = {k: [] for k in (
        "none", "trace_other", "trace_mine", "dsl_other", "dsl_mine", "all_other", "all_mine", "run_other")}
    stored, losses = [], []
    with tempfile.TemporaryDirectory() as tmp:
        exe = build(tmp)
        for _ in range(runs):
            cases["none"].append(untraced(exe, lib, n))
            o, m, od, md, s, lost = under_trace(exe, lib, n, tmp, every=False)
            cases["trace_other"].append(o)
            cases["trace_mine"].append(m)
            cases["dsl_other"].append(od)
            cases["dsl_mine"].append(md)
            stored.append(s)
            losses.append(lost)
            o, m, *_ = under_trace(exe, lib, n, tmp, every=True)
            cases["all_other"].append(o)
            cases["all_mine"].append(m)
            cases["run_other"].append(probe_run_everywhere(exe, lib, n))
    base = med(cases["none"])

    def cell(key: str) -> str:
        v = cases[key]
        return f"{med(v):,.1f} ({min(v):,.1f}–{max(v):,.1f})"

    def ratio(key: str) -> str:
        return f"{med(cases[key]) / base:.2f}"

    rows = [
        ("no ingero", "none", "—"),
        ("**`ingero trace` probing it in another process** (per-process links)", "trace_other", "trace_mine"),
        ("… plus a DSL probe on the same function attached to the trace", "dsl_other", "dsl_mine"),
        ("reference: the same trace with a pid-0 link (every process traps: ingero before this change)",
         "all_other", "all_mine"),
        ("reference: `ingero probe run` without a pid (every process, said in its output)", "run_other", "—"),
    ]
    print("## Only the traced tree pays: an untraced process calling a probed function\n")
    print(f"`{SYMBOL}` of libcudart.so.12 in a C loop of {n:,} calls; median of {runs} runs (min–max), ns per "
          "call. *Untraced*: a process outside the trace calling the very function the trace probes; "
          "*traced*: the traced process itself (every call stored, user stacks on). Same run, same machine "
          f"(load average {os.getloadavg()[0]:.1f} at the end).\n")
    print("| configuration | untraced process, ns/call | ratio to no ingero | traced process, ns/call |")
    print("|---|---|---|---|")
    for label, other, mine in rows:
        print(f"| {label} | {cell(other)} | {ratio(other)} | {cell(mine) if mine != '—' else '—'} |")
    print(f"\nEvents stored by the trace per run: {med(stored):,.0f} of {3 * n:,} (2 traced loops of {n:,} calls, "
          f"the second one also recorded by the DSL probe); lost per run: {', '.join(f'{x:,}' for x in losses)}.")
    print(notes_markdown())


if __name__ == "__main__":
    main()
