"""Symbol tables: the defined functions of one library file, demangled, cached per build-id."""

from __future__ import annotations

import fnmatch
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from ingero.errors import IngeroError, NoSymbols, SymbolNotFound, suggestion
from ingero.symbols import cache
from ingero.symbols.discovery import Library, resolve_library
from ingero.symbols.elf import RawSymbol, read_elf_info, read_function_symbols

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Symbol:
    """A defined function of a library file.

    ``file_offset`` is what a uprobe attaches to; ``address`` is the symbol's value (link-time virtual
    address). ``version`` is the symbol version from ``.gnu.version_d`` (``libcudart.so.12``) or None;
    ``default_version`` is False for a hidden (``name@VER``, not ``name@@VER``) version. ``section`` says
    which table it came from (``dynsym`` or ``symtab``: a ``symtab``-only function is not exported).
    ``kind`` is ``func`` or ``ifunc`` (a probe on an IFUNC fires in its resolver, at load time only).
    """

    name: str
    demangled: str
    address: int
    file_offset: int
    size: int
    binding: str
    version: str | None
    default_version: bool
    section: str
    kind: str = "func"

    @property
    def versioned_name(self) -> str:
        """``name@@version`` / ``name@version`` as ``nm -D`` shows it, or the plain name."""
        if not self.version:
            return self.name
        return f"{self.name}{'@@' if self.default_version else '@'}{self.version}"


def _preference(s: Symbol) -> tuple:
    """Among symbols sharing a name, the one ``get`` returns sorts first."""
    return (s.section != "dynsym", not s.default_version, s.binding != "GLOBAL", s.address)


@dataclass(frozen=True)
class SymbolTable:
    """The function symbols of one library file, sorted by name (then address)."""

    path: str
    build_id: str | None
    soname: str | None
    symbols: tuple[Symbol, ...]
    _by_name: dict[str, list[Symbol]] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_name = self._by_name
        for s in self.symbols:
            by_name.setdefault(s.name, []).append(s)
        for group in by_name.values():
            if len(group) > 1:
                group.sort(key=_preference)

    def __len__(self) -> int:
        return len(self.symbols)

    def __iter__(self) -> Iterator[Symbol]:
        return iter(self.symbols)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def names(self) -> list[str]:
        return list(self._by_name)

    def get(self, name: str) -> Symbol:
        """The symbol called ``name``: a plain name (the default version of an exported function wins
        over a hidden version and a local copy), ``name@@VERSION``/``name@VERSION``, or a full demangled
        name such as ``ns::Widget::area() const``. SymbolNotFound with a did-you-mean otherwise."""
        group = self._by_name.get(name)
        if group:
            return group[0]
        if "@" in name:
            base, _, ver = name.partition("@")
            hidden_ok = not ver.startswith("@")
            ver = ver.lstrip("@")
            for s in self._by_name.get(base, ()):
                if s.version == ver and (hidden_ok or s.default_version):
                    return s
        demangled = [s for s in self.symbols if s.demangled == name and s.demangled != s.name]
        if demangled:
            return min(demangled, key=_preference)
        what = self.soname or os.path.basename(self.path)
        hint = suggestion(name, self._by_name) or f"list them with `ingero symbols {what}`"
        raise SymbolNotFound(f"{what} has no function '{name}'", hint=hint)

    def match(self, pattern: str) -> list[Symbol]:
        """Symbols whose name or demangled name matches the case-sensitive shell glob ``pattern``."""
        rx = re.compile(fnmatch.translate(pattern))
        m = rx.match
        return [s for s in self.symbols if m(s.name) or (s.demangled is not s.name and m(s.demangled))]


# ---------------------------------------------------------------------------------------------------
# reading, with the in-process memo and the on-disk cache

_MEMO: dict[str, SymbolTable] = {}
_MEMO_MAX = 16


def _demangle_all(raw: list[RawSymbol]) -> list[str]:
    mangled = [r.name for r in raw if r.name.startswith("_Z")]
    if not mangled:
        return [r.name for r in raw]
    import cxxfilt

    done: dict[str, str] = {}
    for n in mangled:
        try:
            done[n] = cxxfilt.demangle(n)
        except cxxfilt.InvalidName:
            done[n] = n
    return [done.get(r.name, r.name) for r in raw]


def _from_cache(data: dict) -> SymbolTable:
    syms = []
    for name, dem, addr, off, size, bind, ver, dflt, sec, kind in data["symbols"]:
        syms.append(
            Symbol(
                name,
                dem if dem is not None else name,
                addr,
                off,
                size,
                bind,
                ver,
                bool(dflt),
                "symtab" if sec else "dynsym",
                "ifunc" if kind else "func",
            )
        )
    return SymbolTable(data["path"], data["build_id"], data["soname"], tuple(syms))


def _to_cache(t: SymbolTable) -> dict:
    return {
        "path": t.path,
        "build_id": t.build_id,
        "soname": t.soname,
        "symbols": [
            [
                s.name,
                None if s.demangled == s.name else s.demangled,
                s.address,
                s.file_offset,
                s.size,
                s.binding,
                s.version,
                int(s.default_version),
                int(s.section == "symtab"),
                int(s.kind == "ifunc"),
            ]
            for s in t.symbols
        ],
    }


def _parse(path: str, reader: str) -> SymbolTable:
    info, raw = read_function_symbols(path, reader=reader)
    raw.sort(key=lambda r: (r.name, r.address, r.section))
    demangled = _demangle_all(raw)
    syms = tuple(
        Symbol(
            r.name,
            d if d != r.name else r.name,
            r.address,
            r.file_offset,
            r.size,
            r.binding,
            r.version,
            r.default_version,
            r.section,
            r.kind,
        )
        for r, d in zip(raw, demangled, strict=True)
    )
    return SymbolTable(path, info.build_id, info.soname, syms)


def _no_symbols(table: SymbolTable) -> NoSymbols:
    return NoSymbols(
        f"{table.path} has no function symbols (no defined functions in .dynsym or .symtab: stripped, or "
        "exports only data)",
        hint="probe an unstripped build of the library, or a library that exports functions",
    )


def read_symbols(
    lib: Library | str | os.PathLike, *, reader: str = "raw", use_cache: bool = True
) -> SymbolTable:
    """The function symbols of a library: a :class:`Library`, a path, or a name such as ``libcudart``
    (resolved with :func:`resolve_library`). Cached per build-id in memory and on disk.

    ``reader`` picks the ELF reader on a cache miss (``raw`` or ``pyelftools``, see
    :mod:`ingero.symbols.elf`); ``use_cache=False`` reads the file and touches no cache.
    Raises LibraryNotFound, NotAnElf, PermissionProblem, NoSymbols.
    """
    if isinstance(lib, str) and "/" not in lib:
        lib = resolve_library(lib)
    path = lib.read_path if isinstance(lib, Library) else os.fspath(lib)

    if not use_cache:
        table = _parse(path, reader)
        if not table.symbols:
            raise _no_symbols(table)
        return table

    info = read_elf_info(path)
    st = None
    if info.build_id is None:
        try:
            st = os.stat(path)
        except OSError as e:
            log.debug("stat %s failed: %s", path, e)
            return read_symbols(path, reader=reader, use_cache=False)
    key = cache.file_key(info, st)

    table = _MEMO.get(key)
    if table is None:
        data = cache.load(key)
        if data is not None:
            table = _from_cache(data)
            if table.path != path:
                table = SymbolTable(path, table.build_id, table.soname, table.symbols)
        else:
            table = _parse(path, reader)
            cache.store(key, _to_cache(table))
        if len(_MEMO) >= _MEMO_MAX:
            _MEMO.pop(next(iter(_MEMO)))
        _MEMO[key] = table
    elif table.path != path:
        table = SymbolTable(path, table.build_id, table.soname, table.symbols)
    if not table.symbols:
        raise _no_symbols(table)
    return table


def symbol_count(lib: Library) -> int:
    """Number of function symbols of a library (through the cache); 0 if it has none or cannot be read."""
    try:
        return len(read_symbols(lib))
    except IngeroError as e:
        log.debug("no symbol count for %s: %s", lib.path, e)
        return 0
