"""What the checker asks of the world: libraries, their symbols and the signature catalogue.

Every pass reaches this machine only through a :class:`Lookups`; :data:`MACHINE` is the real one
(this machine's libraries, the shipped catalogue). Tests use the same object, or their own
implementation of the three members, to check specs against chosen libraries.
"""

from __future__ import annotations

import time
from typing import Protocol

from ingero.catalogue import Catalogue, load_catalogue
from ingero.errors import IngeroError
from ingero.symbols import Library, SymbolTable, read_symbols, resolve_library

#: How long a library lookup is reused: a search of every library directory costs milliseconds, and an
#: agent or a test checks many specs naming the same few libraries in a row; a library installed or
#: removed is seen after this long.
LIBRARY_CACHE_SECONDS = 2.0
_LIBRARY_CACHE_SIZE = 256


class Lookups(Protocol):
    """The checker's view of the machine."""

    @property
    def catalogue(self) -> Catalogue: ...

    def library(self, name: str, pid: int | None) -> Library:
        """The library a target names (a name, soname or path; mapped by ``pid`` if given); raises
        :class:`IngeroError` (with a hint) when there is none."""
        ...

    def symbols(self, library: Library) -> SymbolTable:
        """The function symbols of a library, with file offsets; raises :class:`IngeroError`."""
        ...

    def searched(self) -> str:
        """Where a library named by its name was looked for, for the hint when none was found ("" to
        say nothing)."""
        ...


class MachineLookups:
    """This machine: :func:`ingero.symbols.resolve_library`, :func:`read_symbols`, the shipped catalogue."""

    def __init__(self) -> None:
        self._libraries: dict[tuple[str, int | None], tuple[float, Library | IngeroError]] = {}

    @property
    def catalogue(self) -> Catalogue:
        return load_catalogue()

    def library(self, name: str, pid: int | None) -> Library:
        now = time.monotonic()
        hit = self._libraries.get((name, pid))
        if hit is not None and now - hit[0] < LIBRARY_CACHE_SECONDS:
            if isinstance(hit[1], IngeroError):
                raise hit[1]
            return hit[1]
        if len(self._libraries) > _LIBRARY_CACHE_SIZE:
            self._libraries.clear()
        try:
            lib = resolve_library(name, pid=pid)
        except IngeroError as e:
            self._libraries[(name, pid)] = (now, e)
            raise
        self._libraries[(name, pid)] = (now, lib)
        return lib

    def symbols(self, library: Library) -> SymbolTable:
        return read_symbols(library)

    def searched(self) -> str:
        from ingero.symbols.searchpaths import searched_text

        return searched_text()


MACHINE = MachineLookups()


class TreeLookups:
    """The libraries of a traced process tree that may still load more of them (``ingero probe run --pid N``
    and ``-- CMD``): what process ``pid`` mapped, else the copy this machine's search paths give (the probe
    then binds to the copies the tree maps, when it maps them); ``bound``: a library the tree has just
    opened, for every name that names it (a probe waiting for it is checked against that very file)."""

    def __init__(self, base: Lookups = MACHINE, bound: Library | None = None) -> None:
        self.base = base
        self.bound = bound

    @property
    def catalogue(self) -> Catalogue:
        return self.base.catalogue

    def library(self, name: str, pid: int | None) -> Library:
        from ingero.errors import LibraryNotFound
        from ingero.symbols.discovery import names_library

        b = self.bound
        if b is not None and "/" not in name and names_library(name, b.path, b.soname):
            return b
        if pid is not None:
            try:
                return self.base.library(name, pid)
            except LibraryNotFound:
                pass  # not mapped yet: a copy on the search path to check against, bound when it is mapped
        return self.base.library(name, None)

    def symbols(self, library: Library) -> SymbolTable:
        return self.base.symbols(library)

    def searched(self) -> str:
        return self.base.searched()
