"""A node's trace as Prometheus metrics, aggregated per batch where events are ingested.

:class:`FleetMetrics` is fed by the tracing loop (:class:`~ingero.tracer.session.TraceSession`) once per
batch, never per event in Python: a batch of CUDA/driver calls is read as numpy columns (straight from the
ring buffer's bytes when the batch was copied in one piece) and bucketed with one ``searchsorted`` and one
``bincount``. A scrape reads the totals under a lock (:class:`MetricsCollector`), so serving ``/metrics``
costs the loop nothing but that lock.

Series (constant node labels on each; no pid, tid, stream or pointer is ever a label):

* ``ingero_calls_total{source,op}``: events traced per op (CUDA, driver and host sources);
* ``ingero_call_duration_seconds{source,op}``: a histogram of CUDA/driver call latency (:data:`BUCKETS_S`);
* ``ingero_call_errors_total{source,op,error}``: calls that returned an error, by the CUDA error's name;
* ``ingero_lost_events_total{ring}``: events the kernel dropped because a ring buffer was full;
* ``ingero_probe_events_total{probe}`` and ``ingero_probe_duration_seconds{probe}``: dynamic (DSL) probes;
* ``ingero_causal_chains{severity,op}``: the causal chains of the last analysis;
* ``ingero_node_info{mcp,version}``: 1, with how to reach this node's ``ingero mcp --live``;
* ``ingero_trace_start_time_seconds``: when this trace started (its counters began at 0 then);
* ``ingero_slow_call_spans_total{outcome}`` (with ``--span-threshold``): spans made of slow calls, and those
  dropped over the per-batch cap.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from operator import itemgetter

import numpy as np

from ingero.fleet.labels import NodeLabels

#: histogram upper bounds in seconds: 1-2-5 steps from 1 µs to 10 s (then +Inf). The bucket of a value
#: is its error bound: a quantile read from the histogram lies in the same bucket as the exact one.
BUCKETS_S: tuple[float, ...] = tuple(m * 10.0 ** e for e in range(-6, 1) for m in (1, 2, 5)) + (10.0,)
BUCKETS_NS = np.array([round(b * 1e9) for b in BUCKETS_S], dtype=np.int64)
_NB = len(BUCKETS_S) + 1  # with +Inf
_INITIAL_SLOTS = 64
#: return codes below this are counted with one bincount (CUDA runtime and driver errors are)
_SMALL_CODES = 1024

#: metric names, each in one place (the collector, the OTLP exporter and query_fleet use them)
CALLS = "ingero_calls"
CALL_DURATION = "ingero_call_duration_seconds"
CALL_ERRORS = "ingero_call_errors"
LOST = "ingero_lost_events"
PROBE_EVENTS = "ingero_probe_events"
PROBE_DURATION = "ingero_probe_duration_seconds"
CHAINS = "ingero_causal_chains"
NODE_INFO = "ingero_node_info"
#: when this node's trace started (wall clock, s): a change of it marks a restart (its counters began at 0)
TRACE_START = "ingero_trace_start_time_seconds"
SPANS = "ingero_slow_call_spans"

#: the numpy view of a CUDA/driver call tuple's fields the metrics need (index in CUDA_FIELDS)
_DUR, _SRC, _OP, _RET = 1, 4, 5, 6


def _record_dtype() -> np.dtype:
    """The numpy dtype of a raw CUDA ring record's columns (ingero.tracer.calls.CUDA_RECORD_COLUMNS, ``kind``)."""
    from ingero.tracer.calls import record_dtype

    return record_dtype()


@dataclass
class Histogram:
    """Bucket counts (non-cumulative, the last one is +Inf), their sum in ns and the first observation time."""

    buckets: np.ndarray = field(default_factory=lambda: np.zeros(_NB, dtype=np.int64))
    sum_ns: int = 0

    @property
    def count(self) -> int:
        return int(self.buckets.sum())

    def cumulative(self) -> list[int]:
        return [int(x) for x in np.cumsum(self.buckets)]


@dataclass(frozen=True)
class MetricsSnapshot:
    """The totals at one instant, as plain values (what a scrape or an OTLP export shows)."""

    labels: NodeLabels
    info: dict[str, str]
    start_ns: int  # wall clock of the first observation window (OTLP start time)
    calls: dict[tuple[str, str], int]
    durations: dict[tuple[str, str], Histogram]
    errors: dict[tuple[str, str, str], int]
    lost: dict[str, int]
    probe_events: dict[str, int]
    probe_durations: dict[str, Histogram]
    chains: dict[tuple[str, str], int]
    spans: dict[str, int] = field(default_factory=dict)

    def series(self) -> int:
        """How many time series a scrape of this node returns (the cardinality docs/fleet.md counts)."""
        return (len(self.calls) + len(self.errors) + len(self.lost) + len(self.probe_events) + len(self.chains)
                + len(self.spans) + 2 + (len(self.durations) + len(self.probe_durations)) * (_NB + 2))


def _names():
    from ingero.store.schema import SOURCE_NAMES, op_name

    return SOURCE_NAMES, op_name


class ErrorNames:
    """A CUDA runtime/driver return code -> the enum's name (cudaErrorInsufficientDriver, CUDA_ERROR_...);
    ``error_N`` for a code the catalogue does not know (one table: ingero.analysis.failures)."""

    def name(self, source: int, code: int) -> str:
        from ingero.analysis.failures import error_name

        return error_name(source, code) or f"error_{code}"


class FleetMetrics:
    """One node's metrics, fed per batch by the tracing loop, read by scrapes and OTLP exports.

    ``on_slow_calls``: called with the call tuples of a batch slower than ``slow_call_ns`` (OTLP spans)."""

    def __init__(self, labels: NodeLabels, *, mcp: str = "", slow_call_ns: int = 0, on_slow_calls=None) -> None:
        from ingero import __version__

        self.labels = labels
        self.info = {"mcp": mcp, "version": __version__}
        self.slow_call_ns = slow_call_ns
        self.on_slow_calls = on_slow_calls
        #: CLOCK_MONOTONIC ns -> wall-clock ns; the tracing session sets its clock's (spans need it)
        self.to_epoch = lambda ns: ns
        self._lock = threading.Lock()
        self._start_ns = time.time_ns()
        self._keys: dict[int, tuple[str, str]] = {}
        self.error_names = ErrorNames()
        self._calls: dict[tuple[str, str], int] = {}  # events of other sources (host, I/O), by name
        # CUDA/driver calls by slot: their kind (source | op << 8, the record's two bytes) -> slot, the slots'
        # kinds, bucket counts, sums (ns), and failed calls by (slot, return code)
        self._slot = np.full(1 << 16, -1, dtype=np.int64)
        self._slot_keys: list[int] = []
        self._hist = np.zeros((_INITIAL_SLOTS, _NB), dtype=np.int64)
        self._sums = np.zeros(_INITIAL_SLOTS, dtype=np.int64)
        self._err: dict[tuple[int, int], int] = {}
        self._lost: dict[str, int] = {}
        self._probe_events: dict[str, int] = {}
        self._probe_durations: dict[str, Histogram] = {}
        self._chains: dict[tuple[str, str], int] = {}
        self._spans: dict[str, int] = {}

    # -- feeding (the tracing loop) --------------------------------------------------------------------
    def observe_calls(self, calls: Sequence[tuple], chunk: bytes | None = None) -> None:
        """A batch of CUDA/driver call tuples (``CUDA_FIELDS`` order). ``chunk``: the same batch's raw ring
        records (``CUDA_RECORD`` each), read as numpy columns with no per-event work at all.

        Each (source, op) has a slot (a row of the totals): a batch is bucketed with one ``searchsorted``
        and counted with ``bincount`` into a slots x buckets array, added to the totals in one operation;
        no sort, no Python loop over events or ops (new ops get their slot once). A batch of one op (the
        usual case: a loop of the same call) takes a shorter path: one row, an integer sum, and one count
        when every failed call failed alike."""
        n = len(calls)
        if not n:
            return
        raw = np.frombuffer(chunk, _record_dtype()) if chunk is not None else None
        if raw is not None and len(raw) == n:
            dur, kind, ret = raw["duration"], raw["kind"], raw["ret"]
        else:
            dur = np.fromiter(map(itemgetter(_DUR), calls), np.int64, n)
            kind = (np.fromiter(map(itemgetter(_SRC), calls), np.int64, n) & 0xFF) | \
                (np.fromiter(map(itemgetter(_OP), calls), np.int64, n) & 0xFF) << 8
            ret = np.fromiter(map(itemgetter(_RET), calls), np.int64, n)
        buckets = np.searchsorted(BUCKETS_NS, dur, side="left")
        if kind.min() == kind.max():  # one op (a loop of one call): one row, no per-call slot
            slot = self._slot_of(int(kind[0]))
            hist = np.bincount(buckets, minlength=_NB)
            total = int(dur.sum(dtype=np.int64))
            nfailed = int(np.count_nonzero(ret))
            errors = []
            if nfailed:
                codes = ret if nfailed == n else ret[ret != 0]
                low = int(codes.min())
                errors = ([((slot, low), nfailed)] if low == int(codes.max())  # one error for all
                          else self._batch_errors(np.array([slot]), codes, 1))
            with self._lock:
                self._hist[slot] += hist
                self._sums[slot] += total
                for k, c in errors:
                    self._err[k] = self._err.get(k, 0) + c
        else:
            idx = self._slot[kind]
            if idx.min() < 0:  # an op seen for the first time
                for k in np.unique(kind[idx < 0]).tolist():
                    self._slot_of(k)
                idx = self._slot[kind]
            slots = int(idx.max()) + 1
            hist = np.bincount(idx * _NB + buckets, minlength=slots * _NB).reshape(slots, _NB)
            sums = np.rint(np.bincount(idx, weights=dur, minlength=slots)).astype(np.int64)
            failed = ret != 0
            errors = self._batch_errors(idx[failed], ret[failed], slots) if failed.any() else []
            with self._lock:
                self._hist[:slots] += hist
                self._sums[:slots] += sums
                for k, c in errors:
                    self._err[k] = self._err.get(k, 0) + c
        if self.on_slow_calls is not None and self.slow_call_ns > 0:
            slow = np.flatnonzero(dur > self.slow_call_ns)
            if len(slow):
                self.on_slow_calls([calls[i] for i in slow.tolist()])

    @staticmethod
    def _batch_errors(where: np.ndarray, codes: np.ndarray, slots: int) -> list[tuple[tuple[int, int], int]]:
        """((slot, return code), count) of a batch's failed calls (their slots, ``where``: one for all or
        one each, and their return codes)."""
        codes = codes.astype(np.int64)
        low, high = int(codes.min()), int(codes.max())
        if low >= 0 and high < _SMALL_CODES:  # CUDA's error codes: no sort needed
            if len(where) == 1:
                counts = np.bincount(codes)
                return [((int(where[0]), int(i)), int(counts[i])) for i in np.flatnonzero(counts)]
            counts = np.bincount(where * _SMALL_CODES + codes, minlength=slots * _SMALL_CODES)
            nz = np.flatnonzero(counts)
            return [((int(i) // _SMALL_CODES, int(i) % _SMALL_CODES), int(counts[i])) for i in nz]
        where = np.broadcast_to(where, codes.shape)
        keys, counts = np.unique(where * (1 << 32) + (codes & 0xFFFFFFFF), return_counts=True)
        out = []
        for k, c in zip(keys.tolist(), counts.tolist(), strict=True):
            code = k & 0xFFFFFFFF
            out.append(((k >> 32, code - (1 << 32) if code >= 1 << 31 else code), c))
        return out

    def _slot_of(self, key: int) -> int:
        """The slot of the kind ``key`` (source | op << 8): a new one, growing the totals, when first seen."""
        slot = int(self._slot[key])
        if slot >= 0:
            return slot
        with self._lock:
            slot = len(self._slot_keys)
            if slot == len(self._hist):
                self._hist = np.vstack([self._hist, np.zeros_like(self._hist)])
                self._sums = np.concatenate([self._sums, np.zeros_like(self._sums)])
            self._slot_keys.append(key)
            self._slot[key] = slot
        return slot

    def _key(self, k: int) -> tuple[str, str]:
        name = self._keys.get(k)
        if name is None:
            source_names, op_name = _names()
            source, op = k & 0xFF, k >> 8
            name = self._keys[k] = (source_names.get(source, str(source)), op_name(source, op))
        return name

    def observe_counts(self, counts: dict[tuple[int, str], int]) -> None:
        """Events of other sources (host, I/O) per (source code, op name): counted, no histogram."""
        if not counts:
            return
        source_names, _ = _names()
        with self._lock:
            for (source, op), n in counts.items():
                name = (source_names.get(source, str(source)), op)
                self._calls[name] = self._calls.get(name, 0) + n

    def observe_probe(self, probe: str, count: int, latencies_ns: Iterable[int] | None = None) -> None:
        """``count`` events of dynamic probe ``probe``; their latencies when the probe measures them."""
        lat = None
        if latencies_ns is not None:
            arr = np.fromiter(latencies_ns, np.int64)
            if len(arr):
                lat = np.bincount(np.searchsorted(BUCKETS_NS, arr, side="left"), minlength=_NB), int(arr.sum())
        with self._lock:
            self._probe_events[probe] = self._probe_events.get(probe, 0) + count
            if lat is not None:
                h = self._probe_durations.get(probe)
                if h is None:
                    h = self._probe_durations[probe] = Histogram()
                h.buckets += lat[0]
                h.sum_ns += lat[1]

    def count_spans(self, made: int, dropped: int) -> None:
        """Spans made of slow calls (OTLP), and those dropped over the per-batch cap."""
        with self._lock:
            for outcome, n in (("made", made), ("dropped", dropped)):
                self._spans[outcome] = self._spans.get(outcome, 0) + n

    def set_lost(self, lost: dict[str, int]) -> None:
        """Events dropped so far per ring buffer (totals)."""
        with self._lock:
            self._lost.update(lost)

    def set_chains(self, chains: Iterable) -> None:
        """The causal chains of the latest analysis (replaces the previous ones)."""
        counts: dict[tuple[str, str], int] = {}
        for c in chains:
            key = (c.severity, c.cuda_op or "")
            counts[key] = counts.get(key, 0) + 1
        with self._lock:
            self._chains = {k: 0 for k in self._chains} | counts  # a severity that went away reads 0

    # -- reading ---------------------------------------------------------------------------------------
    def snapshot(self) -> MetricsSnapshot:
        with self._lock:
            slots = len(self._slot_keys)
            hist, sums, err = self._hist[:slots].copy(), self._sums[:slots].copy(), dict(self._err)
            calls = dict(self._calls)
            keys = list(self._slot_keys)
            rest = dict(lost=dict(self._lost), probe_events=dict(self._probe_events),
                        probe_durations={k: Histogram(h.buckets.copy(), h.sum_ns)
                                         for k, h in self._probe_durations.items()},
                        chains=dict(self._chains), spans=dict(self._spans))
        durations = {}
        for slot, key in enumerate(keys):
            name = self._key(key)
            durations[name] = Histogram(hist[slot], int(sums[slot]))
            calls[name] = calls.get(name, 0) + int(hist[slot].sum())
        errors: dict[tuple[str, str, str], int] = {}
        for (slot, code), c in err.items():
            key = keys[slot]
            name = (*self._key(key), self.error_names.name(key & 0xFF, code))
            errors[name] = errors.get(name, 0) + c
        return MetricsSnapshot(labels=self.labels, info=dict(self.info), start_ns=self._start_ns, calls=calls,
                               durations=durations, errors=errors, **rest)


class MetricsCollector:
    """A prometheus_client collector over :class:`FleetMetrics` (register it in a CollectorRegistry)."""

    def __init__(self, metrics: FleetMetrics) -> None:
        self.metrics = metrics

    def describe(self):  # no describe: the registry must not call collect() at registration
        return []

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        s = self.metrics.snapshot()
        names, values = list(s.labels.names), list(s.labels.values)

        def family(cls, name: str, doc: str, extra: Sequence[str], rows, **kw):
            fam = cls(name, doc, labels=[*names, *extra], **kw)
            for key, value in rows:
                key = key if isinstance(key, tuple) else (key,)
                if cls is HistogramMetricFamily:
                    le = [f"{b:g}" for b in BUCKETS_S] + ["+Inf"]
                    fam.add_metric([*values, *key], list(zip(le, value.cumulative(), strict=True)),
                                   value.sum_ns / 1e9)
                else:
                    fam.add_metric([*values, *key], value)
            return fam

        yield family(CounterMetricFamily, CALLS, "Events traced, per op (CUDA/driver calls, host events).",
                     ("source", "op"), sorted(s.calls.items()))
        yield family(HistogramMetricFamily, CALL_DURATION, "Latency of CUDA runtime/driver calls, entry to return.",
                     ("source", "op"), sorted(s.durations.items()))
        yield family(CounterMetricFamily, CALL_ERRORS, "CUDA runtime/driver calls that returned an error.",
                     ("source", "op", "error"), sorted(s.errors.items()))
        yield family(CounterMetricFamily, LOST, "Events dropped by the kernel: a ring buffer was full.",
                     ("ring",), sorted(s.lost.items()))
        yield family(CounterMetricFamily, PROBE_EVENTS, "Events recorded by dynamic (DSL) probes.",
                     ("probe",), sorted(s.probe_events.items()))
        yield family(HistogramMetricFamily, PROBE_DURATION, "Latency of the calls dynamic probes recorded.",
                     ("probe",), sorted(s.probe_durations.items()))
        yield family(GaugeMetricFamily, CHAINS, "Causal chains of the latest analysis, by severity and op.",
                     ("severity", "op"), sorted(s.chains.items()))
        if s.spans:
            yield family(CounterMetricFamily, SPANS, "Spans made of calls over --span-threshold, and dropped.",
                         ("outcome",), sorted(s.spans.items()))
        info = GaugeMetricFamily(NODE_INFO, "This node's ingero: version and how to reach its live MCP server.",
                                 labels=[*names, "mcp", "version"])
        info.add_metric([*values, s.info["mcp"], s.info["version"]], 1)
        yield info
        start = GaugeMetricFamily(TRACE_START, "When this node's trace started (its counters began at 0 then).",
                                  labels=names)
        start.add_metric(values, s.start_ns / 1e9)
        yield start


def registry_for(metrics: FleetMetrics):
    from prometheus_client import CollectorRegistry

    reg = CollectorRegistry(auto_describe=False)
    reg.register(MetricsCollector(metrics))
    return reg
