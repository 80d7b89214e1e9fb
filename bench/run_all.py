"""Run every benchmark in bench/ and write docs/benchmarks.md with the machine the figures came from.

Each ``bench/bench_*.py`` prints its figures, each against a baseline measured in the same run, as a
Markdown section (a heading, a sentence on what was compared, a table). Usage::

    python bench/run_all.py [--quick] [NAME ...]     # NAME: bench_symbols, ...
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from benchproc import run_group  # noqa: E402

TIMEOUT_S = 1800.0  # one benchmark; past it the benchmark is killed, reported, and the run goes on


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{platform.node()}: {cpu}, {os.cpu_count()} CPUs, {mem:.0f} GiB RAM, Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def run_benches(benches: list[Path], extra: list[str], timeout: float) -> tuple[list[str], list[str]]:
    """Run each benchmark with a deadline; (Markdown sections, names that failed or timed out)."""
    sections, failed = [], []
    for b in benches:
        print(f"== {b.stem}", flush=True)
        load_before = os.getloadavg()[0]
        r = run_group([sys.executable, str(b), *extra], timeout, cwd=ROOT)
        print(r.stdout, end="")
        if r.returncode != 0:
            print(r.stderr, file=sys.stderr)
            failed.append(b.stem)
            why = r.note or f"exit {r.returncode}"
            sections.append(f"## {b.stem}\n\nFAILED ({why}):\n\n```\n{(r.stdout + r.stderr)[-2000:]}\n```\n")
        else:
            text = r.stdout.strip()
            if not text.startswith("## "):  # plain-text output: keep its layout
                text = f"## {b.stem}\n\n```\n{text}\n```"
            load = f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after, on {os.cpu_count()} CPUs"
            sections.append(text + f"\n\n_{b.name} took {r.seconds:.1f} s ({load})._\n")
    return sections, failed


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    ap.add_argument("--timeout", type=float, default=TIMEOUT_S, help="seconds one benchmark may run")
    ap.add_argument("names", nargs="*")
    args = ap.parse_args()
    benches = sorted(HERE.glob("bench_*.py"))
    if args.names:
        benches = [b for b in benches if b.stem in args.names]
    sections, failed = run_benches(benches, ["--quick"] if args.quick else [], args.timeout)
    out = ROOT / "docs" / "benchmarks.md"
    out.write_text(
        "# Benchmarks\n\n"
        "Written by `make bench` (`python bench/run_all.py`); every figure is compared with a baseline "
        "measured in the same run.\n\n"
        f"Machine: {machine()}.  \nDate: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
        f"{' (quick run)' if args.quick else ''}.\n\n" + "\n".join(sections)
    )
    print(f"wrote {out.relative_to(ROOT)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
