"""Only the traced tree pays: the per-call cost of a process OUTSIDE the trace calling a function that
ingero probes in another process, beside no ingero at all -- and the traced process's own cost beside what
it paid with the every-process (pid-0) links ingero used before -- in the same run.

The function is ``cudaGetLastError`` of the wheel's libcudart.so.12, called in a C loop
(``bench/native/callloop.c``). Each round runs, in one ``TraceSession`` (the standard probe set with user
stacks, every call stored; the function added to its set, recorded as a cudaMemcpy: two arguments read at
entry), following an idle process:

* the per-process links ingero uses: an untraced loop, and a traced loop (followed: its own links);
* the reference, ingero before per-process links: the same handlers on a pid-0 link (every process traps,
  the program drops other processes' calls after the trap), an untraced loop, and a traced loop (in the
  targets map only);
* a DSL probe on the same function attached to the live trace (``attach_spec``, as ``--probe`` and MCP's
  ``attach_probe`` do): an untraced loop, and a traced loop (now recorded twice);

the two link kinds in alternating order from round to round; between rounds, with no ingero at all, an
untraced loop, and (reference) one under ``ingero probe run`` without a pid (every process, said in its
output). Verdicts compare per-round ratios (the runs of one round are seconds apart, under the same load):
"equal within noise" only when the middle half of the ratios spans 1.00.

Targets: the untraced process's cost under ``ingero trace`` equal to no ingero within noise; the traced
process's cost with per-process links equal to the pid-0 reference within noise. Each traced loop's events
are counted in the database: a full ring would distort the cost, so any loss is shown.
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
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_overhead import SYMBOL, build  # noqa: E402  (the same C loop and function)
from benchproc import notes_markdown, stop  # noqa: E402

SPEC = "probe gle = {lib}:cudaGetLastError\n    record retval, latency\n"
#: calls per traced loop: small enough that the tracer keeps up (a full ring would distort the cost)
TRACED_CALLS = 100_000
#: calls per untraced loop: about 10 ms where it does not trap (long enough to time) ...
UNTRACED_CALLS = 1_000_000
#: ... and where it traps (the references on every process: about a second)
UNTRACED_TRAPPED_CALLS = 200_000
#: the longest a round waits for the trace to take in a traced loop's calls before the next loop
DRAIN_WAIT_S = 30.0
#: idle processes added to the traced tree for the "bigger tree" row
CROWD = 8


@dataclass(frozen=True)
class Timing:
    """ns per call of one loop: its CPU time (user + system, traps included) and its wall time."""

    cpu: float
    wall: float


def _timing(stdout: str, stderr: str) -> Timing:
    cpu = next(line.split()[1] for line in stderr.splitlines() if line.startswith("cpu "))
    return Timing(float(cpu), float(stdout.split()[0]))


def untraced(exe: str, lib: str, n: int) -> Timing:
    """A fresh loop of ``n`` calls that no trace follows."""
    r = subprocess.run([exe, lib, SYMBOL, str(n)], capture_output=True, text=True, check=True, timeout=600)
    return _timing(r.stdout, r.stderr)


class Waiting:
    """A loop that has loaded the library and warmed up, waiting to run its timed calls."""

    def __init__(self, exe: str, lib: str, n: int) -> None:
        self.proc = subprocess.Popen([exe, lib, SYMBOL, str(n), "wait"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("ready"):
            raise RuntimeError(f"callloop did not start: {line!r}")
        self.pid = self.proc.pid

    def go(self) -> Timing:
        out, err = self.proc.communicate("go\n", timeout=600)
        return _timing(out, err)

    def close(self) -> None:
        stop(self.proc, "callloop")


@dataclass
class Round:
    """One round's figures and, per traced loop, the events the trace stored of its calls."""

    ns: dict[str, Timing] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)  # traced loop -> its pid
    stored: dict[str, int] = field(default_factory=dict)
    lost: int = 0


def trace_round(exe: str, lib: str, tmp: str, per_process_first: bool, out: Round) -> None:
    """The figures of one round under one real ``TraceSession`` (see the module docstring)."""
    import sqlite3

    from ingero.tracer.session import TraceOptions, TraceSession

    db = Path(tmp) / f"isolation-{time.monotonic_ns()}.db"
    # the trace starts on a process without CUDA and gets the function added to its set (a scan would
    # otherwise attach the loops' library with the standard table first)
    idle = subprocess.Popen(["sleep", "600"])
    try:
        session = TraceSession(TraceOptions(db=db, preattach=False, chains_every_s=3600), pids=[idle.pid]).start()
        tracer = session.tracer
        attached = tracer.attach_symbols(lib, {SYMBOL: 4})
        targets = tracer._bpf[tracer.shared.name("ingero_targets")]
        runner = threading.Thread(target=session.run)
        runner.start()

        expected = [0]  # traced calls so far: each traced loop waits until the trace has taken them in

        def traced(key: str, follow) -> None:
            w = Waiting(exe, lib, TRACED_CALLS)
            try:
                follow(w.pid)
                out.pids[key] = w.pid
                out.ns[key] = w.go()
            finally:
                w.close()
            # the next loop starts with an empty ring (a loop's calls fit in it; a backlog would not)
            expected[0] += TRACED_CALLS
            deadline = time.monotonic() + DRAIN_WAIT_S
            while time.monotonic() < deadline:
                snap = session.snapshot()
                if snap.by_op.get("cudaMemcpy", 0) + snap.lost.get("cuda", 0) >= expected[0]:
                    break
                time.sleep(0.05)

        def per_process() -> None:
            out.ns["trace_other"] = untraced(exe, lib, UNTRACED_CALLS)
            traced("trace_mine", tracer.follow)
            # each traced process's link is one more consumer of the function's breakpoint, which every
            # call of a traced process runs (and skips): the loop alone, as the pid-0 link's one consumer
            attached.per_process.drop(idle.pid)
            try:
                traced("alone_mine", tracer.follow)
            finally:
                attached.per_process.add(idle.pid)
            # a bigger tree (a DataLoader with workers): CROWD more traced processes, one consumer each
            crowd = [subprocess.Popen(["sleep", "600"]) for _ in range(CROWD)]
            try:
                for c in crowd:
                    tracer.follow(c.pid)
                traced("crowd_mine", tracer.follow)
            finally:
                for c in crowd:
                    stop(c, "sleep")
                    tracer.follower.drop(c.pid)

        def every_process() -> None:
            # what ingero did before per-process links: one pid-0 link on the file, and no other
            attached.per_process.drop(idle.pid)
            attached.per_process.add(0)
            try:
                out.ns["all_other"] = untraced(exe, lib, UNTRACED_TRAPPED_CALLS)
                traced("all_mine", lambda pid: targets.__setitem__(targets.Key(pid), targets.Leaf(1)))
            finally:
                attached.per_process.drop(0)
                attached.per_process.add(idle.pid)

        try:
            time.sleep(0.3)
            for step in ((per_process, every_process) if per_process_first else (every_process, per_process)):
                step()
            session.attach_spec(session.check_spec(SPEC.format(lib=lib), "gle", in_process=False).resolved())
            time.sleep(0.3)
            out.ns["dsl_other"] = untraced(exe, lib, UNTRACED_CALLS)
            traced("dsl_mine", tracer.follow)
        finally:
            session.stop("done")
            runner.join()
    finally:
        stop(idle, "sleep")
    conn = sqlite3.connect(db)
    for key, pid in out.pids.items():
        out.stored[key] = conn.execute("SELECT COUNT(*) FROM events WHERE source = 1 AND pid = ?", (pid,)).fetchone()[0]
    out.lost = conn.execute("SELECT COALESCE(SUM(count), 0) FROM lost_events").fetchone()[0]
    conn.close()
    db.unlink()


def probe_run_everywhere(exe: str, lib: str) -> Timing:
    """Untraced ns per call while a DSL probe runs without a pid (``ingero probe run`` without --pid)."""
    from ingero.compiler import compile_spec
    from ingero.dsl import check
    from ingero.runtime.probes import ProbeSession

    compiled = compile_spec(check(SPEC.format(lib=lib), "gle").resolved())
    with ProbeSession(compiled, pid=None) as session, _draining(lambda: session.read()):
        time.sleep(0.3)
        return untraced(exe, lib, UNTRACED_TRAPPED_CALLS)


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


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """(25th percentile, median, 75th percentile); one value is all three."""
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def verdict(ratios: list[float]) -> str:
    """What per-round ratios (case / reference) say: equal within noise only if their middle half spans 1."""
    q1, med, q3 = quartiles(ratios)
    spread = f"median ratio {med:.2f}, middle half {q1:.2f}–{q3:.2f} over {len(ratios)} rounds"
    if q1 <= 1.0 <= q3:
        return f"equal within noise ({spread})"
    return f"{'more' if q1 > 1.0 else 'less'} than the reference: {spread}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=0, help="rounds (default 8, 3 with --quick)")
    args = ap.parse_args()
    rounds = args.rounds or (3 if args.quick else 8)
    from ingero.workload import wheel_libcudart

    lib = str(wheel_libcudart(12))
    load_before = os.getloadavg()[0]
    t0 = time.monotonic()
    done: list[Round] = []
    with tempfile.TemporaryDirectory() as tmp:
        exe = build(tmp)
        for i in range(rounds):
            r = Round()
            r.ns["none"] = untraced(exe, lib, UNTRACED_CALLS)
            trace_round(exe, lib, tmp, per_process_first=i % 2 == 0, out=r)
            r.ns["run_other"] = probe_run_everywhere(exe, lib)
            done.append(r)
    took = time.monotonic() - t0

    def cell(key: str, kind: str = "cpu") -> str:
        q1, med, q3 = quartiles([getattr(r.ns[key], kind) for r in done])
        return f"{med:,.1f} ({q1:,.1f}–{q3:,.1f})"

    def ratios(key: str, ref: str, kind: str = "cpu") -> list[float]:
        return [getattr(r.ns[key], kind) / getattr(r.ns[ref], kind) for r in done]

    def ratio(key: str, ref: str) -> str:
        q1, med, q3 = quartiles(ratios(key, ref))
        return f"{med:.2f} ({q1:.2f}–{q3:.2f})"

    def stored(key: str) -> str:
        got = [r.stored[key] for r in done]
        return f"{min(got):,}–{max(got):,}" if min(got) != max(got) else f"{got[0]:,}"

    print("## Only the traced tree pays: an untraced process calling a probed function\n")
    print(f"`{SYMBOL}` of libcudart.so.12 in a C loop; ns per call of the loop's own CPU time (user + system, "
          f"traps included; the wall time, which other work on the machine stretches, in parentheses under it), "
          f"median (25th–75th percentile) of {rounds} rounds. *Untraced*: a process outside the trace calling "
          f"the very function the trace probes ({UNTRACED_CALLS:,} calls; {UNTRACED_TRAPPED_CALLS:,} in the "
          f"references, where each call traps); *traced*: the traced process itself ({TRACED_CALLS:,} calls, "
          "every call stored with its user stack). One round runs every configuration under one trace within "
          "seconds, the two link kinds in alternating order from round to round (no ingero and `probe run` "
          "between the rounds); ratios are taken within a round. "
          f"Load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after; {took:.0f} s.\n")
    print("| configuration | untraced process, CPU ns/call | ratio to no ingero | traced process, CPU ns/call "
          "| ratio to the pid-0 reference | traced calls stored |")
    print("|---|---|---|---|---|---|")

    def row(label: str, other: str, mine: str | None) -> None:
        if not other:
            print(f"| {label} | — | — | {cell(mine)}<br>(wall {cell(mine, 'wall')}) | {ratio(mine, 'all_mine')} | "
                  f"{stored(mine)} of {TRACED_CALLS:,} |")
            return
        wall = f"<br>(wall {cell(other, 'wall')})"
        if mine is None:
            traced_cells = "— | — | —"
        else:
            ref = "1.00" if mine == "all_mine" else ratio(mine, "all_mine")
            traced_cells = (f"{cell(mine)}<br>(wall {cell(mine, 'wall')}) | {ref} | "
                            f"{stored(mine)} of {TRACED_CALLS:,}")
        ref_other = "1.00" if other == "none" else ratio(other, "none")
        print(f"| {label} | {cell(other)}{wall} | {ref_other} | {traced_cells} |")

    row("no ingero", "none", None)
    row("**`ingero trace` probing it in another process** (per-process links)", "trace_other", "trace_mine")
    row("… the traced loop the only process linked (one consumer of the breakpoint, as with the pid-0 "
        "link; the row above has two: the loop's and the idle process's)", "", "alone_mine")
    row(f"… with {CROWD} more (idle) processes in the traced tree: {CROWD + 2} consumers", "", "crowd_mine")
    row("… plus a DSL probe on the same function attached to the trace (each traced call recorded twice)",
        "dsl_other", "dsl_mine")
    row("reference: the same trace with a pid-0 link (every process traps: ingero before per-process links)",
        "all_other", "all_mine")
    row("reference: `ingero probe run` without a pid (every process, said in its output)", "run_other", None)
    lost = [r.lost for r in done]
    print(f"\nEvents lost per round: {', '.join(f'{x:,}' for x in lost)}"
          f"{' (the traced figures of a round with losses ran with a full ring)' if any(lost) else ''}.\n")
    print("Verdicts (CPU time; wall time in parentheses):\n")
    print(f"- Untraced process under `ingero trace` vs no ingero: {verdict(ratios('trace_other', 'none'))} "
          f"(wall: {verdict(ratios('trace_other', 'none', 'wall'))}).")
    print(f"- Traced process, per-process links vs the pid-0 reference: "
          f"{verdict(ratios('trace_mine', 'all_mine'))} (wall: {verdict(ratios('trace_mine', 'all_mine', 'wall'))}); "
          f"the loop the only process linked: {verdict(ratios('alone_mine', 'all_mine'))}; with {CROWD} more "
          f"processes in the tree: {verdict(ratios('crowd_mine', 'all_mine'))}.")
    print(notes_markdown())


if __name__ == "__main__":
    main()
