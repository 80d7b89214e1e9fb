"""The bundled CUDA test workload: real calls into the real CUDA runtime, with known arguments.

It loads ``libcudart`` (by default the ``nvidia-cuda-runtime-cu12`` wheel's ``libcudart.so.12``) with
ctypes and makes the calls in :data:`PLAN`, in order, ``repeat`` times. Without a GPU (and without
``libcuda``) each call returns 35 (``cudaErrorInsufficientDriver``), but uprobes on the library still
fire with the arguments below, so tests can assert exact counts, sizes, kinds and streams.

Handshake, so that attaching never races the calls and late loading is testable::

    python -m ingero.workload --wait-load --wait-calls
    # prints "waiting load pid=N"   -> the tester sends SIGUSR1 -> dlopen()s the library
    # prints "loaded PATH"
    # prints "waiting calls pid=N"  -> the tester sends SIGUSR1 -> makes the calls
    # prints "done {json summary}"

Every status line goes to stdout and is flushed at once. The module never imports bcc.
"""

from __future__ import annotations

import argparse
import ctypes as ct
import json
import os
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

KiB = 1024
MiB = 1024 * KiB

#: The stream handle passed to every stream-taking call (a fake handle: without a driver the runtime
#: fails before it would dereference it). Tests look for this exact value.
STREAM = 0x5EED0000
#: The "kernel function" pointer passed to cudaLaunchKernel.
KERNEL_FUNC = 0x1234
GRID = (64, 1, 1)
BLOCK = (256, 1, 1)
SHARED_MEM = 0

cudaMemcpyHostToDevice = 1
cudaMemcpyDeviceToHost = 2
cudaErrorInsufficientDriver = 35
#: --until: the longest the workload goes on past --duration waiting for its file
UNTIL_MAX_S = 300.0


@dataclass(frozen=True)
class Call:
    """One CUDA runtime call of the plan and the arguments that matter for assertions."""

    name: str
    args: dict = field(default_factory=dict)


MALLOC_SIZES = (1 * MiB, 4 * MiB, 256)

PLAN: tuple[Call, ...] = (
    *(Call("cudaMalloc", {"size": s}) for s in MALLOC_SIZES),
    Call("cudaMemcpy", {"count": 4 * KiB, "kind": cudaMemcpyHostToDevice}),
    Call("cudaMemcpy", {"count": 64 * KiB, "kind": cudaMemcpyDeviceToHost}),
    Call("cudaMemcpyAsync", {"count": 1 * MiB, "kind": cudaMemcpyHostToDevice, "stream": STREAM}),
    Call("cudaMemcpyAsync", {"count": 8 * KiB, "kind": cudaMemcpyDeviceToHost, "stream": STREAM}),
    Call(
        "cudaLaunchKernel",
        {"func": KERNEL_FUNC, "grid": GRID, "block": BLOCK, "sharedMem": SHARED_MEM, "stream": STREAM},
    ),
    Call("cudaStreamSynchronize", {"stream": STREAM}),
    Call("cudaDeviceSynchronize", {}),
    *(Call("cudaFree", {}) for _ in MALLOC_SIZES),
)


#: The calls frameworks make at start and around errors (``--startup``), made once before the plan, in
#: this order. Without a driver: the device queries fail with 35, cudaDriverGetVersion succeeds with 0
#: and cudaRuntimeGetVersion with the runtime's version; cudaGetLastError returns the last failure.
STARTUP: tuple[str, ...] = (
    "cudaRuntimeGetVersion", "cudaDriverGetVersion", "cudaGetDeviceCount", "cudaPeekAtLastError",
    "cudaGetLastError", "cudaSetDevice", "cudaGetDevice", "cudaStreamCreate", "cudaStreamCreateWithFlags",
    "cudaEventRecord", "cudaEventSynchronize", "cudaHostAlloc", "cudaMallocHost", "cudaFreeHost",
)
#: The event handle passed to cudaEventRecord/cudaEventSynchronize (fake, as STREAM).
EVENT = 0x5EED1000
#: cudaHostAlloc / cudaMallocHost sizes
HOST_ALLOC_SIZE = 2 * MiB
MALLOC_HOST_SIZE = 64 * KiB


def expected_counts(repeat: int = 1) -> Counter:
    """How many times each function is called by a run with ``repeat`` repetitions."""
    return Counter({name: n * repeat for name, n in Counter(c.name for c in PLAN).items()})


def wheel_libcudart(major: int = 12) -> Path:
    """Path of libcudart from the pip runtime wheel of CUDA ``major`` in this environment."""
    from ingero.errors import LibraryNotFound

    pkg, sub = {12: ("nvidia.cuda_runtime", "lib/libcudart.so.12"), 13: ("nvidia.cu13", "lib/libcudart.so.13")}[
        major
    ]
    try:
        import importlib

        mod = importlib.import_module(pkg)
    except ImportError as e:
        wheel = "nvidia-cuda-runtime-cu12" if major == 12 else "nvidia-cuda-runtime"
        raise LibraryNotFound(
            f"the CUDA {major} runtime wheel is not installed in this environment",
            hint=f"pip install {wheel}",
        ) from e
    for base in mod.__path__:
        p = Path(base) / sub
        if p.exists():
            return p
    raise LibraryNotFound(f"libcudart.so.{major} not found in the {pkg} wheel")


class dim3(ct.Structure):
    _fields_ = [("x", ct.c_uint), ("y", ct.c_uint), ("z", ct.c_uint)]


def _bind(lib: ct.CDLL) -> None:
    vp, sz, i = ct.c_void_p, ct.c_size_t, ct.c_int
    sig = {
        "cudaMalloc": [ct.POINTER(vp), sz],
        "cudaMemcpy": [vp, vp, sz, i],
        "cudaMemcpyAsync": [vp, vp, sz, i, vp],
        "cudaLaunchKernel": [vp, dim3, dim3, ct.POINTER(vp), sz, vp],
        "cudaStreamSynchronize": [vp],
        "cudaDeviceSynchronize": [],
        "cudaFree": [vp],
    }
    for name, argtypes in sig.items():
        f = getattr(lib, name)
        f.argtypes = argtypes
        f.restype = ct.c_int


def run_plan(lib: ct.CDLL, repeat: int = 1) -> Counter:
    """Make the calls of :data:`PLAN` ``repeat`` times; returns a Counter of (name, return code)."""
    _bind(lib)
    host = ct.create_string_buffer(max(c.args.get("count", 0) for c in PLAN))
    kargs = (ct.c_void_p * 1)()
    rcs: Counter = Counter()
    for _ in range(repeat):
        ptrs: list[ct.c_void_p] = []
        frees = 0
        for c in PLAN:
            a = c.args
            if c.name == "cudaMalloc":
                p = ct.c_void_p()
                rc = lib.cudaMalloc(ct.byref(p), a["size"])
                ptrs.append(p)
            elif c.name == "cudaMemcpy":
                dev = ptrs[0]
                dst, src = (dev, host) if a["kind"] == cudaMemcpyHostToDevice else (host, dev)
                rc = lib.cudaMemcpy(dst, src, a["count"], a["kind"])
            elif c.name == "cudaMemcpyAsync":
                dev = ptrs[0]
                dst, src = (dev, host) if a["kind"] == cudaMemcpyHostToDevice else (host, dev)
                rc = lib.cudaMemcpyAsync(dst, src, a["count"], a["kind"], a["stream"])
            elif c.name == "cudaLaunchKernel":
                rc = lib.cudaLaunchKernel(
                    a["func"], dim3(*a["grid"]), dim3(*a["block"]), kargs, a["sharedMem"], a["stream"]
                )
            elif c.name == "cudaStreamSynchronize":
                rc = lib.cudaStreamSynchronize(a["stream"])
            elif c.name == "cudaDeviceSynchronize":
                rc = lib.cudaDeviceSynchronize()
            elif c.name == "cudaFree":
                rc = lib.cudaFree(ptrs[frees])
                frees += 1
            else:  # pragma: no cover - PLAN and this switch are edited together
                raise AssertionError(c.name)
            rcs[(c.name, rc)] += 1
    return rcs


def run_startup(lib: ct.CDLL) -> dict[str, tuple[int, int]]:
    """Make the :data:`STARTUP` calls once; returns name -> (return code, the value it wrote or 0)."""
    vp, i, u, sz = ct.c_void_p, ct.c_int, ct.c_uint, ct.c_size_t
    out: dict[str, tuple[int, int]] = {}
    for name, argtypes in {
        "cudaRuntimeGetVersion": [ct.POINTER(i)], "cudaDriverGetVersion": [ct.POINTER(i)],
        "cudaGetDeviceCount": [ct.POINTER(i)], "cudaPeekAtLastError": [], "cudaGetLastError": [],
        "cudaSetDevice": [i], "cudaGetDevice": [ct.POINTER(i)], "cudaStreamCreate": [ct.POINTER(vp)],
        "cudaStreamCreateWithFlags": [ct.POINTER(vp), u], "cudaEventRecord": [vp, vp],
        "cudaEventSynchronize": [vp], "cudaHostAlloc": [ct.POINTER(vp), sz, u],
        "cudaMallocHost": [ct.POINTER(vp), sz], "cudaFreeHost": [vp],
    }.items():
        f = getattr(lib, name)
        f.argtypes, f.restype = argtypes, ct.c_int
    value, handle, pinned = i(), vp(), vp()
    for name in STARTUP:
        f = getattr(lib, name)
        written = 0
        if name in ("cudaRuntimeGetVersion", "cudaDriverGetVersion", "cudaGetDeviceCount", "cudaGetDevice"):
            value.value = 0
            rc = f(ct.byref(value))
            written = value.value
        elif name == "cudaSetDevice":
            rc = f(0)
        elif name == "cudaStreamCreate":
            rc = f(ct.byref(handle))
        elif name == "cudaStreamCreateWithFlags":
            rc = f(ct.byref(handle), 1)
        elif name == "cudaEventRecord":
            rc = f(EVENT, STREAM)
        elif name == "cudaEventSynchronize":
            rc = f(EVENT)
        elif name == "cudaHostAlloc":
            rc = f(ct.byref(pinned), HOST_ALLOC_SIZE, 0)
            written = pinned.value or 0
        elif name == "cudaMallocHost":
            rc = f(ct.byref(pinned), MALLOC_HOST_SIZE)
            written = pinned.value or 0
        elif name == "cudaFreeHost":
            rc = f(pinned)
        else:
            rc = f()
        out[name] = (rc, written)
    return out


def _start_threads(n: int) -> None:
    """One short-lived thread (joined: it exits while the process lives on), then ``n`` idle daemon
    threads that die only with the process, after its main thread has exited. Says their tids."""
    import threading

    t = threading.Thread(target=lambda: None)
    t.start()
    t.join()
    never = threading.Event()
    idle = [threading.Thread(target=never.wait, daemon=True) for _ in range(n)]
    for x in idle:
        x.start()  # returns once the thread runs: its native_id is known
    _say(f"threads pid={os.getpid()} ended={t.native_id} idle={','.join(str(x.native_id) for x in idle)}")


def _say(msg: str) -> None:
    sys.stdout.write(msg + "\n")
    sys.stdout.flush()


def _wait_for_go(what: str) -> None:
    """Announce that we wait, then block until SIGUSR1 (SIGUSR1 is blocked first: no lost wake-up)."""
    _say(f"waiting {what} pid={os.getpid()}")
    signal.sigwait({signal.SIGUSR1})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ingero.workload", description=__doc__.split("\n")[0])
    ap.add_argument("--lib", help="libcudart to load (default: the cu12 wheel's libcudart.so.12)")
    ap.add_argument("--cuda-major", type=int, default=12, choices=(12, 13))
    ap.add_argument("--repeat", type=int, default=1, help="run the plan this many times")
    ap.add_argument("--wait-load", action="store_true", help="wait for SIGUSR1 before loading the library")
    ap.add_argument("--wait-calls", action="store_true", help="wait for SIGUSR1 before calling")
    ap.add_argument("--hold", type=float, default=0.0, help="stay alive this many seconds after the calls")
    ap.add_argument("--fork", action="store_true", help="make the calls in a forked child process")
    ap.add_argument("--workers", type=int, default=0,
                    help="make the calls in this many forked worker processes (DataLoader-style), at once")
    ap.add_argument("--duration", type=float, default=0.0,
                    help="repeat the plan until this many seconds have passed (then --repeat is per round)")
    ap.add_argument("--interval", type=float, default=0.002, help="pause between rounds with --duration (s)")
    ap.add_argument("--until", metavar="FILE",
                    help=f"with --duration: go on past it until FILE exists (at most {UNTIL_MAX_S:g} s more)")
    ap.add_argument("--startup", action="store_true",
                    help="first make the start-up calls of STARTUP once (device count, versions, last error...)")
    ap.add_argument("--threads", type=int, default=0,
                    help="the calling process(es) start one short-lived thread, then this many idle ones")
    args = ap.parse_args(argv)

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    path = args.lib or str(wheel_libcudart(args.cuda_major))
    if args.wait_load:
        _wait_for_go("load")
    lib = ct.CDLL(path)
    _say(f"loaded {path}")
    if args.wait_calls:
        _wait_for_go("calls")
    t0 = time.perf_counter()

    def work() -> Counter:
        if args.threads:
            _start_threads(args.threads)
        if args.startup:
            _say("startup " + json.dumps(run_startup(lib), sort_keys=True))
        if not args.duration:
            return run_plan(lib, args.repeat)
        total: Counter = Counter()
        end = time.monotonic() + args.duration

        def more() -> bool:
            now = time.monotonic()
            if now < end:
                return True
            return bool(args.until) and now < end + UNTIL_MAX_S and not os.path.exists(args.until)

        while more():
            total += run_plan(lib, args.repeat)
            time.sleep(args.interval)
        return total

    if args.fork or args.workers:
        children = []
        for _ in range(max(args.workers, 1)):
            child = os.fork()
            if child == 0:
                work()
                os._exit(0)
            children.append(child)
            _say(f"forked child pid={child}")
        for child in children:
            os.waitpid(child, 0)
        rcs: Counter = Counter()
    else:
        rcs = work()
    elapsed = time.perf_counter() - t0
    summary = {
        "pid": os.getpid(),
        "lib": path,
        "repeat": args.repeat,
        "calls": sum(rcs.values()),
        "return_codes": sorted({rc for (_, rc) in rcs}),
        "seconds": round(elapsed, 6),
    }
    _say("done " + json.dumps(summary, sort_keys=True))
    if args.hold:
        time.sleep(args.hold)
    return 0


if __name__ == "__main__":
    sys.exit(main())


@dataclass(frozen=True)
class TracedRun:
    """What :func:`trace_workload` saw: every completed call, losses and the tracer's own timings."""

    pid: int
    calls: tuple  # tuple[ingero.runtime.calltrace.TracedCall, ...]
    lost: int
    compile_attach_s: float
    detach_s: float
    links_left: int

    def counts(self) -> Counter:
        return Counter(c.symbol for c in self.calls)


def open_uprobe_multi_links() -> int:
    """How many uprobe_multi link fds this process holds (0 after a clean detach)."""
    n = 0
    for fd in os.listdir("/proc/self/fdinfo"):
        try:
            with open(f"/proc/self/fdinfo/{fd}") as f:
                if "link_type:\tuprobe_multi" in f.read():
                    n += 1
        except OSError:
            pass
    return n


def trace_workload(lib_path: str, symbols, repeat: int = 1, on_phase=None) -> TracedRun:
    """Run the workload as a child on ``lib_path`` and trace ``symbols`` ((name, file offset) pairs) with
    entry+return probes limited to it: attach while it waits, release it, collect until it exits, detach.
    ``on_phase(text)`` is told what is happening (for a progress display). Needs root and BPF."""
    import subprocess

    from ingero.runtime.calltrace import CallTracer

    say = on_phase or (lambda text: None)
    child = subprocess.Popen(
        [sys.executable, "-m", "ingero.workload", "--repeat", str(repeat), "--wait-calls", "--lib", lib_path],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        while True:
            line = child.stdout.readline()
            if not line:
                raise RuntimeError(f"the workload exited early (status {child.wait()})")
            if line.startswith("waiting calls"):
                break
        say(f"compiling and attaching {len(symbols)} functions (entry + return, 2 uprobe_multi links)")
        t0 = time.perf_counter()
        tracer = CallTracer(lib_path, symbols, pid=child.pid).start()
        t_start = time.perf_counter() - t0
        calls: list = []
        try:
            say(f"workload pid {child.pid} running its call plan {repeat}x")
            child.send_signal(signal.SIGUSR1)
            while child.poll() is None:
                calls += tracer.poll(20)
            calls += tracer.poll(20)
            lost = tracer.lost()
        finally:
            t0 = time.perf_counter()
            tracer.close()
            t_detach = time.perf_counter() - t0
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
    return TracedRun(child.pid, tuple(calls), lost, t_start, t_detach, open_uprobe_multi_links())
