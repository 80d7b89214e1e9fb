"""``ingero libs``, ``ingero symbols`` and ``ingero describe``: what CUDA code is there to probe.

Thin shells over :mod:`ingero.symbols` and :mod:`ingero.catalogue`. Output is plain aligned text (it
pipes into grep and awk like ``nm``) or JSON with ``--json``. Imports stay inside the commands so that
``ingero symbols`` starts fast (measured in bench/bench_symbols.py).
"""

from __future__ import annotations

import json
import sys
from itertools import repeat

import click

#: bytes of pipe buffer a listing asks for when its output is a pipe (Linux's default limit for anyone,
#: /proc/sys/fs/pipe-max-size): the reader drains one piece of rows while the next is made
PIPE_BYTES = 1 << 20


def _columns(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    """Left-aligned columns separated by two spaces; the last column is not padded."""
    allrows = [header, *rows]
    widths = [max(map(len, col)) for col in list(zip(*allrows, strict=True))[:-1]]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths) + "  {}"
    return "\n".join(fmt.format(*r).rstrip() for r in allrows)


def _lib_dict(lib) -> dict:
    from ingero.symbols import symbol_count

    return {
        "soname": lib.soname,
        "path": str(lib.path),
        "attach_path": str(lib.attach_path),
        "mapped_path": str(lib.mapped_path) if lib.mapped_path else None,
        "version": lib.version,
        "build_id": lib.build_id,
        "symbols": symbol_count(lib),
        "source": lib.source,
        "chosen": lib.chosen,
        "deleted": lib.deleted,
        "pid": lib.pid,
        "links": list(lib.links),
        "typed_by_catalogue": _typed(lib),
    }


def _typed(lib) -> str | None:
    """The catalogue family that types this library's functions, or None (declare them in the spec)."""
    from ingero.catalogue import family_of

    return family_of(lib.stem)


@click.command()
@click.option("--pid", type=int, help="Only the libraries this process has mapped.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per library.")
def libs(pid: int | None, as_json: bool) -> None:
    """List the CUDA libraries ingero can probe.

    Without --pid: every copy found on this machine, deduplicated by GNU build-id, in search order
    (pip nvidia-* wheels, LD_LIBRARY_PATH, CUDA_HOME, conda, the ldconfig cache). '*' marks the copy a
    bare name such as 'libcudart' picks. With --pid: every CUDA library the process mapped, and every
    mapped library that links one (libtorch_cuda.so, libc10_cuda.so: LINKS names what it links).
    TYPED names the catalogue family that types a library's functions ('-': declare them in a spec).

    \b
    Example:
        ingero libs
        ingero libs --pid 4242
    """
    from ingero.symbols import find_libraries, symbol_count

    found = find_libraries(pid=pid)
    if as_json:
        for lib in found:
            click.echo(json.dumps(_lib_dict(lib)))
        return
    if not found:
        where = f"process {pid}" if pid else "this machine's search paths"
        click.echo(f"no CUDA libraries found in {where}")
        return
    rows = []
    for lib in found:
        mark = "*" if lib.chosen else " "
        flags = " (deleted)" if lib.deleted else ""
        links = "-" if lib.is_cuda or not lib.links else lib.links[0] + (
            f" +{len(lib.links) - 1}" if len(lib.links) > 1 else "")
        rows.append(
            (
                f"{mark} {lib.soname or '-'}",
                lib.version or "-",
                str(symbol_count(lib)),
                (lib.build_id or "-")[:12],
                lib.source,
                _typed(lib) or "-",
                *((links,) if pid else ()),
                f"{lib.path}{flags}",
            )
        )
    header = ("  SONAME", "VERSION", "SYMBOLS", "BUILD-ID", "SOURCE", "TYPED", *(("LINKS",) if pid else ()), "PATH")
    click.echo(_columns(rows, header))


@click.command()
@click.argument("library")
@click.argument("pattern", required=False, default="*")
@click.option("--pid", type=int, help="Pick the copy of LIBRARY this process has mapped.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per symbol.")
@click.option("--demangle/--no-demangle", default=True, show_default=True, help="Show C++ names demangled.")
def symbols(library: str, pattern: str, pid: int | None, as_json: bool, demangle: bool) -> None:
    """List the function symbols of LIBRARY matching PATTERN (a case-sensitive glob).

    LIBRARY is a name stem (libcudart, cudart), a soname (libcudart.so.12) or a path. Each line gives
    the file offset a uprobe attaches to, the size, the binding and the symbol version; 'sig' marks
    functions whose typed signature ingero knows (see `ingero describe`).

    \b
    Example:
        ingero symbols libcudart 'cudaMemcpy*'
        ingero symbols libcudart.so.12 --pid 4242 --json
    """
    from ingero.errors import SymbolNotFound
    from ingero.symbols import read_symbols, resolve_library

    lib = resolve_library(library, pid=pid)
    table = read_symbols(lib, write_behind=True)  # the cache entry is compressed while the rows are written
    matched = table.match_indexes(pattern)
    if not matched:
        hint = None
        if not any(ch in pattern for ch in "*?["):
            from ingero.errors import suggestion

            hint = suggestion(pattern, table.all_names)
        raise SymbolNotFound(f"no symbol of {lib.soname or lib.path} matches '{pattern}'", hint=hint)
    known = _known_names(table, lib)
    if as_json:
        for i in matched:
            s = table.symbol(i)
            click.echo(
                json.dumps(
                    {
                        "name": s.name,
                        "demangled": s.demangled,
                        "address": s.address,
                        "file_offset": s.file_offset,
                        "size": s.size,
                        "binding": s.binding,
                        "version": s.version,
                        "section": s.section,
                        "signature": s.name in known,
                    }
                )
            )
        return
    click.echo(f"# {lib.soname or '-'}  {lib.path}  build-id {lib.build_id or '-'}")
    _write_rows(table, matched, demangle, known)
    click.echo(f"# {len(matched)} of {len(table)} function symbols match '{pattern}'")


def _batches(table, matched: list[int], demangle: bool):
    """(indexes, the names to show for them) in pieces: every symbol a cache chunk at a time (the names
    never all held; demangled on a cold read while the rows before them are written), else the matched
    ones 8192 at a time."""
    if len(matched) == len(table):
        start = 0
        for names in table.chunks(demangle):
            yield range(start, start + len(names)), names
            start += len(names)
        return
    shown = table.display() if demangle else table.all_names
    for k in range(0, len(matched), 8192):
        batch = matched[k : k + 8192]
        yield batch, list(map(shown.__getitem__, batch))


def _write_rows(table, matched: list[int], demangle: bool, known: set[str]) -> None:
    """The listing's rows, straight from the table's columns, each the pieces of one row joined: the
    numbers %-formatted, the binding, version and SIG columns one string per combination, the name as
    is -- no object per symbol, no whole-output string (libtorch_cuda.so has 120k symbols and 80 MB of
    demangled names). A row ends without blanks (``str.rstrip``)."""
    c = table.columns
    vers = [v or "-" for v in table.versions]
    binds = table.bindings
    header = ("OFFSET", "SIZE", "BIND", "VERSION", "SIG", "NAME")
    if len(matched) == len(table):  # every symbol: the columns as they are (no index per value)
        offs, sizes, bind_ids, ver_ids = c.file_offset, c.size, set(c.binding), set(c.version)
    else:
        offs, sizes = map(c.file_offset.__getitem__, matched), map(c.size.__getitem__, matched)
        bind_ids, ver_ids = {c.binding[i] for i in matched}, {c.version[i] for i in matched}
    widths = (
        max(10, len(header[0]), len(f"{max(offs):#010x}")),  # the hex form grows with the value
        max(len(header[1]), len(str(max(sizes)))),
        max(len(header[2]), *(len(binds[b]) for b in bind_ids)),
        max(len(header[3]), *(len(vers[v]) for v in ver_ids)),
        len(header[4]),
    )
    out = sys.stdout
    _widen_pipe(out)
    out.write(("  ".join(f"{{:<{w}}}" for w in widths) + "  {}").format(*header).rstrip() + "\n")
    if widths[0] == 10:  # every offset below 4 GiB: formatted in the row's own format
        numbers, offsets = "%#010x", c.file_offset
    else:
        numbers, offsets = f"%-{widths[0]}s", [f"{x:#010x}" for x in c.file_offset]
    numbers += f"  %-{widths[1]}d  "
    middle = f"%-{widths[2]}s  %-{widths[3]}s  %-3s  "
    # (binding, version, SIG) -> that part of the row
    middles = {(b, v, s): middle % (binds[b], vers[v], s) for b in range(len(binds)) for v in range(len(vers))
               for s in ("", "sig")}
    names = table.all_names if known else None
    rowfmt = numbers + middle + "%s"
    batches = _batches(table, matched, demangle)
    try:
        for batch, shown in batches:
            n = len(batch)
            sig = ["sig" if names[i] in known else "" for i in batch] if names else repeat("", n)
            if isinstance(batch, range):
                cols = [col[batch.start : batch.stop] for col in (offsets, c.size, c.binding, c.version)]
            else:
                cols = [list(map(col.__getitem__, batch)) for col in (offsets, c.size, c.binding, c.version)]
            tail = list(map(str.rstrip, shown))
            if "" in tail:  # a blank name: the row ends at its last non-blank column
                rows = map(rowfmt.__mod__, zip(cols[0], cols[1], map(binds.__getitem__, cols[2]),
                                               map(vers.__getitem__, cols[3]), sig, shown, strict=True))
                out.write("\n".join(map(str.rstrip, rows)) + "\n")
                continue
            parts: list[str | None] = [None] * (4 * n)
            parts[0::4] = list(map(numbers.__mod__, zip(cols[0], cols[1], strict=True)))
            parts[1::4] = list(map(middles.__getitem__, zip(cols[2], cols[3], sig, strict=True)))
            parts[2::4] = tail
            parts[3::4] = repeat("\n", n)  # type: ignore[assignment]
            out.write("".join(parts))  # type: ignore[arg-type]
    finally:
        batches.close()  # a cold read stopped early (a closed pipe) writes no half-demangled cache entry


def _widen_pipe(out) -> None:
    """Ask for a :data:`PIPE_BYTES` buffer when ``out`` is a smaller pipe (a 64 KiB one makes every write
    of a 1.4 MB piece wait for the reader); anything else, or a refusal, is left as it is."""
    import fcntl

    try:
        fd = out.fileno()
        if fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ) < PIPE_BYTES:
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    except (OSError, ValueError, AttributeError):  # not a pipe (EBADF), no file behind out, or refused
        pass


def _known_names(table, lib) -> set[str]:
    """Names of the table's functions whose exact exported symbol the signature catalogue types, for the
    CUDA major of the library (as list_symbols over MCP and a probe on it use; any major when the
    catalogue has not the library's: then only the majors a name needs are read)."""
    from ingero.catalogue import family_of, load_catalogue

    if family_of(lib.stem) is None:
        return set()  # the catalogue types CUDA libraries' functions only
    cat = load_catalogue()
    major = cat.major_of(lib.version, lib.soname)
    # only names that start like a catalogue function can be one (a C++ library has 100k+ others)
    heads = {n[:3] for n in cat.names(cuda_major=major)}  # legacy and alias names share these heads (tests)
    return {n for n in table.all_names if n[:3] in heads and cat.lookup_symbol(n, major) is not None}


@click.command()
@click.argument("symbol")
@click.option("--cuda", "cuda_major", type=int, help="CUDA major version (default: the newest known).")
@click.option("--json", "as_json", is_flag=True)
def describe(symbol: str, cuda_major: int | None, as_json: bool) -> None:
    """Show the typed signature of a CUDA API function: its C declaration, the fields a probe spec can
    use, and the values of its enum arguments.

    \b
    Example:
        ingero describe cudaMemcpyAsync
        ingero describe cuMemAlloc --cuda 12
    """
    from ingero.catalogue import load_catalogue
    from ingero.errors import SymbolNotFound, suggestion

    cat = load_catalogue()
    sig = cat.lookup(symbol, cuda_major=cuda_major)
    if sig is None:
        raise SymbolNotFound(
            f"the signature catalogue has no function '{symbol}'"
            + (f" for CUDA {cuda_major}" if cuda_major else ""),
            hint=suggestion(symbol, cat.names(cuda_major=cuda_major)),
        )
    enums = {p.name: cat.enum(p.ctype.enum) for p in sig.params if p.ctype.kind == "enum" and p.ctype.enum}
    if as_json:
        click.echo(
            json.dumps(
                {
                    "name": sig.name,
                    "called_as": sig.called_as,
                    "library": sig.library,
                    "cuda_major": sig.cuda_major,
                    "header": sig.header,
                    "declaration": sig.declaration(),
                    "return_type": sig.return_type,
                    "params": [
                        {"name": p.name, "type": p.type, "kind": p.ctype.kind, "size": p.ctype.size}
                        for p in sig.params
                    ],
                    "enums": enums,
                },
                indent=2,
            )
        )
        return
    click.echo(sig.declaration())
    click.echo(f"  library {sig.library}, CUDA {sig.cuda_major}, from {sig.header}")
    if sig.called_as and sig.called_as != sig.name:
        click.echo(
            f"  programs calling {sig.name} call the exported symbol {sig.called_as} (a #define in {sig.header})"
        )
    elif sig.base and sig.base != sig.name:
        click.echo(f"  per-thread default-stream variant of {sig.base}, same arguments")
    landing = [n for n in cat.called_names(sig.name) if n not in (sig.name, sig.called_as)]
    if landing:
        click.echo(f"  a call may also land on: {', '.join(landing)}")
    click.echo("fields:")
    rows = [(p.name, p.type, f"{p.ctype.kind}, {p.ctype.size} bytes") for p in sig.params]
    rows.append(("retval", sig.return_type, "at return"))
    rows.append(("latency", "u64", "ns, entry to return"))
    click.echo("\n".join("  " + line for line in _columns(rows, ("NAME", "C TYPE", "KIND")).splitlines()))
    for pname, values in enums.items():
        shown = ", ".join(f"{k}={v}" for k, v in list(values.items())[:12])
        more = f", … ({len(values)} values)" if len(values) > 12 else ""
        click.echo(f"{pname}: {shown}{more}")
