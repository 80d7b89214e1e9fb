"""The benchmarks' subprocess helpers: a child that ignores its signal is killed, the run goes on, the
report says so."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import benchproc  # noqa: E402
import run_all  # noqa: E402

STUBBORN = ("import signal, sys, time\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "print('ready', flush=True)\n"
            "time.sleep(120)\n")


def test_stop_kills_a_child_that_ignores_sigterm(monkeypatch):
    monkeypatch.setattr(benchproc, "NOTES", [])
    proc = subprocess.Popen([sys.executable, "-c", STUBBORN], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    t0 = time.monotonic()
    assert benchproc.stop(proc, "stubborn", grace=0.5) is True
    took = time.monotonic() - t0
    assert proc.returncode == -9 and 0.5 <= took < 5, (proc.returncode, took)
    assert benchproc.NOTES == ["stubborn ignored SIGTERM for 0.5 s and was killed"]
    assert "stubborn ignored SIGTERM" in benchproc.notes_markdown()


def test_stop_leaves_no_note_for_a_child_that_obeys(monkeypatch):
    monkeypatch.setattr(benchproc, "NOTES", [])
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    assert benchproc.stop(proc, "obedient", grace=5) is False
    assert proc.returncode == -15 and benchproc.NOTES == []


def test_a_hanging_benchmark_is_killed_reported_and_the_run_goes_on(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(benchproc, "GRACE_S", 0.5)
    hang = tmp_path / "bench_hang.py"
    hang.write_text(STUBBORN)
    ok = tmp_path / "bench_ok.py"
    ok.write_text("print('## ok\\n\\nfigures')\n")
    t0 = time.monotonic()
    sections, failed = run_all.run_benches([hang, ok], [], timeout=1.0)
    assert time.monotonic() - t0 < 10
    assert failed == ["bench_hang"]
    assert "FAILED (timed out after 1 s: sent SIGTERM to its process group, which ignored it for 0.5 s and " \
           "was killed)" in sections[0] and "ready" in sections[0]
    assert sections[1].startswith("## ok\n\nfigures")
