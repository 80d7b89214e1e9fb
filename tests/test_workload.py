"""The bundled workload itself: its handshake, its return codes, its fork mode."""

from __future__ import annotations

from collections import Counter

from ingero import workload
from tests.helpers import Workload


def test_plan_has_the_calls_the_issue_names():
    names = Counter(c.name for c in workload.PLAN)
    for n in ("cudaMalloc", "cudaMemcpy", "cudaMemcpyAsync", "cudaLaunchKernel", "cudaStreamSynchronize",
              "cudaDeviceSynchronize", "cudaFree"):
        assert names[n] >= 1
    assert names["cudaMalloc"] == names["cudaFree"] == len(workload.MALLOC_SIZES)
    assert workload.expected_counts(5)["cudaMalloc"] == 5 * len(workload.MALLOC_SIZES)


def test_waits_before_load_and_before_calls_then_returns_35():
    with Workload("--repeat", "2", wait_load=True, wait_calls=True) as w:
        assert w.expect("waiting load").endswith(f"pid={w.pid}")
        maps = open(f"/proc/{w.pid}/maps").read()
        assert "libcudart" not in maps  # nothing loaded before the signal
        w.go()
        assert w.expect("loaded ").endswith("libcudart.so.12")
        w.expect("waiting calls")
        assert "libcudart.so.12" in open(f"/proc/{w.pid}/maps").read()
        w.go()
        summary = w.finish()
    assert summary["calls"] == 2 * len(workload.PLAN)
    assert summary["return_codes"] == [35]


def test_cuda13_runtime_too():
    with Workload("--cuda-major", "13", wait_calls=False) as w:
        summary = w.finish()
    assert summary["lib"].endswith("libcudart.so.13") and summary["return_codes"] == [35]
