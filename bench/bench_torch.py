"""PyTorch scale: `ingero symbols libtorch_cuda.so` (120k C++ functions) cold and warm beside
`nm -C --defined-only` on the same file, with peak RSS and the cache file's size; and `ingero trace` over
`import torch` (tens of thousands of `__cudaRegister*` calls) with its peak RSS and lost events, beside
the import alone. The listing cold against nm -C in alternating rounds, the trace once (a torch import costs
seconds of CPU; the machine may be shared).

Targets (issue 11): symbols warm < 0.5 s, cold no slower than `nm -C`, peak RSS < 250 MB, cache file
< 30 MB; trace peak RSS < 250 MB with events lost counted and under 1%.
"""

from __future__ import annotations

import os
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PY = sys.executable
INGERO = str(Path(PY).parent / "ingero")
FIXTURE = Path(os.environ.get("TORCH_FIXTURE", "/var/cache/ingero-fixtures/torch-2.14.1-py3.11"))
IMPORT = "import torch; torch.cuda.is_available()"
#: rounds of nm -C then a cold ingero listing (each ~1 s)
ROUNDS = 7


def hwm(cmd: list[str]) -> tuple[float, float, str, float]:
    """(wall seconds, peak RSS in MB of the command's own process -- not of its children --, "" (its
    output is discarded), CPU seconds user + system of it and of the children it waited for): the
    kernel's high-water mark (VmHWM) of that process, read until it exits, and its rusage."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = 0
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        try:
            with open(f"/proc/{p.pid}/status") as f:
                peak = max([peak] + [int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:")])
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed with exit {p.returncode}")
    return time.perf_counter() - t0, peak / 1024, "", ru.ru_utime + ru.ru_stime


def run(cmd: list[str], env=None) -> tuple[float, float, str, float]:
    """(wall seconds, peak RSS in MB, stdout, CPU seconds user + system) of a command that starts no big
    process of its own: the children's high-water mark and rusage of a fresh helper process that runs
    it, its output read whole through a pipe as bytes (decoding 80-140 MB of text in the reader would
    slow the command writing into the pipe: the reader's cost, not the command's)."""
    helper = (
        "import json, os, resource, subprocess, sys, time\n"
        "t0 = time.perf_counter()\n"
        "p = subprocess.run(sys.argv[1:], capture_output=True)\n"
        "wall = time.perf_counter() - t0\n"
        "ru = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
        "print(json.dumps([p.returncode, wall, ru.ru_maxrss / 1024, p.stdout[-4000:].decode(errors='replace'),"
        " p.stderr[-2000:].decode(errors='replace'), ru.ru_utime + ru.ru_stime]))\n"
    )
    import json

    r = subprocess.run([PY, "-c", helper, *cmd], capture_output=True, text=True, env=env, timeout=3600)
    code, wall, rss, out, err, cpu = json.loads(r.stdout)
    if code:
        raise SystemExit(f"{' '.join(cmd)} failed with exit {code}: {err}")
    return wall, rss, out, cpu


def _median(runs: list[tuple[float, float, str, float]]) -> tuple[float, float, str, float]:
    """The median wall time, the highest peak RSS, the last run's output and the median CPU of ``runs``."""
    return (statistics.median(r[0] for r in runs), max(r[1] for r in runs), runs[-1][2],
            statistics.median(r[3] for r in runs))


def _middle_half(xs: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(xs, n=4)
    return q[0], q[2]


def main() -> None:
    tpy = FIXTURE / "bin" / "python"
    if not (FIXTURE / ".ready").exists():
        raise SystemExit(f"the PyTorch fixture is not built at {FIXTURE} (run: make torch-fixture)")
    lib = next(FIXTURE.glob("lib/python3*/site-packages/torch/lib/libtorch_cuda.so"))
    print("## PyTorch scale (bench_torch.py)\n")
    nms, colds, ratios = [], [], []
    for _ in range(ROUNDS):  # nm, then ingero with a fresh cache: the pair close in time, the ratio per round
        nms.append(run(["nm", "-C", "--defined-only", str(lib)]))
        with tempfile.TemporaryDirectory() as cache:
            colds.append(run([INGERO, "symbols", str(lib)], env=dict(os.environ, INGERO_CACHE_DIR=cache)))
        ratios.append(colds[-1][0] / nms[-1][0])
    nm_wall, nm_rss, _, nm_cpu = _median(nms)
    cold_wall, cold_rss, out, cold_cpu = _median(colds)
    ratio = statistics.median(ratios)
    low, high = _middle_half(ratios)
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, INGERO_CACHE_DIR=cache)
        run([INGERO, "symbols", str(lib)], env=env)
        count = int(re.search(r"# (\d+) of (\d+) function symbols", out).group(2))
        warm_wall, warm_rss, _, warm_cpu = _median([run([INGERO, "symbols", str(lib)], env=env) for _ in range(3)])
        size = sum(f.stat().st_size for f in Path(cache, "symbols").iterdir()) / 2**20
    print(f"`ingero symbols` on {lib.name} ({lib.stat().st_size / 2**20:.0f} MiB, {count} function symbols, "
          "C++ names demangled, the whole listing read through a pipe), with a fresh cache (cold) and warm; "
          f"baseline `nm -C --defined-only` on the same file in the same run. Cold: {ROUNDS} rounds of nm then "
          "ingero, medians (peak RSS: the highest; the ratio: the median of each round's ratio, middle half in "
          "brackets); warm: the median of 3. CPU is user + system time of the process and its children: "
          "a cold listing demangles the tail of the names in a second process when a CPU is spare "
          "(ingero.symbols.demangle), so it spends more CPU than it takes time "
          f"(load average {os.getloadavg()[0]:.1f}).\n")
    print("| what | s | CPU s | peak RSS MB | vs nm -C |")
    print("|---|---|---|---|---|")
    print(f"| `nm -C --defined-only` | {nm_wall:.2f} | {nm_cpu:.2f} | {nm_rss:.0f} | 1.0x |")
    print(f"| `ingero symbols`, cold (parse, demangle, write the cache) | {cold_wall:.2f} | {cold_cpu:.2f} | "
          f"{cold_rss:.0f} | {ratio:.2f}x the time ({low:.2f}–{high:.2f}) |")
    print(f"| `ingero symbols`, warm | {warm_wall:.2f} | {warm_cpu:.2f} | {warm_rss:.0f} | "
          f"{warm_wall / nm_wall:.2f}x the time |")
    print()
    print(f"Cache file: {size:.1f} MB (target < 30 MB: {'met' if size < 30 else 'NOT met'}). "
          f"Warm {warm_wall:.2f} s (target < 0.5 s: {'met' if warm_wall < 0.5 else 'NOT met'}); cold "
          f"{ratio:.2f}x nm -C (target <= 1x: {'met' if ratio <= 1 else 'NOT met'}); "
          f"peak RSS {max(cold_rss, warm_rss):.0f} MB (target < 250 MB: "
          f"{'met' if max(cold_rss, warm_rss) < 250 else 'NOT met'}).\n")

    with tempfile.TemporaryDirectory() as d:
        base_wall, base_rss, _, base_cpu = run([str(tpy), "-c", IMPORT])
        db = Path(d) / "torch.db"
        wall, rss, _, cpu = hwm([INGERO, "trace", "--quiet", "--db", str(db), "--", str(tpy), "-c", IMPORT])
        conn = sqlite3.connect(db)
        try:
            events = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
            calls = conn.execute("SELECT COUNT(*) FROM events WHERE source IN (1, 4)").fetchone()[0]
            lost = conn.execute("SELECT COALESCE(SUM(count), 0) FROM lost_events").fetchone()[0]
        finally:
            conn.close()
    share = lost / max(events + lost, 1)
    print(f"`ingero trace -- python -c '{IMPORT}'` (the standard set, stacks on), beside the same command "
          "alone. One run each.\n")
    print("| what | s | CPU s | peak RSS MB |")
    print("|---|---|---|---|")
    print(f"| the command alone | {base_wall:.1f} | {base_cpu:.1f} | {base_rss:.0f} |")
    print(f"| `ingero trace` (CPU: the tracer and the command; RSS: the tracer's own) | {wall:.1f} | {cpu:.1f} | "
          f"{rss:.0f} |")
    print()
    print(f"Recorded {events} events ({calls} CUDA runtime/driver calls), {lost} lost ({share:.2%}; target "
          f"< 1%: {'met' if share < 0.01 else 'NOT met'}). Tracer peak RSS {rss:.0f} MB (target < 250 MB: "
          f"{'met' if rss < 250 else 'NOT met'}).")


if __name__ == "__main__":
    main()
