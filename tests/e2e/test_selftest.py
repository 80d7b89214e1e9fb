"""`ingero selftest` runs its checks for real and writes the report that get_test_report serves."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.bpf


def test_selftest_passes_and_get_test_report_serves_it(need_bpf, tmp_path, monkeypatch):
    env = dict(os.environ, INGERO_STATE_DIR=str(tmp_path))
    ingero = str(Path(sys.executable).parent / "ingero")
    r = subprocess.run([ingero, "selftest", "--json", "--repeat", "20"], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(r.stdout)
    assert report["summary"] == {"passed": 5, "failed": 0, "skipped": 0}
    by = {t["name"]: t for t in report["tests"]}
    assert by["probes_fire_exact_counts"]["figures"]["calls"] == 20 * 13
    scale = by["attach_detach_every_libcudart_function"]["figures"]
    assert scale["probes"] == 2 * 435 and scale["detach_ms"] > 0
    [saved] = list((tmp_path / "selftest").glob("report-*.json"))
    assert json.loads(saved.read_text()) == report

    from ingero.mcp.format import test_report_text

    monkeypatch.setenv("INGERO_STATE_DIR", str(tmp_path))
    assert json.loads(test_report_text(tsc=True)) == report


def test_get_test_report_without_a_report_says_how_to_make_one(tmp_path, monkeypatch):
    monkeypatch.setenv("INGERO_STATE_DIR", str(tmp_path))
    from ingero.mcp.format import test_report_text

    assert "Run 'sudo ingero selftest'" in test_report_text()
