"""``ingero demo``: trace the bundled CUDA workload live and show what the kernel saw.

This is what ``make demo`` runs. It grows with the project; today it attaches entry and return probes
(uprobe_multi links) to the CUDA runtime calls of the bundled workload, runs it, and prints per-call
counts, arguments, return codes and latencies next to what the workload is known to have called.
"""

from __future__ import annotations

import statistics
import sys
from collections import defaultdict

import click

from ingero import workload


@click.command()
@click.option("--repeat", default=200, show_default=True, help="Times the workload runs its call plan.")
def demo(repeat: int) -> None:
    """Trace the bundled CUDA workload live (needs root and BPF)."""
    from rich.console import Console
    from rich.table import Table

    from ingero.errors import BpfUnavailable
    from ingero.runtime.kernel import bpf_problem
    from ingero.symbols import read_symbols, resolve_library

    console = Console()
    problem = bpf_problem()
    if problem:
        raise BpfUnavailable(f"cannot trace live here: {problem}")

    lib = resolve_library(str(workload.wheel_libcudart(12)))
    table = read_symbols(lib)
    names = sorted({c.name for c in workload.PLAN})
    syms = [(n, table.get(n).file_offset) for n in names]
    console.print(f"[bold]ingero demo[/]: {lib.soname} ({lib.path}), build-id {lib.build_id[:12]}…")
    console.print(f"  {len(table)} function symbols; probing {len(names)}: {', '.join(names)}")

    with console.status("starting the workload") as status:
        run = workload.trace_workload(str(lib.attach_path), syms, repeat, on_phase=status.update)
    calls, lost, t_attach, t_detach = run.calls, run.lost, run.compile_attach_s, run.detach_s

    expected = workload.expected_counts(repeat)
    by = defaultdict(list)
    for c in calls:
        by[c.symbol].append(c)
    t = Table(title=f"CUDA runtime calls of pid {run.pid}, seen by uprobes")
    for col in ("function", "calls", "expected", "args seen (first call)", "return", "p50 µs", "max µs"):
        t.add_column(col, justify="right" if col in ("calls", "expected", "p50 µs", "max µs") else "left")
    for name in names:
        cs = by.get(name, [])
        lat = [c.latency_ns / 1000 for c in cs] or [0.0]
        rcs = sorted({c.retval32 for c in cs})
        rc_txt = ", ".join("35 (insufficient driver)" if r == 35 else str(r) for r in rcs)
        t.add_row(
            name,
            str(len(cs)),
            str(expected[name]),
            _args_text(name, cs[0].args) if cs else "",
            rc_txt,
            f"{statistics.median(lat):.1f}",
            f"{max(lat):.1f}",
        )
    console.print(t)
    ok = all(len(by.get(n, [])) == expected[n] for n in names) and lost == 0
    console.print(
        f"attach {t_attach * 1000:.0f} ms (compile included), detach {t_detach * 1000:.1f} ms, "
        f"{len(calls)} calls, {lost} lost: " + ("[green]every call seen[/]" if ok else "[red]MISMATCH[/]")
    )
    if not ok:
        sys.exit(1)


def _args_text(name: str, a: tuple[int, ...]) -> str:
    if name == "cudaMalloc":
        return f"size={a[1]}"
    if name == "cudaMemcpy":
        return f"count={a[2]} kind={a[3]}"
    if name == "cudaMemcpyAsync":
        return f"count={a[2]} kind={a[3]} stream={a[4]:#x}"
    if name == "cudaLaunchKernel":
        return f"func={a[0]:#x} grid=({a[1] & 0xFFFFFFFF},{a[1] >> 32},{a[2] & 0xFFFFFFFF})"
    if name == "cudaStreamSynchronize":
        return f"stream={a[0]:#x}"
    if name == "cudaFree":
        return f"ptr={a[0]:#x}"
    return ""
