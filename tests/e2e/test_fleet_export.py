"""End to end, as root: one traced node's metrics leave it as OTLP payloads (decoded with opentelemetry-proto
and compared with a /metrics scrape and the node's database), and `ingero mcp --live --metrics` serves an
attached probe's series."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import anyio
import pytest

from ingero import workload
from ingero.store.schema import op_name
from tests.fleet_helpers import NATIVE, TOKEN
from tests.fleet_helpers import calls_in_db as _calls_in_db
from tests.fleet_helpers import free_ports as _free_ports
from tests.fleet_helpers import ro as _ro
from tests.fleet_helpers import traced_workload as _traced_workload
from tests.replay_helpers import ingero_cmd, text_of

pytestmark = pytest.mark.bpf


class _Collector:
    """A test OTLP/HTTP endpoint: keeps every request body it receives, by path."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.bodies: dict[str, list[bytes]] = {"/v1/metrics": [], "/v1/traces": []}
        lock = threading.Lock()
        bodies = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                import gzip

                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                with lock:
                    bodies.setdefault(self.path, []).append(body)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _scrape(port: int) -> dict[tuple, float]:
    from prometheus_client.parser import text_string_to_metric_families

    req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        text = r.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _otlp_samples(body: bytes) -> dict[tuple, float]:
    """An ExportMetricsServiceRequest as Prometheus-style samples (cumulative buckets, _count, _sum, _total)."""
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

    req = ExportMetricsServiceRequest()
    req.ParseFromString(body)
    out = {}
    for rm in req.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                kind = m.WhichOneof("data")
                assert kind, f"{m.name}: a metric without data"
                if kind == "histogram":
                    for p in m.histogram.data_points:
                        labels = {a.key: a.value.string_value for a in p.attributes}
                        cum = 0
                        for bound, n in zip([*p.explicit_bounds, math.inf], p.bucket_counts, strict=True):
                            cum += n
                            le = "+Inf" if bound == math.inf else f"{bound:g}"
                            out[(m.name + "_bucket", tuple(sorted({**labels, "le": le}.items())))] = cum
                        out[(m.name + "_count", tuple(sorted(labels.items())))] = p.count
                        out[(m.name + "_sum", tuple(sorted(labels.items())))] = p.sum
                else:
                    suffix = "_total" if kind == "sum" else ""
                    for p in getattr(m, kind).data_points:
                        labels = {a.key: a.value.string_value for a in p.attributes}
                        out[(m.name + suffix, tuple(sorted(labels.items())))] = p.as_int or p.as_double
    return out


def test_otlp_payloads_hold_the_counts_of_metrics(need_bpf, tmp_path):
    """The exporter's real protobuf payloads, decoded with opentelemetry-proto, against a /metrics scrape; a
    span for every call over the threshold (counted in the node's database)."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    shim = tmp_path / "slow_once.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", str(shim), str(NATIVE / "slow_once.c")], check=True)
    collector = _Collector()
    [port] = _free_ports(1)
    db = tmp_path / "otlp.db"
    threshold_ns = 150_000
    cmd = [ingero_cmd(), "trace", "--quiet", "--db", str(db), "--metrics", f"127.0.0.1:{port}", "--label", "rank=7",
           "--otlp", f"http://127.0.0.1:{collector.port}", "--otlp-interval", "1s", "--span-threshold", "150us",
           "--", "env", f"LD_PRELOAD={shim}", "INGERO_TEST_ONCE_DELAY_US=50", sys.executable, "-m", "ingero.workload",
           "--duration", "1.5", "--hold", "300"]
    proc, workload_pid = _traced_workload(cmd)
    try:
        calls_key = ("ingero_call_duration_seconds_count",)
        deadline = time.monotonic() + 20
        while True:  # the trace has stored and counted every call
            scrape = _scrape(port)
            counted = sum(v for k, v in scrape.items() if k[0] == calls_key[0])
            if counted == _calls_in_db(db) and counted:
                break
            assert time.monotonic() < deadline, (counted, _calls_in_db(db))
            time.sleep(0.3)
        assert len(collector.bodies["/v1/metrics"]) >= 1  # pushed every second meanwhile
        proc.send_signal(signal.SIGINT)  # the last push at close holds the final totals
        proc.wait(60)
    finally:
        if workload_pid:
            os.kill(workload_pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        collector.close()
    pushed = _otlp_samples(collector.bodies["/v1/metrics"][-1])
    # the CUDA calls ended before the scrape: their series must agree exactly (host events go on meanwhile)
    cuda = {k: v for k, v in scrape.items() if k[0].startswith(("ingero_call_", "ingero_probe_", "ingero_lost_",
                                                                "ingero_trace_start"))
            or (k[0] == "ingero_calls_total" and ("source", "cuda") in k[1])}
    assert any(k[0] == "ingero_trace_start_time_seconds" for k in cuda)
    assert cuda and {k: pushed.get(k) for k in cuda} == pytest.approx(cuda), \
        sorted(set(cuda.items()) ^ set((k, pushed.get(k)) for k in cuda))
    # the last push, at close, counts every event of every source the database holds, host events too
    from ingero.store.schema import SOURCE_NAMES

    with _ro(db) as c:
        stored = {(SOURCE_NAMES[src], op_name(src, op)): n for src, op, n in c.execute(
            "SELECT source, op, count(*) FROM events WHERE source NOT IN (1, 4, 100) GROUP BY 1, 2")}
    host = {(dict(k[1])["source"], dict(k[1])["op"]): v for k, v in pushed.items()
            if k[0] == "ingero_calls_total" and dict(k[1])["source"] not in ("cuda", "driver")}
    assert stored and host == stored
    assert ("ingero_node_info", tuple(sorted({"node": os.uname().nodename, "rank": "7", "version": "0.1.0",
                                              "mcp": f"ingero mcp --live --db {db.resolve()}"}.items()))) in pushed
    spans = []
    for body in collector.bodies["/v1/traces"]:
        req = ExportTraceServiceRequest()
        req.ParseFromString(body)
        spans += [s for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans]
    with _ro(db) as c:
        slow = c.execute("SELECT count(*) FROM events WHERE source IN (1, 4) AND duration > ?",
                         (threshold_ns,)).fetchone()[0]
    made = {dict(k[1])["outcome"]: v for k, v in pushed.items() if k[0] == "ingero_slow_call_spans_total"}
    # every slow call became a span or was counted as dropped over the per-batch cap; every span made arrived
    assert slow > 0 and made.get("made", 0) + made.get("dropped", 0) == slow, (made, slow)
    assert len(spans) == made["made"]
    assert all(s.end_time_unix_nano - s.start_time_unix_nano > threshold_ns for s in spans)


async def _live_attach_then_scrape(db: Path, audit: Path, pid: int, port: int, w) -> dict[tuple, float]:
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    args = ["mcp", "--live", "--allow-attach", "--pid", str(pid), "--db", str(db), "--audit-db", str(audit),
            "--metrics", f"127.0.0.1:{port}", "--label", "rank=5"]
    params = StdioServerParameters(command=ingero_cmd(), args=args, env={**os.environ, "INGERO_MCP_TOKEN": TOKEN})
    async with stdio_client(params) as (r, wr), ClientSession(r, wr) as s:
        await s.initialize()
        res = await s.call_tool("attach_probe", {"spec": "probe mallocs = libcudart:cudaMalloc\n"
                                                         "    record size, latency\n"})
        assert not res.is_error, text_of(res)
        w.go()
        w.expect("done ")
        planned = workload.expected_counts(3)["cudaMalloc"]
        deadline = time.monotonic() + 20
        while True:
            # the probe's ring and the standard set's ring are read in different ticks: wait until the
            # metrics hold what the database holds for both (then the test checks the exact figures)
            scrape = _scrape(port)
            with _ro(db) as c:
                stored = c.execute("SELECT count(*) FROM events WHERE source = 100").fetchone()[0]
                mallocs = c.execute("SELECT count(*) FROM events WHERE source = 1 AND op = 1").fetchone()[0]
            probe = [v for k, v in scrape.items() if k[0] == "ingero_probe_events_total"]
            calls = [v for k, v in scrape.items() if k[0] == "ingero_calls_total" and ("op", "cudaMalloc") in k[1]
                     and ("source", "cuda") in k[1]]
            # the workload has finished: every one of its calls (its plan) is on its way to the database
            if probe == [stored] == [planned] and calls == [mallocs] == [planned]:
                return scrape
            assert time.monotonic() < deadline, (probe, stored, calls, mallocs, planned)
            await anyio.sleep(0.3)


def test_mcp_live_serves_metrics_and_an_attached_probe_appears(need_bpf, tmp_path):
    """`ingero mcp --live --metrics`: the agent attaches a probe over MCP; its metric counts every event the
    node's database stores for it, and the node's info says how to reach the server."""
    from tests.helpers import Workload

    [port] = _free_ports(1)
    db = tmp_path / "live.db"
    with Workload("--repeat", "3") as w:
        w.expect("waiting calls")
        scrape = anyio.run(_live_attach_then_scrape, db, tmp_path / "audit.db", w.pid, port, w)
    labels = dict(next(k[1] for k in scrape if k[0] == "ingero_probe_events_total"))
    assert labels["probe"] == "mallocs" and labels["rank"] == "5"
    hist = [v for k, v in scrape.items() if k[0] == "ingero_probe_duration_seconds_count"]
    assert hist == [9.0]  # 3 runs x 3 cudaMalloc, each with its latency
    calls = {dict(k[1])["op"]: v for k, v in scrape.items() if k[0] == "ingero_calls_total"
             and ("source", "cuda") in k[1]}
    assert calls["cudaMalloc"] == 9.0
    info = [dict(k[1]) for k in scrape if k[0] == "ingero_node_info"]
    assert info and info[0]["mcp"].startswith("stdio: ingero mcp --live"), info
