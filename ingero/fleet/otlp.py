"""Push a node's metrics (and spans for slow calls) to an OpenTelemetry collector over OTLP/HTTP.

The metrics are the very totals ``/metrics`` shows (:class:`~ingero.fleet.metrics.FleetMetrics`), handed to
the OpenTelemetry SDK's OTLP/HTTP exporter as cumulative sums, histograms (same bucket bounds) and gauges
every ``interval_s`` and once more at the end, so a collector and a Prometheus scrape count the same. The
node labels go on the resource and on each data point. Calls slower than a threshold become spans (op name,
pid, tid, return code; an error status when the call failed), at most :data:`MAX_SPANS_PER_BATCH` per
batch of the tracing loop; the rest are counted in :attr:`OtlpPusher.spans_dropped`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from urllib.parse import urlparse

from ingero.errors import IngeroError
from ingero.fleet.metrics import (
    BUCKETS_S,
    CALL_DURATION,
    CALL_ERRORS,
    CALLS,
    CHAINS,
    LOST,
    NODE_INFO,
    PROBE_DURATION,
    PROBE_EVENTS,
    SPANS,
    TRACE_START,
    FleetMetrics,
    Histogram,
    MetricsSnapshot,
)

log = logging.getLogger(__name__)

#: the most spans one batch of the tracing loop may create (a storm of slow calls must not stall it)
MAX_SPANS_PER_BATCH = 256
DEFAULT_INTERVAL_S = 10.0
#: spans waiting for export: 10 batches/s x MAX_SPANS_PER_BATCH x several seconds of a collector's delay
SPAN_QUEUE = 65_536
#: the longest the end of a trace waits for the final OTLP push and the pending spans
CLOSE_BUDGET_S = 10.0
#: the OTLP/HTTP paths under the collector's base URL (its port 4318)
METRICS_PATH, TRACES_PATH = "/v1/metrics", "/v1/traces"


def otlp_base(url: str) -> str:
    """The collector's base URL, checked (``http://host:4318``; a trailing /v1/metrics is taken off)."""
    u = urlparse(url)
    if u.scheme not in ("http", "https") or not u.netloc:
        raise IngeroError(f"--otlp {url!r}: expected an http(s) URL of an OTLP/HTTP collector",
                          "e.g. --otlp http://127.0.0.1:4318")
    base = url.rstrip("/")
    for suffix in (METRICS_PATH, TRACES_PATH):
        base = base.removesuffix(suffix)
    return base


class OtlpPusher:
    """``OtlpPusher(metrics, "http://collector:4318").start()``; ``close()`` pushes once more and stops."""

    def __init__(self, metrics: FleetMetrics, url: str, *, interval_s: float = DEFAULT_INTERVAL_S,
                 span_threshold_ns: int = 0, headers: dict[str, str] | None = None, timeout_s: float = 5.0) -> None:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.sdk.resources import Resource

        if interval_s <= 0:
            raise IngeroError("--otlp-interval must be positive")
        self.base = otlp_base(url)
        self.metrics = metrics
        self.interval_s = interval_s
        self.resource = Resource.create({"service.name": "ingero", **metrics.labels.as_dict()})
        self._metric_exporter = OTLPMetricExporter(endpoint=self.base + METRICS_PATH, headers=headers,
                                                   timeout=timeout_s)
        self._tracer_provider = None
        self._tracer = None
        self.exports = self.failures = self.spans = self.spans_dropped = 0
        if span_threshold_ns > 0:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            self._tracer_provider = TracerProvider(resource=self.resource)
            # a queue that holds what the per-batch cap lets through between exports (the SDK's default 2048
            # would drop spans silently at 10 batches/s)
            self._tracer_provider.add_span_processor(BatchSpanProcessor(
                OTLPSpanExporter(endpoint=self.base + TRACES_PATH, headers=headers, timeout=timeout_s),
                max_queue_size=SPAN_QUEUE, schedule_delay_millis=1000, max_export_batch_size=1024))
            self._tracer = self._tracer_provider.get_tracer("ingero")
            metrics.slow_call_ns = span_threshold_ns
            metrics.on_slow_calls = self.spans_for
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- metrics ---------------------------------------------------------------------------------------
    def start(self) -> OtlpPusher:
        self._thread = threading.Thread(target=self._loop, name="ingero-otlp", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.push()

    def push(self) -> bool:
        """Export the current totals once; False (and logged) when the collector refused or is away."""
        from opentelemetry.sdk.metrics.export import MetricExportResult

        try:
            ok = self._metric_exporter.export(metrics_data(self.metrics.snapshot(), self.resource)) \
                == MetricExportResult.SUCCESS
        except Exception:  # noqa: BLE001 - a collector away must not stop the trace
            log.exception("OTLP metrics export failed")
            ok = False
        self.exports += 1
        self.failures += not ok
        return ok

    # -- spans -----------------------------------------------------------------------------------------
    def spans_for(self, calls: Sequence[tuple]) -> None:
        """Spans for slow CUDA/driver call tuples (``CUDA_FIELDS`` order), at most MAX_SPANS_PER_BATCH."""
        from opentelemetry.trace import Status, StatusCode

        from ingero.store.schema import SOURCE_NAMES, op_name

        if self._tracer is None:
            return
        errors = self.metrics.error_names
        for ts, dur, pid, tid, src, op, ret, *_ in calls[:MAX_SPANS_PER_BATCH]:
            start = self.metrics.to_epoch(ts)
            name = op_name(src, op)
            span = self._tracer.start_span(name, start_time=start, attributes={
                "ingero.source": SOURCE_NAMES.get(src, str(src)), "ingero.op": name, "process.pid": pid,
                "thread.id": tid, "ingero.duration_ns": dur, "ingero.return_code": ret})
            if ret:
                span.set_status(Status(StatusCode.ERROR, errors.name(src, ret)))
            span.end(end_time=start + dur)
        made, dropped = min(len(calls), MAX_SPANS_PER_BATCH), max(0, len(calls) - MAX_SPANS_PER_BATCH)
        self.spans += made
        self.spans_dropped += dropped
        self.metrics.count_spans(made, dropped)

    def close(self, budget_s: float = CLOSE_BUDGET_S) -> bool:
        """Push the final totals and the pending spans, within ``budget_s`` (a collector that does not answer
        must not hold the end of a trace); False when that did not finish in time (logged)."""
        self._stop.set()

        def final() -> None:
            if self._thread is not None:
                self._thread.join()
            self.push()
            if self._tracer_provider is not None:
                self._tracer_provider.force_flush(timeout_millis=int(budget_s * 1000))
                self._tracer_provider.shutdown()
            self._metric_exporter.shutdown()

        t = threading.Thread(target=final, name="ingero-otlp-close", daemon=True)
        t.start()
        t.join(budget_s)
        if t.is_alive():
            log.warning("OTLP: the final push to %s did not finish within %g s", self.base, budget_s)
            return False
        return True


def metrics_data(s: MetricsSnapshot, resource):
    """The OTLP MetricsData of a snapshot: the same series and values as the Prometheus exposition."""
    import time

    from opentelemetry.sdk.metrics.export import (
        AggregationTemporality,
        Gauge,
        HistogramDataPoint,
        Metric,
        MetricsData,
        NumberDataPoint,
        ResourceMetrics,
        ScopeMetrics,
        Sum,
    )
    from opentelemetry.sdk.metrics.export import Histogram as OtlpHistogram
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    now, t0 = time.time_ns(), s.start_ns
    node = s.labels.as_dict()
    cumulative = AggregationTemporality.CUMULATIVE

    def attrs(names: Sequence[str], key) -> dict:
        key = key if isinstance(key, tuple) else (key,)
        return {**node, **dict(zip(names, key, strict=True))}

    def counter(name: str, doc: str, names: Sequence[str], rows: dict) -> Metric:
        return Metric(name, doc, "1", Sum([NumberDataPoint(attrs(names, k), t0, now, v) for k, v in
                                           sorted(rows.items())], cumulative, True))

    def histogram(name: str, doc: str, names: Sequence[str], rows: dict[object, Histogram]) -> Metric:
        points = [HistogramDataPoint(attrs(names, k), t0, now, h.count, h.sum_ns / 1e9,
                                     [int(x) for x in h.buckets], list(BUCKETS_S), 0.0, 0.0)
                  for k, h in sorted(rows.items())]
        return Metric(name, doc, "s", OtlpHistogram(points, cumulative))

    def gauge(name: str, doc: str, names: Sequence[str], rows: dict) -> Metric:
        return Metric(name, doc, "1", Gauge([NumberDataPoint(attrs(names, k), t0, now, v)
                                             for k, v in sorted(rows.items())]))

    metrics = [
        counter(CALLS, "Events traced, per op.", ("source", "op"), s.calls),
        histogram(CALL_DURATION, "Latency of CUDA runtime/driver calls.", ("source", "op"), s.durations),
        counter(CALL_ERRORS, "CUDA calls that returned an error.", ("source", "op", "error"), s.errors),
        counter(LOST, "Events dropped by the kernel.", ("ring",), s.lost),
        counter(PROBE_EVENTS, "Events of dynamic probes.", ("probe",), s.probe_events),
        histogram(PROBE_DURATION, "Latency of dynamic probes' calls.", ("probe",), s.probe_durations),
        gauge(CHAINS, "Causal chains of the latest analysis.", ("severity", "op"), s.chains),
        gauge(NODE_INFO, "This node's ingero.", ("mcp", "version"), {(s.info["mcp"], s.info["version"]): 1}),
        gauge(TRACE_START, "When this node's trace started.", (), {(): s.start_ns / 1e9}),
    ]
    if s.spans:
        metrics.append(counter(SPANS, "Spans made of slow calls, and dropped.", ("outcome",), s.spans))
    metrics = [m for m in metrics if m.data.data_points]  # as /metrics: a family without series shows none
    scope = InstrumentationScope("ingero")
    return MetricsData([ResourceMetrics(resource, [ScopeMetrics(scope, metrics, "")], "")])
