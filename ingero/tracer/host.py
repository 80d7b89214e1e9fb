"""Host events of the traced process tree: scheduler, page allocation, process lifecycle, block I/O.

``HostTracer`` loads ``bpf/host.bpf.c`` (tracepoints only; no kprobes, which this kernel lacks),
seeds its ``ingero_targets`` map with the pids to follow, and decodes its ring buffer into
:class:`HostEvent` values that carry upstream Ingero's meanings (source, op, pid, tid, duration, arg0,
arg1: see the comment at the top of the BPF file). Forked children are added in the kernel, so a
DataLoader worker is traced from its first instruction.
"""

from __future__ import annotations

import ctypes as ct
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from ingero.paths import data_dir
from ingero.store.schema import op_name

SOURCE_HOST = 3
SOURCE_IO = 5


#: ``struct host_event`` of ``bpf/host.bpf.c`` as a struct format, in :class:`HostEvent`'s field order
#: (flags skipped); the standard probe set reads the same records (with the ring's 8-byte header before them)
HOST_LAYOUT = "qqIIBB2xIqq16s"
_HOST = struct.Struct("<" + HOST_LAYOUT)


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
        *fields, comm = _HOST.unpack_from(ct.string_at(data, _HOST.size))
        self._pending.append(HostEvent(*fields, comm.split(b"\0", 1)[0].decode(errors="replace")))
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
