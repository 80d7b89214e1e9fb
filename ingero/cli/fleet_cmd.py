"""``ingero fleet``: the fleet's metrics through Prometheus (the CLI twin of the query_fleet MCP tool)."""

from __future__ import annotations

import click


@click.command("fleet")
@click.argument("action", metavar="ACTION")
@click.argument("query", required=False, default="")
@click.option("--prometheus", envvar="INGERO_PROMETHEUS", metavar="URL", required=True,
              help="The Prometheus server scraping the nodes' --metrics (env INGERO_PROMETHEUS).")
@click.option("--since", default="", help="Only the last DURATION (e.g. 5m); default: since each trace started.")
@click.option("--op", default="", help="Only this op (e.g. cudaStreamSync).")
@click.option("-k", "k", type=float, default=2.0, show_default=True,
              help="stragglers: p99 more than k times the fleet median.")
@click.option("--step", default="", help="promql with --since: the step of the range query.")
@click.option("--limit", type=int, default=0, help="Most rows/series shown (default 100, max 1000).")
def fleet(action: str, query: str, prometheus: str, since: str, op: str, k: float, step: str, limit: int) -> None:
    """Ask across every node's metrics: ACTION is overview, ops, stragglers, errors or promql QUERY.

    \b
    Examples:
      ingero fleet overview --prometheus http://127.0.0.1:9090
      ingero fleet stragglers --op cudaStreamSync -k 3
      ingero fleet promql 'sum by (node) (rate(ingero_calls_total[1m]))'
    """
    from ingero.fleet.prom import Prometheus
    from ingero.fleet.query import FleetQuery

    click.echo(FleetQuery(Prometheus(prometheus)).answer(action, since=since, op=op, k=k, query=query, step=step,
                                                         limit=limit))
