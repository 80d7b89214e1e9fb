"""Run every benchmark in bench/ and write docs/benchmarks.md with the machine the figures came from.

Each ``bench/bench_*.py`` prints its figures, each against a baseline measured in the same run, as a
Markdown section (a heading, a sentence on what was compared, a table). Usage::

    python bench/run_all.py [--quick] [NAME ...]     # NAME: bench_symbols, ...
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


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


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    ap.add_argument("names", nargs="*")
    args = ap.parse_args()
    benches = sorted(HERE.glob("bench_*.py"))
    if args.names:
        benches = [b for b in benches if b.stem in args.names]
    sections, failed = [], []
    for b in benches:
        print(f"== {b.stem}", flush=True)
        t0 = time.perf_counter()
        cmd = [sys.executable, str(b)] + (["--quick"] if args.quick else [])
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        print(r.stdout, end="")
        if r.returncode != 0:
            print(r.stderr, file=sys.stderr)
            failed.append(b.stem)
            sections.append(f"## {b.stem}\n\nFAILED (exit {r.returncode}):\n\n```\n{r.stderr[-2000:]}\n```\n")
        else:
            text = r.stdout.strip()
            if not text.startswith("## "):  # plain-text output: keep its layout
                text = f"## {b.stem}\n\n```\n{text}\n```"
            sections.append(text + f"\n\n_{b.name} took {time.perf_counter() - t0:.1f} s._\n")
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
