"""Benchmark: the standard MCP tools on a 1M-event database in upstream's schema, against raw SQL.

Generates the database (CUDA runtime and driver calls with stacks, sched_switch storms, block I/O,
per-minute aggregates, system snapshots and stored causal chains), then times each standard tool but
run_demo through the real MCP server object (argument validation, the analysis, formatting, audit) and
the equivalent raw SQL on a plain connection, in the same run, and prints the ratio. run_demo is timed
on its own (target: under 3 s); every other tool's target is under 1 s.

    python bench/bench_replay.py            # 1,000,000 events
    python bench/bench_replay.py --quick    # 100,000 events
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import anyio  # noqa: E402

from ingero.audit import AuditLog  # noqa: E402
from ingero.mcp.server import ServerOptions, build_server  # noqa: E402
from ingero.store import TraceReader  # noqa: E402
from ingero.store.schema import DDL, OP_NAMES  # noqa: E402

T0 = 1_774_015_560_000_000_000
# (source, op, share, median duration ns, has a stack)
MIX = [(3, 1, 0.55, 30_000, False), (1, 3, 0.15, 15_000, True), (4, 1, 0.10, 20_000, True),
       (1, 5, 0.06, 400_000, True), (1, 7, 0.05, 60_000, True), (1, 1, 0.02, 300_000, True),
       (4, 5, 0.02, 200_000, True), (5, 1, 0.03, 2_000_000, False), (5, 2, 0.02, 3_000_000, False)]


def generate(path: Path, n: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(DDL)
    names = {(s, o): n for (s, o), n in OP_NAMES.items()}
    conn.executemany("INSERT INTO sources VALUES (?, ?, ?)",
                     [(1, "CUDA", "CUDA runtime"), (3, "HOST", "host"), (4, "DRIVER", "driver"),
                      (5, "IO", "block I/O")])
    conn.executemany("INSERT INTO ops VALUES (?, ?, ?, ?)", [(s, o, nm, nm) for (s, o), nm in names.items()
                                                               if s in (1, 3, 4, 5)])
    conn.execute("INSERT INTO schema_info VALUES ('version', '0.10')")
    stacks = {}
    for i in range(300):
        h = rng.getrandbits(63) - (1 << 62)
        frames = [{"s": f"fn_{i}_{k}+0x{k * 16:x}", "f": "libtorch_cuda.so"} for k in range(12)]
        stacks[h] = str(frames).replace("'", '"')
    conn.executemany("INSERT INTO stack_traces VALUES (?, '', ?)", list(stacks.items()))
    hashes = list(stacks)
    weights = [m[2] for m in MIX]
    step = 80_000_000_000 // n  # the trace spans ~80 s

    def rows():
        t = T0
        for i in range(n):
            s, o, _, med, has_stack = rng.choices(MIX, weights)[0]
            d = int(rng.lognormvariate(0, 0.6) * med)
            if rng.random() < 0.01:
                d *= 20
            t += rng.randint(1, 2 * step)
            sh = rng.choice(hashes) if has_stack and rng.random() < 0.5 else 0
            yield (f"bench:{i}", t, 4242, 4242 + (i % 8), s, o, d, rng.getrandbits(40), 1, sh, "python3")

    conn.executemany("INSERT INTO events (id, timestamp, pid, tid, source, op, duration, arg0, arg1, stack_hash, "
                     "comm) VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows())
    conn.execute("INSERT INTO event_aggregates (bucket, source, op, pid, count, stored, sum_dur, min_dur, max_dur) "
                 "SELECT timestamp / 60000000000 * 60000000000, source, op, pid, COUNT(*) * 3, COUNT(*), "
                 "SUM(duration), MIN(duration), MAX(duration) FROM events GROUP BY 1, 2, 3, 4")
    conn.executemany("INSERT INTO system_snapshots (timestamp, cpu_pct, mem_pct, mem_avail, swap_mb, load_avg) "
                     "VALUES (?,?,?,?,?,?)", [(T0 + k * 10**9, 50 + 48 * rng.random(), 40.0, 9000, 0, 4.0)
                                              for k in range(80)])
    chains = []
    for k in range(400):
        op = rng.choice(["cudaStreamSync", "cudaLaunchKernel", "cuLaunchKernel", "cudaMemcpyAsync"])
        sev = rng.choice(["HIGH", "MEDIUM"])
        ratio = round(rng.uniform(3, 40), 1)
        tl = ('[{"layer":"HOST","op":"sched_switch","detail":"900 context switches"},'
              f'{{"layer":"CUDA","op":"{op}","detail":"p99=1ms ({ratio}x p50)"}}]')
        chains.append((f"chain-{k}", T0 + k * 10**8, sev, f"{op} p99=1ms ({ratio}x p50) — 900 sched_switch events",
                       "900 sched_switch events", "", '["Pin training process to dedicated cores with taskset"]',
                       op, 1000, int(1000 / ratio), ratio, tl))
    conn.executemany("INSERT INTO causal_chains (id, detected_at, severity, summary, root_cause, explanation, "
                     "recommendations, cuda_op, cuda_p99_us, cuda_p50_us, tail_ratio, timeline) "
                     "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", chains)
    conn.commit()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


RAW_STATS = """
WITH r AS (SELECT source, op, duration,
             ROW_NUMBER() OVER (PARTITION BY source, op ORDER BY duration) AS rn,
             COUNT(*) OVER (PARTITION BY source, op) AS n FROM events)
SELECT source, op, n,
  MAX(CASE WHEN rn = (50 * n + 99) / 100 THEN duration END),
  MAX(CASE WHEN rn = (95 * n + 99) / 100 THEN duration END),
  MAX(CASE WHEN rn = (99 * n + 99) / 100 THEN duration END),
  MAX(duration), SUM(duration)
FROM r GROUP BY source, op ORDER BY SUM(duration) DESC"""

RAW_CHAINS = """
WITH d AS (SELECT *, ROW_NUMBER() OVER (PARTITION BY cuda_op, severity ORDER BY tail_ratio DESC) AS k
           FROM causal_chains)
SELECT severity, summary, root_cause, recommendations, timeline FROM d WHERE k = 1
ORDER BY CASE severity WHEN 'HIGH' THEN 3 WHEN 'MEDIUM' THEN 2 WHEN 'LOW' THEN 1 ELSE 0 END DESC,
         tail_ratio DESC LIMIT 10"""

RAW_REPLAY = """
SELECT source, op, COUNT(*), SUM(duration), MAX(duration) FROM events WHERE pid IN (4242) GROUP BY 1, 2"""

RAW_STACKS = """
SELECT e.stack_hash, COALESCE(st.frames, ''), COALESCE(st.ips, ''), COUNT(*) AS n, MIN(e.duration),
  MAX(e.duration), SUM(e.duration)/COUNT(*), CAST(TOTAL(e.arg0) AS INTEGER),
  GROUP_CONCAT(DISTINCT NULLIF(e.comm, ''))
FROM events e JOIN stack_traces st ON e.stack_hash = st.hash
WHERE e.stack_hash != 0 GROUP BY e.stack_hash ORDER BY n DESC LIMIT 10"""

SQL_QUERY = "SELECT source, op, COUNT(*) AS n, AVG(duration) AS avg_ns FROM events GROUP BY 1, 2"


def best_of(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times) if repeat < 3 else statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="100,000 events instead of 1,000,000")
    ap.add_argument("--events", type=int, help="number of events (overrides --quick)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", type=Path, help="write the generated database here and keep it")
    args = ap.parse_args()
    n = args.events or (100_000 if args.quick else 1_000_000)
    tmp = Path(tempfile.mkdtemp(prefix="ingero-bench-"))
    db = args.keep or tmp / "bench.db"
    t = time.perf_counter()
    generate(db, n)
    print(f"generated {n:,} events in {time.perf_counter() - t:.1f} s ({db.stat().st_size / 1e6:.0f} MB)")

    reader = TraceReader.open(db)
    audit = AuditLog(tmp / "audit.db")
    server = build_server(reader, audit, ServerOptions("bench"))
    raw = sqlite3.connect(f"file:{db}?mode=ro&immutable=1", uri=True)

    def tool(name: str, arguments: dict) -> Callable[[], object]:
        def call() -> object:
            res = anyio.run(server.call_tool, name, arguments)
            assert not res.is_error, res.content
            return res
        return call

    def sql(q: str) -> Callable[[], object]:
        return lambda: raw.execute(q).fetchall()

    cases = [
        ("get_trace_stats", tool("get_trace_stats", {}), sql(RAW_STATS)),
        ("get_causal_chains", tool("get_causal_chains", {}), sql(RAW_CHAINS)),
        ("get_causal_chains pids=[4242]", tool("get_causal_chains", {"pids": [4242]}), sql(RAW_REPLAY)),
        ("get_stacks", tool("get_stacks", {}), sql(RAW_STACKS)),
        ("run_sql", tool("run_sql", {"query": SQL_QUERY}), sql(SQL_QUERY)),
        ("get_check", tool("get_check", {}), None),
        ("get_test_report", tool("get_test_report", {}), None),
    ]
    print(f"\n{'tool':32} {'tool s':>8} {'raw SQL s':>10} {'ratio':>7}  target")
    worst = 0.0
    failed = []
    for name, fn, base in cases:
        tt = best_of(fn, args.repeat)
        bt = best_of(base, args.repeat) if base else None
        ratio = f"{tt / bt:6.2f}x" if bt else "    n/a"
        ok = tt < 1.0
        worst = max(worst, tt)
        if not ok:
            failed.append(name)
        print(f"{name:32} {tt:8.3f} {bt if bt is not None else float('nan'):10.3f} {ratio:>7}  "
              f"{'<1 s ok' if ok else '<1 s MISSED'}")
    demo = best_of(tool("run_demo", {"scenario": "incident"}), args.repeat)
    print(f"{'run_demo incident':32} {demo:8.3f} {'':>10} {'':>7}  {'<3 s ok' if demo < 3 else '<3 s MISSED'}")
    raw.close()
    reader.close()
    audit.close()
    if not args.keep:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed or demo >= 3 else 0


if __name__ == "__main__":
    sys.exit(main())
