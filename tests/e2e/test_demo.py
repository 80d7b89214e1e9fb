"""`ingero demo` (what `make demo` runs) traces the workload live and sees every call."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.bpf


def test_demo_live_path(need_bpf):
    ingero = str(Path(sys.executable).parent / "ingero")
    r = subprocess.run([ingero, "demo", "--repeat", "20"], capture_output=True, text=True, timeout=120,
                       env={"COLUMNS": "160", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "every call seen" in out and "0 lost" in out
    for line in out.splitlines():
        if "cudaMalloc " in line or "│ cudaMalloc" in line:
            assert " 60 " in line and "size=1048576" in line and "35 (insufficient driver)" in line
            break
    else:
        raise AssertionError(out)
