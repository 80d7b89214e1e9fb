"""Pass 2: the target's library (installed here, or a catalogue family that is not) and its symbols
(globs, demangled C++ names, aliases such as cuMemAlloc -> cuMemAlloc_v2, per-thread variants), within
the symbol budget."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Container, Mapping, Sequence
from dataclasses import replace

from ingero.catalogue import Catalogue, family_of
from ingero.dsl import ast
from ingero.dsl.context import ProbeContext, Report
from ingero.dsl.resolved import LibraryRef, ResolvedSymbol
from ingero.errors import IngeroError, LibraryNotFound, suggestion
from ingero.limits import MAX_SYMBOLS
from ingero.symbols import Library, SymbolTable
from ingero.symbols.discovery import stem_of

_GLOB = re.compile(r"[*?\[]")
#: the suffix of a piece of a function the compiler split off or cloned (GCC's foo.cold, foo.part.3, ...)
_FRAGMENT = re.compile(r"\.(cold|part|isra|constprop|lto_priv|localalias)(\.\d+)*")


def target(ctx: ProbeContext, report: Report) -> ProbeContext:
    t = ctx.probe.target
    cat = ctx.lookups.catalogue
    try:
        lib = ctx.lookups.library(t.library, ctx.pid)
    except IngeroError as e:
        stem = stem_of(t.library if "/" not in t.library else t.library.rsplit("/", 1)[1])
        family = family_of(stem if stem.startswith("lib") else "lib" + stem)
        absent = isinstance(e, LibraryNotFound) and "/" not in t.library
        if absent and ctx.may_wait and t.pid is None:
            return replace(ctx, waits_for=e.message)
        if family is None or ctx.pid is not None or "/" in t.library:
            hint = e.hint or "give an existing path, a soname such as libcudart.so.12 or a name such as libcudart"
            searched = ctx.lookups.searched() if absent and ctx.pid is None else ""
            if searched:
                hint = (f"{hint.rstrip('.')}{'' if hint.endswith('?') else '.'} Searched: {searched}. "
                        "A library only the program's own environment has "
                        "(a virtualenv's torch/lib) is bound when it loads it: `ingero probe run SPEC -- CMD` "
                        "waits for it in the command's process tree")
            report.error(t.library_span, e.message, hint)
            return ctx
        ref = LibraryRef(t.library, None, None, None, None, None, False, _major(cat, None), family)
        ctx = replace(
            ctx,
            library=ref,
            notes=ctx.note(
                f"{t.library} is not installed here: checked against the signature catalogue "
                f"only; running this probe needs the library"
            ),
        )
        names = cat.names(library=family, cuda_major=ref.cuda_major)
        return _pick_symbols(ctx, report, names, set(names), lambda n: (), None)
    try:
        table = ctx.lookups.symbols(lib)
    except IngeroError as e:
        report.error(t.library_span, e.message, e.hint)
        return ctx
    ref = LibraryRef(
        t.library,
        lib.path,
        str(lib.attach_path),
        lib.soname,
        lib.build_id,
        lib.version,
        True,
        _major(cat, lib),
        family_of(lib.stem),
    )
    # every definition of each name (see SymbolTable.addresses), from the columns: no demangling here
    by_name = table.by_name
    return _pick_symbols(replace(ctx, library=ref), report, list(by_name), by_name, table.addresses, table)


def _major(cat: Catalogue, lib: Library | None) -> int | None:
    """The CUDA major of an installed library; the newest the catalogue has for one that is not."""
    if lib is not None:
        return cat.major_of(lib.version, lib.soname)
    return cat.cuda_majors[0] if cat.cuda_majors else None


def _pick_symbols(
    ctx: ProbeContext,
    report: Report,
    names: Sequence[str],
    present: Container[str],
    addresses: Callable[[str], tuple[int, ...]],
    table: SymbolTable | None,
) -> ProbeContext:
    t: ast.Target = ctx.probe.target
    pattern = t.symbol
    where = ctx.lib.soname or ctx.lib.name
    notes: list[str] = []
    chosen: list[str] = []
    if _GLOB.search(pattern):
        rx = re.compile(fnmatch.translate(pattern))
        chosen = [n for n in names if rx.match(n)]
        if table is not None:  # demangled C++ names match too
            seen = set(chosen)
            chosen += [s.name for s in table.match(pattern) if s.name not in seen and s.name in present]
        fragments = [n for n in chosen if _FRAGMENT.search(n)]
        if fragments:
            chosen = [n for n in chosen if not _FRAGMENT.search(n)]
            notes.append(f"left out {len(fragments)} compiler fragment{'s' if len(fragments) != 1 else ''} "
                         f"({', '.join(sorted({_FRAGMENT.search(n).group(0) for n in fragments})[:4])}: parts of "
                         "functions split off by the compiler, not entry points)")
        if not chosen:
            stripped = _GLOB.sub("", pattern).strip("]!")
            hint = suggestion(stripped, names) if stripped else None
            report.error(
                t.symbol_span,
                f"the glob {pattern!r} matches no function of {where}",
                (hint + " " if hint else "") + f"(list them with `ingero symbols {where}`)",
            )
            return ctx
    else:
        name = pattern
        called = [n for n in ctx.lookups.catalogue.called_names(name, ctx.lib.cuda_major) if n in present]
        if called:
            chosen = called
            if called[0] != name:
                legacy = f" (the exported {name} is the legacy entry point for old binaries)" if name in present else ""
                notes.append(f"{name} is called as {called[0]}: probing {called[0]}{legacy}")
            if len(called) > 1:
                notes.append(
                    f"{called[0]} also has per-thread-stream variants: probing " + ", ".join(called[1:]) + " too"
                )
        elif name in present:
            chosen = [name]
        elif table is not None and ("@" in name or " " in name or "::" in name or "(" in name):
            try:
                chosen = [table.get(name).name]
            except IngeroError as e:
                report.error(t.symbol_span, e.message, e.hint)
                return ctx
        else:
            hint = suggestion(name, names) or f"list them with `ingero symbols {where}`"
            report.error(t.symbol_span, f"{where} has no function {name!r}", hint)
            return ctx
    # one uprobe per address: aliases at the same offset would fire twice; a name defined at several
    # addresses (static functions of several translation units) is probed at every one of them
    picked = _addresses_of(chosen, addresses)
    chosen = list(picked)
    notes += _several_addresses(picked)
    if len(chosen) > ctx.budgets.symbols:
        report.error(
            t.symbol_span,
            f"{pattern!r} matches {len(chosen)} functions of {where}, more than the "
            f"budget of {ctx.budgets.symbols}",
            f"narrow the glob, or raise the budget: limit symbols {len(chosen)}" if len(chosen) <= MAX_SYMBOLS
            else f"narrow the glob: one probe attaches to {MAX_SYMBOLS} functions at most",
        )
        return ctx
    return replace(ctx, symbol_names=tuple(chosen), symbol_offsets=picked, notes=ctx.note(*notes))


def _addresses_of(chosen: Sequence[str], addresses: Callable[[str], tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Each chosen name with every address it is defined at that no earlier name took (an alias at the same
    address is left out: it would fire twice); () for a library that is not installed here."""
    taken: set[int] = set()
    out: dict[str, tuple[int, ...]] = {}
    for n in chosen:
        addrs = addresses(n)
        if not addrs:
            out[n] = ()
            continue
        fresh = tuple(a for a in addrs if a not in taken)
        if fresh:
            taken.update(fresh)
            out[n] = fresh
    return out


#: names at several addresses spelled out in a note, at most
_SHOWN_MULTI = 4


def _several_addresses(picked: Mapping[str, tuple[int, ...]]) -> list[str]:
    """``NAME: 2 addresses, all probed``, for each name defined at several addresses (``check`` says so)."""
    multi = [(n, len(a)) for n, a in picked.items() if len(a) > 1]
    notes = [f"{ResolvedSymbol(n, 0, '').shown}: {k} addresses, all probed (counted together under this name)"
             for n, k in multi[:_SHOWN_MULTI]]
    if len(multi) > _SHOWN_MULTI:
        rest = multi[_SHOWN_MULTI:]
        notes.append(f"{len(rest)} more names at several addresses ({sum(k for _, k in rest)} addresses), "
                     "all probed")
    return notes
