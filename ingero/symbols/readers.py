"""The readers of a file's function symbols, and the choice between them: the raw reader of
:mod:`ingero.symbols.elf` (the default, standard library only) and pyelftools (the reader of record, which
the raw reader falls back to when a file's layout surprises it; ``tests/test_symbols.py`` checks that
both agree on real libraries)."""

from __future__ import annotations

import logging
import os
import struct

from ingero.errors import NotAnElf
from ingero.symbols.elf import VERSYM_HIDDEN, ElfInfo, FunctionColumns, RawSymbol, open_elf, read_raw

log = logging.getLogger(__name__)


def read_function_symbols(path: str | os.PathLike, reader: str = "raw") -> tuple[ElfInfo, list[RawSymbol]]:
    """The file's identity and its defined function symbols (``reader``: ``raw`` or ``pyelftools``)."""
    info, cols = read_function_columns(path, reader)
    return info, cols.rows()


def read_function_columns(path: str | os.PathLike, reader: str = "raw") -> tuple[ElfInfo, FunctionColumns]:
    """:func:`read_function_symbols` as columns (what the symbol table is built from)."""
    p = os.fspath(path)
    if reader == "pyelftools":
        info, rows = _pyelftools_symbols(p)
        return info, FunctionColumns.of(rows)
    if reader != "raw":
        raise ValueError(f"unknown reader {reader!r}")
    got = read_raw(p)
    if got is not None:
        return got
    info, rows = _pyelftools_symbols(p)
    return info, FunctionColumns.of(rows)


def _pyelftools_symbols(path: str) -> tuple[ElfInfo, list[RawSymbol]]:
    from elftools.common.exceptions import ELFError
    from elftools.elf.dynamic import DynamicSection
    from elftools.elf.elffile import ELFFile
    from elftools.elf.gnuversions import GNUVerDefSection, GNUVerSymSection
    from elftools.elf.sections import NoteSection, SymbolTableSection

    with open_elf(path) as f:
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
