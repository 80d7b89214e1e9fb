"""``ingero selftest``: a real end-to-end check of this machine, written as a JSON report.

Each check runs for real (no mocks): can this machine do BPF, are the CUDA runtime and the signature
catalogue there, do probes fire on the bundled workload with the exact counts it is known to make, how
long do compile, attach and detach take, and is nothing left attached afterwards. The report is what the
MCP tool ``get_test_report`` serves (the newest ``STATE_DIR/selftest/*.json``).

The library never prints: :func:`run_selftest` returns the report; the CLI shows and saves it.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ingero import __version__, workload
from ingero.paths import selftest_dir

REPORT_FORMAT = 1


@dataclass
class CheckResult:
    name: str
    status: str  # "pass" | "fail" | "skip"
    duration_ms: float
    detail: str
    figures: dict = field(default_factory=dict)


def _timings(r: workload.TracedRun) -> dict:
    return {"compile_attach_ms": round(r.compile_attach_s * 1000, 2), "detach_ms": round(r.detach_s * 1000, 2)}


def run_selftest(repeat: int = 100, progress: Callable[[str], None] | None = None) -> dict:
    """Run every check; returns the report (a JSON-able dict)."""
    from ingero.runtime.kernel import bpf_problem, kernel_version

    results: list[CheckResult] = []
    state: dict = {}

    def check(name: str, fn: Callable[[], tuple[str, dict] | str], needs: str | None = None) -> None:
        if progress:
            progress(name)
        t0 = time.perf_counter()
        if needs and needs not in state:
            results.append(CheckResult(name, "skip", 0.0, f"skipped: needs {needs}"))
            return
        try:
            out = fn()
            detail, figures = (out, {}) if isinstance(out, str) else out
            status = "pass"
        except Exception as e:  # noqa: BLE001 - a check's failure is data in the report
            detail, figures, status = f"{type(e).__name__}: {e}", {}, "fail"
        results.append(CheckResult(name, status, round((time.perf_counter() - t0) * 1000, 3), detail, figures))

    def c_bpf():
        problem = bpf_problem()
        if problem:
            raise RuntimeError(problem)
        state["bpf"] = True
        return f"root, kernel {'.'.join(map(str, kernel_version()))} with uprobe_multi, bcc, kernel headers"

    def c_runtime():
        from ingero.symbols import read_symbols, resolve_library

        lib = resolve_library(str(workload.wheel_libcudart(12)))
        table = read_symbols(lib)
        names = sorted({c.name for c in workload.PLAN})
        state["lib"] = lib
        state["plan_syms"] = [(n, table.get(n).file_offset) for n in names]
        state["all_syms"] = [(s.name, s.file_offset) for s in table.symbols if s.kind == "func"]
        return f"{lib.soname} {lib.version} ({lib.path}), {len(table)} functions", {"functions": len(table)}

    def c_catalogue():
        from ingero.catalogue import load_catalogue

        cat = load_catalogue()
        sig = cat.lookup("cudaLaunchKernel", cuda_major=12)
        if sig is None or [p.name for p in sig.params][-1] != "stream":
            raise RuntimeError("cudaLaunchKernel missing or wrong in the catalogue")
        n = len(cat.names(cuda_major=12))
        return f"{n} CUDA 12 functions typed", {"functions_cuda12": n}

    def c_exact():
        r = workload.trace_workload(str(state["lib"].attach_path), state["plan_syms"], repeat)
        expected = workload.expected_counts(repeat)
        if r.counts() != expected:
            raise RuntimeError(f"counts {dict(r.counts())} != expected {dict(expected)}")
        rcs = sorted({c.retval32 for c in r.calls})
        if rcs != [workload.cudaErrorInsufficientDriver] or r.lost:
            raise RuntimeError(f"return codes {rcs}, lost {r.lost}")
        if r.links_left:
            raise RuntimeError(f"{r.links_left} uprobe_multi link(s) left open after detach")
        return (
            f"{len(r.calls)} calls of {len(expected)} functions, exact counts, all returned 35, 0 lost",
            _timings(r) | {"calls": len(r.calls)},
        )

    def c_scale():
        syms = state["all_syms"]
        r = workload.trace_workload(str(state["lib"].attach_path), syms, 1)
        expected = workload.expected_counts(1)
        seen = {k: v for k, v in r.counts().items() if k in expected}
        if seen != dict(expected):
            raise RuntimeError(f"plan counts {seen} != {dict(expected)} with every function probed")
        if r.links_left:
            raise RuntimeError(f"{r.links_left} uprobe_multi link(s) left open after detach")
        return (
            f"{len(syms)} functions x entry+return in 2 links: compile+attach "
            f"{r.compile_attach_s * 1000:.0f} ms, detach {r.detach_s * 1000:.1f} ms",
            {"probes": 2 * len(syms)} | _timings(r),
        )

    check("bpf_available", c_bpf)
    check("cuda_runtime_wheel", c_runtime)
    check("signature_catalogue", c_catalogue)
    check("probes_fire_exact_counts", c_exact, needs="bpf")
    check("attach_detach_every_libcudart_function", c_scale, needs="bpf")

    summary = Counter(r.status for r in results)
    return {
        "format": REPORT_FORMAT,
        "tool": "ingero selftest",
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "system": {
            "host": platform.node(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "ingero": __version__,
            "cpus": os.cpu_count(),
        },
        "tests": [asdict(r) for r in results],
        "summary": {"passed": summary["pass"], "failed": summary["fail"], "skipped": summary["skip"]},
    }


def write_report(report: dict, folder: Path | None = None) -> Path:
    """Save ``report`` as ``STATE_DIR/selftest/report-<UTC time>.json``; returns the path."""
    folder = folder or selftest_dir()
    folder.mkdir(parents=True, exist_ok=True)
    stamp = report["generated_at"].replace(":", "").replace("-", "")
    path = folder / f"report-{stamp}.json"
    n = 1
    while path.exists():
        path = folder / f"report-{stamp}-{n}.json"
        n += 1
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    tmp.rename(path)
    return path
