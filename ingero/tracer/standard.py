"""The standard probe set: CUDA runtime and driver calls plus host tracepoints, for one process tree.

``StandardTracer`` compiles ``bpf/host.bpf.c`` + ``bpf/cuda.bpf.c`` once (host tracepoints + one generic entry/return
handler pair for every CUDA symbol), follows the given pids (forks are added in the kernel), and attaches
the CUDA handlers to every libcudart/libcuda file the traced processes map, as two uprobe_multi links per
file whose cookies carry upstream's (source, op) codes. ``scan()`` looks at the traced processes' maps
again, so a library loaded late with dlopen (as PyTorch does) is probed from then on.

Events come out as :class:`CudaCall` (CUDA/driver) and :class:`~ingero.tracer.host.HostEvent` (host/IO)
values with upstream's argument meanings (see the comment at the top of ``bpf/cuda.bpf.c``).
"""

from __future__ import annotations

import ctypes as ct
import logging
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from ingero.paths import data_dir
from ingero.runtime.links import BPF_TRACE_UPROBE_MULTI, UprobeMultiLink, attach_uprobe_multi
from ingero.tracer.host import HostEvent, HostRecord

log = logging.getLogger(__name__)

SOURCE_CUDA = 1
SOURCE_DRIVER = 4

#: exported symbol -> (source, op) in upstream's codes; per-thread-default-stream variants share the op
RUNTIME_SYMBOLS: dict[str, int] = {
    "cudaMalloc": 1, "cudaFree": 2, "cudaLaunchKernel": 3, "cudaLaunchKernel_ptsz": 3,
    "cudaMemcpy": 4, "cudaMemcpy_ptds": 4, "cudaStreamSynchronize": 5, "cudaStreamSynchronize_ptsz": 5,
    "cudaDeviceSynchronize": 6, "cudaMemcpyAsync": 7, "cudaMemcpyAsync_ptsz": 7, "cudaMallocManaged": 8,
    "cudaMemcpy2D": 9, "cudaMemcpy2D_ptds": 9, "cudaMemcpy2DAsync": 10, "cudaMemcpy2DAsync_ptsz": 10,
    "cudaMemcpyPeer": 11, "cudaMemcpyPeerAsync": 12,
}
DRIVER_SYMBOLS: dict[str, int] = {
    "cuLaunchKernel": 1, "cuLaunchKernel_ptsz": 1, "cuMemcpy": 2, "cuMemcpy_ptds": 2,
    "cuMemcpyAsync": 3, "cuMemcpyAsync_ptsz": 3, "cuCtxSynchronize": 4, "cuMemAlloc_v2": 5,
    "cuMemAllocManaged": 6,
}
CUDA_OP_NAMES = {1: "cudaMalloc", 2: "cudaFree", 3: "cudaLaunchKernel", 4: "cudaMemcpy", 5: "cudaStreamSync",
                 6: "cudaDeviceSync", 7: "cudaMemcpyAsync", 8: "cudaMallocManaged", 9: "cudaMemcpy2D",
                 10: "cudaMemcpy2DAsync", 11: "cudaMemcpyPeer", 12: "cudaMemcpyPeerAsync"}
DRIVER_OP_NAMES = {1: "cuLaunchKernel", 2: "cuMemcpy", 3: "cuMemcpyAsync", 4: "cuCtxSynchronize",
                   5: "cuMemAlloc", 6: "cuMemAllocManaged"}


class CudaRecord(ct.Structure):
    """Mirror of ``struct cuda_event`` in ``bpf/cuda.bpf.c``."""

    _fields_ = [
        ("ts_ns", ct.c_uint64),
        ("duration_ns", ct.c_uint64),
        ("pid", ct.c_uint32),
        ("tid", ct.c_uint32),
        ("source", ct.c_uint8),
        ("op", ct.c_uint8),
        ("flags", ct.c_uint16),
        ("ret", ct.c_int32),
        ("arg0", ct.c_uint64),
        ("arg1", ct.c_uint64),
        ("stack_id", ct.c_int64),
        ("comm", ct.c_char * 16),
    ]


class LibOpenRecord(ct.Structure):
    """Mirror of ``struct lib_open_event`` in ``bpf/cuda.bpf.c``."""

    _fields_ = [("pid", ct.c_uint32), ("pad", ct.c_uint32), ("path", ct.c_char * 256)]


@dataclass(frozen=True)
class CudaCall:
    ts_ns: int  # entry, CLOCK_MONOTONIC
    duration_ns: int
    pid: int
    tid: int
    source: int
    op: int
    ret: int
    arg0: int
    arg1: int
    stack_id: int
    comm: str

    @property
    def op_name(self) -> str:
        names = CUDA_OP_NAMES if self.source == SOURCE_CUDA else DRIVER_OP_NAMES
        return names.get(self.op, f"op({self.op})")


@dataclass
class AttachedLibrary:
    path: str
    soname: str
    key: tuple[int, int]  # (st_dev, st_ino) of the file: probes attach to a file, not a path
    symbols: tuple[str, ...]
    links: tuple[UprobeMultiLink, ...]


def _symbols_for(soname: str) -> tuple[int, dict[str, int]] | None:
    base = os.path.basename(soname)
    if base.startswith("libcudart.so"):
        return SOURCE_CUDA, RUNTIME_SYMBOLS
    if base.startswith("libcuda.so"):
        return SOURCE_DRIVER, DRIVER_SYMBOLS
    return None


class StandardTracer:
    """Host tracepoints + CUDA runtime/driver calls of the process trees rooted at ``pids``."""

    def __init__(self, pids: Iterable[int] = (), *, stacks: bool = True, ringbuf_pages: int = 1024,
                 cuda_ringbuf_pages: int = 1024) -> None:
        for n in (ringbuf_pages, cuda_ringbuf_pages):
            if n <= 0 or n & (n - 1):
                raise ValueError("ring buffer sizes must be powers of two (pages)")
        self.stacks = stacks
        self.ringbuf_pages = ringbuf_pages
        self.cuda_ringbuf_pages = cuda_ringbuf_pages
        self._initial = [int(p) for p in pids]
        self._bpf = None
        self._fns: tuple | None = None
        self.libraries: dict[tuple[int, int], AttachedLibrary] = {}
        self._host: list[HostEvent] = []
        self._cuda: list[CudaCall] = []
        self._budget = 0
        self._opens: list[tuple[int, str]] = []
        self._detaching: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> StandardTracer:
        from bcc import BPF

        bpf_dir = data_dir("bpf")
        text = (bpf_dir / "host.bpf.c").read_text() + "\n" + (bpf_dir / "cuda.bpf.c").read_text()
        self._bpf = BPF(
            text=text,
            cflags=[f"-I{bpf_dir}", f"-DRINGBUF_PAGES={self.ringbuf_pages}",
                    f"-DCUDA_RINGBUF_PAGES={self.cuda_ringbuf_pages}", f"-DSTACKS={int(self.stacks)}"],
        )
        try:
            entry = self._bpf.load_func("on_cuda_entry", BPF.KPROBE, attach_type=BPF_TRACE_UPROBE_MULTI)
            ret = self._bpf.load_func("on_cuda_return", BPF.KPROBE, attach_type=BPF_TRACE_UPROBE_MULTI)
            self._fns = (entry, ret)
            self._bpf["host_events"].open_ring_buffer(self._on_host)
            self._bpf["cuda_events"].open_ring_buffer(self._on_cuda)
            self._bpf["lib_opens"].open_ring_buffer(self._on_lib_open)
            for pid in self._initial:
                self.follow(pid)
            self.scan()
        except BaseException:
            self.close()
            raise
        return self

    def detach(self) -> None:
        """Stop new events: close every uprobe_multi link at once, and detach the host tracepoints in the
        background (each perf-event tracepoint waits for an RCU grace period, ~75 ms apiece, serialised in
        the kernel), so the ring buffers can be drained meanwhile. ``close()`` waits for it."""
        for lib in self.libraries.values():
            for link in lib.links:
                link.close()
        if self._bpf is not None and self._detaching is None:
            bpf = self._bpf

            def detach_tracepoints() -> None:
                for tp in list(bpf.tracepoint_fds):
                    try:
                        bpf.detach_tracepoint(tp)
                    except Exception:  # noqa: BLE001 - cleanup() retries whatever is left
                        log.debug("detaching %s failed", tp, exc_info=True)

            self._detaching = threading.Thread(target=detach_tracepoints, name="ingero-detach", daemon=True)
            self._detaching.start()

    def close(self) -> None:
        self.detach()
        if self._detaching is not None:
            self._detaching.join()
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None

    def __enter__(self) -> StandardTracer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- what is traced --------------------------------------------------------------------------------
    def follow(self, pid: int) -> None:
        """Trace process ``pid``, the processes it forks from now on, and the CUDA libraries it maps."""
        t = self._bpf["ingero_targets"]
        t[t.Key(int(pid))] = t.Leaf(1)

    def followed(self) -> set[int]:
        """The traced processes (tgids) that are alive."""
        out = set()
        for k in self._bpf["ingero_targets"].keys():
            pid = k.value
            try:
                with open(f"/proc/{pid}/status") as f:
                    tgid = next(int(line.split()[1]) for line in f if line.startswith("Tgid:"))
            except (OSError, StopIteration, ValueError):
                continue
            if tgid == pid:
                out.add(pid)
        return out

    def scan(self) -> list[AttachedLibrary]:
        """Attach to CUDA libraries the traced processes have mapped since the last scan; returns them."""
        from ingero.errors import IngeroError
        from ingero.symbols import find_libraries

        new = []
        for pid in sorted(self.followed()):
            try:
                libs = find_libraries(pid=pid)
            except IngeroError:
                continue  # the process exited meanwhile
            for lib in libs:
                attached = self._consider(lib)
                if attached:
                    new.append(attached)
        return new

    def attach_known(self) -> list[AttachedLibrary]:
        """Attach now to every copy of libcudart/libcuda on this machine's search paths (pip wheels,
        LD_LIBRARY_PATH, CUDA_HOME, conda, ldconfig): a traced program that loads one of them and calls it
        at once is caught from its first call, which no scan or open notification can promise. The
        probes fire in other processes using the same files too, and are filtered out in the kernel."""
        from ingero.errors import IngeroError
        from ingero.symbols import find_libraries

        new = []
        for stem in ("libcudart", "libcuda"):
            try:
                found = find_libraries(name=stem)
            except IngeroError:
                continue
            for lib in found:  # every copy, one per build-id
                attached = self._consider(lib)
                if attached:
                    new.append(attached)
        return new

    def _consider(self, lib) -> AttachedLibrary | None:
        """Attach to ``lib`` if it is a CUDA runtime/driver library not attached yet."""
        which = _symbols_for(lib.soname or str(lib.path))
        if which is None:
            return None
        try:
            st = os.stat(lib.attach_path)
        except OSError:
            return None
        key = (st.st_dev, st.st_ino)
        if key in self.libraries:
            return None
        attached = self._attach(lib, key, *which)
        if attached:
            self.libraries[key] = attached
        return attached

    def _on_lib_open(self, ctx, data, size) -> int:
        r = ct.cast(data, ct.POINTER(LibOpenRecord)).contents
        self._opens.append((r.pid, r.path.decode(errors="replace")))
        return 0

    def _attach_opened(self) -> None:
        """A traced process is opening a CUDA library: attach to that file before the loader maps it."""
        from ingero.errors import IngeroError
        from ingero.symbols import resolve_library

        opens, self._opens = self._opens, []
        for pid, path in opens:
            if not path.startswith("/"):
                try:
                    path = os.path.join(os.readlink(f"/proc/{pid}/cwd"), path)
                except OSError:
                    continue
            for candidate in (f"/proc/{pid}/root{path}", path):
                if os.path.exists(candidate):
                    break
            else:
                continue  # the loader probing a directory where the library is not
            if _symbols_for(os.path.basename(path)) is None:
                continue
            try:
                self._consider(resolve_library(candidate))
            except IngeroError as e:
                log.info("cannot probe %s opened by %d: %s", path, pid, e)

    def _attach(self, lib, key, source: int, table: dict[str, int]) -> AttachedLibrary | None:
        from ingero.symbols import read_symbols

        symtab = read_symbols(lib)
        chosen = [(name, op) for name, op in table.items() if name in symtab]
        if not chosen:
            log.info("no standard symbol in %s", lib.path)
            return None
        offsets = [symtab.get(name).file_offset for name, _ in chosen]
        cookies = [source << 8 | op for _, op in chosen]
        entry, ret = self._fns
        path = str(lib.attach_path)
        links = [attach_uprobe_multi(entry.fd, path, offsets, cookies)]
        try:
            links.append(attach_uprobe_multi(ret.fd, path, offsets, cookies, retprobe=True))
        except BaseException:
            links[0].close()
            raise
        log.info("probing %d functions of %s", len(chosen), lib.path)
        return AttachedLibrary(str(lib.path), lib.soname, key, tuple(n for n, _ in chosen), tuple(links))

    # -- events ----------------------------------------------------------------------------------------
    # A callback returning < 0 makes libbpf stop consuming (the record it was given is consumed): without
    # that, a poll would not return while the producer outpaces us (libbpf loops while new data arrives).
    def _on_host(self, ctx, data, size) -> int:
        r = ct.cast(data, ct.POINTER(HostRecord)).contents
        self._host.append(HostEvent(r.ts_ns, r.duration_ns, r.pid, r.tid, r.source, r.op, r.cpu, r.arg0,
                                    r.arg1, r.comm.decode(errors="replace")))
        self._budget -= 1
        return -1 if self._budget <= 0 else 0

    def _on_cuda(self, ctx, data, size) -> int:
        r = ct.cast(data, ct.POINTER(CudaRecord)).contents
        self._cuda.append(CudaCall(r.ts_ns, r.duration_ns, r.pid, r.tid, r.source, r.op, r.ret, r.arg0,
                                   r.arg1, r.stack_id, r.comm.decode(errors="replace")))
        self._budget -= 1
        return -1 if self._budget <= 0 else 0

    def poll(self, timeout_ms: int = 100, max_events: int = 20_000) -> tuple[list[CudaCall], list[HostEvent]]:
        """Events completed since the last poll, at most about ``max_events``: (CUDA/driver calls, host)."""
        self._budget = max_events
        self._bpf.ring_buffer_poll(timeout_ms)
        if self._opens:
            self._attach_opened()
        cuda, host = self._cuda, self._host
        self._cuda, self._host = [], []
        return cuda, host

    def lost(self) -> dict[str, int]:
        """Events dropped because a ring buffer was full, per buffer."""
        return {
            "cuda": sum(v.value for v in self._bpf["cuda_lost"].values()),
            "host": sum(v.value for v in self._bpf["lost"].values()),
        }

    def stack_ips(self, stack_id: int) -> list[int]:
        """The user-space return addresses of a captured stack (innermost first)."""
        if not self.stacks or stack_id < 0:
            return []
        return [ip for ip in self._bpf["stacks"].walk(stack_id) if ip]
