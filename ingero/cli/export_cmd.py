"""``ingero export perfetto``: a stored trace as Chrome/Perfetto trace-event JSON."""

from __future__ import annotations

from pathlib import Path

import click


def _n(k: int, one: str, many: str = "") -> str:
    return f"{k} {one if k == 1 else (many or one + 's')}"


@click.group("export")
def export() -> None:
    """Export a stored trace for other tools."""


@export.command("perfetto")
@click.option("--db", "db", required=True, envvar="INGERO_DB",
              type=click.Path(dir_okay=False, path_type=Path), help="Trace database (env INGERO_DB).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The JSON file to write (replaced atomically).")
@click.option("--since", default="", help="Start: a duration back from the trace's end (5m), or a time.")
@click.option("--until", default="", help="End: a duration back from the trace's end, or a time.")
@click.option("--pid", "pids", type=int, multiple=True, help="Only these processes (repeatable).")
@click.option("--no-chains", is_flag=True, help="Leave out the causal-chain markers.")
@click.option("--no-counters", is_flag=True, help="Leave out the system snapshot counters.")
def perfetto(db: Path, output: Path, since: str, until: str, pids: tuple[int, ...], no_chains: bool,
             no_counters: bool) -> None:
    """Write CUDA, driver, probe and host events as a trace for https://ui.perfetto.dev or chrome://tracing.

    One track per thread (block I/O on a companion track); slices that would overlap without nesting
    go to an overflow lane of their track, so every event is shown once and unclipped.

    \b
    Example:
      ingero export perfetto --db trace.db -o trace.json
    """
    from ingero.export import write_perfetto

    s = write_perfetto(db, output, since, until, pids, chains=not no_chains, snapshots=not no_counters)
    moved = f"; {s.moved} moved to overlap lanes" if s.moved else ""
    click.echo(f"wrote {output}: {_n(s.events, 'event')} ({_n(s.slices, 'slice')}, {_n(s.instants, 'instant')}"
               f"{moved}), {_n(s.processes, 'process', 'processes')}, {_n(s.threads, 'track')}, "
               f"{_n(s.chains, 'chain marker')}, {_n(s.counters, 'counter sample')}")
    if s.per_op:
        click.echo("  " + ", ".join(f"{cat}/{name} {n}" for cat, name, n in s.per_op))
    click.echo("open it in https://ui.perfetto.dev (Open trace file) or chrome://tracing")
