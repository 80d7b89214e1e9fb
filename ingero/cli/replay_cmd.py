"""CLI twins of the MCP tools over a stored trace: stats, chains, stacks, check, explain, query, audit."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import click

from ingero.errors import IngeroError
from ingero.store.schema import source_choices

_db = click.option("--db", "db", required=True, envvar="INGERO_DB",
                   type=click.Path(dir_okay=False, path_type=Path), help="Trace database (env INGERO_DB).")
_since = click.option("--since", default="",
                      help="Start: a duration back from the trace's end (5m), or a time.")
_until = click.option("--until", default="", help="End: a duration back from the trace's end, or a time.")
_json = click.option("--json", "as_json", is_flag=True, help="JSON output.")


def _open(db: Path):
    from ingero.store import TraceReader

    return TraceReader.open(db)


def _window(reader, since: str, until: str):
    from ingero.analysis import make_window

    b = reader.time_bounds
    return make_window(since, until, b[1] if b else None)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                         enumerate(zip(cells, widths, strict=True))).rstrip()
    return "\n".join([line(headers)] + [line(r) for r in rows])


@click.command("stats")
@_db
@_since
@_until
@_json
def stats(db: Path, since: str, until: str, as_json: bool) -> None:
    """Per-operation statistics: count, exact p50/p95/p99, max and share of wall time.

    \b
    Example:
      ingero stats --db trace.db
    """
    from ingero.analysis import trace_stats
    from ingero.analysis.failures import failure_findings
    from ingero.analysis.stats import no_events_message
    from ingero.analysis.window import go_duration

    with _open(db) as r:
        st = trace_stats(r, _window(r, since, until))
        empty = no_events_message(r, st.window) if not st.ops else ""
    if as_json:
        click.echo(json.dumps({"stored_events": st.stored_events, "aggregate_events": st.aggregate_events,
                               "span_ns": st.span_ns, "ops": [asdict(o) for o in st.ops]}, indent=2))
        return
    if not st.ops:
        click.echo(empty)
        return
    span = max(st.span_ns, 1)
    rows = [[o.name, str(o.count), str(o.total) if o.total > o.count else "", go_duration(o.p50_ns),
             go_duration(o.p95_ns), go_duration(o.p99_ns), go_duration(o.max_ns),
             f"{100 * o.sum_ns / span:.1f}%"]
            for o in st.ops]
    headers = ["op", "count", "total", "p50", "p95", "p99", "max", "wall"]
    if st.failures.errors:  # the column only when a call failed: error-free traces print as before
        headers.append("errors")
        for row, o in zip(rows, st.ops, strict=True):
            row.append(", ".join(f"{x.count} {x.label}" for x in o.errors))
    click.echo(_table(headers, rows))
    total = f" of {st.aggregate_events} counted" if st.aggregate_events > st.stored_events else ""
    click.echo(f"\n{st.stored_events} stored events{total} over {go_duration(st.span_ns)}")
    for line in failure_findings(st.failures):
        click.echo(line)


def _print_chains(chains, header: str) -> None:
    from ingero.analysis.window import go_duration

    click.echo(header)
    for c in chains:
        click.echo(f"\n[{c.severity}] {c.summary}")
        if c.timeline:
            click.echo("  Timeline:")
            for t in c.timeline:
                dur = f" ({go_duration(t.dur_us * 1000)})" if t.dur_us else ""
                click.echo(f"    [{t.layer:<6}]  {t.detail}{dur}")
        click.echo(f"  Root cause: {c.root_cause}")
        if c.recommendations:
            click.echo(f"  Fix: {'; '.join(c.recommendations)}")


def _chains_json(chains) -> str:
    return json.dumps([{"id": c.id, "severity": c.severity, "summary": c.summary, "root_cause": c.root_cause}
                       for c in chains], indent=2)


def _count_sev(chains) -> str:
    high = sum(c.severity == "HIGH" for c in chains)
    med = sum(c.severity == "MEDIUM" for c in chains)
    return f"{high} HIGH, {med} MEDIUM"


@click.command("chains")
@_db
@_since
@_until
@click.option("--pid", "pids", type=int, multiple=True, help="Only these processes (recomputes from events).")
@click.option("--top", "top_n", type=int, default=10, show_default=True, help="How many (0 = all).")
@_json
def chains(db: Path, since: str, until: str, pids: tuple[int, ...], top_n: int, as_json: bool) -> None:
    """Causal chains as get_causal_chains gives them: stored ones deduplicated, else recomputed.

    \b
    Example:
      ingero chains --db trace.db --top 3
    """
    from ingero.analysis import causal_chains

    with _open(db) as r:
        res = causal_chains(r, _window(r, since, until), pids, top_n)
    if as_json:
        click.echo(_chains_json(res.chains))
        return
    if not res.chains:
        click.echo("No causal chains detected. System appears healthy.")
        return
    what = (f"{res.considered} stored chains, deduplicated" if res.path == "stored"
            else f"recomputed from {res.events} events")
    _print_chains(res.chains, f"{len(res.chains)} causal chain(s) ({_count_sev(res.chains)}; {what})")


@click.command("explain")
@_db
@_since
@_until
@click.option("--pid", "pids", type=int, multiple=True, help="Only these processes.")
@click.option("--chains", "stored", is_flag=True, help="Report the stored chains instead of re-analysing.")
@_json
def explain(db: Path, since: str, until: str, pids: tuple[int, ...], stored: bool, as_json: bool) -> None:
    """An incident report: re-analyse the events (as upstream's explain) and print the chains.

    \b
    Example:
      ingero explain --db trace.db
    """
    from ingero.analysis.chains import dedup_stored, replay_chains, sort_chains, stored_chains, with_failures

    with _open(db) as r:
        w = _window(r, since, until)
        if stored:
            found, n = with_failures(dedup_stored(stored_chains(r, w), 0), r, w), r.count("events")
        else:
            got, n = replay_chains(r, w, pids)
            found = sort_chains(got)
    if as_json:
        click.echo(_chains_json(found))
        return
    if not found:
        click.echo("INCIDENT REPORT — no causal chains detected")
        click.echo(f"Analyzed {n} events.")
        return
    _print_chains(found, f"INCIDENT REPORT — {len(found)} causal chain(s) found ({_count_sev(found)})")


@click.command("stacks")
@_db
@click.option("--op", default="", help="Operation name as stats prints it, e.g. cudaMalloc, probe:NAME "
              "(wins over --source).")
@click.option("--source", default="0", help=f"A code or name: {source_choices()}.")
@click.option("--pid", type=int, default=0)
@_since
@_until
@click.option("--limit", type=int, default=10, show_default=True)
@click.option("--by", "group", type=click.Choice(["stack", "python-line"]), default="stack", show_default=True,
              help="python-line: merge stacks by their innermost Python frame (which line of the Python code).")
@_json
def stacks(db: Path, op: str, source: str, pid: int, since: str, until: str, limit: int, group: str,
           as_json: bool) -> None:
    """The most frequent call stacks, with resolved frames (native and Python) and timings.

    \b
    Example:
      ingero stacks --db trace.db --op cudaMalloc --limit 3
      ingero stacks --db trace.db --op cudaMalloc --by python-line
    """
    from ingero.analysis import top_stacks
    from ingero.analysis.stacks import why_no_stacks
    from ingero.analysis.window import go_duration

    with _open(db) as r:
        w = _window(r, since, until)
        found = top_stacks(r, source=source, op=op, pid=pid, window=w, limit=limit, group=group.replace("-", "_"))
        empty = "" if found else why_no_stacks(r, source=source, op=op, pid=pid, window=w)
    if as_json:
        click.echo(json.dumps([asdict(s) for s in found], indent=2))
        return
    if not found:
        click.echo(empty)
        return
    for s in found:
        procs = f" [{', '.join(s.processes)}]" if s.processes else ""
        head = f"{s.python_line}: " if group == "python-line" else f"stack {s.hash}: "
        click.echo(f"{head}n={s.count} avg={go_duration(s.avg_ns)} max={go_duration(s.max_ns)}{procs}")
        for f in s.frames:
            click.echo(f"    {f}")


@click.command("check")
@_json
def check(as_json: bool) -> None:
    """System readiness: kernel, BTF, NVIDIA driver, GPU, CUDA libraries, processes, privileges.

    \b
    Example:
        ingero check
        ingero check --json
    """
    from ingero.host import run_all_checks

    checks = run_all_checks()
    if as_json:
        click.echo(json.dumps({"all_passed": all(c.passed or c.optional for c in checks),
                               "checks": [asdict(c) for c in checks]}, indent=2))
        return
    click.echo("Ingero — System Readiness Check")
    for c in checks:
        mark = "✓" if c.passed else ("~" if c.optional else "✗")
        click.echo(f"  [{mark}] {c.name}: {c.value or c.detail}")
        if c.detail and c.value:
            click.echo(f"      {c.detail}")
        if not c.passed and c.recommendation:
            click.echo(f"      Recommendation: {c.recommendation}")
    ok = all(c.passed or c.optional for c in checks)
    click.echo("All checks passed — ready to trace!" if ok else "Some checks failed — see above for details.")


@click.command("query")
@_db
@click.argument("sql")
@click.option("--limit", type=int, default=1000, show_default=True, help="Max rows (max 10000).")
@click.option("--timeout", type=float, default=30.0, show_default=True, help="Time limit in seconds.")
@_json
def query(db: Path, sql: str, limit: int, timeout: float, as_json: bool) -> None:
    """Run one read-only SQL statement with run_sql's guard (no writes, bounded).

    \b
    Example:
      ingero query --db trace.db "SELECT source, op, COUNT(*) AS n FROM events GROUP BY 1, 2"
    """
    from ingero.store.sqlworker import SqlRunner

    if timeout <= 0:
        raise IngeroError("--timeout must be positive")
    with _open(db) as r:
        res = SqlRunner(r.uri, timeout_s=timeout, spare=False).run(sql, limit=limit)
    if as_json:
        click.echo(json.dumps({"columns": res.columns, "rows": res.rows, "truncated": res.truncated},
                              default=str))
        return
    rows = [["NULL" if v is None else str(v) for v in row] for row in res.rows]
    click.echo(_table(list(res.columns), rows))
    click.echo(f"({len(rows)} row{'s' if len(rows) != 1 else ''}{', truncated' if res.truncated else ''})")


@click.command("audit")
@click.option("--audit-db", type=click.Path(dir_okay=False, path_type=Path),
              help="The audit database (default: STATE_DIR/audit.db).")
@click.option("--limit", type=int, default=50, show_default=True, help="Newest N rows (0 = all).")
@click.option("--tool", default="", help="Only calls of this tool.")
@_json
def audit(audit_db: Path | None, limit: int, tool: str, as_json: bool) -> None:
    """Show the MCP audit log: who called which tool, with what, and what came back.

    \b
    Example:
      ingero audit --limit 20
    """
    from datetime import UTC, datetime

    from ingero.audit import read_audit

    recs = read_audit(audit_db, limit, tool)
    if as_json:
        click.echo(json.dumps([asdict(r) for r in recs], indent=2))
        return
    if not recs:
        raise IngeroError("the audit log is empty")
    rows = []
    for r in recs:
        when = datetime.fromtimestamp(r.ts / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S")
        client = f"{r.client_name} {r.client_version}".strip() or "-"
        args = r.args if len(r.args) <= 60 else r.args[:57] + "..."
        rows.append([when, client, r.transport, r.token_fp or "-", r.tool or r.method, r.outcome,
                     f"{r.duration_ms:.1f}", str(r.bytes_out), args])
    headers = ["time (UTC)", "client", "transport", "token", "tool", "outcome", "ms", "bytes", "args"]
    click.echo(_table(headers, rows))
