"""The checker sees the machine only through ``dsl.lookup.Lookups``: a test passes its own (a library that
exists nowhere, its symbol table and a one-function catalogue, all made here) and gets a resolved probe
placed by those, or the errors those give, without any file of this machine being read."""

from __future__ import annotations

import pytest

from ingero.catalogue import Catalogue
from ingero.dsl import check
from ingero.dsl.lookup import Lookups
from ingero.errors import LibraryNotFound, suggestion
from ingero.limits import DEFAULT_SYMBOLS, MAX_SYMBOLS
from ingero.symbols import Library, SymbolTable
from ingero.symbols.elf import RawSymbol
from ingero.symbols.table import table_of
from ingero.tracer.dynamic import ProbeLimits

LIB = Library(path="/nowhere/libtiny.so.12", attach_path="/nowhere/libtiny.so.12", soname="libtiny.so.12",
              stem="libtiny", version="12.0", build_id="7e57", source="test")
#: int tinyScale(void *buf, unsigned long factor), at file offset 0x1040; tinyPad and a family of 1500
#: functions f0000..f1499 (a glob over more than the default budget)
FUNCS = {"tinyScale": 0x1040, "tinyPad": 0x2000} | {f"f{i:04d}": 0x10_000 + 16 * i for i in range(1500)}
PART = {
    "format": 1, "part": "runtime", "cuda_major": 12, "sources": {}, "variants": {}, "aliases": {}, "legacy": {},
    "enums": {}, "constants": {},
    "functions": {"tinyScale": {"lib": "tiny", "h": "tiny.h", "ret": "int",
                                "params": [["buf", "void *"], ["factor", "unsigned long"]]}},
    "types": {"int": {"k": "int", "s": 4, "a": 4}, "void": {"k": "void", "s": 0, "a": 1},
              "void *": {"k": "pointer", "s": 8, "a": 8, "p": "void"},
              "unsigned long": {"k": "uint", "s": 8, "a": 8}},
}  # fmt: skip


class TinyLookups:
    """One library, ``libtiny``, whatever the machine has."""

    def __init__(self) -> None:
        self.catalogue = Catalogue([PART])
        raw = [RawSymbol(n, off, off, 16, "GLOBAL", None, False, "dynsym", "func") for n, off in FUNCS.items()]
        self.table = table_of(LIB.path, raw, LIB.build_id, LIB.soname)
        self.asked: list[str] = []

    def library(self, name: str, pid: int | None) -> Library:
        self.asked.append(name)
        if name in ("libtiny", LIB.soname, LIB.path):
            return LIB
        raise LibraryNotFound(f"no library {name!r} here", suggestion(name, ["libtiny"]))

    def symbols(self, library: Library) -> SymbolTable:
        assert library is LIB
        return self.table

    def searched(self) -> str:
        return "this test's table"


def test_a_test_s_own_lookups_resolve_a_probe():
    tiny: Lookups = TinyLookups()
    r = check("probe s = libtiny:tinyScale\n  where factor > 2\n  record factor, retval", lookups=tiny)
    assert r.ok, r.errors
    (p,) = r.resolved().probes
    assert tiny.asked == ["libtiny"]
    assert (p.library.path, p.library.soname, p.library.cuda_major) == (LIB.path, LIB.soname, 12)
    assert [(s.name, s.file_offset, s.typed_by) for s in p.symbols] == [("tinyScale", 0x1040, "catalogue")]
    factor = next(v for v in p.values if v.key == "factor")
    # the catalogue's unsigned long, the second integer argument: rsi
    assert (factor.source, factor.ctype, factor.size, factor.kind) == ("arg", "unsigned long", 8, "uint")
    assert (factor.piece.where, factor.piece.reg) == ("reg", "si")


def test_errors_come_from_the_test_s_own_lookups():
    tiny = TinyLookups()
    errors = {}
    for spec in ("probe s = libtiny:tinyScal", "probe s = libtinny:tinyScale",
                 "probe s = libtiny:tinyScale\n  record fctor"):
        (e,) = check(spec, lookups=tiny).errors
        errors[spec.splitlines()[-1].strip()] = (e.span.line, e.span.column, e.message, e.hint)
    assert errors == {
        "probe s = libtiny:tinyScal": (1, 19, "libtiny.so.12 has no function 'tinyScal'",
                                       "did you mean 'tinyScale' or 'tinyPad'?"),
        "probe s = libtinny:tinyScale": (1, 11, "no library 'libtinny' here",
                                         "did you mean 'libtiny'? Searched: this test's table. A library only the "
                                         "program's own environment has (a virtualenv's torch/lib) is bound when "
                                         "it loads it: `ingero probe run SPEC -- CMD` waits for it in the "
                                         "command's process tree"),
        "record fctor": (2, 10, "tinyScale has no argument 'fctor'", "did you mean 'factor'?"),
    }


def test_the_checker_and_the_policy_share_one_symbols_limit():
    """A glob of 1500 functions with ``limit symbols 1500`` passes the checker and the default policy alike;
    above :data:`MAX_SYMBOLS` both refuse."""
    tiny = TinyLookups()
    assert DEFAULT_SYMBOLS < 1500 <= MAX_SYMBOLS
    (e,) = check("probe g = libtiny:f*", lookups=tiny).errors
    assert e.message == f"'f*' matches 1500 functions of libtiny.so.12, more than the budget of {DEFAULT_SYMBOLS}"
    assert e.hint == "narrow the glob, or raise the budget: limit symbols 1500"
    (p,) = check("probe g = libtiny:f*\n  limit symbols 1500", lookups=tiny).resolved().probes
    assert len(p.symbols) == 1500 and ProbeLimits().excess(p) == ()
    assert [x.short for x in ProbeLimits(max_symbols=1000).excess(p)] == ["1500 symbols > limit 1000"]
    (e,) = check(f"probe g = libtiny:f*\n  limit symbols {MAX_SYMBOLS + 1}", lookups=tiny).errors
    assert e.message == f"symbols {MAX_SYMBOLS + 1} is above the hard limit of {MAX_SYMBOLS}"
    with pytest.raises(Exception, match=f"{MAX_SYMBOLS} symbols at most"):
        ProbeLimits(max_symbols=MAX_SYMBOLS + 1)


def test_another_catalogue_s_signature_of_the_same_name_is_its_own():
    """Placed signatures are remembered per catalogue signature, not per name: a second catalogue that
    declares tinyScale(unsigned long factor, void *buf) places factor in rdi, not rsi."""
    check("probe s = libtiny:tinyScale\n  record factor", lookups=TinyLookups()).resolved()
    swapped = TinyLookups()
    part = PART | {"functions": {"tinyScale": PART["functions"]["tinyScale"] | {
        "params": [["factor", "unsigned long"], ["buf", "void *"]]}}}
    swapped.catalogue = Catalogue([part])
    (p,) = check("probe s = libtiny:tinyScale\n  record factor", lookups=swapped).resolved().probes
    assert next(v for v in p.values if v.key == "factor").piece.reg == "di"
