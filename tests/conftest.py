"""Shared fixtures.

``need_root`` / ``need_bpf``: a test that needs root or BPF skips on a machine without them, except
under ``CI=true``, where it fails instead (CI must exercise the real kernel paths).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def skip_or_fail(reason: str) -> None:
    """Skip locally; fail under CI=true, where every environment-dependent test must run."""
    if IN_CI:
        pytest.fail(f"CI=true and this test cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def need_root() -> None:
    if os.geteuid() != 0:
        skip_or_fail("needs root")


@pytest.fixture
def need_bpf(need_root) -> None:
    from ingero.runtime.kernel import bpf_problem

    problem = bpf_problem()
    if problem:
        skip_or_fail(problem)


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path_factory, monkeypatch):
    """Each test session gets its own cache and state dirs unless a test sets its own."""
    base = tmp_path_factory.getbasetemp()
    monkeypatch.setenv("INGERO_CACHE_DIR", str(base / "cache"))
    monkeypatch.setenv("INGERO_STATE_DIR", str(base / "state"))


@pytest.fixture(scope="session")
def cudart12() -> Path:
    """The real libcudart.so.12 from the nvidia-cuda-runtime-cu12 wheel (a test dependency)."""
    from ingero.workload import wheel_libcudart

    return wheel_libcudart(12)


@pytest.fixture(scope="session")
def python() -> str:
    return sys.executable
