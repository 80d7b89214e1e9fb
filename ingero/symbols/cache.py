"""The on-disk symbol cache: one compact binary file per library file in ``cache_dir()/symbols/``.

The key is the GNU build-id (the same bytes reached through any path, container or ``/proc`` link share
one entry) plus the sizes of ``.dynsym`` and ``.symtab`` in hex (``strip`` keeps the build-id but drops
``.symtab``): ``<build-id>-<dynsym>-<symtab>``. A file without a build-id is keyed by
``nobid-<dev>-<inode>-<size>-<mtime_ns>``.

An entry (``<key>.syms``) is zlib-compressed sections then a small JSON header: the numeric columns
(:class:`Columns`), and the symbol names and their demangled forms in chunks of :data:`CHUNK` names, each
compressed on its own, so one name is read without inflating the rest (a stack frame in a 100k-symbol
C++ library). The demangled section is written the first time a caller needs demangled names (demangling
is the slow part of a cold read, and most readers -- symbol counts, attaching by name -- never need it).
The entry is then written again with the compressed names kept from the first write (:class:`Packed`),
not compressed twice. A PyTorch-sized library (120k C++ symbols, 100 MB of names) takes a few MB. The
CLI has the compressing and writing done by a thread while it writes its rows (``background``). A cache
that cannot be written (read-only home) only costs speed: it is logged, never raised.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import struct
import threading
import zlib
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ingero.symbols.elf import ElfInfo

log = logging.getLogger(__name__)

#: Bump when the entry layout or the meaning of a field changes; older entries are then ignored.
FORMAT = 2
MAGIC = b"INGSYM2\n"
#: names per independently compressed chunk
CHUNK = 2048
#: zlib level: 1 compresses C++ names about 10x, several times faster than the default
LEVEL = 1
_HDR = struct.Struct("<I")


def symbols_dir() -> Path:
    from ingero.paths import cache_dir

    return cache_dir() / "symbols"


def file_key(info: ElfInfo, st: os.stat_result | None) -> str:
    if info.build_id:
        dyn, sym = info.table_sizes
        return f"{info.build_id}-{dyn:x}-{sym:x}"
    if st is None:
        raise ValueError("a file without a build-id needs its stat() for a cache key")
    return f"nobid-{st.st_dev}-{st.st_ino}-{st.st_size}-{st.st_mtime_ns}"


@dataclass
class Columns:
    """The numeric fields of n symbols, one array each (index i = symbol i). ``version``: index into
    ``versions`` (0 = none); ``binding``: index into ``bindings``; ``flags``: bit 0 default version,
    bit 1 from ``.symtab``, bit 2 an IFUNC."""

    address: array
    file_offset: array
    size: array
    version: array
    binding: array
    flags: array

    def pack(self) -> bytes:
        return b"".join(a.tobytes() for a in (self.address, self.file_offset, self.size, self.version,
                                                self.binding, self.flags))

    @classmethod
    def unpack(cls, raw: bytes, n: int) -> Columns:
        out = []
        pos = 0
        for code in ("Q", "Q", "Q", "H", "B", "B"):
            a = array(code)
            size = a.itemsize * n
            a.frombytes(raw[pos : pos + size])
            pos += size
            out.append(a)
        return cls(*out)


def _chunks(names: Sequence[str]) -> list[bytes]:
    return [zlib.compress("\n".join(names[i : i + CHUNK]).encode(), LEVEL) for i in range(0, len(names), CHUNK)]


@dataclass
class Entry:
    """A cache entry as read: the header fields, the columns, and readers of the name sections."""

    path: str
    build_id: str | None
    soname: str | None
    versions: list[str]
    bindings: list[str]
    count: int
    columns: Columns
    file: str
    names_at: list[tuple[int, int]]
    display_at: list[tuple[int, int]] | None
    columns_at: tuple[int, int] = (0, 0)

    def chunk(self, which: str, k: int) -> list[str]:
        off, size = (self.names_at if which == "names" else self.display_at)[k]  # type: ignore[index]
        with open(self.file, "rb") as f:
            f.seek(off)
            return zlib.decompress(f.read(size)).decode().split("\n")

    def packed(self) -> Packed:
        """The entry's compressed sections as stored (to write it again with more, not compressing twice)."""
        with open(self.file, "rb") as f:
            def raw(at: tuple[int, int]) -> bytes:
                f.seek(at[0])
                return f.read(at[1])

            return Packed(raw(self.columns_at), [raw(at) for at in self.names_at],
                          None if self.display_at is None else [raw(at) for at in self.display_at])

    def chunks(self, which: str) -> Iterator[list[str]]:
        """The names (``names``) or demangled names (``display``) by index, a chunk at a time."""
        at = self.names_at if which == "names" else self.display_at
        if at is None:
            raise KeyError(which)
        with open(self.file, "rb") as f:
            for off, size in at:
                f.seek(off)
                yield zlib.decompress(f.read(size)).decode().split("\n")

    def all(self, which: str) -> list[str]:
        out: list[str] = []
        for names in self.chunks(which):
            out += names
        return out


def load(key: str) -> Entry | None:
    path = symbols_dir() / f"{key}.syms"
    try:
        with open(path, "rb") as f:
            if f.read(len(MAGIC)) != MAGIC:
                return None
            f.seek(-_HDR.size, os.SEEK_END)
            (hlen,) = _HDR.unpack(f.read(_HDR.size))
            f.seek(-_HDR.size - hlen, os.SEEK_END)
            head = json.loads(f.read(hlen))
            if head.get("format") != FORMAT:
                return None
            off, size = head["columns"]
            f.seek(off)
            cols = Columns.unpack(zlib.decompress(f.read(size)), head["count"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, struct.error, zlib.error) as e:
        log.warning("ignoring unreadable symbol cache entry %s: %s", path, e)
        return None
    return Entry(head["path"], head["build_id"], head["soname"], head["versions"], head["bindings"],
                 head["count"], cols, str(path), [tuple(x) for x in head["names"]],
                 [tuple(x) for x in head["display"]] if head.get("display") is not None else None,
                 (off, size))


@dataclass
class Packed:
    """The compressed sections of an entry, kept so that writing the entry again (with the demangled
    names added) does not compress the names a second time."""

    columns: bytes
    names: list[bytes]
    display: list[bytes] | None = None


#: entries being written in the background, by key (see :func:`store`)
_writing: dict[str, threading.Thread] = {}
_writing_lock = threading.Lock()


def wait(key: str | None = None) -> None:
    """Wait until the background writes of ``key`` (of every key if None) are on disk."""
    with _writing_lock:
        threads = [t for k, t in _writing.items() if key is None or k == key]
    for t in threads:
        t.join()


class ChunkFeed:
    """Names handed over :data:`CHUNK` at a time (the last piece shorter) while they are made, to be
    compressed by a background :func:`store` meanwhile; :meth:`close` says whether they all came."""

    _END = object()

    def __init__(self) -> None:
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self.complete = False

    def put(self, names: list[str]) -> None:
        self._q.put(names)

    def close(self, complete: bool) -> None:
        self.complete = complete
        self._q.put(self._END)

    def __iter__(self) -> Iterator[list[str]]:
        while (got := self._q.get()) is not self._END:
            yield got


def store(key: str, *, path: str, build_id: str | None, soname: str | None, versions: list[str],
          bindings: list[str], columns: Columns, names: Sequence[str], display: Sequence[str] | None,
          packed: Packed | None = None, background: bool = False, feed: ChunkFeed | None = None) -> Packed:
    """Write an entry (replacing any): ``display`` None leaves the demangled section for later, unless
    ``feed`` hands the demangled names over as they are made (background only; nothing is written if it
    closes incomplete); ``packed`` the sections an earlier store of the same entry compressed (reused).
    With ``background`` the sections are compressed and the file written by a thread (zlib lets other
    threads run meanwhile), after any earlier write of the entry, which the interpreter waits for before
    it exits; :func:`wait` waits for it sooner. Returns the sections (filled in by the time the write is
    done). Layout: MAGIC, the compressed sections, the JSON header (with each section's offset and
    size), its length."""
    if not background:
        wait(key)  # one write of an entry at a time, in order
    with _writing_lock:
        earlier = _writing.get(key)
    out = packed if packed is not None else Packed(b"", [])
    head = {"format": FORMAT, "path": path, "build_id": build_id, "soname": soname, "versions": versions,
            "bindings": bindings, "count": len(names)}

    def write() -> None:
        try:
            # the fed names first (they come while the caller makes them), then the earlier write's
            # sections (``out``: it may be filling them still)
            made = [zlib.compress("\n".join(part).encode(), LEVEL) for part in feed] if feed is not None else None
            if earlier is not None:
                earlier.join()
            if feed is not None and not feed.complete:
                return
            if not out.columns:
                out.columns = zlib.compress(columns.pack(), LEVEL)
                out.names = _chunks(names)
            if made is not None:
                out.display = made
            elif display is not None and out.display is None:
                out.display = _chunks(display)
            _write(key, head, out)
        finally:
            with _writing_lock:
                if _writing.get(key) is threading.current_thread():
                    del _writing[key]

    if not background:
        write()
        return out
    t = threading.Thread(target=write, name=f"ingero-symbol-cache-{key[:12]}")
    with _writing_lock:
        _writing[key] = t
    t.start()
    return out


def _write(key: str, head: dict, packed: Packed) -> None:
    d = symbols_dir()
    final = d / f"{key}.syms"
    tmp = d / f".{key}.{os.getpid()}.{threading.get_ident()}.tmp"
    blobs = [packed.columns, *packed.names, *(packed.display or ())]
    at, pos = [], len(MAGIC)
    for b in blobs:
        at.append((pos, len(b)))
        pos += len(b)
    n = len(packed.names)
    raw = json.dumps({**head, "columns": at[0], "names": at[1 : 1 + n],
                      "display": None if packed.display is None else at[1 + n :]}).encode()
    try:
        d.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(MAGIC)
            for b in blobs:
                f.write(b)
            f.write(raw + _HDR.pack(len(raw)))
        os.replace(tmp, final)
    except OSError as e:
        log.warning("could not write the symbol cache entry %s: %s", final, e)
        try:
            tmp.unlink()
        except OSError:
            pass
