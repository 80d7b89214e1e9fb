"""Symbol listing: ingero's reader cold and warm, against `nm -D` on the same file, and the CLI end to end.

Targets (issue 3): the warm library call at least 10x faster than `nm -D`; `ingero symbols libcudart`
end to end under 150 ms. Baselines measured in the same run: `nm -D --defined-only` on the same file and
`python -c pass` (the interpreter's own start-up).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PY = sys.executable
INGERO = str(Path(PY).parent / "ingero")

TIMED_CALL = """
import sys, time
t0 = time.perf_counter()
from ingero.symbols import read_symbols
t1 = time.perf_counter()
t = read_symbols(sys.argv[1])
t2 = time.perf_counter()
read_symbols(sys.argv[1])
t3 = time.perf_counter()
print(t1 - t0, t2 - t1, t3 - t2, len(t))
"""


def wall(cmd: list[str], env=None) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, env=env, timeout=600)
    return time.perf_counter() - t0


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    runs = 5 if ap.parse_args().quick else 15
    from ingero.workload import wheel_libcudart

    lib = str(wheel_libcudart(12))
    imp, cold, warm_first, in_proc, nm, cli, py = [], [], [], [], [], [], []
    n = 0
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as cache:
            env = dict(os.environ, INGERO_CACHE_DIR=cache)
            out = subprocess.run([PY, "-c", TIMED_CALL, lib], env=env, capture_output=True, text=True, check=True,
                                 timeout=600)
            _, c, _, n = out.stdout.split()
            cold.append(float(c))
            out = subprocess.run([PY, "-c", TIMED_CALL, lib], env=env, capture_output=True, text=True, check=True,
                                 timeout=600)
            i, w, again, _ = out.stdout.split()
            imp.append(float(i))
            warm_first.append(float(w))
            in_proc.append(float(again))
            nm.append(wall(["nm", "-D", "--defined-only", lib]))
            cli.append(wall([INGERO, "symbols", "libcudart"], env=env))
            py.append(wall([PY, "-c", "pass"]))
    rows = [
        ("read_symbols, cold (parse ELF, write the cache)", med(cold), med(nm)),
        ("read_symbols, warm (from the disk cache, first call in a new process)", med(warm_first), med(nm)),
        ("read_symbols, again in the same process (memo)", med(in_proc), med(nm)),
        ("`import ingero.symbols` (paid once per process)", med(imp), med(nm)),
        ("`ingero symbols libcudart`, end to end (warm)", med(cli), med(py)),
    ]
    print("## Symbol listing (bench_symbols.py)\n")
    print(
        f"{Path(lib).name} from the nvidia-cuda-runtime-cu12 wheel, {n} function symbols; median of {runs} runs. "
        f"Baselines in the same run: `nm -D --defined-only` on the same file ({med(nm) * 1000:.1f} ms, "
        f"a process of its own) and `python -c pass` ({med(py) * 1000:.1f} ms).\n"
    )
    print("| what | ms | baseline ms | baseline / ours |")
    print("|---|---|---|---|")
    for what, ours, base in rows:
        print(f"| {what} | {ours * 1000:.2f} | {base * 1000:.1f} | {base / ours:.1f}x |")
    print()
    fast = med(nm) / med(warm_first)
    print(
        f"Warm library call vs `nm -D` on the same file: {fast:.1f}x faster (target >= 10x: "
        f"{'met' if fast >= 10 else 'NOT met'}); with the one-off import counted too: "
        f"{med(nm) / (med(imp) + med(warm_first)):.1f}x. "
        f"`ingero symbols` end to end: {med(cli) * 1000:.0f} ms (target < 150 ms: "
        f"{'met' if med(cli) < 0.150 else 'NOT met'}), {med(cli) - med(py):.3f} s above bare Python start-up."
    )


if __name__ == "__main__":
    main()
