"""The metrics/OTLP options ``ingero trace`` and ``ingero mcp --live`` share, and their start."""

from __future__ import annotations

import os
from pathlib import Path

import click


def fleet_options(f=None, *, tls: bool = True):
    """Decorate a command with --metrics, --label, --mcp-url, --otlp, --otlp-interval, --span-threshold
    (and --tls-cert/--tls-key for the metrics endpoint when the command has none of its own)."""

    def deco(fn):
        opts = [
            click.option("--metrics", "metrics", metavar="HOST:PORT",
                         help="Serve Prometheus metrics at http://HOST:PORT/metrics (':PORT' binds loopback; "
                              "bearer token INGERO_MCP_TOKEN). See docs/fleet.md."),
            click.option("--label", "labels", multiple=True, metavar="K=V",
                         help="A label on every metric (repeatable), e.g. job=llama; node, rank and "
                              "local_rank come from the hostname, RANK and LOCAL_RANK unless given here."),
            click.option("--mcp-url", "mcp_url", metavar="URL",
                         help="How an agent reaches this node's `ingero mcp --live` (a label of "
                              "ingero_node_info; query_fleet shows it)."),
            click.option("--otlp", "otlp", metavar="URL",
                         help="Push the same metrics to an OpenTelemetry collector over OTLP/HTTP "
                              "(e.g. http://127.0.0.1:4318)."),
            click.option("--otlp-interval", "otlp_interval", default="10s", show_default=True,
                         help="How often to push to --otlp."),
            click.option("--span-threshold", "span_threshold", metavar="DURATION",
                         help="With --otlp: a span for each CUDA call slower than this (e.g. 5ms)."),
        ]
        if tls:
            opts += [
                click.option("--tls-cert", "tls_cert", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                             help="PEM certificate: serve the metrics over HTTPS (with --tls-key)."),
                click.option("--tls-key", "tls_key", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                             help="PEM private key for --tls-cert."),
            ]
        for opt in reversed(opts):
            fn = opt(fn)
        return fn

    return deco(f) if f is not None else deco


def start_export(fleet: dict, *, mcp_hint: str, tls_cert: Path | None = None, tls_key: Path | None = None):
    """The NodeExport the options ask for, started (its endpoints printed on stderr), or None."""
    if not (fleet.get("metrics") or fleet.get("otlp")):
        for flag, key in (("--label", "labels"), ("--mcp-url", "mcp_url"), ("--span-threshold", "span_threshold")):
            if fleet.get(key):
                from ingero.errors import IngeroError

                raise IngeroError(f"{flag} only applies to exported metrics: add --metrics HOST:PORT or --otlp URL")
        return None
    from ingero.analysis.window import parse_duration_ns
    from ingero.fleet import ExportOptions, NodeExport
    from ingero.mcp.http import TOKEN_ENV, resolve_token

    opts = ExportOptions(
        metrics=fleet.get("metrics"), otlp=fleet.get("otlp"),
        otlp_interval_s=parse_duration_ns(fleet.get("otlp_interval") or "10s") / 1e9,
        span_threshold_ns=parse_duration_ns(fleet["span_threshold"]) if fleet.get("span_threshold") else 0,
        labels=tuple(fleet.get("labels") or ()), mcp=fleet.get("mcp_url") or mcp_hint,
        tls_cert=fleet.get("tls_cert") or tls_cert, tls_key=fleet.get("tls_key") or tls_key)
    if bool(opts.tls_cert) != bool(opts.tls_key):
        from ingero.errors import IngeroError

        raise IngeroError("--tls-cert and --tls-key must be given together")
    token, generated = resolve_token(dict(os.environ)) if opts.metrics else ("", False)
    export = NodeExport(opts, os.environ, token).start()
    for line in export.describe():
        click.echo(f"ingero: {line}", err=True)
    if generated:
        click.echo(f"Metrics bearer token (generated; set {TOKEN_ENV} to choose one): {token}", err=True)
    return export
