"""`ingero demo` (what `make demo` runs): the live story, and the replay fallback where BPF is missing."""

from __future__ import annotations

import hashlib
import os
import site
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, skip_or_fail
from tests.helpers import python_for

INGERO = str(Path(sys.executable).parent / "ingero")
SHIPPED = ROOT / "examples" / "demo-trace.db"


@pytest.mark.bpf
def test_demo_live_path(need_bpf, tmp_path):
    db = tmp_path / "demo.db"
    r = subprocess.run([INGERO, "demo", "--db", str(db), "--seconds", "3", "--workers", "2"],
                       capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    for step in ("1. start the bundled CUDA workload", "2. the agent wants", "3. attach: probes #1 allocs, #2 "
                 "big_copies", "4. results of #1 allocs", "5. detach both probes", "trace statistics",
                 f"{INGERO} mcp --db {db}", '"mcpServers"'):
        assert step in out, step
    assert " 0 lost" in out
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        probes = conn.execute("SELECT name, status, end_reason FROM probes ORDER BY id").fetchall()
        assert probes == [("allocs", "detached", "detached by the demo"),
                          ("big_copies", "detached", "detached by the demo")]
        # the big_copies probe recorded the 64 KiB device-to-host copies of the workers, nothing smaller
        assert conn.execute("SELECT DISTINCT count, kind FROM probe_big_copies").fetchall() == [(65536, 2)]
        workers = {p for (p,) in conn.execute("SELECT DISTINCT pid FROM events WHERE source = 1")}
        assert len(workers) == 2
    finally:
        conn.close()


def _demo_as_nobody(tmp_path, ci: bool) -> subprocess.CompletedProcess:
    nobody = 65534
    python = python_for(nobody)
    if python is None:
        skip_or_fail("no interpreter of this Python version runnable by uid 65534")
    path = os.pathsep.join([str(ROOT), *site.getsitepackages()])
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": path, "HOME": str(tmp_path), "COLUMNS": "160",
           "INGERO_STATE_DIR": str(tmp_path), "INGERO_CACHE_DIR": str(tmp_path)}
    if ci:
        env["CI"] = "true"
    os.chmod(tmp_path, 0o777)
    return subprocess.run([python, "-c", "from ingero.cli import main; main(['demo'])"], capture_output=True,
                          text=True, timeout=120, env=env, cwd=tmp_path, user=nobody, group=nobody)


def test_without_bpf_the_demo_replays_the_shipped_recording(need_root, tmp_path):
    before = hashlib.sha256(SHIPPED.read_bytes()).hexdigest()
    r = _demo_as_nobody(tmp_path, ci=False)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    [why] = [line for line in lines if line.startswith("live tracing is not possible here")]
    assert "BPF tracing needs root" in why and "demo-trace.db" in why
    assert "trace statistics (demo-trace.db:" in r.stdout and "cudaMalloc" in r.stdout
    assert f"mcp --db {SHIPPED}" in r.stdout
    assert hashlib.sha256(SHIPPED.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in SHIPPED.parent.glob("demo-trace.db*")) == ["demo-trace.db"]


def test_under_ci_there_is_no_fallback(need_root, tmp_path):
    r = _demo_as_nobody(tmp_path, ci=True)
    assert r.returncode == 1
    assert "no replay fallback under CI=true" in r.stderr and "Traceback" not in r.stderr
