"""Trace entry and return of functions in one library file: the smallest complete probe runtime.

``CallTracer`` compiles ``bpf/calltrace.bpf.c`` once (one generic handler pair, whatever the number of
symbols), attaches it as two uprobe_multi links (entry, return) whose attach cookies index the symbol
list, and decodes the ring buffer into :class:`TracedCall` values. ``close()`` detaches both links and
releases the programs; it is idempotent and also runs on ``with`` exit.

The record (``struct ingero_call``) has one description, :data:`ingero.compiler.record.CALL_RECORD`: the C
struct is rendered from it into the program's text, with static assertions of the offsets the decoder's
``ctypes`` structure (made from the same description) reads, so clang refuses a program whose view differs.
"""

from __future__ import annotations

import ctypes as ct
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from ingero.paths import data_dir
from ingero.runtime.bpfobj import BpfObject
from ingero.runtime.links import BPF_TRACE_UPROBE_MULTI, UprobeMultiLink, attach_uprobe_multi

log = logging.getLogger(__name__)



def program_text() -> str:
    """The C of the call tracer: the record's struct and its checks, then ``bpf/calltrace.bpf.c``."""
    from ingero.compiler.record import CALL_RECORD

    source = (data_dir("bpf") / "calltrace.bpf.c").read_text()
    return f"#include <uapi/linux/ptrace.h>\n{CALL_RECORD.c_struct()}\n{CALL_RECORD.c_checks()}\n{source}"


@dataclass(frozen=True)
class TracedCall:
    symbol: str
    pid: int
    tid: int
    ts_ns: int
    latency_ns: int
    retval: int  # raw rax; see retval32
    args: tuple[int, ...]

    @property
    def retval32(self) -> int:
        """The return value as a C ``int`` (cudaError_t, CUresult...): the low 32 bits, signed."""
        v = self.retval & 0xFFFFFFFF
        return v - (1 << 32) if v & 0x80000000 else v


class CallTracer(BpfObject):
    """Entry+return tracing of ``symbols`` (name, file offset) in ``path``; ``pid`` 0 means every process."""

    def __init__(
        self, path: str, symbols: Sequence[tuple[str, int]], *, pid: int = 0, ringbuf_pages: int = 256
    ) -> None:
        if ringbuf_pages <= 0 or ringbuf_pages & (ringbuf_pages - 1):
            raise ValueError("ringbuf_pages must be a power of two")
        self.path = path
        self.symbols = tuple(symbols)
        self.pid = pid
        self.ringbuf_pages = ringbuf_pages
        self.links: list[UprobeMultiLink] = []
        self._bpf = None
        self._pending: list[TracedCall] = []
        self._record: type | None = None  # pointer to the record's ctypes structure, set by start()
        self._budget = 1 << 62

    def start(self) -> CallTracer:
        from bcc import BPF

        from ingero.compiler.record import CALL_RECORD

        self._record = ct.POINTER(CALL_RECORD.ctype)
        self._bpf = BPF(text=program_text(), cflags=[f"-DRINGBUF_PAGES={self.ringbuf_pages}"])
        try:
            entry = self._bpf.load_func("on_entry", BPF.KPROBE, attach_type=BPF_TRACE_UPROBE_MULTI)
            ret = self._bpf.load_func("on_return", BPF.KPROBE, attach_type=BPF_TRACE_UPROBE_MULTI)
            offsets = [off for _, off in self.symbols]
            cookies = list(range(len(self.symbols)))
            self.links.append(attach_uprobe_multi(entry.fd, self.path, offsets, cookies, pid=self.pid))
            self.links.append(
                attach_uprobe_multi(ret.fd, self.path, offsets, cookies, retprobe=True, pid=self.pid)
            )
            self._bpf["calls"].open_ring_buffer(self._on_record)
        except BaseException:
            self.close()
            raise
        return self

    def _on_record(self, ctx, data, size) -> int:
        r = ct.cast(data, self._record).contents
        self._pending.append(
            TracedCall(
                symbol=self.symbols[r.cookie][0],
                pid=r.pid,
                tid=r.tid,
                ts_ns=r.ts_ns,
                latency_ns=r.latency_ns,
                retval=r.retval,
                args=tuple(r.args),
            )
        )
        # a negative return makes libbpf end this poll (the record is consumed): a producer faster than
        # this callback would otherwise keep ring_buffer_poll() from ever returning
        self._budget -= 1
        return -1 if self._budget <= 0 else 0

    def poll(self, timeout_ms: int = 100, max_calls: int = 20_000) -> list[TracedCall]:
        """Calls completed since the last poll (waits up to ``timeout_ms`` for the first one; about
        ``max_calls`` at most)."""
        if self._bpf is None:
            raise RuntimeError("CallTracer.start() first")
        self._budget = max_calls
        self._bpf.ring_buffer_poll(timeout_ms)
        out, self._pending = self._pending, []
        return out

    def lost(self) -> int:
        """Calls dropped because the ring buffer was full."""
        if self._bpf is None:
            return 0
        return sum(v.value for v in self._bpf["lost"].values())

    def close(self) -> None:
        for link in self.links:
            link.close()
        self._unload()

