"""End to end, as root: three ingero nodes, a real Prometheus scraping them, and an agent asking the fleet.

Three `ingero trace --metrics` processes on loopback ports each trace their own copy of the CUDA test
workload with a different rank label; rank 2 is made slow (tests/native/slow_once.c, preloaded into its
workload only, sleeps inside every pthread_once() libcudart makes within each runtime call); rank 0 also
records a DSL probe. A Prometheus server started here scrapes them every second (honor_labels, the bearer
token, a temporary storage folder). A real MCP client session with `ingero mcp --prometheus URL` calls
query_fleet; every answer is checked against each node's own database, read with direct SQL.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import anyio
import pytest

from ingero.analysis import trace_stats
from ingero.fleet.metrics import BUCKETS_S
from ingero.store import TraceReader
from ingero.store.schema import op_name
from tests.fleet_helpers import NATIVE, TOKEN
from tests.fleet_helpers import calls_in_db as _calls_in_db
from tests.fleet_helpers import free_ports as _free_ports
from tests.fleet_helpers import ro as _ro
from tests.fleet_helpers import traced_workload as _traced_workload
from tests.replay_helpers import ingero_cmd, text_of

pytestmark = pytest.mark.bpf

SLOW_RANK = "2"
PROBE_RANK = "0"
OP = "cudaStreamSync"
K = 3.0


def _prom_get(url: str, path: str, **params) -> dict:
    with urllib.request.urlopen(f"{url}{path}?{urllib.parse.urlencode(params)}", timeout=10) as r:
        return json.loads(r.read())


def _p99_in_db(db: Path, op_code: int) -> tuple[float, int]:
    """The exact p99 (nearest rank, as histogram_quantile ranks) of a CUDA op's latency, in seconds."""
    with _ro(db) as c:
        durs = [d for (d,) in c.execute("SELECT duration FROM events WHERE source = 1 AND op = ? ORDER BY duration",
                                        (op_code,))]
    return durs[math.ceil(0.99 * len(durs)) - 1] / 1e9, len(durs)


def _failing_in_db(nodes: dict) -> dict[tuple[str, str], int]:
    """Failed CUDA/driver calls per (rank, op) in each node's own database."""
    out = {}
    for rank, n in nodes.items():
        with _ro(n["db"]) as c:
            for src, op, count in c.execute("SELECT source, op, count(*) FROM events WHERE source IN (1, 4) "
                                            "AND ret_code != 0 GROUP BY 1, 2"):
                out[(rank, op_name(src, op))] = count
    return out


def _bucket(v: float) -> tuple[float, float]:
    lo = 0.0
    for b in BUCKETS_S:
        if v <= b:
            return lo, b
        lo = b
    return lo, math.inf


_UNITS = {"µs": 1e-6, "ms": 1e-3, "s": 1.0}


def _secs(text: str) -> float:
    m = re.fullmatch(r"([0-9.e+-]+)(µs|ms|s)", text)
    assert m, text
    return float(m[1]) * _UNITS[m[2]]


def _within(v: float, bounds: tuple[float, float]) -> bool:
    lo, hi = bounds
    return lo * 0.995 < v <= hi * 1.005  # the answer prints 3 significant digits


def _table(text: str, header: str) -> list[dict[str, str]]:
    lines = text.splitlines()
    i = lines.index(header)
    cols = header.split("|")
    out = []
    for line in lines[i + 1:]:
        parts = line.split("|")
        if len(parts) != len(cols):
            break
        out.append(dict(zip(cols, parts, strict=True)))
    return out


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    from ingero.runtime.kernel import bpf_problem
    from tests.conftest import skip_or_fail

    if os.geteuid() != 0:
        skip_or_fail("needs root")

    if bpf_problem():
        skip_or_fail(bpf_problem())
    prometheus = "/usr/bin/prometheus"
    if not os.path.exists(prometheus):
        skip_or_fail("Debian's prometheus package is not installed (scripts/setup.sh installs it)")
    tmp = tmp_path_factory.mktemp("fleet")
    shim = tmp / "slow_once.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", str(shim), str(NATIVE / "slow_once.c")], check=True)
    spec = tmp / "syncs.probe"
    spec.write_text("probe syncs = libcudart.so.12:cudaStreamSynchronize\n    record latency\n")
    *ports, spare, prom_port = _free_ports(5)  # spare: scraped too, for a node that restarts (a later test)
    env = {**os.environ, "INGERO_MCP_TOKEN": TOKEN}
    nodes, procs = {}, []
    try:
        for rank, port in zip(("0", "1", "2"), ports, strict=True):
            db = tmp / f"rank{rank}.db"
            cmd = [ingero_cmd(), "trace", "--quiet", "--db", str(db), "--metrics", f"127.0.0.1:{port}",
                   "--label", f"rank={rank}", "--label", "job=e2e", "--mcp-url", f"http://node{rank}.test:8765/mcp"]
            if rank == PROBE_RANK:
                cmd += ["--probe", str(spec)]
            work = [sys.executable, "-m", "ingero.workload", "--duration", "2.5", "--interval", "0.001",
                    "--hold", "300"]
            if rank == SLOW_RANK:
                work = ["env", f"LD_PRELOAD={shim}", "INGERO_TEST_ONCE_DELAY_US=100", *work]
            p = subprocess.Popen([*cmd, "--", *work], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env=env)
            procs.append(p)
            nodes[rank] = {"db": db, "port": port, "proc": p}
        config = tmp / "prometheus.yml"
        token_file = tmp / "token"
        token_file.write_text(TOKEN)
        targets = ", ".join(f"'127.0.0.1:{p}'" for p in (*ports, spare))
        config.write_text(
            "global: {scrape_interval: 1s, scrape_timeout: 900ms, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: ingero\n"
            "    honor_labels: true\n"
            f"    authorization: {{credentials_file: '{token_file}'}}\n"
            f"    static_configs: [{{targets: [{targets}]}}]\n")
        prom = subprocess.Popen([prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'tsdb'}",
                                 f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=error"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        procs.append(prom)
        url = f"http://127.0.0.1:{prom_port}"
        # each workload prints "done {...}" (through its trace's stdout) when its calls are over
        for rank, n in nodes.items():
            for line in n["proc"].stdout:
                if line.startswith("done "):
                    done = json.loads(line[5:])
                    n["workload_pid"], n["calls"] = done["pid"], done["calls"]
                    break
            else:
                raise AssertionError(f"rank {rank}'s trace ended early: {n['proc'].stderr.read()}")
        # then Prometheus has scraped every call the databases hold
        deadline = time.monotonic() + 30
        while True:
            want = {rank: _calls_in_db(n["db"]) for rank, n in nodes.items()}
            try:
                got = {r["metric"].get("rank"): float(r["value"][1]) for r in _prom_get(
                    url, "/api/v1/query", query="sum by (rank) (ingero_call_duration_seconds_count)")["data"]["result"]}
            except OSError:
                got = {}
            if got == {k: float(v) for k, v in want.items()} and all(want.values()):
                break
            assert time.monotonic() < deadline, (want, got, prom.stderr.read() if prom.poll() is not None else "")
            time.sleep(0.5)
        yield {"nodes": nodes, "url": url, "spare": spare}
    finally:
        for n in nodes.values():
            if n.get("workload_pid"):
                try:
                    os.kill(n["workload_pid"], signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


async def _query_fleet(url: str, audit: Path, calls: list[dict], times: list | None = None) -> list[tuple[bool, str]]:
    """Each call's (is_error, text); ``times`` gets each call's wall-clock (start, end). A call given as a
    function is the arguments it returns when called right before the call."""
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client
    from mcp.shared.exceptions import MCPError

    params = StdioServerParameters(command=ingero_cmd(), args=["mcp", "--prometheus", url,
                                                               "--audit-db", str(audit)],
                                   env=dict(os.environ))
    out = []
    async with stdio_client(params) as (r, w), ClientSession(r, w) as s:
        await s.initialize()
        tools = {t.name for t in (await s.list_tools()).tools}
        assert "query_fleet" in tools
        for args in calls:
            if callable(args):  # made just before the call (a window timed to the scrapes)
                args = args()
            t0 = time.time()
            try:
                res = await s.call_tool("query_fleet", args)
            except MCPError as e:  # invalid params (the input schema): a JSON-RPC error
                out.append((True, f"invalid params: {e.error.message}"))
                continue
            if times is not None:
                times.append((t0, time.time()))
            out.append((res.is_error, text_of(res)))
    return out


def test_query_fleet_over_a_real_prometheus(fleet, tmp_path):
    nodes, url = fleet["nodes"], fleet["url"]
    answers = anyio.run(_query_fleet, url, tmp_path / "audit.db", [
        {"action": "overview"},
        {"action": "stragglers", "op": OP, "k": K},
        {"action": "ops"},
        {"action": "errors"},
        {"action": "promql", "query": "ingero_probe_events_total"},
        {"action": "promql", "query": "ingero_probe_duration_seconds_count"},
        {"action": "promql", "query": "DELETE FROM events"},
        {"action": "promql", "query": "/api/v1/admin/tsdb/delete_series?match[]=up"},
        {"action": "promql", "query": "up", "since": "48h"},
        {"action": "promql", "query": "up", "since": "10m", "step": "1s"},
        {"action": "promql", "query": "ingero_calls_total", "limit": 2},
        {"action": "stragglrs"},
    ])
    for args, (err, text) in zip(["overview", "stragglers", "ops", "errors"], answers, strict=False):
        print(f"--- {args} (error={err})\n{text}")  # shown when an assertion fails
    (_, overview), (_, stragglers), (_, ops), (_, errors), (_, probe), (_, probe_hist), *refusals = answers
    bad_sql, bad_path, too_long, coarse, limited, typo = refusals

    # overview: three nodes, each with how to reach its own live MCP server
    rows = _table(overview, "node|rank|job|events|events/s|errors|lost|top ops|mcp")
    assert {r["rank"]: r["mcp"] for r in rows} == {r: f"http://node{r}.test:8765/mcp" for r in nodes}
    assert all(r["job"] == "e2e" and r["lost"] == "0" for r in rows)

    # ground truth from each node's own database
    op_code = 5
    assert op_name(1, op_code) == OP
    truth = {rank: _p99_in_db(n["db"], op_code) for rank, n in nodes.items()}
    for rank, n in nodes.items():  # the same exact p99 as the node's own get_trace_stats (nearest rank)
        reader = TraceReader.open(n["db"], live=True)
        try:
            assert trace_stats(reader).op(OP).p99_ns / 1e9 == truth[rank][0]
        finally:
            reader.close()
    p99s = sorted(p for p, _ in truth.values())
    median = p99s[1]
    true_factor = truth[SLOW_RANK][0] / median
    assert true_factor > K, f"the slow node is not {K}x slower here: {truth}"  # the setup, not the code
    assert all(truth[r][0] <= K * median for r in nodes if r != SLOW_RANK), truth

    # stragglers: exactly the slow node, with the factor within the histogram's bucket error
    rows = _table(stragglers, "node|rank|op|p99|fleet median p99|factor|nodes compared|p99 bucket")
    assert [(r["rank"], r["op"]) for r in rows] == [(SLOW_RANK, OP)], stragglers
    slow_b = _bucket(truth[SLOW_RANK][0])
    med_b = _bucket(median)
    factor = float(rows[0]["factor"].rstrip("x"))
    assert slow_b[0] / med_b[1] * 0.99 <= factor <= slow_b[1] / med_b[0] * 1.01, (factor, slow_b, med_b)
    assert _within(_secs(rows[0]["p99"]), slow_b)
    assert f"rank {SLOW_RANK}: http://node{SLOW_RANK}.test:8765/mcp" in stragglers

    # ops: every node's calls exactly, and its p99 in the bucket of the exact one
    rows = [r for r in _table(ops, "op|node|rank|calls|p50|p99|p99 bucket") if r["op"] == OP]
    assert {r["rank"]: int(r["calls"]) for r in rows} == {rank: n for rank, (_, n) in truth.items()}
    for r in rows:
        assert _within(_secs(r["p99"]), _bucket(truth[r["rank"]][0])), (r, truth)

    # errors: every failing call of every node, by op and CUDA error name
    want = {(rank, op, "cudaErrorInsufficientDriver"): n for (rank, op), n in _failing_in_db(nodes).items()}
    rows = _table(errors, "node|rank|source|op|error|failed|of calls")
    assert {(r["rank"], r["op"], r["error"]): int(r["failed"]) for r in rows} == want and want

    # the dynamic probe attached on rank 0 is its metric, with its exact event count
    with _ro(nodes[PROBE_RANK]["db"]) as c:
        probed = c.execute("SELECT count(*) FROM events WHERE source = 100").fetchone()[0]
    assert probed > 0
    series = [line for line in probe.splitlines() if line.startswith("ingero_probe_events_total{")]
    assert len(series) == 1 and 'probe="syncs"' in series[0] and f'rank="{PROBE_RANK}"' in series[0], probe
    assert float(series[0].rsplit(" ", 1)[1]) == probed
    assert f"{probed:g}" in probe_hist.splitlines()[1]

    # promql: only queries, bounded in time and output
    assert bad_sql[0] and "not a PromQL query" in bad_sql[1], bad_sql
    assert bad_path[0] and "not a PromQL query" in bad_path[1], bad_path
    assert too_long[0] and "at most 24 h" in too_long[1], too_long
    assert not coarse[0] and "step raised from 1s to 5s" in coarse[1], coarse
    assert not limited[0] and re.search(r"\.\.\. \d+ more", limited[1]), limited
    assert typo[0] and 'argument "action" must be one of' in typo[1], typo
    assert "did you mean 'stragglers'" in typo[1], typo


def _samples(url: str, rank: str) -> list[tuple[float, float]]:
    """Prometheus's raw samples of a node's OP call counter: (time, value), in order."""
    q = f'ingero_call_duration_seconds_count{{rank="{rank}",op="{OP}"}}[1h]'
    (series,) = _prom_get(url, "/api/v1/query", query=q)["data"]["result"]
    return [(float(t), float(v)) for t, v in series["values"]]


def _at(samples: list[tuple[float, float]], t: float) -> float:
    """The counter at time t: its last sample at or before t (0 before the first: the trace started at 0)."""
    return max((v for ts, v in samples if ts <= t), default=0.0)


def test_since_counts_are_exact(fleet, tmp_path):
    """A window over a whole trace counts every call: each node's database, and the calls its workload
    says it made (increase() would lose the first sample and extrapolate); a window starting mid-trace
    counts exactly what the counter gained since the last scrape before its start (bracketed by the call's
    own start and end times)."""
    nodes, url = fleet["nodes"], fleet["url"]
    truth = {rank: _p99_in_db(n["db"], 5)[1] for rank, n in nodes.items()}
    samples = {rank: _samples(url, rank) for rank in nodes}
    ref = samples[PROBE_RANK]
    last = ref[-1][1]
    # a window starting just after the last sample that is below the final count (mid-trace when the
    # scrapes caught the workload running), or after the first sample
    start = max((t for t, v in ref if v < last), default=ref[0][0])
    window = 0

    def mid_trace() -> dict:  # whole seconds (as since is), asked 0.1 s after a whole one from start
        nonlocal window
        window = math.floor(time.time() - start) + 1
        time.sleep(max(0.0, start + window + 0.1 - time.time()))
        return {"action": "ops", "op": OP, "since": f"{window}s"}

    times: list[tuple[float, float]] = []
    answers = anyio.run(_query_fleet, url, tmp_path / "audit.db", [
        {"action": "ops", "op": OP, "since": "1h"},
        {"action": "errors", "since": "1h"},
        {"action": "ops", "since": "1h", "limit": 1000},
        mid_trace,
    ], times)
    for err, text in answers:
        print(f"--- (error={err})\n{text}")
    (_, whole), (_, errors), (_, every_op), (_, part) = answers
    assert "last 1h: exact counts" in whole
    rows = _table(whole, "op|node|rank|calls|p50|p99|p99 bucket")
    assert {r["rank"]: int(r["calls"]) for r in rows} == truth
    # every CUDA call of each workload, as the workload itself counted them ("done {...}")
    per_rank: dict[str, int] = {}
    for r in _table(every_op, "op|node|rank|calls|p50|p99|p99 bucket"):
        per_rank[r["rank"]] = per_rank.get(r["rank"], 0) + int(r["calls"])
    assert per_rank == {rank: n["calls"] for rank, n in nodes.items()}
    rows = _table(errors, "node|rank|source|op|error|failed|of calls")
    assert {(r["rank"], r["op"]): int(r["failed"]) for r in rows} == _failing_in_db(nodes)
    # the mid-trace window: Prometheus evaluated it at some instant between the call's start and end
    t0, t1 = times[3]
    print("samples", samples, "window", window, "start", start, "asked", t0, t1)
    got = {r["rank"]: int(r["calls"]) for r in _table(part, "op|node|rank|calls|p50|p99|p99 bucket")}
    for rank, ss in samples.items():
        final = ss[-1][1]
        allowed = {final - _at(ss, t) for t in [t0 - window, t1 - window] + [ts for ts, _ in ss
                                                                           if t0 - window <= ts <= t1 - window]}
        assert got.get(rank, 0) in allowed, (rank, got, allowed, window, ss)
    if t1 - window < start + 1 - 0.05:  # answered before the next scrape could fall inside: one answer only
        assert got.get(PROBE_RANK, 0) == last - _at(ref, start), (got, ref, window)


def test_ingero_fleet_cli_twin(fleet):
    r = subprocess.run([ingero_cmd(), "fleet", "stragglers", "--op", OP, "-k", str(K), "--prometheus", fleet["url"]],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert re.search(rf"^vm\|{SLOW_RANK}\|{OP}\|", r.stdout, re.M) or f"|{SLOW_RANK}|{OP}|" in r.stdout, r.stdout
    r = subprocess.run([ingero_cmd(), "fleet", "promql", "sum(", "--prometheus", fleet["url"]],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "not a PromQL query" in r.stderr and "Traceback" not in r.stderr, r.stderr


def _prom_value(url: str, query: str) -> float | None:
    result = _prom_get(url, "/api/v1/query", query=query)["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def test_a_restarted_trace_is_counted_from_its_restart(fleet, tmp_path):
    """A node traced twice in a row (same labels, same port): a window starting inside the first trace
    (after each of its series' first scrape, so every series has a value at the window's start) counts
    the second trace's calls only (its database), and the answer names the node as restarted. Runs after
    the tests above, which count the fleet's nodes."""
    url, port = fleet["url"], fleet["spare"]
    rank = "9"
    counted = f'sum(ingero_call_duration_seconds_count{{rank="{rank}"}})'
    started = f'ingero_trace_start_time_seconds{{rank="{rank}"}}'
    first_start = None
    for run in (1, 2):
        db = tmp_path / f"run{run}.db"
        cmd = [ingero_cmd(), "trace", "--quiet", "--db", str(db), "--metrics", f"127.0.0.1:{port}", "--label",
               f"rank={rank}", "--label", "job=e2e", "--", sys.executable, "-m", "ingero.workload", "--duration",
               "0.5", "--interval", "0.001", "--hold", "300"]
        proc, workload_pid = _traced_workload(cmd)
        try:
            # Prometheus holds this trace's every call (and, the second time, its new start time)
            deadline = time.monotonic() + 30
            while True:
                start = _prom_value(url, started)
                if (_prom_value(url, counted) == _calls_in_db(db) > 0 and start is not None
                        and start != first_start):
                    break
                assert time.monotonic() < deadline, (run, _prom_value(url, counted), _calls_in_db(db), start)
                time.sleep(0.3)
            if first_start is None:  # the first trace: when each of its call series was first scraped
                first_start = start
                series = _prom_get(url, "/api/v1/query", query=f'ingero_call_duration_seconds_count{{rank="{rank}"}}'
                                   "[1h]")["data"]["result"]
                inside = max(float(x["values"][0][0]) for x in series)
                # scraped on for 2.5 s more: the window below starts within 1 s after `inside`, while the
                # first trace is still scraped (a stopped target's series go stale: no value to start from)
                time.sleep(max(0.0, inside + 2.5 - time.time()))
        finally:
            if workload_pid:
                os.kill(workload_pid, signal.SIGKILL)
            proc.send_signal(signal.SIGINT)
            proc.wait(60)
    from ingero.fleet.prom import Prometheus
    from ingero.fleet.query import FleetQuery

    window = math.floor(time.time() - inside)  # starts within 1 s after `inside`: asked at once, in-process
    text = FleetQuery(Prometheus(url)).answer("ops", since=f"{window}s", limit=1000)
    assert f"counted from its restart: {os.uname().nodename} rank {rank}" in text, text
    rows = [row for row in _table(text, "op|node|rank|calls|p50|p99|p99 bucket") if row["rank"] == rank]
    assert sum(int(row["calls"]) for row in rows) == _calls_in_db(tmp_path / "run2.db"), (text, window, inside)
