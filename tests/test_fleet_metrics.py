"""ingero.fleet: per-batch aggregation against a per-event count, the exposition, the node labels."""

from __future__ import annotations

import bisect
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ingero.errors import IngeroError
from ingero.fleet.labels import node_labels
from ingero.fleet.metrics import BUCKETS_NS, BUCKETS_S, FleetMetrics, registry_for
from ingero.store.schema import SOURCE_NAMES, op_name
from ingero.tracer.calls import CUDA_FIELDS, CUDA_RECORD, CUDA_RECORD_COLUMNS

call = st.tuples(st.integers(0, 1 << 40), st.integers(0, 20_000_000_000), st.integers(1, 1 << 22),
                 st.integers(1, 1 << 22), st.sampled_from([1, 4]), st.integers(1, 12),
                 st.sampled_from([0, 0, 35, 100, 2, -1]), st.integers(-(1 << 63), (1 << 63) - 1),
                 st.integers(-(1 << 63), (1 << 63) - 1), st.integers(-1, 1000), st.integers(0, (1 << 64) - 1),
                 st.just(b"python\0"))


def _scrape(m: FleetMetrics) -> dict[str, list]:
    out: dict[str, list] = {}
    for fam in text_string_to_metric_families(generate_latest(registry_for(m)).decode()):
        for s in fam.samples:
            out.setdefault(s.name, []).append(s)
    return out


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(call, min_size=0, max_size=60), min_size=1, max_size=4), st.booleans(), st.booleans(),
       st.sampled_from([None, 0, 35]))
def test_batches_count_as_every_event_would(batches, raw, one_op, one_ret):
    m = FleetMetrics(node_labels({}, hostname="n1"))
    if one_op:  # the usual batch (a loop of one call) takes its own path: every call of a batch as its first
        batches = [[(*c[:4], b[0][4], b[0][5], *c[6:]) for c in b] for b in batches]
    if one_ret is not None:  # ... and one return code for all
        batches = [[(*c[:6], one_ret, *c[7:]) for c in b] for b in batches]
    for b in batches:
        chunk = b"".join(CUDA_RECORD.pack(*c) for c in b) if raw else None
        m.observe_calls(b, chunk)
    events = [c for b in batches for c in b]
    s = m.snapshot()
    key = lambda c: (SOURCE_NAMES[c[4]], op_name(c[4], c[5]))  # noqa: E731
    assert s.calls == dict(Counter(map(key, events)))
    for k, h in s.durations.items():
        durs = [c[1] for c in events if key(c) == k]
        want = Counter(bisect.bisect_left(list(BUCKETS_NS), d) for d in durs)
        assert [int(x) for x in h.buckets] == [want.get(i, 0) for i in range(len(BUCKETS_S) + 1)]
        assert h.sum_ns == sum(durs)
    errors = Counter((*key(c), m.error_names.name(c[4], c[6])) for c in events if c[6])
    assert s.errors == dict(errors)


def test_record_columns_match_the_ring_record():
    import struct

    from ingero.fleet import metrics

    assert [CUDA_FIELDS[i] for i in (metrics._DUR, metrics._SRC, metrics._OP, metrics._RET)] == [
        "duration_ns", "source", "op", "ret"]
    # the metrics read source and op as one u2 (source | op << 8)
    assert CUDA_RECORD_COLUMNS["op"][1] == CUDA_RECORD_COLUMNS["source"][1] + 1
    t = (1, 2, 3, 4, 5, 6, -7, 8, 9, 10, 11, b"x".ljust(16, b"\0"))
    assert len(t) == len(CUDA_FIELDS)
    buf = CUDA_RECORD.pack(*t)
    for name, (fmt, off) in CUDA_RECORD_COLUMNS.items():
        code = {"<i8": "<q", "u1": "<B", "<i4": "<i", "<u4": "<I", "<u8": "<Q", "V16": "16s"}[fmt]
        assert struct.unpack_from(code, buf, off)[0] == t[CUDA_FIELDS.index({"duration": "duration_ns"}.get(
            name, name))]


def test_exposition_carries_node_labels_and_no_per_process_label():
    m = FleetMetrics(node_labels({"RANK": "3", "LOCAL_RANK": "1"}, ["job=llama", "zone=a"], hostname="gpu7"),
                     mcp="http://gpu7:8765/mcp")
    m.observe_calls([(0, 1500, 11, 12, 1, 5, 35, 0, 0, -1, 0, b"p"), (0, 2500, 11, 13, 1, 5, 0, 0, 0, -1, 0, b"p")])
    m.observe_probe("gemms", 2, [1000, 3000])
    m.set_chains([])
    samples = _scrape(m)
    calls = samples["ingero_calls_total"][0]
    assert calls.labels == {"node": "gpu7", "rank": "3", "local_rank": "1", "job": "llama", "zone": "a",
                            "source": "cuda", "op": "cudaStreamSync"} and calls.value == 2
    err = samples["ingero_call_errors_total"][0]
    assert err.labels["error"] == "cudaErrorInsufficientDriver" and err.value == 1
    assert samples["ingero_probe_events_total"][0].value == 2
    assert samples["ingero_probe_duration_seconds_count"][0].value == 2
    assert samples["ingero_node_info"][0].labels["mcp"] == "http://gpu7:8765/mcp"
    names = {k for ss in samples.values() for s in ss for k in s.labels}
    assert not names & {"pid", "tid", "stream", "ptr", "comm"}
    assert m.snapshot().series() == sum(len(v) for v in samples.values())


@pytest.mark.parametrize("label, message", [
    ("job", "expected NAME=VALUE"), ("9x=1", "not a Prometheus label name"), ("op=x", "ingero's metrics use"),
    ("rank=first", "is not a number"), ("__x=1", "not a Prometheus label name")])
def test_bad_labels_are_refused_clearly(label, message):
    with pytest.raises(IngeroError, match=message):
        node_labels({}, [label], hostname="n")


def test_labels_from_the_environment_and_overrides():
    lab = node_labels({"RANK": "5", "LOCAL_RANK": "1", "SLURM_JOB_ID": "77"}, ["node=gpu-a"], hostname="h")
    assert lab.pairs == (("node", "gpu-a"), ("rank", "5"), ("local_rank", "1"), ("job", "77"))


@pytest.mark.parametrize("args, message", [
    (["trace", "--label", "job=x", "--", "true"], "--label only applies to exported metrics"),
    (["trace", "--metrics", "0.0.0.0:9464", "--", "true"], "refusing to serve metrics on 0.0.0.0 without TLS"),
    (["trace", "--metrics", ":abc", "--", "true"], 'invalid --metrics address ":abc"'),
    (["trace", "--otlp", "ftp://x", "--", "true"], "expected an http(s) URL of an OTLP/HTTP collector"),
    (["trace", "--metrics", ":9464", "--span-threshold", "1ms", "--", "true"], "add --otlp URL"),
    (["mcp", "--metrics", ":9464"], "--metrics and --otlp export a live trace"),
    (["fleet", "stragglrs", "--prometheus", "http://127.0.0.1:1"], "did you mean 'stragglers'?"),
    (["fleet", "ops", "--prometheus", "http://127.0.0.1:1"], "cannot reach Prometheus at http://127.0.0.1:1"),
    (["fleet", "ops", "--prometheus", "127.0.0.1:9090"], "expected the http(s) URL of a Prometheus server"),
    (["fleet", "promql", "--prometheus", "http://127.0.0.1:1"], "query is required for action promql"),
    (["fleet", "ops", "--since", "5parsecs", "--prometheus", "http://127.0.0.1:1"], "expected a duration"),
    (["fleet", "stragglers", "-k", "0.5", "--prometheus", "http://127.0.0.1:1"], "k must be > 1"),
])
def test_cli_mistakes_get_clear_errors(args, message):
    import subprocess
    import sys
    from pathlib import Path

    r = subprocess.run([str(Path(sys.executable).parent / "ingero"), *args], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode != 0 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
