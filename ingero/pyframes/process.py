"""Is a process a CPython interpreter, which version, and where is its ``_PyRuntime``?

The interpreter's runtime lives in ``libpython3.X.so`` (pyenv, most builds) or in the executable itself
(a static libpython, as Debian's ``/usr/bin/python3.11``). Both are found the same way: the file mapped by
the process that exports ``_PyRuntime``; the version comes from its name (``libpython3.12.so.1.0``,
``python3.11``), else from the exported ``Py_Version`` (3.11+). A venv's ``python`` is a symlink to one
of these, so its maps name the real file. 3.13+ publishes its own layout (``_Py_DebugOffsets``) at the
start of ``_PyRuntime``; older versions use :data:`ingero.pyframes.offsets.TABLE`.

Memory is read through ``/proc/PID/mem`` (root, or the same user with ptrace rights).
"""

from __future__ import annotations

import logging
import os
import re
import struct
from dataclasses import dataclass
from functools import lru_cache

from ingero.pyframes.offsets import DEBUG_OFFSETS_SIZE, TABLE, PyOffsets, from_debug_offsets
from ingero.tracer.symbolize import file_mappings

log = logging.getLogger(__name__)

_NAME = re.compile(r"(?:^|/)(?:lib)?python3\.(\d+)[^/]*$")


class ProcessMemory:
    """Reads another process's memory (``/proc/PID/mem``)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)

    def read(self, addr: int, size: int) -> bytes:
        if not 0 < addr < 1 << 63:
            raise OSError(f"bad address {addr:#x} in process {self.pid}")
        data = os.pread(self._fd, size, addr)
        if len(data) != size:
            raise OSError(f"short read at {addr:#x} in process {self.pid}")
        return data

    def u64(self, addr: int) -> int:
        return struct.unpack("<Q", self.read(addr, 8))[0]

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


@dataclass(frozen=True)
class PyRuntime:
    """One CPython interpreter process: its runtime's address and layout."""

    pid: int
    path: str  # the file holding _PyRuntime (libpython or the executable)
    version: tuple[int, int]
    runtime: int  # address of _PyRuntime in the process
    offsets: PyOffsets
    static: bool  # _PyRuntime is in the executable (a statically linked libpython)


@dataclass(frozen=True)
class _ElfFacts:
    runtime_vaddr: int
    version_vaddr: int  # Py_Version, or 0
    exec_type: bool  # ET_EXEC: addresses are absolute
    first_load_vaddr: int


@lru_cache(maxsize=64)
def _elf_facts(path: str, _key: tuple[int, int, int]) -> _ElfFacts | None:
    from elftools.elf.elffile import ELFFile

    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            runtime = version = 0
            for name in (".dynsym", ".symtab"):
                sec = elf.get_section_by_name(name)
                if sec is None:
                    continue
                for sym_name in ("_PyRuntime", "Py_Version"):
                    syms = sec.get_symbol_by_name(sym_name) or []
                    for s in syms:
                        if s["st_shndx"] != "SHN_UNDEF" and s["st_value"]:
                            if sym_name == "_PyRuntime":
                                runtime = runtime or s["st_value"]
                            else:
                                version = version or s["st_value"]
                if runtime:
                    break
            if not runtime:
                return None
            loads = [seg for seg in elf.iter_segments() if seg["p_type"] == "PT_LOAD"]
            first = min(seg["p_vaddr"] - seg["p_offset"] for seg in loads) if loads else 0
            return _ElfFacts(runtime, version, elf["e_type"] == "ET_EXEC", first)
    except Exception as e:  # noqa: BLE001 - not an ELF we can read: not a Python runtime
        log.debug("cannot read %s: %s", path, e)
        return None


def _readable(pid: int, path: str, lo: int, hi: int) -> str:
    if path.endswith(" (deleted)"):
        return f"/proc/{pid}/map_files/{lo:x}-{hi:x}"
    return path if os.path.exists(path) else f"/proc/{pid}/root{path}"


def find_runtime(pid: int) -> PyRuntime | None:
    """The CPython runtime of process ``pid``, or None (not Python, an unsupported version, or gone)."""
    try:
        maps = file_mappings(pid)
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None
    seen: dict[str, int] = {}  # file -> start of its first mapping (pgoff 0)
    for lo, _hi, pgoff, path in maps:
        if path not in seen and pgoff == 0:
            seen[path] = lo
    candidates = [p for p in seen if _NAME.search(p.removesuffix(" (deleted)"))]
    if exe in seen and exe not in candidates:
        candidates.append(exe)  # a python executable under another name
    for path in candidates:
        lo = seen[path]
        hi = next(h for s, h, _, p in maps if p == path and s == lo)
        readable = _readable(pid, path, lo, hi)
        try:
            st = os.stat(readable)
        except OSError:
            continue
        facts = _elf_facts(readable, (st.st_dev, st.st_ino, int(st.st_mtime)))
        if facts is None:
            continue
        bias = 0 if facts.exec_type else lo - facts.first_load_vaddr
        runtime = bias + facts.runtime_vaddr
        try:
            mem = ProcessMemory(pid)
        except OSError:
            return None
        try:
            return _describe(pid, path, mem, runtime, bias + facts.version_vaddr if facts.version_vaddr else 0,
                             static=path == exe)
        finally:
            mem.close()
    return None


def _describe(pid: int, path: str, mem: ProcessMemory, runtime: int, version_addr: int,
              static: bool) -> PyRuntime | None:
    m = _NAME.search(path.removesuffix(" (deleted)"))
    version = (3, int(m.group(1))) if m else None
    try:
        if version is None and version_addr:
            hexv = struct.unpack("<I", mem.read(version_addr, 4))[0]
            version = (hexv >> 24, (hexv >> 16) & 0xFF)
        if version is not None and version >= (3, 13):
            offsets = from_debug_offsets(mem.read(runtime, DEBUG_OFFSETS_SIZE))
            version = offsets.version
        elif version in TABLE:
            offsets = TABLE[version]
        else:
            log.info("process %d runs CPython %s: no Python frames (supported: 3.10 to 3.13+)", pid, version)
            return None
    except (OSError, ValueError) as e:
        log.info("process %d: cannot read the Python runtime: %s", pid, e)
        return None
    return PyRuntime(pid, path, version, runtime, offsets, static)
