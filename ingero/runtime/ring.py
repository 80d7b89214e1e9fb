"""A BPF ring buffer read in place and in bulk, as one fixed-layout batch of tuples per read.

Shared by the standard probe set (:mod:`ingero.tracer.standard`) and the DSL probes
(:mod:`ingero.runtime.probes`): both poll their rings without per-event callbacks or objects.
"""

from __future__ import annotations

import mmap
import re
import struct
from collections.abc import Sequence

_BUSY = 1 << 31
_DISCARD = 1 << 30
#: one item of a :mod:`struct` format: a count and a code
_ITEM = re.compile(r"(\d*)([xcbB?hHiIlLqQnNefdspP])")


def record_checks(c_struct: str, record: struct.Struct, names: Sequence[str]) -> str:
    """C static assertions that ``struct c_struct`` is what ``record`` decodes: its size, and the offset and
    size of each decoded field, named in order by ``names`` (``record`` is a little-endian format without
    padding that starts with the ring's 8-byte header, ``8x``). Joined to a program's text, they make the
    compiler refuse a program whose struct and decoder disagree."""
    fmt = record.format.lstrip("<")
    if not fmt.startswith("8x"):
        raise ValueError(f"{record.format}: a ring record starts with the 8-byte header (8x)")
    out = []
    off = 0
    left = iter(names)
    for count, code in _ITEM.findall(fmt[2:]):
        n = int(count or 1)
        size = n if code == "s" else struct.calcsize("<" + code) * n
        if code != "x":
            name = next(left)
            out.append(f"_Static_assert(__builtin_offsetof(struct {c_struct}, {name}) == {off} && "
                       f"sizeof(((struct {c_struct} *)0)->{name}) == {size}, \"{c_struct}.{name}: as decoded\");")
        off += size
    if next(left, None) is not None:
        raise ValueError(f"{record.format}: fewer fields than names ({', '.join(names)})")
    out.insert(0, f'_Static_assert(sizeof(struct {c_struct}) == {off}, "{c_struct}: size as decoded");')
    return "\n".join(out)


class RingReader:
    """A BPF ring buffer map read in place, as libbpf does (``ring_buffer__consume``), in bulk.

    The consumer page is mapped read-write, the producer page and the data area read-only. The kernel
    maps the data area twice in a row (so that a record wrapping around the end is contiguous); this
    reader maps it once, because every mapped page counts in the tracer's resident set from the start
    (the kernel maps all of them at mmap time): a 16 MiB ring costs 16 MiB, not 32. :meth:`read` copies
    every committed record up to the end of the area with one slice and returns the decoded records of
    one fixed layout (``record`` includes the 8-byte header; anything else in the ring -- a discarded or
    foreign record -- is skipped); the one record that straddles the end is put together from its two
    pieces. Stops at a record still being written (busy bit). Single consumer; relies on x86-64 ordering
    (loads are not reordered with loads, nor stores with earlier loads), as the rest of the probe set
    relies on x86-64 argument registers.
    """

    def __init__(self, map_fd: int, size: int, record: struct.Struct) -> None:
        if size <= 0 or size & (size - 1) or size % mmap.PAGESIZE:
            raise ValueError("a ring buffer's size is a power-of-two multiple of the page size")
        self.fd = map_fd
        self.size = size
        self.record = record
        self.stride = record.size
        if self.stride % 8:
            raise ValueError("ring records are 8-byte aligned")
        self._payload = self.stride - 8
        #: the bytes of the records the last read returned when it took them in one piece, else None
        self.last_chunk: bytes | None = None
        page = mmap.PAGESIZE
        self._base = page
        self._cons = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        try:
            self._data = mmap.mmap(map_fd, page + size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        except BaseException:
            self._cons.close()
            raise
        self._view = memoryview(self._data)
        # the positions as one aligned 8-byte load or store each, through memoryviews: struct.pack_into
        # zeroes its target before writing it, and the kernel seeing a consumer position of 0 for that
        # instant fails a reservation ("ring full": a few events per million lost); '<Q' would also go
        # byte by byte (a torn producer position)
        self._cons_pos = memoryview(self._cons).cast("Q")
        self._prod_pos = self._view[:8].cast("Q")
        self._hdr = struct.Struct("@I")

    def close(self) -> None:
        for v in (self._cons_pos, self._prod_pos, self._view):
            v.release()
        for m in (self._cons, self._data):
            try:
                m.close()
            except (BufferError, ValueError):
                pass

    def pending(self) -> int:
        """Bytes committed or reserved and not read yet."""
        return self._prod_pos[0] - self._cons_pos[0]

    def read(self, max_records: int = 1 << 30) -> list[tuple]:
        """The records committed since the last read (at most ``max_records``), decoded, in order."""
        out = self._read_part(max_records)
        chunk = self.last_chunk
        # a part ends at the end of the data area: the records before it, the one straddling it, the
        # records after it (what a doubly mapped area would give in one slice)
        for _ in range(2):
            if len(out) >= max_records:
                break
            more = self._read_part(max_records - len(out))
            if not more:
                break
            out += more
            chunk = None
        self.last_chunk = chunk
        return out

    def _read_part(self, max_records: int) -> list[tuple]:
        cons = self._cons_pos[0]
        prod = self._prod_pos[0]
        self.last_chunk = None
        if prod <= cons:
            return []
        at = cons & (self.size - 1)
        # whole records before the end of the (once-mapped) data area
        n = min((prod - cons) // self.stride, max_records, (self.size - at) // self.stride)
        if n:
            start = self._base + at
            region = self._view[start:start + n * self.stride]
            # the headers first, in place: a record whose header reads committed has its body written, so
            # the copy taken after them holds it (x86-64: loads are not reordered with older loads)
            if region.cast("I")[0::self.stride // 4].tolist().count(self._payload) == n:
                chunk = region.tobytes()
                self._cons_pos[0] = cons + n * self.stride
                self.last_chunk = chunk
                return list(self.record.iter_unpack(chunk))
        return self._read_slow(cons, prod, max_records)

    def _read_slow(self, cons: int, prod: int, max_records: int) -> list[tuple]:
        """Record by record: stop at a busy one, skip discarded and foreign ones, stop after the one that
        reaches the end of the data area."""
        out: list[tuple] = []
        data, mask, base, end = self._data, self.size - 1, self._base, self._base + self.size
        unpack, header = self.record.unpack_from, self._hdr.unpack_from
        while cons < prod and len(out) < max_records:
            off = base + (cons & mask)
            length = header(data, off)[0]  # 8-byte aligned: a header never straddles the end
            if length & _BUSY:
                break
            size = (((length & ~(_BUSY | _DISCARD)) + 8) + 7) // 8 * 8
            if not length & _DISCARD and size == self.stride:
                if off + size <= end:
                    out.append(unpack(data, off))
                else:  # the record wraps around: its tail is at the start of the area
                    out.append(unpack(data[off:end] + data[base:base + off + size - end]))
            cons += size
            if off + size >= end:
                break
        self._cons_pos[0] = cons
        return out

