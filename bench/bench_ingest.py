"""Benchmark: sustained ingest of probe events through ``EventWriter`` against a bare ``executemany``.

The workload is what a DSL probe recording latency and two arguments produces: every event is an
``events`` row (source 100, latency as duration, the two arguments also in arg0/arg1) plus a
``probe_values`` row with its three recorded fields. Batches of 10,000, timestamps in CLOCK_MONOTONIC ns.

Compared in the same run, on the same rows:

* **baseline**: a bare ``executemany`` of the same prepared rows (event ids included) into two plain
  tables with no key and no index, WAL, ``synchronous=NORMAL``, one transaction per batch;
* **writer**, with upstream's full set of ``events`` indexes maintained per row (the default), and with
  ``defer_indexes=True`` (the pid and source/op/stack indexes built at close);
* the same writer with standard events only (no side rows), for reference.

"events/s" counts events (each is one or two rows); "incl. close" adds the final flush, index build and
WAL checkpoint. Target (issue 6): at least 400k events/s into SQLite end to end.

    python bench/bench_ingest.py            # 1,000,000 events per case, best of 3
    python bench/bench_ingest.py --quick    # 200,000 events per case, best of 2
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ingero.store import EventWriter, ProbeField, ProbeInfo, SessionInfo  # noqa: E402
from ingero.store.clock import EpochClock  # noqa: E402
from ingero.store.schema import SOURCE_PROBE  # noqa: E402

BATCH = 10_000
TARGET = 400_000
PROBE = ProbeInfo("copies", "probe copies = libcudart:cudaMemcpyAsync record count, kind, latency",
                  (ProbeField("count"), ProbeField("kind"), ProbeField("latency")), "libcudart.so.12",
                  ("cudaMemcpyAsync",))


def probe_rows(n: int, op: int) -> list[tuple]:
    k0 = 5_000_000_000
    return [(k0 + i * 250, 4242, 4242 + i % 4, SOURCE_PROBE, op, 3_000 + i % 977, 0, 1 << (10 + i % 12), i % 5,
             0, 0, "python", 0, (1 << (10 + i % 12), i % 5, 3_000 + i % 977)) for i in range(n)]


def standard_rows(n: int) -> list[tuple]:
    k0 = 5_000_000_000
    return [(k0 + i * 250, 4242, 4242 + i % 4, 1, 7, 3_000 + i % 977, 0, 1 << (10 + i % 12), i % 5, 0,
             (i % 40) * 7919, "python", 0) for i in range(n)]


def baseline(path: Path, rows: list[tuple], offset: int) -> float:
    """Seconds to executemany the same rows (ids and side rows prepared beforehand) into plain tables."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA page_size=16384")            # as the writer's
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE ev (id, timestamp, pid, tid, source, op, duration, gpu_id, arg0, arg1, ret_code, "
                 "stack_hash, comm, cgroup_id)")
    conn.execute("CREATE TABLE pv (seq, event_id, probe_id, v0, v1, v2)")
    ev = [(f"bench:{i + 1}", r[0] + offset, *r[1:13]) for i, r in enumerate(rows)]
    side = [(i + 1, f"bench:{i + 1}", r[4], *r[13]) for i, r in enumerate(rows) if len(r) > 13]
    t = time.perf_counter()
    for j in range(0, len(ev), BATCH):
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO ev VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", ev[j:j + BATCH])
        if side:
            conn.executemany("INSERT INTO pv VALUES (?, ?, ?, ?, ?, ?)", side[j:j + BATCH])
        conn.execute("COMMIT")
    dt = time.perf_counter() - t
    conn.close()
    return dt


def writer_run(path: Path, n: int, *, probe: bool, defer: bool) -> tuple[float, float, int]:
    """(ingest seconds, seconds including close, events in the file)."""
    w = EventWriter(path, node="bench", session=SessionInfo(command="bench_ingest"), defer_indexes=defer)
    rows = probe_rows(n, w.register_probe(PROBE).op) if probe else standard_rows(n)
    t = time.perf_counter()
    for j in range(0, n, BATCH):
        w.add_events(rows[j:j + BATCH])
    t1 = time.perf_counter()
    w.close()
    t2 = time.perf_counter()
    conn = sqlite3.connect(path)
    count = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    conn.close()
    return t1 - t, t2 - t, count


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="200,000 events per case, best of 2")
    args = ap.parse_args()
    n, reps = (200_000, 2) if args.quick else (1_000_000, 3)
    offset = EpochClock.measure().offset_ns
    results: dict[str, list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="ingero-bench-ingest-") as tmp:
        for rep in range(reps):
            base_rows = probe_rows(n, 1)
            results.setdefault("baseline", []).append((baseline(Path(tmp) / f"b{rep}.db", base_rows, offset),) * 2)
            del base_rows
            for name, probe, defer in (("writer, upstream indexes live", True, False),
                                       ("writer, defer_indexes=True", True, True),
                                       ("writer, standard events, indexes live", False, False),
                                       ("writer, standard events, defer_indexes=True", False, True)):
                ingest, total, count = writer_run(Path(tmp) / f"{name[-8:]}{probe}{rep}.db", n, probe=probe,
                                                  defer=defer)
                if count != n:
                    print(f"## Ingest into SQLite\n\nFAILED: {name} stored {count} of {n} events")
                    return 1
                results.setdefault(name, []).append((ingest, total))
    base = min(r[0] for r in results["baseline"])
    print("## Ingest into SQLite (EventWriter)\n")
    print(f"{n:,} events per case in batches of {BATCH:,}, best of {reps}; a probe recording latency and two "
          "arguments writes an `events` row and a `probe_values` row per event. Baseline: a bare `executemany` "
          "of the same prepared rows into plain tables (no key, no index), same run, same pragmas "
          "(WAL, `synchronous=NORMAL`, 16 KiB pages). "
          f"Target: ≥ {TARGET:,} events/s.\n")
    print("| case | events/s (ingest) | events/s (incl. close) | vs baseline | target |")
    print("|---|---:|---:|---:|---|")
    for name, runs in results.items():
        ingest = min(r[0] for r in runs)
        total = min(r[1] for r in runs)
        rate, rate_total = n / ingest, n / total
        ok = "—" if name == "baseline" or "standard" in name else ("met" if rate_total >= TARGET else "missed")
        print(f"| {name} | {rate:,.0f} | {rate_total:,.0f} | {base / ingest:.2f}x | {ok} |")
    print("\n`vs baseline` is baseline time / case time (1.00x = as fast as the bare inserts). Command: "
          f"`python bench/bench_ingest.py{' --quick' if args.quick else ''}`.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
