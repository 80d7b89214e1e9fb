"""Reading ELF files: identity (soname, GNU build-id) and function symbols.

Two readers of the symbol arrays give the same answer:

* ``raw`` (the default): the ELF, program and section headers and the ``Elf_Sym``/``Elf_Versym``/
  ``Elf_Verdef`` arrays parsed with :mod:`struct` (``iter_unpack``). Standard library only, so the cold
  path does not pay for importing pyelftools, and 10-30x faster on large tables.
* ``pyelftools``: the reader of record. ``tests/test_symbols.py`` checks that both agree on real
  libraries (libcudart 12 and 13, libstdc++, libc, a C++ library built in the test); the raw reader falls
  back to it if a file's layout surprises it.

A function symbol is a defined (``st_shndx != SHN_UNDEF``) ``STT_FUNC`` or ``STT_GNU_IFUNC`` entry of
``.dynsym`` or ``.symtab``. Its file offset, what a uprobe attaches to, is
``st_value - p_vaddr + p_offset`` of the ``PT_LOAD`` segment holding it (for an object without segments,
the same through the symbol's section). ``.symtab`` entries repeating a ``.dynsym`` entry (same name and
address) are dropped.
"""

from __future__ import annotations

import logging
import os
import struct
from dataclasses import dataclass
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
        secs = self.sections
        out: list[RawSymbol] = []
        seen: set[tuple[str, int]] = set()
        for want, label in ((SHT_DYNSYM, "dynsym"), (SHT_SYMTAB, "symtab")):
            for idx, s in enumerate(secs):
                if s.type != want or s.size == 0:
                    continue
                versions = self._versions(idx) if want == SHT_DYNSYM else None
                for sym in self._symbols(s, label, versions):
                    key = (sym.name.split("@", 1)[0], sym.address)
                    if label == "symtab" and key in seen:
                        continue
                    seen.add(key)
                    out.append(sym)
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

    def _symbols(self, s: _Section, label: str, versions) -> list[RawSymbol]:
        lay, cls64 = self.lay, self.lay.cls64
        if s.entsize and s.entsize != lay.sym.size:
            raise NotAnElf(f"{self.path}: unexpected symbol entry size {s.entsize}")
        strsec = self.sections[s.link]
        strtab = self.read(strsec.offset, strsec.size)
        blob = self.read(s.offset, s.size - s.size % lay.sym.size)
        ndx, vnames = versions if versions else (None, None)
        secs = self.sections
        out = []
        for i, t in enumerate(lay.sym.iter_unpack(blob)):
            if cls64:
                name_off, info, _other, shndx, value, size = t
            else:
                name_off, value, size, info, _other, shndx = t
            stype = info & 0xF
            if (stype != STT_FUNC and stype != STT_GNU_IFUNC) or shndx == SHN_UNDEF:
                continue
            name = _cstr(strtab, name_off)
            if not name:
                continue
            off = self.vaddr_to_offset(value)
            if off is None and 0 < shndx < SHN_LORESERVE and shndx < len(secs):
                sec = secs[shndx]
                off = value - sec.addr + sec.offset if self.type != 1 else value + sec.offset
            if off is None:
                log.debug("%s: %s at %#x is in no PT_LOAD segment; skipped", self.path, name, value)
                continue
            version, default = None, True
            if ndx is not None and i < len(ndx):
                v = ndx[i]
                default = not (v & VERSYM_HIDDEN)
                version = vnames.get(v & 0x7FFF) if (v & 0x7FFF) > 1 else None
            out.append(
                RawSymbol(
                    name,
                    value,
                    off,
                    size,
                    BINDINGS.get(info >> 4, str(info >> 4)),
                    version,
                    default,
                    label,
                    "ifunc" if stype == STT_GNU_IFUNC else "func",
                )
            )
        return out


def _cstr(blob: bytes, off: int) -> str:
    end = blob.find(b"\0", off)
    return blob[off : end if end >= 0 else len(blob)].decode("utf-8", "replace")


def _open(path: str | os.PathLike) -> BinaryIO:
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
    with _open(path) as f:
        try:
            return _Elf(f, os.fspath(path)).info()
        except struct.error as e:
            raise NotAnElf(f"{os.fspath(path)} has a malformed ELF header ({e})") from None


def read_function_symbols(path: str | os.PathLike, reader: str = "raw") -> tuple[ElfInfo, list[RawSymbol]]:
    """The file's identity and its defined function symbols (``reader``: ``raw`` or ``pyelftools``)."""
    p = os.fspath(path)
    if reader == "pyelftools":
        return _pyelftools_symbols(p)
    if reader != "raw":
        raise ValueError(f"unknown reader {reader!r}")
    with _open(p) as f:
        elf = _Elf(f, p)  # NotAnElf propagates: pyelftools would not do better
        try:
            return elf.info(), elf.function_symbols()
        except (struct.error, IndexError, NotAnElf) as e:
            log.warning("raw ELF reader failed on %s (%s); falling back to pyelftools", p, e)
    return _pyelftools_symbols(p)


def _pyelftools_symbols(path: str) -> tuple[ElfInfo, list[RawSymbol]]:
    from elftools.common.exceptions import ELFError
    from elftools.elf.dynamic import DynamicSection
    from elftools.elf.elffile import ELFFile
    from elftools.elf.gnuversions import GNUVerDefSection, GNUVerSymSection
    from elftools.elf.sections import NoteSection, SymbolTableSection

    with _open(path) as f:
        try:
            elf = ELFFile(f)
        except ELFError as e:
            raise NotAnElf(f"{path} is not an ELF file ({e})") from None
        loads = [
            (seg["p_vaddr"], seg["p_filesz"], seg["p_offset"])
            for seg in elf.iter_segments()
            if seg["p_type"] == "PT_LOAD"
        ]
        soname = build_id = None
        needed: list[str] = []
        verdef_names: dict[int, str] = {}
        versym = None
        sections = list(elf.iter_sections())
        for sec in sections:
            if isinstance(sec, DynamicSection) and soname is None and not needed:
                for tag in sec.iter_tags():
                    if tag.entry.d_tag == "DT_SONAME":
                        soname = tag.soname
                    elif tag.entry.d_tag == "DT_NEEDED":
                        needed.append(tag.needed)
            elif isinstance(sec, NoteSection) and build_id is None:
                for note in sec.iter_notes():
                    if note["n_type"] == "NT_GNU_BUILD_ID":
                        build_id = note["n_desc"]
            elif isinstance(sec, GNUVerDefSection):
                for verdef, aux in sec.iter_versions():
                    verdef_names[verdef["vd_ndx"]] = next(aux).name
            elif isinstance(sec, GNUVerSymSection):
                versym = sec

        def offset(value: int, shndx) -> int | None:
            for start, filesz, off in loads:
                if start <= value < start + filesz:
                    return value - start + off
            if isinstance(shndx, int) and 0 < shndx < len(sections):
                hdr = sections[shndx].header
                return (
                    value - hdr["sh_addr"] + hdr["sh_offset"]
                    if elf["e_type"] != "ET_REL"
                    else (value + hdr["sh_offset"])
                )
            return None

        out: list[RawSymbol] = []
        seen: set[tuple[str, int]] = set()
        for label, sht in (("dynsym", "SHT_DYNSYM"), ("symtab", "SHT_SYMTAB")):
            for sec in sections:
                if not isinstance(sec, SymbolTableSection) or sec["sh_type"] != sht:
                    continue
                for i, sym in enumerate(sec.iter_symbols()):
                    stype = sym["st_info"]["type"]
                    if (
                        stype not in ("STT_FUNC", "STT_LOOS")
                        or sym["st_shndx"] == "SHN_UNDEF"
                        or not sym.name
                    ):
                        continue  # STT_LOOS == STT_GNU_IFUNC (10)
                    off = offset(sym["st_value"], sym["st_shndx"])
                    if off is None:
                        continue
                    version, default = None, True
                    if label == "dynsym" and versym is not None and i < versym.num_symbols():
                        ndx = versym.get_symbol(i).entry["ndx"]
                        if ndx not in ("VER_NDX_LOCAL", "VER_NDX_GLOBAL"):
                            ndx = int(ndx)
                            default = not (ndx & VERSYM_HIDDEN)
                            version = verdef_names.get(ndx & 0x7FFF) if (ndx & 0x7FFF) > 1 else None
                    key = (sym.name.split("@", 1)[0], sym["st_value"])
                    if label == "symtab" and key in seen:
                        continue
                    seen.add(key)
                    bind = sym["st_info"]["bind"]
                    binding = {
                        "STB_LOCAL": "LOCAL",
                        "STB_GLOBAL": "GLOBAL",
                        "STB_WEAK": "WEAK",
                        "STB_LOOS": "GNU_UNIQUE",
                    }.get(bind, str(bind))
                    out.append(
                        RawSymbol(
                            sym.name,
                            sym["st_value"],
                            off,
                            sym["st_size"],
                            binding,
                            version,
                            default,
                            label,
                            "func" if stype == "STT_FUNC" else "ifunc",
                        )
                    )
        sizes = tuple(
            sum(sec["sh_size"] for sec in sections if sec["sh_type"] == t)
            for t in ("SHT_DYNSYM", "SHT_SYMTAB")
        )
        info = ElfInfo(
            path,
            soname,
            build_id,
            _machine_number(elf),
            elf.elfclass,
            {"ET_REL": 1, "ET_EXEC": 2, "ET_DYN": 3}.get(elf["e_type"], 0),
            sizes,
            tuple(needed),
        )
        return info, out


def _machine_number(elf) -> int:
    f = elf.stream
    f.seek(18)
    return struct.unpack(("<" if elf.little_endian else ">") + "H", f.read(2))[0]
