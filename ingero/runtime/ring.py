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
        return list(self.record.iter_unpack(self.read_bytes(max_records)))

    def read_bytes(self, max_records: int = 1 << 30) -> bytes:
        """The records committed since the last read (at most ``max_records``), in order, as the bytes of
        whole records of this layout (header included) one after the other: what :meth:`read` decodes, for
        a caller that reads them in bulk (``struct.iter_unpack``, numpy). Also kept as :attr:`last_chunk`.

        Runs of committed records are copied with one slice each: those before the end of the data area,
        the one straddling it (put together from its two pieces), those after it. A record that is not one
        of this layout's committed ones is looked at alone: one being written (busy) ends the read, a
        discarded or foreign one is skipped."""
        pieces: list[bytes] = []
        got = 0
        cons = self._cons_pos[0]
        prod = self._prod_pos[0]
        size, stride, payload = self.size, self.stride, self._payload
        mask, base, end = size - 1, self._base, self._base + size
        while cons < prod and got < max_records:
            off = base + (cons & mask)
            # whole records before the end of the (once-mapped) data area
            n = min((prod - cons) // stride, max_records - got, (end - off) // stride)
            if n:
                region = self._view[off:off + n * stride]
                # the headers first, in place: a record whose header reads committed has its body written,
                # so the copy taken after them holds it (x86-64: loads are not reordered with older loads)
                heads = region.cast("I")[0::stride // 4].tolist()
                if heads.count(payload) != n:  # a run of committed records, up to the first that is not
                    n = next(i for i, h in enumerate(heads) if h != payload)
                if n:
                    pieces.append(region[:n * stride].tobytes())
                    cons += n * stride
                    got += n
                    continue
            length = self._hdr.unpack_from(self._data, off)[0]  # 8-byte aligned: never straddles the end
            if length & _BUSY:
                break
            rec = (((length & ~(_BUSY | _DISCARD)) + 8) + 7) // 8 * 8
            if not length & _DISCARD and rec == stride:
                if off + rec <= end:
                    pieces.append(self._data[off:off + rec])
                else:  # the record wraps around: its tail is at the start of the area
                    pieces.append(self._data[off:end] + self._data[base:base + off + rec - end])
                got += 1
            cons += rec
        self._cons_pos[0] = cons
        chunk = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        self.last_chunk = chunk
        return chunk
