"""Fleet metrics: what serving /metrics costs the trace, what a scrape costs, how many series a node has.

1. Ingest with and without metrics: the paced C producer (``bench/native/pacedcalls.c``) calls
   ``cudaMemcpy`` of the wheel's libcudart.so.12 at 400,000 calls/s; a real :class:`TraceSession` records
   every call, once without metrics (the baseline) and once with :class:`FleetMetrics` fed per batch,
   ``/metrics`` served on loopback and scraped every second by another process (as Prometheus would).
   The scraper is started, and has scraped once, before its phase begins. One session runs a warm-up
   phase (not counted), then phases of equal length in the order off, on, on,
   off, off, on, ... (each pair reversed from the last) so that a trend in the machine's load falls on both
   alike; the figures compared are medians. Besides throughput, the tracer's CPU per stored event (load
   changes it less) and the CPU the metrics themselves took in the tracer (thread time around each per-batch
   ``observe_calls`` on the ingest thread and each scrape's ``generate_latest``).
2. One scrape with 8 dynamic probes: 8 DSL probes (``record latency``) attached to the live trace with
   metrics, a phase of calls so that each has its series, then scrapes timed end to end (HTTP request to
   the last byte, from another process).
3. Series per node: counted in that scrape, and the bound for a node whose trace sees every op.

    python bench/bench_fleet.py            # 3 s per phase
    python bench/bench_fleet.py --quick    # 1.5 s per phase
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

RATE = 400_000
TARGET_SCRAPE_MS = 50.0
PROBES = 8
ROUNDS = 4  # phase pairs (without, with), each pair in the reverse order of the last
TOKEN = "bench-fleet"

#: the scraper: GET /metrics every INTERVAL s, N times (N <= 0: until stdin closes); prints each scrape's ms, size
SCRAPER = r"""
import sys, time, urllib.request, threading
url, interval, n = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
req = urllib.request.Request(url, headers={"Authorization": "Bearer " + sys.argv[4]})
stop = threading.Event()
if n <= 0:  # until stdin closes
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
i = 0
while not stop.is_set() and (n <= 0 or i < n):
    t0 = time.perf_counter()
    body = urllib.request.urlopen(req, timeout=10).read()
    print(f"{(time.perf_counter() - t0) * 1000:.3f} {len(body)}", flush=True)
    i += 1
    if interval:
        stop.wait(interval)
"""


def _session(db: Path, pid: int, metrics):
    from ingero.tracer.session import TraceOptions, TraceSession

    session = TraceSession(TraceOptions(db=db, stacks=False), pids=[pid], metrics=metrics).start()
    runner = threading.Thread(target=session.run, name="trace-session")
    runner.start()
    time.sleep(0.5)
    return session, runner


def _phase(prod, session, rate: int, secs: float, phase: int) -> dict:
    from bench_trace_ingest import cpu_s, run_phase

    lost0 = sum(session.tracer.lost().values())
    stored0 = session.snapshot().events
    cpu0 = cpu_s()
    calls, elapsed_ns, t_end = run_phase(prod, session, rate, secs, phase, stored0, lost0)
    drain = time.monotonic() - t_end
    return {"phase": phase, "calls": calls, "secs": elapsed_ns / 1e9, "achieved": calls / (elapsed_ns / 1e9),
            "lost": sum(session.tracer.lost().values()) - lost0, "drain_s": drain, "cpu": cpu_s() - cpu0}


def _scraper(url: str, interval: float, n: int = 0) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", SCRAPER, url, str(interval), str(n), TOKEN], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)


def _stored(db: Path) -> dict[int, int]:
    with sqlite3.connect(db) as c:
        return dict(c.execute("SELECT arg1, COUNT(*) FROM events WHERE source = 1 AND op = 4 GROUP BY arg1"))


def series_bound(probes: int) -> tuple[int, str]:
    """Series of a node whose trace sees every standard op (and ``probes`` probes), with the arithmetic."""
    from ingero.fleet.metrics import BUCKETS_S
    from ingero.store.schema import OP_NAMES, SOURCE_CUDA, SOURCE_DRIVER

    calls_ops = sum(1 for (s, _) in OP_NAMES if s in (SOURCE_CUDA, SOURCE_DRIVER))
    other_ops = len(OP_NAMES) - calls_ops
    hist = len(BUCKETS_S) + 1 + 2  # buckets with +Inf, _sum, _count
    errors_per_op = 3  # distinct error names one op returns in practice (each one is its own series)
    severities = 3
    total = (calls_ops * (1 + hist + errors_per_op) + other_ops + 2 + probes * (1 + hist)
             + severities * calls_ops + 2)
    how = (f"{calls_ops} CUDA/driver ops × (1 counter + {hist} histogram series + {errors_per_op} error names) + "
           f"{other_ops} other ops + 2 lost + {probes} probes × (1 + {hist}) + {severities} severities × "
           f"{calls_ops} ops of chains + 1 info + 1 start time = {total:,}")
    return total, how


def _timed_metrics():
    """FleetMetrics that add up the ingest thread's CPU time spent feeding them (per batch)."""
    from ingero.fleet.labels import node_labels
    from ingero.fleet.metrics import FleetMetrics

    class TimedMetrics(FleetMetrics):
        feed_ns = 0
        fed = 0

        def observe_calls(self, calls, chunk=None) -> None:
            t0 = time.thread_time_ns()
            super().observe_calls(calls, chunk)
            self.feed_ns += time.thread_time_ns() - t0
            self.fed += len(calls)

    return TimedMetrics(node_labels({}, ["job=bench"]), mcp="bench")


#: thread CPU time (ns) the tracer's /metrics handler spent in generate_latest, summed over scrapes
SCRAPE_NS = [0]


def _time_scrapes() -> None:
    """Add up the CPU time of each scrape's exposition (MetricsServer imports generate_latest at start())."""
    import prometheus_client.exposition as exposition

    plain = exposition.generate_latest

    def timed(registry=None):
        t0 = time.thread_time_ns()
        try:
            return plain(registry) if registry is not None else plain()
        finally:
            SCRAPE_NS[0] += time.thread_time_ns() - t0

    exposition.generate_latest = timed


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1.5 s per phase")
    ap.add_argument("--seconds", type=float, default=None)
    ap.add_argument("--series-bound", type=int, metavar="PROBES", default=None,
                    help="only print the series bound of a node with PROBES probes, and of 1,000 such nodes")
    args = ap.parse_args()
    if args.series_bound is not None:
        bound, how = series_bound(args.series_bound)
        print(f"one node: {how}")
        print(f"1,000 nodes: {bound * 1000:,} series")
        return 0
    secs = args.seconds or (1.5 if args.quick else 3.0)

    from bench_trace_ingest import build

    from ingero.fleet.labels import node_labels
    from ingero.fleet.metrics import FleetMetrics
    from ingero.fleet.serve import MetricsServer
    from ingero.workload import wheel_libcudart

    lib = str(wheel_libcudart(12))
    _time_scrapes()
    load0 = os.getloadavg()[0]
    rows: list[tuple[str, dict]] = []
    with tempfile.TemporaryDirectory(prefix="ingero-bench-fleet-") as tmp:
        exe = build(tmp)
        prod = subprocess.Popen([exe, lib, "cudaMemcpy"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert prod.stdout.readline().split()[0] == "ready"
            # 2. + 3. eight probes on a live trace, then timed scrapes (first: a fresh process loads them)
            metrics = FleetMetrics(node_labels({}, ["job=bench"]), mcp="bench")
            server = MetricsServer(metrics, "127.0.0.1:0", TOKEN).start()
            db = Path(tmp) / "probes.db"
            session, runner = _session(db, prod.pid, metrics)
            try:
                for i in range(PROBES):
                    text = f"probe copies{i} = libcudart.so.12:cudaMemcpy\n    record latency\n"
                    session.attach_spec(session.check_spec(text, f"bench{i}").resolved(), owner="bench")
                _phase(prod, session, 2_000, 1.0, 99)
                time.sleep(0.3)
                scraper = _scraper(server.url, 0.05, 40)
                out = scraper.communicate(timeout=120)[0]
                snap = metrics.snapshot()
            finally:
                session.stop("benchmark done")
                runner.join()
                server.close()
            # 1. one session: a warm-up, then phases without metrics and with them fed, served and scraped
            # every second, in the order off on on off off on ...
            scrape_log: list[str] = []
            db = Path(tmp) / "ingest.db"
            session, runner = _session(db, prod.pid, None)
            order = [bool(k % 2) ^ (i == 1) for k in range(ROUNDS) for i in range(2)]
            try:
                _phase(prod, session, RATE, secs, 0)  # warm-up: the first phase of a session pays its start
                time.sleep(0.3)
                for phase, with_metrics in enumerate(order, start=1):
                    server = scraper = metrics = None
                    if with_metrics:
                        metrics = _timed_metrics()
                        server = MetricsServer(metrics, "127.0.0.1:0", TOKEN).start()
                        session.metrics = metrics  # the loop reads it at each tick
                        scraper = _scraper(server.url, 1.0)
                        scraper.stdout.readline()  # its first scrape: started (its start-up is not the phase's)
                    scrape0 = SCRAPE_NS[0]
                    try:
                        r = _phase(prod, session, RATE, secs, phase)
                    finally:
                        session.metrics = None
                        if scraper is not None:
                            scraper.stdin.close()
                            scrape_log += scraper.stdout.read().split("\n")
                            scraper.wait(10)
                        if server is not None:
                            server.close()
                    r["scrapes"] = server.scrapes - 1 if server else 0
                    r["feed_ns"] = metrics.feed_ns / max(metrics.fed, 1) if metrics else 0.0
                    r["scrape_ns"] = (SCRAPE_NS[0] - scrape0) / max(r["calls"], 1)
                    rows.append(("with /metrics, scraped every 1 s" if with_metrics else "without metrics", r))
                    time.sleep(0.3)
            finally:
                session.stop("benchmark done")
                runner.join()
            stored = _stored(db)
            for _, r in rows:
                r["stored"] = stored.get(r["phase"], 0)
        finally:
            prod.stdin.close()
            prod.wait(10)

    timings = sorted(float(line.split()[0]) for line in out.split("\n") if line.strip())
    size = int(out.split("\n")[0].split()[1])
    per_second = [float(line.split()[0]) for line in scrape_log if line.strip()]
    off = [r for label, r in rows if label.startswith("without")]
    on = [r for label, r in rows if label.startswith("with ")]

    def ingest(r: dict) -> float:
        return r["stored"] / (r["secs"] + r["drain_s"])

    def cpu_us(r: dict) -> float:
        return r["cpu"] * 1e6 / max(r["stored"], 1)

    ratio = _median([ingest(r) for r in on]) / max(_median([ingest(r) for r in off]), 1)
    cpu_on, cpu_off = _median([cpu_us(r) for r in on]), _median([cpu_us(r) for r in off])
    feed = _median([r["feed_ns"] for r in on])
    own = _median([r["feed_ns"] + r["scrape_ns"] for r in on])
    print("## Fleet metrics: ingest with /metrics served and scraped, scrape time, series (bench_fleet.py)\n")
    print(f"A C loop calls `cudaMemcpy` of libcudart.so.12 at {RATE:,} calls/s, {secs:g} s per phase; a real "
          "`TraceSession` (no stacks) records every call. After a warm-up phase (not counted), its phases run "
          "without metrics and with `FleetMetrics` fed per batch, `/metrics` served on loopback and scraped every "
          "second by another process, in the order off, on, on, off, off, on, on, off (a load trend falls on "
          "both alike); the figures compared are the medians of each. *ingest* is stored events / (phase + "
          "drain); *tracer CPU* is this process's CPU time (all threads) per stored event; *metrics CPU* is "
          "the tracer's own thread time inside `observe_calls` (the per-batch feed on the ingest thread) and "
          "inside the scrapes' `generate_latest`, per call. Load average of the machine (shared): "
          f"{load0:.1f} before, {os.getloadavg()[0]:.1f} after.\n")
    print("| phase | metrics | achieved (calls/s) | calls | stored | lost | drain (ms) | ingest (events/s) | "
          "tracer CPU (µs/event) | metrics CPU: feed + scrapes (ns/call) | scrapes |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, r in rows:
        feed_cell = f"{r['feed_ns']:.0f} + {r['scrape_ns']:.0f}" if label.startswith("with ") else "–"
        print(f"| {r['phase']} | {label} | {r['achieved']:,.0f} | {r['calls']:,} | {r['stored']:,} | {r['lost']:,} | "
              f"{r['drain_s'] * 1000:.0f} | {ingest(r):,.0f} | {cpu_us(r):.2f} | {feed_cell} | {r['scrapes']} |")
    lost_on = sum(r["lost"] for r in on)
    lost_off = sum(r["lost"] for r in off)
    complete = all(r["stored"] == r["calls"] for r in on)
    overloaded = (f" The tracer lost {lost_off:,} events without metrics too: this machine could not hold "
                  f"{RATE:,}/s at this load, so the throughput figures say little; the CPU figures still hold."
                  if lost_off else "")
    print(f"\nWith metrics: {lost_on:,} events lost, every call stored: {'yes' if complete else 'NO'}; median ingest "
          f"throughput {ratio * 100:.1f}% of the median without (target: no loss, within 5%: "
          f"{'met' if lost_on == 0 and complete and ratio >= 0.95 else 'NOT met'}). Tracer CPU per event: median "
          f"{cpu_on:.2f} µs with metrics, {cpu_off:.2f} µs without ({(cpu_on / max(cpu_off, 1e-9) - 1) * 100:+.1f}%), "
          f"while the metrics' own CPU (feed + scrapes) is {own:.0f} ns per call, {own / 10 / max(cpu_off, 1e-9):.1f}% "
          f"of the tracer's CPU without (the feed alone {feed:.0f} ns). Scrapes during the "
          f"ingest phases: median {_median(per_second) if per_second else 0:.1f} ms, max "
          f"{max(per_second, default=0):.1f} ms.{overloaded}\n")
    bound, how = series_bound(PROBES)
    median = _median(timings)
    print(f"One scrape with {PROBES} dynamic probes attached (and their latency histograms) on the live trace: "
          f"{len(timings)} scrapes, median {median:.1f} ms, max {timings[-1]:.1f} ms, {size:,} bytes (target "
          f"< {TARGET_SCRAPE_MS:g} ms: {'met' if timings[-1] < TARGET_SCRAPE_MS else 'NOT met'}).\n")
    print(f"Series of this node in that scrape: {snap.series():,} (this trace saw one CUDA op). Bound for a node whose "
          f"trace sees every standard op, with {PROBES} probes: {how}. For 1,000 nodes: {bound * 1000:,} series "
          "(docs/fleet.md). "
          f"Command: `python bench/bench_fleet.py{' --quick' if args.quick else ''}`.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
