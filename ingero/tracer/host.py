"""Host events of the traced process tree: scheduler, page allocation, process lifecycle, block I/O.

``HostTracer`` loads ``bpf/host.bpf.c`` (tracepoints only; no kprobes, which this kernel lacks),
seeds its ``ingero_targets`` map with the pids to follow, and decodes its ring buffer into
:class:`HostEvent` values that carry upstream Ingero's meanings (source, op, pid, tid, duration, arg0,
arg1: see the comment at the top of the BPF file). Forked children are added in the kernel, so a
DataLoader worker is traced from its first instruction.
"""

from __future__ import annotations

import ctypes as ct
from collections.abc import Iterable
from dataclasses import dataclass

from ingero.paths import data_dir
from ingero.store.schema import op_name

SOURCE_HOST = 3
SOURCE_IO = 5


class HostRecord(ct.Structure):
    """Mirror of ``struct host_event`` in ``bpf/host.bpf.c``."""

    _fields_ = [
        ("ts_ns", ct.c_uint64),
        ("duration_ns", ct.c_uint64),
        ("pid", ct.c_uint32),
        ("tid", ct.c_uint32),
        ("source", ct.c_uint8),
        ("op", ct.c_uint8),
        ("flags", ct.c_uint16),
        ("cpu", ct.c_uint32),
        ("arg0", ct.c_uint64),
        ("arg1", ct.c_uint64),
        ("comm", ct.c_char * 16),
    ]


@dataclass(frozen=True)
class HostEvent:
    ts_ns: int  # CLOCK_MONOTONIC (bpf_ktime_get_ns); the end of the interval for sched_switch and I/O
    duration_ns: int
    pid: int
    tid: int
    source: int
    op: int
    cpu: int
    arg0: int
    arg1: int
    comm: str

    @property
    def op_name(self) -> str:
        return op_name(self.source, self.op)


class HostTracer:
    """Tracepoints for the process trees rooted at ``pids`` (more can be added with :meth:`follow`)."""

    def __init__(self, pids: Iterable[int] = (), *, ringbuf_pages: int = 256) -> None:
        if ringbuf_pages <= 0 or ringbuf_pages & (ringbuf_pages - 1):
            raise ValueError("ringbuf_pages must be a power of two")
        self.ringbuf_pages = ringbuf_pages
        self._initial = [int(p) for p in pids]
        self._bpf = None
        self._pending: list[HostEvent] = []

    def start(self) -> HostTracer:
        from bcc import BPF

        bpf_dir = data_dir("bpf")
        self._bpf = BPF(src_file=str(bpf_dir / "host.bpf.c"), cflags=[f"-DRINGBUF_PAGES={self.ringbuf_pages}"])
        try:
            for pid in self._initial:
                self.follow(pid)
            self._bpf["host_events"].open_ring_buffer(self._on_record)
        except BaseException:
            self.close()
            raise
        return self

    def follow(self, pid: int) -> None:
        """Trace process ``pid`` (and, from now on, the processes it forks)."""
        if self._bpf is None:
            self._initial.append(int(pid))
            return
        t = self._bpf["ingero_targets"]
        t[t.Key(int(pid))] = t.Leaf(1)

    def followed(self) -> set[int]:
        if self._bpf is None:
            return set(self._initial)
        return {k.value for k in self._bpf["ingero_targets"].keys()}

    def _on_record(self, ctx, data, size) -> int:
        r = ct.cast(data, ct.POINTER(HostRecord)).contents
        self._pending.append(
            HostEvent(r.ts_ns, r.duration_ns, r.pid, r.tid, r.source, r.op, r.cpu, r.arg0, r.arg1,
                      r.comm.decode(errors="replace"))
        )
        return 0

    def poll(self, timeout_ms: int = 100) -> list[HostEvent]:
        if self._bpf is None:
            raise RuntimeError("HostTracer.start() first")
        self._bpf.ring_buffer_poll(timeout_ms)
        out, self._pending = self._pending, []
        return out

    def lost(self) -> int:
        if self._bpf is None:
            return 0
        return sum(v.value for v in self._bpf["lost"].values())

    def close(self) -> None:
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None

    def __enter__(self) -> HostTracer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
