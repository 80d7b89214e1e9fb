"""``ingero probe run`` while events stream (about 1000 a second): SIGINT ends it within a second with
the summary and the in-kernel aggregates; two SIGINTs 0.05 s apart, and SIGTERM, end it as cleanly (no
traceback, the summary printed)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, skip_or_fail

pytestmark = pytest.mark.bpf


@pytest.fixture(scope="module")
def ticker(tmp_path_factory):
    if shutil.which("gcc") is None:
        skip_or_fail("needs gcc")
    d = tmp_path_factory.mktemp("tick")
    subprocess.run(["gcc", "-O1", "-o", d / "tick", ROOT / "tests" / "native" / "tick.c"], check=True)
    spec = d / "tick.probe"
    spec.write_text(f"probe t = {d / 'tick'}:tick(i64 i) -> i64\n  record i, retval, latency\n"
                    f"probe h = {d / 'tick'}:tick(i64 i) -> i64\n  aggregate count, hist(latency)\n")
    return d


@pytest.mark.parametrize("signals", [(signal.SIGINT,), (signal.SIGINT, signal.SIGINT), (signal.SIGTERM,)],
                         ids=["sigint", "sigint-twice", "sigterm"])
def test_signal_ends_probe_run_with_the_summary(need_bpf, ticker, signals):
    exe = os.path.join(os.path.dirname(sys.executable), "ingero")
    cmd = [exe, "probe", "run", str(ticker / "tick.probe"), "--", str(ticker / "tick")]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        seen = 0
        deadline = time.monotonic() + 120
        while seen < 200 and time.monotonic() < deadline:  # events are streaming
            if p.stdout.readline().startswith("t tick "):
                seen += 1
        assert seen == 200
        t0 = time.monotonic()
        for i, sig in enumerate(signals):
            if i:
                time.sleep(0.05)
            os.kill(p.pid, sig)
        out = p.stdout.read()  # through the same buffer the lines above came from (stderr is a few lines)
        err = p.stderr.read()
        p.wait(timeout=30)
        took = time.monotonic() - t0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err
    assert "Traceback" not in err and "Error" not in err, err
    assert took < 1.0, f"ended {took:.2f}s after the signal"
    assert f"stopped by {signal.Signals(signals[0]).name}" in err
    summary = [line for line in out.splitlines() if line.startswith("probe ")]
    assert [line.split(":")[0] for line in summary] == ["probe t", "probe h"], out[-2000:]
    # the in-kernel aggregate: every call the histogram counted, and the recorded probe matched them all
    hist_count = next(int(line.split("count ")[1].split(",")[0]) for line in out.splitlines() if line.startswith("@h"))
    matched = int(summary[0].split(": ")[1].split(" matched")[0])
    printed = sum(1 for line in out.splitlines() if line.startswith("t tick ")) + seen
    assert hist_count > 0 and matched == printed, (hist_count, matched, printed)
