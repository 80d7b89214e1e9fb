"""`ingero demo` (what `make demo` runs): the live story, and the replay fallback where BPF is missing."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.helpers import OtherUser

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


def _demo_as_nobody(ci: bool) -> tuple[subprocess.CompletedProcess, Path]:
    """``ingero demo`` as uid 65534 from a copy of the project it can read; (result, its shipped recording)."""
    with OtherUser() as nobody:
        shipped = nobody.root / "examples" / SHIPPED.name
        before = hashlib.sha256(shipped.read_bytes()).hexdigest()
        r = nobody.run(["-c", "from ingero.cli import main; main(['demo'])"], env={"CI": "true"} if ci else {})
        assert hashlib.sha256(shipped.read_bytes()).hexdigest() == before
        assert sorted(p.name for p in shipped.parent.glob("demo-trace.db*")) == ["demo-trace.db"]
    return r, shipped


@pytest.mark.other_user
def test_without_bpf_the_demo_replays_the_shipped_recording(need_root):
    r, shipped = _demo_as_nobody(ci=False)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    [why] = [line for line in lines if line.startswith("live tracing is not possible here")]
    assert "BPF tracing needs root" in why and "demo-trace.db" in why
    assert "trace statistics (demo-trace.db:" in r.stdout and "cudaMalloc" in r.stdout
    assert f"mcp --db {shipped}" in r.stdout


@pytest.mark.other_user
def test_under_ci_there_is_no_fallback(need_root):
    r, _ = _demo_as_nobody(ci=True)
    assert r.returncode == 1
    assert "no replay fallback under CI=true" in r.stderr and "Traceback" not in r.stderr
