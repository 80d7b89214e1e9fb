"""``ingero demo``: the whole story in about a minute (what ``make demo`` runs).

It starts the bundled CUDA workload (DataLoader-style forked workers calling the real CUDA runtime),
traces it live with the standard probe set, widens the trace mid-run with a DSL probe from
``examples/`` the way an agent does over MCP (validate, attach, read the results, detach: the same
library calls the MCP tools make), then shows the trace statistics, the top causal chains and the
probe's histogram, and prints the command that replays the database over MCP. Where BPF is not
available it says why in one line and replays the recording the project ships instead (not under
``CI=true``: there the live path must run).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import click

from ingero.paths import data_dir

SPEC_NAME = "workload.probe"
SHIPPED_DB = "demo-trace.db"
#: after attaching, the longest the demo waits for each probe's first call before reading the results
PROBES_SEE_CALLS_S = 60.0


@click.command()
@click.option("--db", type=click.Path(dir_okay=False, path_type=Path), default=Path("ingero-demo.db"),
              show_default=True, help="Where to write the trace database.")
@click.option("--seconds", default=6.0, show_default=True, help="How long the workload runs.")
@click.option("--workers", default=4, show_default=True, help="Forked worker processes making CUDA calls.")
@click.option("--interval", default=0.002, show_default=True, help="Pause of each worker between rounds (s).")
@click.option("--replay", is_flag=True, help="Show the recording the project ships instead of tracing live.")
def demo(db: Path, seconds: float, workers: int, interval: float, replay: bool) -> None:
    """Trace the bundled CUDA workload live, widen the trace with a DSL probe mid-run, show what was
    found, and print how to investigate the result over MCP. Needs root for the live part.

    \b
    Example:
        sudo ingero demo
        ingero demo --replay
    """
    from rich.console import Console

    from ingero.runtime.kernel import bpf_problem

    console = Console()
    console.rule("[bold]ingero demo[/]: trace a CUDA workload with eBPF, widen the trace mid-run")
    problem = None if replay else bpf_problem()
    if replay or problem:
        if problem and os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            from ingero.errors import BpfUnavailable

            raise BpfUnavailable(f"cannot trace live here: {problem} (no replay fallback under CI=true)")
        shipped = data_dir("examples") / SHIPPED_DB
        if problem:
            console.print(f"[yellow]live tracing is not possible here: {problem}; replaying {shipped.name}, a "
                          f"recording of this demo, instead[/]", soft_wrap=True)
        _show_database(console, shipped, probe_hist=None)
        _epilogue(console, shipped)
        return
    hist = _live(console, db, seconds, workers, interval)
    _show_database(console, db, probe_hist=hist)
    _epilogue(console, db)


def _live(console, db: Path, seconds: float, workers: int, interval: float) -> tuple[str, list[int]] | None:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from ingero.dsl import render
    from ingero.dsl.resolved import describe
    from ingero.runtime.format import hist_lines
    from ingero.tracer.session import TraceOptions, TraceSession

    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    # the workload runs at least `seconds`, and on until the story is told (its probes saw calls, were read
    # and detached): on a busy machine attaching can take seconds, and the demo waits for it, not the clock
    stop_dir = Path(tempfile.mkdtemp(prefix="ingero-demo-"))
    stop_file = stop_dir / "stop"
    command = [sys.executable, "-m", "ingero.workload", "--workers", str(workers), "--duration", str(seconds),
               "--repeat", "1", "--interval", str(interval), "--until", str(stop_file)]
    console.print(f"[bold]1.[/] start the bundled CUDA workload ({workers} forked workers calling the real CUDA "
                  f"runtime for {seconds:g} s; without a GPU every call returns 35) under the standard probe set")
    t0 = time.perf_counter()
    session = TraceSession(TraceOptions(db=db, chains_every_s=1.0), command=command,
                           command_stdout=subprocess.DEVNULL).start()
    console.print(f"   live in {time.perf_counter() - t0:.2f} s: CUDA runtime + driver calls, scheduler, memory, "
                  f"block I/O and process events of the workload's process tree")
    latest = {"snap": session.snapshot()}
    runner = threading.Thread(target=session.run, kwargs={"on_tick": lambda s: latest.update(snap=s)},
                              name="ingero-demo-trace")
    runner.start()
    spec_path = data_dir("examples") / SPEC_NAME
    spec_text = spec_path.read_text()
    hist = None
    progress = Progress(TextColumn("   [progress.description]{task.description}"), BarColumn(), TimeElapsedColumn(),
                        console=console, transient=True)
    try:
        with progress:
            task = progress.add_task("tracing", total=seconds)

            def wait_until(t: float) -> None:
                while time.monotonic() - start < t and runner.is_alive():
                    s = latest["snap"]
                    progress.update(task, completed=min(time.monotonic() - start, seconds),
                                    description=f"tracing: {s.events:,} events, {s.rate:,.0f}/s")
                    time.sleep(0.1)

            start = time.monotonic()
            wait_until(1.0)
            progress.console.print(f"[bold]2.[/] the agent wants the allocation sizes and the big copies: it "
                                   f"validates [cyan]examples/{SPEC_NAME}[/] (no root needed)")
            result = session.check_spec(spec_text, f"examples/{SPEC_NAME}")
            if not result.ok:
                progress.console.print(render(result.errors, result.source))
                raise click.Abort()
            for p in result.spec.probes:
                for line in describe(p, full=False).splitlines()[:3]:
                    progress.console.print(f"   {line}")
            t = time.perf_counter()
            live = session.attach_spec(result.spec, owner="demo")
            took = time.perf_counter() - t
            progress.console.print(f"[bold]3.[/] attach: probes {', '.join(f'#{lp.id} {lp.name}' for lp in live)} "
                                   f"live in {took:.2f} s (budgets: ttl {live[0].budgets.ttl_s:g} s, "
                                   f"{live[0].budgets.events:,} events)")
            wait_until(min(seconds - 1.0, 4.0))
            dyn = session.dynamic
            deadline = time.monotonic() + PROBES_SEE_CALLS_S
            while (time.monotonic() < deadline and runner.is_alive()
                   and any((st := dyn.stats(lp.id)) is None or st.matched == 0 for lp in live)):
                time.sleep(0.1)  # each probe's first call (the workers call in rounds: a slow attach waits)
            for lp in live:
                aggs = dyn.aggregates(lp.id)
                if aggs:
                    row = aggs[-1]
                    key, buckets = next(iter(row.hists.items()))
                    hist = (f"{lp.name}: {key}, {row.count:,} calls, sum(size) {row.values.get('sum(size)', 0):,} B",
                            buckets)
                    progress.console.print(f"[bold]4.[/] results of #{lp.id} {lp.name}: {row.count:,} calls so far, "
                                           f"in-kernel {key}:")
                    for line in hist_lines(buckets, width=30):
                        progress.console.print(f"   {line}")
                else:
                    progress.console.print(f"   #{lp.id} {lp.name}: {lp.events:,} events recorded "
                                           f"(stored in the trace database next to the standard ops)")
            t = time.perf_counter()
            for lp in live:
                dyn.detach(lp.id, "detached by the demo")
            progress.console.print(f"[bold]5.[/] detach both probes: {(time.perf_counter() - t) * 1000:.0f} ms; "
                                   f"the standard trace goes on")
            wait_until(seconds)
            stop_file.touch()  # the workers end their round and exit; the trace ends with them
            wait_until(time.monotonic() - start + 30.0)
    finally:
        stop_file.touch()
        session.stop("the demo ended")
        runner.join()
        shutil.rmtree(stop_dir, ignore_errors=True)
    snap = session.snapshot()
    lost = sum(snap.lost.values())
    console.print(f"   the workload exited: {snap.events:,} events in {snap.elapsed_s:.1f} s, {lost} lost")
    return hist


def _show_database(console, db: Path, probe_hist) -> None:
    from rich.table import Table

    from ingero.analysis import causal_chains, trace_stats
    from ingero.runtime.format import hist_lines
    from ingero.store import TraceReader

    reader = TraceReader.open(db)
    try:
        stats = trace_stats(reader)
        chains = causal_chains(reader, top_n=3)
        probes = reader.conn.execute("SELECT id, name, status, end_reason FROM probes").fetchall() \
            if "probes" in reader.tables else []
    finally:
        reader.close()
    t = Table(title=f"trace statistics ({db.name}: {stats.stored_events:,} events)")
    for col in ("op", "count", "p50", "p95", "p99", "max"):
        t.add_column(col, justify="left" if col == "op" else "right")
    for op in stats.ops[:12]:
        t.add_row(op.name, f"{op.count:,}", _us(op.p50_ns), _us(op.p95_ns), _us(op.p99_ns), _us(op.max_ns))
    console.print(t)
    if chains.chains:
        c = Table(title="top causal chains")
        c.add_column("severity")
        c.add_column("summary")
        c.add_column("first recommendation")
        for ch in chains.chains:
            c.add_row(ch.severity, ch.summary, ch.recommendations[0] if ch.recommendations else "")
        console.print(c)
    else:
        console.print("no causal chain detected in this trace")
    for pid_, name, status, reason in probes:
        console.print(f"dynamic probe #{pid_} {name}: {status} ({reason})")
    if probe_hist:
        title, buckets = probe_hist
        console.print(f"histogram of {title}:")
        for line in hist_lines(buckets, width=30):
            console.print(f"   {line}")


def _us(ns: int) -> str:
    return f"{ns / 1000:,.1f} µs"


def _epilogue(console, db: Path) -> None:
    import json

    ingero = Path(sys.executable).parent / "ingero"
    path = db.resolve()
    console.rule("[bold]investigate it")
    console.print("replay the trace over MCP (stdio):")
    console.print(f"   {ingero} mcp --db {path}", highlight=False, soft_wrap=True)
    console.print("MCP client configuration (Claude Code: .mcp.json; Cursor: mcp.json):")
    cfg = {"mcpServers": {"ingero": {"command": str(ingero), "args": ["mcp", "--db", str(path)]}}}
    console.print(json.dumps(cfg, indent=2), highlight=False, soft_wrap=True)
    console.print("or look at it: "
                  f"{ingero} export perfetto --db {path} -o trace.json  (open in https://ui.perfetto.dev)",
                  highlight=False, soft_wrap=True)
