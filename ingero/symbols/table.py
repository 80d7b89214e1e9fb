"""Symbol tables: the defined functions of one library file, demangled, cached per build-id."""

from __future__ import annotations

import fnmatch
import logging
import os
import re
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import compress
from operator import eq, itemgetter

from ingero.errors import IngeroError, NoSymbols, SymbolNotFound, suggestion
from ingero.symbols import cache
from ingero.symbols.demangle import demangle_all, demangle_chunks
from ingero.symbols.discovery import Library, resolve_library
from ingero.symbols.elf import FunctionColumns, RawSymbol, read_elf_info
from ingero.symbols.readers import read_function_columns

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
    #: the demangled name, or None until first asked for (see :attr:`demangled`)
    dem: str | None = field(compare=False)
    address: int
    file_offset: int
    size: int
    binding: str
    version: str | None
    default_version: bool
    section: str
    kind: str = "func"

    @property
    def demangled(self) -> str:
        """The C++ name (``ns::Widget::area() const``), or the name itself for a C function."""
        if self.dem is None:
            object.__setattr__(self, "dem", demangle_all([self.name])[0])
        return self.dem  # type: ignore[return-value]

    @property
    def versioned_name(self) -> str:
        """``name@@version`` / ``name@version`` as ``nm -D`` shows it, or the plain name."""
        if not self.version:
            return self.name
        return f"{self.name}{'@@' if self.default_version else '@'}{self.version}"


def _preference(s: Symbol) -> tuple:
    """Among symbols sharing a name, the one ``get`` returns sorts first."""
    return (s.section != "dynsym", not s.default_version, s.binding != "GLOBAL", s.address)


class SymbolTable:
    """The function symbols of one library file, sorted by name (then address).

    Held as columns (:class:`~ingero.symbols.cache.Columns`), not one object per symbol: a C++ library of
    100k+ functions costs a few MB. Names are loaded when a lookup by name needs them; demangled names
    when a caller asks for them (:meth:`display`, :attr:`symbols`, :meth:`match`), demangled then and
    kept in the cache; :meth:`display_name` reads or demangles one name (a stack frame)."""

    def __init__(self, path: str, build_id: str | None, soname: str | None, columns: cache.Columns,
                 versions: list[str], bindings: list[str], *, names: list[str] | None = None,
                 display: list[str] | None = None, entry: cache.Entry | None = None, key: str | None = None
                 ) -> None:
        self.path, self.build_id, self.soname = path, build_id, soname
        self.columns, self.versions, self.bindings = columns, versions, bindings
        self._names, self._display, self._entry, self._key = names, display, entry, key
        self._by_name: dict[str, list[int]] | None = None
        self._symbols: tuple[Symbol, ...] | None = None
        self._chunks: dict[tuple[str, int], list[str]] = {}
        self._objs: dict[int, Symbol] = {}
        #: the cache entry's compressed sections once written (not compressed again); write it behind
        self._packed: cache.Packed | None = None
        self.write_behind = False

    def at(self, path: str) -> SymbolTable:
        """The same table read through another path."""
        t = SymbolTable(path, self.build_id, self.soname, self.columns, self.versions, self.bindings,
                        names=self._names, display=self._display, entry=self._entry, key=self._key)
        t._by_name, t._packed, t.write_behind = self._by_name, self._packed, self.write_behind
        return t

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, SymbolTable) and (self.path, self.build_id, self.soname) ==
                (other.path, other.build_id, other.soname) and self.symbols == other.symbols)

    __hash__ = None  # type: ignore[assignment]

    def __len__(self) -> int:
        return len(self.columns.address)

    def __iter__(self) -> Iterator[Symbol]:
        return iter(self.symbols)

    def __contains__(self, name: object) -> bool:
        return name in self.by_name

    # -- names -------------------------------------------------------------------------------------
    @property
    def all_names(self) -> list[str]:
        """The symbol names, by index."""
        if self._names is None:
            self._names = self._entry.all("names") if self._entry is not None else []
        return self._names

    @property
    def by_name(self) -> dict[str, list[int]]:
        """name -> the indexes of the symbols of that name, preferred first (see :meth:`get`)."""
        if self._by_name is None:
            by: dict[str, list[int]] = {}
            for i, n in enumerate(self.all_names):
                by.setdefault(n, []).append(i)
            for n, group in by.items():
                if len(group) > 1:
                    group.sort(key=lambda i: _preference(self._make(i, demangled=n)))
            self._by_name = by
        return self._by_name

    def names(self) -> list[str]:
        return list(self.by_name)

    def addresses(self, name: str) -> tuple[int, ...]:
        """Every file offset a function called ``name`` is defined at, the preferred one (see :meth:`get`)
        first, each once: a local (``static``) function of several translation units, or a C++ local
        symbol, has one definition per unit under the same name."""
        fo = self.columns.file_offset
        return tuple(dict.fromkeys(fo[i] for i in self.by_name.get(name, ())))

    def display(self) -> list[str]:
        """The demangled name of every symbol (the name itself when it is not a C++ name), by index.
        Demangles on the first call for a library (and keeps the result in the cache)."""
        if self._display is None:
            if self._entry is not None and self._entry.display_at is not None:
                self._display = self._entry.all("display")
            elif self._key is not None and self.write_behind:
                for _ in self._demangle_fed():
                    pass
            else:
                self._display = demangle_all(self.all_names)
                if self._key is not None:
                    self._store()
        return self._display

    def _demangle_fed(self) -> Iterator[list[str]]:
        """Demangle a cache chunk at a time, each handed to the background write (zlib compresses it
        meanwhile) and yielded as it is done (a listing writes it meanwhile); the names are kept
        (:meth:`display`) once the last chunk is done. Stopped before then, nothing is written."""
        feed = cache.ChunkFeed()
        self._store(feed)
        out: list[str] = []
        parts = demangle_chunks(self.all_names, cache.CHUNK)
        try:
            for part in parts:
                out += part
                feed.put(part)
                yield part
        except BaseException:  # GeneratorExit too: the consumer stopped early
            parts.close()  # stops the demangling worker now
            feed.close(False)
            raise
        feed.close(True)
        self._display = out

    def chunks(self, demangled: bool = True) -> Iterator[list[str]]:
        """The demangled names (else the names) by index, in consecutive pieces: read from the cache a
        chunk at a time, not all held at once, when they are not loaded (a 120k-symbol listing)."""
        held = self._display if demangled else self._names
        entry = self._entry
        if held is None and entry is not None and (not demangled or entry.display_at is not None):
            yield from entry.chunks("display" if demangled else "names")
            return
        if held is None and demangled and self._key is not None and self.write_behind:
            yield from self._demangle_fed()  # each piece written while the next is demangled
            return
        if held is None:
            held = self.display() if demangled else self.all_names
        for i in range(0, len(held), cache.CHUNK):
            yield held[i : i + cache.CHUNK]

    def name_of(self, i: int) -> str:
        """The name of symbol ``i``, reading one chunk of the cache when the names are not loaded."""
        if self._names is not None:
            return self._names[i]
        return self._chunk("names", i)

    def display_name(self, i: int) -> str:
        """The demangled name of symbol ``i`` alone (demangled now if the cache holds none)."""
        if self._display is not None:
            return self._display[i]
        if self._entry is not None and self._entry.display_at is not None:
            return self._chunk("display", i)
        return demangle_all([self.name_of(i)])[0]

    def _known_display(self, i: int, name: str) -> str | None:
        """The demangled name of symbol ``i`` if it costs no demangling now, else None (done lazily)."""
        if not name.startswith("_Z"):
            return name
        if self._display is not None or (self._entry is not None and self._entry.display_at is not None):
            return self.display_name(i)
        return None

    def _chunk(self, which: str, i: int) -> str:
        k = i // cache.CHUNK
        got = self._chunks.get((which, k))
        if got is None:
            if len(self._chunks) >= 64:
                self._chunks.clear()
            got = self._chunks[(which, k)] = self._entry.chunk(which, k)  # type: ignore[union-attr]
        return got[i % cache.CHUNK]

    def _store(self, feed: cache.ChunkFeed | None = None) -> None:
        if self._packed is None and self._entry is not None:
            self._packed = self._entry.packed()
        self._packed = cache.store(
            self._key, path=self.path, build_id=self.build_id, soname=self.soname,  # type: ignore[arg-type]
            versions=self.versions, bindings=self.bindings, columns=self.columns, names=self.all_names,
            display=self._display, packed=self._packed, background=self.write_behind, feed=feed)

    # -- symbols -----------------------------------------------------------------------------------
    def symbol(self, i: int, demangled: str | None = None) -> Symbol:
        """Symbol ``i`` (the same object each time it is asked for)."""
        if self._symbols is not None:
            return self._symbols[i]
        got = self._objs.get(i)
        if got is None:
            got = self._objs[i] = self._make(i, demangled)
        return got

    def _make(self, i: int, demangled: str | None = None) -> Symbol:
        c = self.columns
        name = self.name_of(i)
        flags = c.flags[i]
        return Symbol(
            name,
            demangled if demangled is not None else self._known_display(i, name),
            c.address[i],
            c.file_offset[i],
            c.size[i],
            self.bindings[c.binding[i]],
            self.versions[c.version[i]] if c.version[i] else None,
            bool(flags & 1),
            "symtab" if flags & 2 else "dynsym",
            "ifunc" if flags & 4 else "func",
        )

    @property
    def symbols(self) -> tuple[Symbol, ...]:
        if self._symbols is None:
            disp = self.display()
            objs = self._objs
            self._symbols = tuple(objs.get(i) or self._make(i, disp[i]) for i in range(len(self)))
            self._objs = {}
        return self._symbols

    def get(self, name: str) -> Symbol:
        """The symbol called ``name``: a plain name (the default version of an exported function wins
        over a hidden version and a local copy), ``name@@VERSION``/``name@VERSION``, or a full demangled
        name such as ``ns::Widget::area() const``. SymbolNotFound with a did-you-mean otherwise."""
        group = self.by_name.get(name)
        if group:
            return self.symbol(group[0])
        if "@" in name:
            base, _, ver = name.partition("@")
            hidden_ok = not ver.startswith("@")
            ver = ver.lstrip("@")
            for i in self.by_name.get(base, ()):
                s = self.symbol(i)
                if s.version == ver and (hidden_ok or s.default_version):
                    return s
        if "(" in name or "::" in name or " " in name:
            disp, names = self.display(), self.all_names
            found = [self.symbol(i, d) for i, d in enumerate(disp) if d == name and d != names[i]]
            if found:
                return min(found, key=_preference)
        what = self.soname or os.path.basename(self.path)
        hint = suggestion(name, self.by_name) or f"list them with `ingero symbols {what}`"
        raise SymbolNotFound(f"{what} has no function '{name}'", hint=hint)

    def match(self, pattern: str) -> list[Symbol]:
        """Symbols whose name or demangled name matches the case-sensitive shell glob ``pattern``."""
        if pattern == "*":
            return list(self.symbols)
        disp = self.display()
        return [self.symbol(i, disp[i]) for i in self.match_indexes(pattern)]

    def match_indexes(self, pattern: str) -> list[int]:
        """The indexes of :meth:`match` (no symbol objects: for listing 100k symbols)."""
        if pattern == "*":
            return list(range(len(self)))
        disp, names = self.display(), self.all_names
        m = re.compile(fnmatch.translate(pattern)).match
        return [i for i, n in enumerate(names) if m(n) or (disp[i] != n and m(disp[i]))]

    def by_offset(self) -> tuple[array, array]:
        """(file offsets sorted, the symbol index of each): for finding the function holding an address."""
        offs = self.columns.file_offset
        order = sorted(range(len(offs)), key=offs.__getitem__)
        return array("Q", (offs[i] for i in order)), array("I", order)


# ---------------------------------------------------------------------------------------------------
# reading, with the in-process memo and the on-disk cache

_MEMO: dict[str, SymbolTable] = {}
_MEMO_MAX = 16


def _parse(path: str, reader: str, key: str | None = None) -> SymbolTable:
    info, fc = read_function_columns(path, reader=reader)
    return table_of(path, fc, info.build_id, info.soname, key=key)


def table_of(path: str, symbols: FunctionColumns | Sequence[RawSymbol], build_id: str | None = None,
             soname: str | None = None, *, key: str | None = None) -> SymbolTable:
    """The table of a file's function symbols (columns in file order, or symbols; sorted here): what
    reading a file gives, and what a test gives the checker as the symbols of a library of its own."""
    fc = symbols if isinstance(symbols, FunctionColumns) else FunctionColumns.of(list(symbols))
    names, address, flags = fc.names, fc.address, fc.flags
    n = len(names)
    # sorted by (name, address, section: dynsym first): by name, then each run of one name (a few in
    # 100k) by the rest
    order = sorted(range(n), key=names.__getitem__)
    sorted_names = [names[i] for i in order]
    for i in compress(range(1, n), map(eq, sorted_names[1:], sorted_names)):
        if i == 1 or sorted_names[i - 2] != sorted_names[i - 1]:  # a run starts at i - 1
            j = i + 1
            while j < n and sorted_names[j] == sorted_names[i]:
                j += 1
            order[i - 1 : j] = sorted(order[i - 1 : j], key=lambda k: (address[k], flags[k] >> 1 & 1))
    # each column in that order (one itemgetter, made once, picks a tuple of them in C)
    pick = itemgetter(*order) if n > 1 else (lambda col: tuple(col[i] for i in order))
    # versions and bindings numbered in order of first appearance
    vcol, bcol = pick(fc.version), pick(fc.binding)
    versions = [""] + [v for v in dict.fromkeys(vcol) if v]
    vidx = {v: i for i, v in enumerate(versions)}
    vidx[None] = 0
    bindings = list(dict.fromkeys(bcol))
    bidx = {b: i for i, b in enumerate(bindings)}
    cols = cache.Columns(array("Q", pick(address)), array("Q", pick(fc.file_offset)), array("Q", pick(fc.size)),
                         array("H", map(vidx.__getitem__, vcol)), array("B", map(bidx.__getitem__, bcol)),
                         array("B", pick(flags)))
    return SymbolTable(path, build_id, soname, cols, versions, bindings, names=sorted_names, key=key)


def _no_symbols(table: SymbolTable) -> NoSymbols:
    return NoSymbols(
        f"{table.path} has no function symbols (no defined functions in .dynsym or .symtab: stripped, or "
        "exports only data)",
        hint="probe an unstripped build of the library, or a library that exports functions",
    )


def read_symbols(
    lib: Library | str | os.PathLike, *, reader: str = "raw", use_cache: bool = True,
    write_behind: bool = False,
) -> SymbolTable:
    """The function symbols of a library: a :class:`Library`, a path, or a name such as ``libcudart``
    (resolved with :func:`resolve_library`). Cached per build-id in memory and on disk.

    ``reader`` picks the ELF reader on a cache miss (``raw`` or ``pyelftools``, see
    :mod:`ingero.symbols.elf`); ``use_cache=False`` reads the file and touches no cache;
    ``write_behind`` compresses and writes the cache entry in a thread (see :func:`cache.store`).
    Raises LibraryNotFound, NotAnElf, PermissionProblem, NoSymbols.
    """
    if isinstance(lib, str) and "/" not in lib:
        lib = resolve_library(lib)
    path = lib.read_path if isinstance(lib, Library) else os.fspath(lib)

    if not use_cache:
        table = _parse(path, reader)
        if not len(table):
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
        entry = cache.load(key)
        if entry is not None:
            table = SymbolTable(entry.path, entry.build_id, entry.soname, entry.columns, entry.versions,
                                entry.bindings, entry=entry, key=key)
            table.write_behind = write_behind
        else:
            table = _parse(path, reader, key)
            table.write_behind = write_behind
            table._store()  # names now, demangled names when someone needs them
        if len(_MEMO) >= _MEMO_MAX:
            _MEMO.pop(next(iter(_MEMO)))
        _MEMO[key] = table
    if table.path != path:
        table = table.at(path)
    if not len(table):
        raise _no_symbols(table)
    return table


def symbol_count(lib: Library) -> int:
    """Number of function symbols of a library (through the cache); 0 if it has none or cannot be read."""
    try:
        return len(read_symbols(lib))
    except IngeroError as e:
        log.debug("no symbol count for %s: %s", lib.path, e)
        return 0
