"""Bursts through ``ingero trace``: what is lost (target 0) and the tracer's peak memory (target < 250 MB).

Each burst runs as the traced command of the real CLI (``ingero trace --quiet --db ... -- CMD``):

* a 400 MiB allocation burst: a Python process touching 400 MiB of fresh memory, page by page
  (102,400 ``mm_page_alloc`` events in a second or two);
* 40,000 CUDA calls in one second (``cudaMemcpy`` of the wheel's libcudart.so.12, paced by
  ``bench/native/pacedcalls.c``), and 40,000 ``cudaDeviceSynchronize`` calls as fast as a C loop goes
  (``bench/native/callloop.c``; torch's import makes tens of thousands of registration calls in well under
  a second);
* ``import torch`` with the PyTorch test fixture (``make torch-fixture``), when it is built, with a DSL
  probe on its libcudart's ``__cudaRegister*`` (tens of thousands of kernel registrations in under a
  second; the standard set does not probe them).

Lost events are what the trace database records (``lost_events``, filled from the kernel's per-ring
counters: a full ring buffer is counted, never silent); the expected counts are the workload's own. Peak
RSS is the tracer process's ``VmHWM``, read until it exits.
"""

from __future__ import annotations

import argparse
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))
from bench_overhead import build  # noqa: E402  (bench/native/callloop.c)
from benchproc import notes_markdown, stop  # noqa: E402

from tests.helpers import TORCH_FIXTURE_DEFAULT  # noqa: E402

HERE = Path(__file__).resolve().parent
INGERO = str(Path(sys.executable).parent / "ingero")
TOUCH = (
    "import sys, time\n"
    "n = int(sys.argv[1]) << 20\n"
    "t0 = time.perf_counter()\n"
    "b = bytearray(n)\n"
    "for i in range(0, n, 4096):\n"
    "    b[i] = 1\n"
    "print(f'touched {n >> 20} MiB in {time.perf_counter() - t0:.3f} s', flush=True)\n"
)


def peak_rss_mb(pid: int, done: threading.Event, out: list[int]) -> None:
    """Keep the last VmHWM (kB) of ``pid`` read before it exits."""
    while not done.is_set():
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        out[0] = max(out[0], int(line.split()[1]))
        except OSError:
            return
        time.sleep(0.02)


def trace(cmd: list[str], db: Path, stdin_text: str | None = None) -> tuple[str, float, float]:
    """Run ``ingero trace`` on ``cmd`` (options first, then ``--`` and the command, or just the command):
    (its output, peak RSS MB, seconds)."""
    t0 = time.perf_counter()
    cmd = cmd if "--" in cmd else ["--", *cmd]
    proc = subprocess.Popen([INGERO, "trace", "--quiet", "--db", str(db), *cmd],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    hwm = [0]
    done = threading.Event()
    sampler = threading.Thread(target=peak_rss_mb, args=(proc.pid, done, hwm))
    sampler.start()
    try:
        out, _ = proc.communicate(stdin_text or "", timeout=300)
    except subprocess.TimeoutExpired:
        stop(proc, "ingero trace")
        out = "timed out"
    finally:
        done.set()
        sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"ingero trace failed ({proc.returncode}): {out[-2000:]}")
    return out, hwm[0] / 1024, time.perf_counter() - t0


def db_counts(db: Path, sql: str) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(conn.execute(sql).fetchone()[0])
    finally:
        conn.close()


def lost(db: Path) -> int:
    return db_counts(db, "SELECT COALESCE(SUM(count), 0) FROM lost_events")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    quick = ap.parse_args().quick
    mib = 100 if quick else 400
    calls = 10_000 if quick else 40_000
    from ingero.workload import wheel_libcudart

    lib = str(wheel_libcudart(12))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paced = os.path.join(tmp, "pacedcalls")
        subprocess.run(["gcc", "-O2", "-o", paced, str(HERE / "native" / "pacedcalls.c"), "-ldl"], check=True,
                       timeout=120)

        db = Path(tmp) / "alloc.db"
        out, rss, secs = trace([sys.executable, "-c", TOUCH, str(mib)], db)
        pages = db_counts(db, "SELECT COUNT(*) FROM events WHERE source = 3 AND op = 3")
        touched = next((line for line in out.splitlines() if line.startswith("touched")), "")
        rows.append((f"{mib} MiB allocation burst ({touched.replace('touched ', '')})",
                     f"{pages:,} page allocations (≥ {mib * 256:,} expected)", lost(db), rss, secs))

        db = Path(tmp) / "paced.db"
        out, rss, secs = trace([paced, lib, "cudaMemcpy"], db, f"{calls} 1 1\n")
        done = next(line for line in out.splitlines() if line.startswith("done "))
        made, elapsed_ns = (int(x) for x in done.split()[1:3])
        # the burst's calls are the copies of kind 1 (the loader's 16 warm-up calls are kind 0)
        stored = db_counts(db, "SELECT COUNT(*) FROM events WHERE source = 1 AND op = 4 AND arg1 = 1")
        rows.append((f"{calls:,} CUDA calls in one second (`cudaMemcpy`, {made:,} made in {elapsed_ns / 1e9:.3f} s)",
                     f"{stored:,} stored of {made:,}", lost(db), rss, secs))

        loop = build(tmp)
        db = Path(tmp) / "flat.db"
        out, rss, secs = trace([loop, lib, "cudaDeviceSynchronize", str(calls)], db)
        ns = next(float(m[1]) for m in re.finditer(r"^([\d.]+) \d+$", out, re.M))  # callloop's "ns pid"
        made = calls + 1000  # the loop's 1,000 warm-up calls, then the timed ones
        stored = db_counts(db, "SELECT COUNT(*) FROM events WHERE source = 1 AND op = 6")
        rows.append((f"{calls:,} CUDA calls as fast as they go (`cudaDeviceSynchronize`, {ns * calls / 1e9:.3f} s "
                     "traced)", f"{stored:,} stored of {made:,}", lost(db), rss, secs))
        torch = Path(os.environ.get("TORCH_FIXTURE", TORCH_FIXTURE_DEFAULT)) / "bin" / "python"
        cudarts = sorted(torch.parent.parent.glob("lib/python3*/site-packages/nvidia/*/lib/libcudart.so.*"))
        if not quick and torch.exists() and cudarts:
            # the standard set does not probe the kernel registrations torch's import makes: a DSL probe does
            spec = Path(tmp) / "register.probe"
            spec.write_text(f"probe register = {cudarts[0]}:__cudaRegister*\n    record symbol\n")
            db = Path(tmp) / "torch.db"
            out, rss, secs = trace(["--probe", str(spec), "--", str(torch), "-c", "import torch"], db)
            events = db_counts(db, "SELECT COUNT(*) FROM events")
            calls = db_counts(db, "SELECT COUNT(*) FROM events WHERE source = 100")
            span = db_counts(db, "SELECT (MAX(timestamp) - MIN(timestamp)) / 1000000 FROM events WHERE source = 100")
            rows.append(("`import torch` (the PyTorch test fixture), a DSL probe on `__cudaRegister*`",
                         f"{events:,} events, {calls:,} of them registration calls in {span / 1000:.2f} s",
                         lost(db), rss, secs))
        else:
            rows.append(("`import torch`", "not measured: " + ("--quick" if quick else f"no fixture at {torch}"),
                         0, 0.0, 0.0))
    print("## Bursts through `ingero trace`: events lost and peak memory\n")
    print("Each burst is the traced command of the real CLI (`ingero trace --quiet --db FILE -- CMD`); lost "
          "events as the database records them (a full ring is counted, never silent); peak RSS is the tracer "
          f"process's `VmHWM`. Targets: 0 lost, peak RSS under 250 MB. Load average at the end: "
          f"{os.getloadavg()[0]:.1f}.\n")
    print("| burst | recorded | events lost | tracer peak RSS (MB) | `ingero trace` wall time (s) |")
    print("|---|---|---|---|---|")
    for label, recorded, n_lost, rss, secs in rows:
        print(f"| {label} | {recorded} | {n_lost:,} | {rss:.0f} | {secs:.1f} |")
    print(notes_markdown())


if __name__ == "__main__":
    main()
