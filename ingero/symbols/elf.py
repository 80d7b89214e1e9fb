"""Reading ELF files: identity (soname, GNU build-id) and function symbols.

Two readers of the symbol arrays give the same answer:

* ``raw`` (the default): the ELF, program and section headers and the ``Elf_Sym``/``Elf_Versym``/
  ``Elf_Verdef`` arrays parsed with :mod:`struct` (``iter_unpack``). Standard library only, so the cold
  path does not pay for importing pyelftools, and 10-30x faster on large tables.
* ``pyelftools``: the reader of record (:mod:`ingero.symbols.readers`, which also picks the reader).
  ``tests/test_symbols.py`` checks that both agree on real libraries (libcudart 12 and 13, libstdc++,
  libc, a C++ library built in the test); the raw reader falls back to it if a file's layout surprises it.

A function symbol is a defined (``st_shndx != SHN_UNDEF``) ``STT_FUNC`` or ``STT_GNU_IFUNC`` entry of
``.dynsym`` or ``.symtab``. Its file offset, what a uprobe attaches to, is
``st_value - p_vaddr + p_offset`` of the ``PT_LOAD`` segment holding it (for an object without segments,
the same through the symbol's section). ``.symtab`` entries repeating a ``.dynsym`` entry (same name and
address) are dropped.
"""

from __future__ import annotations

import io
import logging
import mmap
import os
import struct
import sys
from bisect import bisect_right
from collections import Counter
from dataclasses import dataclass
from itertools import compress, repeat
from typing import BinaryIO, NamedTuple

from ingero.errors import LibraryNotFound, NotAnElf, PermissionProblem

log = logging.getLogger(__name__)

PT_LOAD, PT_DYNAMIC, PT_NOTE = 1, 2, 4
SHT_SYMTAB, SHT_NOTE, SHT_DYNSYM = 2, 7, 11
SHT_GNU_VERDEF, SHT_GNU_VERSYM = 0x6FFFFFFD, 0x6FFFFFFF
STT_FUNC, STT_GNU_IFUNC = 2, 10
DT_NULL, DT_NEEDED, DT_STRTAB, DT_SONAME = 0, 1, 5, 14
NT_GNU_BUILD_ID = 3
SHN_UNDEF, SHN_LORESERVE, SHN_XINDEX = 0, 0xFF00, 0xFFFF
VERSYM_HIDDEN = 0x8000

BINDINGS = {0: "LOCAL", 1: "GLOBAL", 2: "WEAK", 10: "GNU_UNIQUE"}


class RawSymbol(NamedTuple):
    """One function symbol as read from the file, before demangling."""

    name: str
    address: int
    file_offset: int
    size: int
    binding: str
    version: str | None
    default_version: bool
    section: str  # "dynsym" | "symtab"
    kind: str  # "func" | "ifunc"


@dataclass
class FunctionColumns:
    """The function symbols of a file as columns (index i = symbol i, in file order): what the symbol
    table is built from without an object per symbol. ``flags``: bit 0 default version, bit 1 from
    ``.symtab``, bit 2 an IFUNC."""

    names: list[str]
    address: list[int]
    file_offset: list[int]
    size: list[int]
    binding: list[str]
    version: list[str | None]
    flags: list[int]

    def rows(self) -> list[RawSymbol]:
        return [RawSymbol(n, a, o, sz, b, v, bool(f & 1), "symtab" if f & 2 else "dynsym",
                          "ifunc" if f & 4 else "func")
                for n, a, o, sz, b, v, f in zip(self.names, self.address, self.file_offset, self.size,
                                                self.binding, self.version, self.flags, strict=True)]

    @classmethod
    def of(cls, rows: list[RawSymbol]) -> FunctionColumns:
        return cls([r.name for r in rows], [r.address for r in rows], [r.file_offset for r in rows],
                   [r.size for r in rows], [r.binding for r in rows], [r.version for r in rows],
                   [int(r.default_version) | (r.section == "symtab") << 1 | (r.kind == "ifunc") << 2
                    for r in rows])


@dataclass(frozen=True)
class ElfInfo:
    """What discovery needs to know about a file, read from its headers only (a few small reads)."""

    path: str
    soname: str | None
    build_id: str | None  # lowercase hex of NT_GNU_BUILD_ID
    machine: int  # e_machine (62 = x86-64)
    elf_class: int  # 32 or 64
    elf_type: int  # e_type (2 = EXEC, 3 = DYN)
    #: sizes of .dynsym and .symtab: a stripped copy keeps the build-id but not the .symtab, so the
    #: symbol cache keys on both
    table_sizes: tuple[int, int] = (0, 0)
    #: the DT_NEEDED entries: the libraries it links (``libcudart.so.13``, ...)
    needed: tuple[str, ...] = ()


class _Layout:
    """Struct formats for one ELF class and byte order."""

    def __init__(self, cls64: bool, little: bool) -> None:
        e = "<" if little else ">"
        self.e = e
        self.cls64 = cls64
        if cls64:
            self.ehdr = struct.Struct(e + "HHIQQQIHHHHHH")
            self.phdr = struct.Struct(e + "IIQQQQQQ")  # type flags offset vaddr paddr filesz memsz align
            self.shdr = struct.Struct(e + "IIQQQQIIQQ")
            self.sym = struct.Struct(e + "IBBHQQ")  # name info other shndx value size
            self.dyn = struct.Struct(e + "qQ")
        else:
            self.ehdr = struct.Struct(e + "HHIIIIIHHHHHH")
            self.phdr = struct.Struct(e + "IIIIIIII")  # type offset vaddr paddr filesz memsz flags align
            self.shdr = struct.Struct(e + "IIIIIIIIII")
            self.sym = struct.Struct(e + "IIIBBH")  # name value size info other shndx
            self.dyn = struct.Struct(e + "iI")
        self.u32 = struct.Struct(e + "I")
        self.note = struct.Struct(e + "III")

    def phdrs(self, blob: bytes):
        """(type, offset, vaddr, filesz, memsz, align) per program header."""
        for t in self.phdr.iter_unpack(blob):
            if self.cls64:
                yield t[0], t[2], t[3], t[5], t[6], t[7]
            else:
                yield t[0], t[1], t[2], t[4], t[5], t[7]


class _Section(NamedTuple):
    type: int
    addr: int
    offset: int
    size: int
    link: int
    info: int
    entsize: int


class _Elf:
    """An open ELF file with its headers parsed. Raises NotAnElf for anything else."""

    def __init__(self, f: BinaryIO, path: str) -> None:
        self.f = f
        self.path = path
        ident = f.read(16)
        if len(ident) < 16 or ident[:4] != b"\x7fELF":
            raise NotAnElf(f"{path} is not an ELF file", hint="give a shared library (.so) or an executable")
        if ident[4] not in (1, 2) or ident[5] not in (1, 2):
            raise NotAnElf(f"{path} has an invalid ELF header (class {ident[4]}, data {ident[5]})")
        self.lay = lay = _Layout(ident[4] == 2, ident[5] == 1)
        hdr = self.read(16, lay.ehdr.size)
        (
            self.type,
            self.machine,
            _v,
            _entry,
            phoff,
            shoff,
            _flags,
            _ehsize,
            phentsize,
            phnum,
            shentsize,
            shnum,
            shstrndx,
        ) = lay.ehdr.unpack(hdr)
        self.elf_class = 64 if lay.cls64 else 32
        self.phdrs = []
        if phoff and phnum:
            if phentsize != lay.phdr.size:
                raise NotAnElf(f"{path}: unexpected program header size {phentsize}")
            self.phdrs = list(lay.phdrs(self.read(phoff, phnum * phentsize)))
        self.loads = [(vaddr, filesz, off) for (t, off, vaddr, filesz, _m, _a) in self.phdrs if t == PT_LOAD]
        self._shoff, self._shnum, self._shentsize = shoff, shnum, shentsize
        self._sections: list[_Section] | None = None

    def read(self, offset: int, size: int) -> bytes:
        self.f.seek(offset)
        data = self.f.read(size)
        if len(data) != size:
            raise NotAnElf(f"{self.path} is truncated (wanted {size} bytes at offset {offset:#x})")
        return data

    @property
    def sections(self) -> list[_Section]:
        if self._sections is None:
            self._sections = []
            shoff, shnum = self._shoff, self._shnum
            if shoff:
                lay = self.lay
                if self._shentsize != lay.shdr.size:
                    raise NotAnElf(f"{self.path}: unexpected section header size {self._shentsize}")
                if shnum == 0:  # extended numbering: the real count is sh_size of section 0
                    shnum = self._section(lay.shdr.unpack(self.read(shoff, lay.shdr.size))).size
                blob = self.read(shoff, shnum * lay.shdr.size)
                self._sections = [self._section(t) for t in lay.shdr.iter_unpack(blob)]
        return self._sections

    def _section(self, t: tuple) -> _Section:
        # both classes: name type flags addr offset size link info addralign entsize
        return _Section(t[1], t[3], t[4], t[5], t[6], t[7], t[9])

    def vaddr_to_offset(self, vaddr: int) -> int | None:
        for start, filesz, off in self.loads:
            if start <= vaddr < start + filesz:
                return vaddr - start + off
        return None

    def cstr(self, offset: int, limit: int = 4096) -> str:
        self.f.seek(offset)
        data = self.f.read(limit)
        end = data.find(b"\0")
        return data[: end if end >= 0 else len(data)].decode("utf-8", "replace")

    # -- identity --------------------------------------------------------------------------------
    def build_id(self) -> str | None:
        notes = [(off, filesz, align) for (t, off, _v, filesz, _m, align) in self.phdrs if t == PT_NOTE]
        if not notes:
            notes = [(s.offset, s.size, 4) for s in self.sections if s.type == SHT_NOTE]
        for off, size, align in notes:
            bid = self._scan_notes(self.read(off, size), 8 if align == 8 else 4)
            if bid:
                return bid
        return None

    def _scan_notes(self, blob: bytes, align: int) -> str | None:
        pos, hdr = 0, self.lay.note
        while pos + hdr.size <= len(blob):
            namesz, descsz, ntype = hdr.unpack_from(blob, pos)
            pos += hdr.size
            name = blob[pos : pos + namesz]
            pos += (namesz + align - 1) // align * align
            desc = blob[pos : pos + descsz]
            pos += (descsz + align - 1) // align * align
            if ntype == NT_GNU_BUILD_ID and name.rstrip(b"\0") == b"GNU":
                return desc.hex()
        return None

    def dynamic_names(self) -> tuple[str | None, tuple[str, ...]]:
        """(DT_SONAME, the DT_NEEDED names) from the dynamic segment."""
        dyn = [(off, filesz) for (t, off, _v, filesz, _m, _a) in self.phdrs if t == PT_DYNAMIC]
        if not dyn:
            return None, ()
        off, size = dyn[0]
        strtab = soname = None
        needed: list[int] = []
        for tag, val in self.lay.dyn.iter_unpack(self.read(off, size - size % self.lay.dyn.size)):
            if tag == DT_NULL:
                break
            if tag == DT_STRTAB:
                strtab = val
            elif tag == DT_SONAME:
                soname = val
            elif tag == DT_NEEDED:
                needed.append(val)
        base = None if strtab is None else self.vaddr_to_offset(strtab)
        if base is None:
            return None, ()
        return (None if soname is None else self.cstr(base + soname)), tuple(self.cstr(base + n) for n in needed)

    def soname(self) -> str | None:
        return self.dynamic_names()[0]

    def table_sizes(self) -> tuple[int, int]:
        dyn = sum(s.size for s in self.sections if s.type == SHT_DYNSYM)
        return dyn, sum(s.size for s in self.sections if s.type == SHT_SYMTAB)

    def info(self) -> ElfInfo:
        soname, needed = self.dynamic_names()
        return ElfInfo(
            self.path,
            soname,
            self.build_id(),
            self.machine,
            self.elf_class,
            self.type,
            self.table_sizes(),
            needed,
        )

    # -- symbols ---------------------------------------------------------------------------------
    def function_symbols(self) -> list[RawSymbol]:
        return self.function_columns().rows()

    def function_columns(self) -> FunctionColumns:
        """The defined functions of ``.dynsym`` then ``.symtab`` (a ``.symtab`` entry repeating an entry
        already taken, same name and address, is dropped), as columns."""
        out = FunctionColumns([], [], [], [], [], [], [])
        seen = _Taken()
        for want, label in ((SHT_DYNSYM, "dynsym"), (SHT_SYMTAB, "symtab")):
            for idx, s in enumerate(self.sections):
                if s.type != want or s.size == 0:
                    continue
                versions = self._versions(idx) if want == SHT_DYNSYM else None
                self._symbols(s, label == "symtab", versions, out, seen)
        return out

    def _versions(self, dynsym_idx: int) -> tuple[list[int], dict[int, str]] | None:
        """The .gnu.version array of this .dynsym and the names of .gnu.version_d's indexes."""
        versym = next((s for s in self.sections if s.type == SHT_GNU_VERSYM and s.link == dynsym_idx), None)
        if versym is None:
            return None
        e = self.lay.e
        ndx = [
            v[0] for v in struct.iter_unpack(e + "H", self.read(versym.offset, versym.size - versym.size % 2))
        ]
        names: dict[int, str] = {}
        for s in self.sections:
            if s.type != SHT_GNU_VERDEF:
                continue
            strsec = self.sections[s.link]
            strtab = self.read(strsec.offset, strsec.size)
            blob = self.read(s.offset, s.size)
            pos = 0
            for _ in range(s.info or 0xFFFF):  # sh_info = number of entries
                _ver, _flags, vd_ndx, vd_cnt, _hash, vd_aux, vd_next = struct.unpack_from(
                    e + "HHHHIII", blob, pos
                )
                if vd_cnt:
                    (vda_name,) = struct.unpack_from(e + "I", blob, pos + vd_aux)
                    names[vd_ndx] = _cstr(strtab, vda_name)
                if not vd_next:
                    break
                pos += vd_next
        return ndx, names

    def _fields(self, blob: bytes) -> tuple:
        """(st_name, st_info, st_shndx, st_value, st_size) of every entry, one sequence each."""
        lay = self.lay
        if lay.cls64 and lay.e == "<" and sys.byteorder == "little":
            # Elf64_Sym is 24 bytes: name u32 @0, info u8 @4, other u8 @5, shndx u16 @6, value u64 @8,
            # size u64 @16 -- strided views of the native-order casts, no per-entry unpacking
            mv = memoryview(blob)
            return (mv.cast("I")[0::6].tolist(), mv[4::24].tobytes(), mv.cast("H")[3::12].tolist(),
                    mv.cast("Q")[1::3].tolist(), mv.cast("Q")[2::3].tolist())
        cols = list(zip(*lay.sym.iter_unpack(blob), strict=True)) or [()] * 6
        if lay.cls64:  # name info other shndx value size
            return cols[0], cols[1], cols[3], cols[4], cols[5]
        return cols[0], cols[3], cols[5], cols[1], cols[2]  # name value size info other shndx

    def _strtab(self, sec: _Section) -> tuple[bytes | mmap.mmap, int]:
        """A string table as (buffer, where it starts in it): the file mapped, not copied, when the table
        is large (a C++ library's is ~70 MB)."""
        if sec.size >= 1 << 20:
            try:
                m = mmap.mmap(self.f.fileno(), 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError, io.UnsupportedOperation):
                m = None
            if m is not None:
                if sec.offset + sec.size <= len(m):
                    return m, sec.offset
                m.close()
        return self.read(sec.offset, sec.size), 0

    def _symbols(self, s: _Section, symtab: bool, versions, out: FunctionColumns,
                 seen: _Taken) -> None:
        lay = self.lay
        if s.entsize and s.entsize != lay.sym.size:
            raise NotAnElf(f"{self.path}: unexpected symbol entry size {s.entsize}")
        strsec = self.sections[s.link]
        name_off, info, shndx, value, size = self._fields(self.read(s.offset, s.size - s.size % lay.sym.size))
        sel = [i for i in compress(range(len(value)), map(_FUNC_INFO.__getitem__, info)) if shndx[i]]
        buf, base = self._strtab(strsec)
        try:
            names = _names(buf, base, strsec.size, [name_off[i] for i in sel])
            versioned = buf.find(b"@", base, base + strsec.size) >= 0  # any name@VERSION in the table
        finally:
            if isinstance(buf, mmap.mmap):
                buf.close()
        vals = [value[i] for i in sel]
        offs = self._file_offsets(vals, [shndx[i] for i in sel])
        if None in offs or "" in names:
            for k in range(len(sel)):
                if offs[k] is None and names[k]:
                    log.debug("%s: %s at %#x is in no PT_LOAD segment; skipped", self.path, names[k], vals[k])
            keep = [k for k in range(len(sel)) if names[k] and offs[k] is not None]
        else:
            keep = list(range(len(sel)))
        # the key that drops a .symtab entry repeating one taken before: (name without @VERSION, address)
        bases = [n.split("@", 1)[0] if "@" in n else n for n in names] if versioned else names
        if len(keep) != len(sel):
            bases, vals = [bases[k] for k in keep], [vals[k] for k in keep]
        if symtab:
            # only an entry at an address taken before, or met twice in this table, can repeat one: the
            # names of those alone are compared (hashing 100k+ names costs more than the rest)
            twice = {v for v, c in Counter(vals).items() if c > 1}
            taken, here = seen.settle(), _Taken()
            at = taken.addresses
            maybe = [j for j, v in enumerate(vals) if v in at or v in twice]
            drop = set()
            for j in maybe:
                v, b = vals[j], bases[j]
                if taken.has(b, v) or here.has(b, v):
                    drop.add(j)
                else:
                    here.put(b, v)
            if drop:
                kept = [j for j in range(len(keep)) if j not in drop]
                keep = [keep[j] for j in kept]
                bases, vals = [bases[j] for j in kept], [vals[j] for j in kept]
        seen.add(bases, vals)
        ii = [sel[k] for k in keep]
        infos = [info[i] for i in ii]
        out.names += [names[k] for k in keep]
        out.address += vals
        out.file_offset += [offs[k] for k in keep]  # type: ignore[misc]
        out.size += [size[i] for i in ii]
        out.binding += [_BIND_NAMES[x >> 4] for x in infos]
        kinds = [(x & 0xF == STT_GNU_IFUNC) << 2 | symtab << 1 for x in infos]
        if versions:
            ndx, vnames = versions
            known = {v: (vnames.get(v & 0x7FFF) if (v & 0x7FFF) > 1 else None, int(not v & VERSYM_HIDDEN))
                     for v in set(ndx)}
            vd = [known[ndx[i]] if i < len(ndx) else (None, 1) for i in ii]
            out.version += [v for v, _ in vd]
            out.flags += [d | f for (_, d), f in zip(vd, kinds, strict=True)]
        else:
            out.version += [None] * len(ii)
            out.flags += [1 | f for f in kinds]

    def _file_offsets(self, values: list[int], shndx: list[int]) -> list[int | None]:
        """The file offset of each address: through the PT_LOAD segment holding it, else (an object
        without segments) through the symbol's section; None when neither holds it."""
        loads = sorted(self.loads)
        starts = [a for a, _, _ in loads]
        ends = [a + size for a, size, _ in loads]
        if any(ends[k] > starts[k + 1] for k in range(len(loads) - 1)):  # overlapping: first one wins
            offs = [self.vaddr_to_offset(v) for v in values]
        else:
            deltas = [off - a for a, _, off in loads]
            offs = [v + deltas[k - 1] if k and v < ends[k - 1] else None
                    for v, k in zip(values, map(bisect_right, repeat(starts), values), strict=True)]
        secs = self.sections
        for k, off in enumerate(offs):
            if off is None:
                v, x = values[k], shndx[k]
                if 0 < x < SHN_LORESERVE and x < len(secs):
                    sec = secs[x]
                    offs[k] = v - sec.addr + sec.offset if self.type != 1 else v + sec.offset
        return offs


class _Taken:
    """The symbols taken so far as (name without @VERSION, address) pairs, by address (an int is hashed
    for nothing, a name is compared only with those at its address; a str, not a list, per address:
    100k+ small lists cost the garbage collector more than the rest), made only when a later table
    asks: the last table's never are."""

    def __init__(self) -> None:
        self._first: dict[int, str] = {}
        self._more: dict[int, list[str]] = {}
        self._pending: list[tuple[list[str], list[int]]] = []

    def add(self, bases: list[str], addresses: list[int]) -> None:
        self._pending.append((bases, addresses))

    @property
    def addresses(self) -> dict[int, str]:
        """Every address taken (``in`` tests it), to its first name."""
        return self._first

    def has(self, base: str, address: int) -> bool:
        return self._first.get(address) == base or base in self._more.get(address, ())

    def put(self, base: str, address: int) -> None:
        if address not in self._first:
            self._first[address] = base
        else:
            self._more.setdefault(address, []).append(base)

    def settle(self) -> _Taken:
        """Made from what was added (a table's entries are taken in order)."""
        first = self._first
        for bases, addresses in self._pending:
            if not first:  # the first table: each address's first name, then the others
                first.update(zip(reversed(addresses), reversed(bases), strict=True))
                for b, a in zip(bases, addresses, strict=True):
                    if first[a] is not b:
                        self._more.setdefault(a, []).append(b)
            else:
                for b, a in zip(bases, addresses, strict=True):
                    self.put(b, a)
        self._pending.clear()
        return self


#: binding names by st_bind (0-15)
_BIND_NAMES = [BINDINGS.get(b) or str(b) for b in range(16)]
#: st_info values of a function (STT_FUNC) or an IFUNC (STT_GNU_IFUNC), any binding
_FUNC_INFO = bytes(int((x & 0xF) in (STT_FUNC, STT_GNU_IFUNC)) for x in range(256))


def _names(buf: bytes | mmap.mmap, base: int, size: int, offsets: list[int]) -> list[str]:
    """The NUL-terminated strings at these offsets of the string table of ``size`` bytes at ``base``."""
    if size and buf[base + size - 1] == 0:  # every string ends inside the table
        find = buf.find
        return [buf[base + o : find(b"\0", base + o)].decode("utf-8", "replace") if o < size else ""
                for o in offsets]
    table = buf[base : base + size]
    return [_cstr(table, o) for o in offsets]


def _cstr(blob: bytes, off: int) -> str:
    end = blob.find(b"\0", off)
    return blob[off : end if end >= 0 else len(blob)].decode("utf-8", "replace")


def open_elf(path: str | os.PathLike) -> BinaryIO:
    """Open for reading, turning OS errors into the user-facing errors."""
    p = os.fspath(path)
    try:
        return open(p, "rb")  # noqa: SIM115 - the caller closes it
    except FileNotFoundError:
        raise LibraryNotFound(f"no such file: {p}") from None
    except IsADirectoryError:
        raise NotAnElf(f"{p} is a directory, not an ELF file") from None
    except PermissionError:
        raise PermissionProblem(
            f"not allowed to read {p}",
            hint="run as root (a deleted or replaced library of another process is read through "
            "/proc/PID/map_files, which needs CAP_SYS_ADMIN)",
        ) from None


def read_elf_info(path: str | os.PathLike) -> ElfInfo:
    """Soname, build-id, machine and class of an ELF file, from its headers only."""
    with open_elf(path) as f:
        try:
            return _Elf(f, os.fspath(path)).info()
        except struct.error as e:
            raise NotAnElf(f"{os.fspath(path)} has a malformed ELF header ({e})") from None


def read_raw(path: str) -> tuple[ElfInfo, FunctionColumns] | None:
    """The raw reader: the file's identity and its function symbols as columns; None (logged) when the
    file's layout surprises it (:mod:`ingero.symbols.readers` then asks pyelftools). A file that is no ELF
    at all raises :class:`NotAnElf`: pyelftools would not do better."""
    with open_elf(path) as f:
        elf = _Elf(f, path)
        try:
            return elf.info(), elf.function_columns()
        except (struct.error, IndexError, ValueError, NotAnElf) as e:
            log.warning("raw ELF reader failed on %s (%s); falling back to pyelftools", path, e)
            return None
