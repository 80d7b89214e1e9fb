"""``ingero selftest``: check this machine end to end and save the report get_test_report serves."""

from __future__ import annotations

import json
import sys

import click


@click.command()
@click.option("--repeat", default=100, show_default=True, help="Times the workload runs its call plan.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of a table.")
@click.option("--no-save", is_flag=True, help="Do not write the report to STATE_DIR/selftest/.")
def selftest(repeat: int, as_json: bool, no_save: bool) -> None:
    """Check that ingero can trace on this machine: BPF, the CUDA runtime, exact probe counts on the
    bundled workload, attach and detach timings, nothing left attached. Needs root for the BPF checks.

    \b
    Example:
        sudo ingero selftest
    """
    from ingero.selftest import run_selftest, write_report

    if as_json:
        report = run_selftest(repeat)
    else:
        from rich.console import Console

        console = Console(stderr=True)
        with console.status("selftest") as status:
            report = run_selftest(repeat, progress=lambda name: status.update(f"selftest: {name}…"))
    path = None if no_save else write_report(report)
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True))
    else:
        from rich.console import Console
        from rich.table import Table

        t = Table(title=f"ingero selftest on {report['system']['host']} (Linux {report['system']['kernel']})")
        t.add_column("check")
        t.add_column("result")
        t.add_column("ms", justify="right")
        t.add_column("detail")
        colours = {"pass": "green", "fail": "red", "skip": "yellow"}
        for r in report["tests"]:
            t.add_row(r["name"], f"[{colours[r['status']]}]{r['status']}[/]", f"{r['duration_ms']:.0f}", r["detail"])
        Console().print(t)
        s = report["summary"]
        click.echo(f"{s['passed']} passed, {s['failed']} failed, {s['skipped']} skipped")
    if path:
        click.echo(f"report written to {path}", err=True)
    if report["summary"]["failed"] or report["summary"]["skipped"]:
        sys.exit(1)
