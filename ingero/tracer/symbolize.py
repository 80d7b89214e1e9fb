"""Resolve user-space return addresses of a traced process to ``symbol+0xoff`` in ``file``.

An address is mapped to its file and file offset with ``/proc/PID/maps`` (read again when an address
falls outside every known mapping: a library loaded since), then to the function whose file-offset
range holds it, using the symbol tables of :mod:`ingero.symbols` (cached per build-id). Files are read
through ``/proc/PID/map_files`` when the path no longer leads to the mapped file.
"""

from __future__ import annotations

import bisect
import logging
import os
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResolvedFrame:
    ip: int
    symbol: str  # "name+0xoff", or "" when unknown
    file: str  # basename of the mapped file, or ""


@dataclass(frozen=True)
class _Mapping:
    start: int
    end: int
    pgoff: int
    path: str


def file_mappings(pid: int) -> list[tuple[int, int, int, str]]:
    """The file-backed mappings of ``pid`` as in ``/proc/PID/maps``: (start, end, file offset, path, which
    ends with `` (deleted)`` for a file deleted since). Raises OSError when the process is gone."""
    out = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split(None, 5)
            if len(parts) < 6 or not parts[5].startswith("/"):
                continue
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            out.append((lo, hi, int(parts[2], 16), parts[5].rstrip("\n")))
    return out


class _FunctionIndex:
    """Functions of one file sorted by file offset, for containment lookups. Holds two arrays, not the
    names: a frame's name is read (and demangled) when a stack holds it, so a traced PyTorch process,
    whose libraries hold half a million C++ functions, costs a few MB here."""

    def __init__(self, path: str) -> None:
        from ingero.symbols import read_symbols

        try:
            self.table = read_symbols(path)
            self.starts, self.order = self.table.by_offset()
        except Exception:  # noqa: BLE001 - no symbols: frames in this file stay unnamed
            self.table = None
            self.starts, self.order = [], []
        self._names: dict[int, str] = {}

    def lookup(self, off: int) -> str:
        i = bisect.bisect_right(self.starts, off) - 1
        if i < 0 or self.table is None:
            return ""
        start = self.starts[i]
        k = self.order[i]
        size = self.table.columns.size[k]
        if not start or (size and off >= start + size):
            return ""
        name = self._names.get(k)
        if name is None:
            if len(self._names) >= 4096:
                self._names.clear()
            name = self._names[k] = self.table.display_name(k)
        return f"{name}+{off - start:#x}"


class StackSymbolizer:
    """Per-process address resolution with caches for maps and symbol tables."""

    REREAD_S = 0.2  # at most one re-read of a process's maps per this many seconds

    def __init__(self) -> None:
        self._maps: dict[int, list[_Mapping]] = {}
        self._index: dict[str, _FunctionIndex] = {}
        self._read_at: dict[int, float] = {}

    def _read_maps(self, pid: int) -> list[_Mapping] | None:
        """The file mappings of ``pid`` (cached); None when the process is gone (the cache is kept)."""
        try:
            maps = file_mappings(pid)
        except OSError:
            return None
        out = [_Mapping(lo, hi, off, f"/proc/{pid}/map_files/{lo:x}-{hi:x}" if path.endswith(" (deleted)") else path)
               for lo, hi, off, path in maps]
        out.sort(key=lambda m: m.start)
        self._maps[pid] = out
        self._read_at[pid] = time.monotonic()
        return out

    def _mapping(self, pid: int, ip: int) -> _Mapping | None:
        cached = self._maps.get(pid)
        if cached is not None:
            for m in cached:
                if m.start <= ip < m.end:
                    return m
            # outside every known mapping: a library loaded since, or a stray address (re-read rarely)
            if time.monotonic() - self._read_at.get(pid, 0.0) < self.REREAD_S:
                return None
        maps = self._read_maps(pid)
        if maps is None:
            return None
        for m in maps:
            if m.start <= ip < m.end:
                return m
        return None

    def resolve(self, pid: int, ips: list[int]) -> list[ResolvedFrame]:
        frames = []
        for ip in ips:
            m = self._mapping(pid, ip)
            if m is None:
                frames.append(ResolvedFrame(ip, "", ""))
                continue
            path = m.path
            readable = path if os.path.exists(path) else f"/proc/{pid}/root{path}"
            idx = self._index.get(readable)
            if idx is None:
                idx = self._index[readable] = _FunctionIndex(readable)
            frames.append(ResolvedFrame(ip, idx.lookup(ip - m.start + m.pgoff), os.path.basename(m.path)))
        return frames

    def refresh(self, pid: int) -> None:
        """Read ``pid``'s maps now (while it is alive), so its stacks resolve even after it exits."""
        self._read_maps(pid)

    def inherit(self, parent: int, child: int) -> None:
        """A forked child starts with its parent's mappings."""
        maps = self._maps.get(parent)
        if maps is None:
            maps = self._read_maps(parent)
        if maps is not None and child not in self._maps:
            self._maps[child] = list(maps)
            self._read_at[child] = self._read_at.get(parent, 0.0)

    def forget(self, pid: int) -> None:
        self._maps.pop(pid, None)
        self._read_at.pop(pid, None)
