"""Many nodes: each node's trace as Prometheus metrics (and OTLP), and questions across the fleet.

* :mod:`ingero.fleet.labels` -- the node labels (node, rank, local_rank, job, ``--label k=v``);
* :mod:`ingero.fleet.metrics` -- :class:`FleetMetrics`, fed per batch by the tracing loop;
* :mod:`ingero.fleet.serve` -- ``/metrics`` behind the bearer token;
* :mod:`ingero.fleet.otlp` -- the same totals (and spans of slow calls) pushed over OTLP/HTTP;
* :mod:`ingero.fleet.prom` and :mod:`ingero.fleet.query` -- ``query_fleet`` / ``ingero fleet``: the fleet
  asked through Prometheus (overview, ops, stragglers, errors, promql).

:class:`NodeExport` puts the first four together for ``ingero trace`` and ``ingero mcp --live``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ingero.errors import IngeroError


@dataclass(frozen=True)
class ExportOptions:
    """What ``--metrics``, ``--otlp``, ``--label`` and friends ask for."""

    metrics: str | None = None           # HOST:PORT or :PORT (loopback)
    otlp: str | None = None              # the collector's OTLP/HTTP base URL
    otlp_interval_s: float = 10.0
    span_threshold_ns: int = 0           # calls slower than this become OTLP spans (0: no spans)
    labels: tuple[str, ...] = ()         # --label k=v
    mcp: str = ""                        # how to reach this node's `ingero mcp --live` (a label)
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @property
    def wanted(self) -> bool:
        return bool(self.metrics or self.otlp)


class NodeExport:
    """The metrics of one tracing node, served and/or pushed: ``start()`` before the trace, ``close()``
    after it (a last OTLP push of the final totals)."""

    def __init__(self, options: ExportOptions, env: Mapping[str, str], token: str = "") -> None:
        from ingero.fleet.labels import node_labels
        from ingero.fleet.metrics import FleetMetrics

        if options.span_threshold_ns and not options.otlp:
            raise IngeroError("--span-threshold sends spans to an OpenTelemetry collector: add --otlp URL")
        self.options = options
        self.metrics = FleetMetrics(node_labels(env, options.labels), mcp=options.mcp)
        self.server = None
        self.pusher = None
        self._token = token

    def start(self) -> NodeExport:
        from ingero.fleet.otlp import OtlpPusher
        from ingero.fleet.serve import MetricsServer

        o = self.options
        try:
            if o.metrics:
                self.server = MetricsServer(self.metrics, o.metrics, self._token, tls_cert=o.tls_cert,
                                            tls_key=o.tls_key).start()
            if o.otlp:
                self.pusher = OtlpPusher(self.metrics, o.otlp, interval_s=o.otlp_interval_s,
                                         span_threshold_ns=o.span_threshold_ns).start()
        except BaseException:
            self.close()
            raise
        return self

    def describe(self) -> Sequence[str]:
        """One line per endpoint, for the CLI to print."""
        out = []
        labels = ", ".join(f"{k}={v}" for k, v in self.metrics.labels.pairs)
        if self.server is not None:
            out.append(f"metrics at {self.server.url} (bearer token; labels {labels})")
        if self.pusher is not None:
            spans = (f", spans of calls over {self.options.span_threshold_ns / 1e6:g} ms"
                     if self.options.span_threshold_ns else "")
            out.append(f"OTLP push to {self.pusher.base} every {self.pusher.interval_s:g} s{spans}")
        return out

    def close(self) -> None:
        if self.pusher is not None:
            self.pusher.close()
            self.pusher = None
        if self.server is not None:
            self.server.close()
            self.server = None
