"""Host events of the traced process tree: scheduler, page allocation, process lifecycle, block I/O.

The standard set (:class:`~ingero.tracer.standard.StandardTracer`) loads the tracepoints of
``bpf/host.bpf.c`` (no kprobes, which this kernel lacks) and decodes its ring into :class:`HostEvent`
values that carry upstream Ingero's meanings (source, op, pid, tid, duration, arg0, arg1: see the comment
at the top of the BPF file). Forked children are added in the kernel, so a DataLoader worker is traced
from its first instruction. This module holds the record's one Python layout.
"""

from __future__ import annotations

from dataclasses import dataclass

from ingero.store.schema import SOURCE_HOST, SOURCE_IO, op_code, op_name

#: the codes ``bpf/host.bpf.c`` emits, from the one table (:mod:`ingero.store.schema`), given to the compiler as
#: ``-D`` definitions by the loader: the C file does not write them again
C_DEFINES: dict[str, int] = {"SRC_HOST": SOURCE_HOST, "SRC_IO": SOURCE_IO} | {
    f"OP_{macro}": op_code(name)[1] for macro, name in (
        ("SCHED_SWITCH", "sched_switch"), ("SCHED_WAKEUP", "sched_wakeup"), ("PAGE_ALLOC", "mm_page_alloc"),
        ("OOM_KILL", "oom_kill"), ("EXEC", "process_exec"), ("EXIT", "process_exit"), ("FORK", "process_fork"),
        ("THREAD_CREATE", "thread_create"), ("THREAD_EXIT", "thread_exit"), ("BLOCK_READ", "block_read"),
        ("BLOCK_WRITE", "block_write"), ("BLOCK_DISCARD", "block_discard"))}

#: ``struct host_event`` of ``bpf/host.bpf.c`` as a struct format, in :class:`HostEvent`'s field order
#: (flags skipped); the standard probe set reads the same records (with the ring's 8-byte header before them)
HOST_LAYOUT = "qqIIBB2xIqq16s"


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
