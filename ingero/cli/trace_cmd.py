"""``ingero trace``: record a CUDA process tree with the standard probe set into a trace database."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import click

from ingero.cli.fleet_opts import fleet_options, start_export


def _parse_size(text: str | None) -> int:
    if not text:
        return 0
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    return int(t)


@click.command(context_settings={"ignore_unknown_options": False})
@click.option("--pid", "pids", type=int, multiple=True, help="Trace this running process (repeatable).")
@click.option("--db", "db", type=click.Path(dir_okay=False, path_type=Path), default=Path("ingero-trace.db"),
              show_default=True, help="The trace database to write (created or appended to).")
@click.option("--duration", help="Stop after this long (e.g. 30s, 5m); default: until the processes exit.")
@click.option("--stacks/--no-stacks", default=True, show_default=True, help="Capture the user stack of CUDA calls.")
@click.option("--max-db-size", help="Prune the oldest events beyond this size (e.g. 500MiB).")
@click.option("--probe", "probe_files", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Also attach the probes of this DSL spec file (repeatable; see docs/dsl.md).")
@click.option("--selective", is_flag=True,
              help="Upstream's selective storage: count every event per minute, store only some (see docs).")
@click.option("--quiet", is_flag=True, help="No live view; print the summary only.")
@fleet_options
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def trace(pids, db, duration, stacks, max_db_size, probe_files, selective, quiet, command, **fleet) -> None:
    """Trace CUDA runtime/driver calls and host events of a process tree into DB.

    Give running processes with --pid, or a command after `--` (started, traced from its first
    instruction). Forked children are followed; libraries loaded later (dlopen) are probed when they
    appear. Ctrl-C stops cleanly: everything recorded is flushed and every probe detached. Needs root.

    \b
    Example:
        sudo ingero trace --db run.db -- python train.py
        sudo ingero trace --pid 4242 --duration 30s --probe examples/big_copies.probe
        sudo RANK=3 INGERO_MCP_TOKEN=... ingero trace --metrics :9464 --label job=llama -- python train.py
        ingero mcp --db run.db
    """
    from ingero.analysis.window import parse_duration_ns
    from ingero.tracer.session import TraceOptions, TraceSession

    opts = TraceOptions(
        db=db,
        duration_s=parse_duration_ns(duration) / 1e9 if duration else None,
        stacks=stacks,
        max_db_size=_parse_size(max_db_size),
        selective=selective,
        probe_specs=tuple((str(f), f.read_text()) for f in probe_files),
    )
    export = start_export(fleet, mcp_hint=f"ingero mcp --live --db {db.resolve()}")
    try:
        session = TraceSession(opts, pids=pids, command=command,
                               metrics=export.metrics if export else None).start()
    except BaseException:
        if export:
            export.close()
        raise
    previous = {s: signal.signal(s, lambda *_: session.stop("interrupted")) for s in (signal.SIGINT, signal.SIGTERM)}
    for name, what in (session.dynamic.waiting() if session.dynamic is not None else {}).items():
        click.echo(f"probe {name}: {what}", err=True)
    try:
        if quiet:
            seen: set[str] = set()

            def report(snap) -> None:
                for lib in snap.libraries:
                    if lib not in seen:
                        seen.add(lib)
                        click.echo(f"probing {lib}", err=True)

            report(session.snapshot())
            final = session.run(on_tick=report)
        else:
            final = _run_live(session)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        if export:
            export.close()
    top = ", ".join(f"{op} {n}" for op, n in final.by_op.most_common(8))
    lost = sum(final.lost.values())
    click.echo(f"stopped: {final.stopped_because or 'done'}")
    stored = f" ({final.stored} stored)" if selective else ""
    click.echo(f"{final.events} events{stored} in {final.elapsed_s:.1f} s ({top}); {lost} lost; "
               f"{final.chains} causal chain(s)")
    if final.held:
        click.echo(f"{final.held} new process(es) held at fork until probed (longest {final.held_max_ms:.1f} ms)")
    if final.lib_held:
        click.echo(f"{final.lib_held} open(s) of a CUDA library held until probed (longest "
                   f"{final.lib_held_max_ms:.1f} ms)")
    for name, why in (session.dynamic.not_attached() if session.dynamic is not None else {}).items():
        click.echo(f"probe {name}: not attached: {why}", err=True)
    for pid, why in sorted(final.unlinked.items()):
        click.echo(f"warning: process {pid} ran on without its probes ({why}): calls it made before they were "
                   "attached are missing", err=True)
    click.echo(f"wrote {db}; investigate it with: ingero mcp --db {db}")
    missing = getattr(session.writer, "indexes_missing", ())
    if missing:
        click.echo(f"note: closed before building the indexes {', '.join(missing)} (out of time after Ctrl-C); the "
                   "file is complete and readable, queries are slower until a writer appends to it", err=True)
    if session.child is not None and session.child.poll() is not None and session.child.returncode:
        sys.exit(session.child.returncode if session.child.returncode > 0 else 1)


def _run_live(session):
    from rich.console import Console, Group
    from rich.live import Live
    from rich.table import Table
    from rich.text import Text

    console = Console(stderr=True)

    def render(s) -> Group:
        t = Table(box=None, pad_edge=False)
        t.add_column("op")
        t.add_column("events", justify="right")
        for op, n in s.by_op.most_common(10):
            t.add_row(op, f"{n:,}")
        head = Text.from_markup(
            f"[bold]ingero trace[/] {s.elapsed_s:5.1f} s  {s.events:,} events  {s.rate:,.0f}/s  "
            f"lost {sum(s.lost.values())}  processes {len(s.processes)}  chains {s.chains}"
        )
        libs = Text("probing: " + (", ".join(s.libraries) or "waiting for a CUDA library to be loaded"),
                    style="dim")
        parts = [head, libs]
        if s.python_lines:
            parts.append(Text("Python lines making the calls: " + ", ".join(
                f"{line} ({n:,})" for line, n in s.python_lines.most_common(3))))
        dyn = session.dynamic
        if dyn is not None and dyn.probes:
            probes = ", ".join(f"#{p.id} {p.name} ({p.events:,} events{'' if p.status == 'active' else ', ended'})"
                               for p in list(dyn.probes.values()))
            parts.append(Text("dynamic probes: " + probes))
        return Group(*parts, t)

    with Live(render(session.snapshot()), console=console, refresh_per_second=4, transient=True) as live:
        return session.run(on_tick=lambda s: live.update(render(s)))
