"""The symbol tools of a live (or replay) MCP server: list_libraries, list_symbols, describe_symbol.

:class:`SymbolTools` is the part of :class:`~ingero.mcp.live.ProbeTools` that looks at libraries and their
functions; it uses the guards and pids of the ProbeTools it is part of (``allowed``, ``_pid_for``).
"""

from __future__ import annotations

from collections import Counter

from ingero.errors import IngeroError
from ingero.mcp.livetext import _csv, _page, _prefix, _sig, _wrap, cap, lib_label


def _spec_name(lib, sym) -> str:
    """The target to write in a probe spec: ``libc10_cuda.so:"c10::cuda::device_count()"`` for a C++
    function (its demangled name, quoted), ``libcudart.so.13:cudaMalloc`` for a C one."""
    if sym.demangled == sym.name:
        return f"{lib_label(lib)}:{sym.name}"
    quoted = sym.demangled.replace("\\", "\\\\").replace('"', '\\"')
    return f'{lib_label(lib)}:"{quoted}"'


class SymbolTools:
    def list_libraries(self, pid: int = 0, limit: int = 50, offset: int = 0) -> str:
        from ingero.symbols import find_libraries, symbol_count

        target = self._pid_for(pid)
        libs = find_libraries(pid=target)
        lim, off = _page(limit, offset, 50)
        where = f"mapped by pid {target}" if target else "on this machine's search paths"
        if not libs:
            extra = " (it may not have loaded one yet: call again after it starts)" if target else ""
            return f"0 CUDA libraries {where}{extra}."
        from ingero.catalogue import family_of

        shown = libs[off: off + lim]
        rows = []
        for lib in shown:
            rows.append((lib_label(lib), lib.version or "", symbol_count(lib), (lib.build_id or "")[:16],
                         "yes" if self.allowed(lib.stem, lib.soname, lib.path) else "no",
                         "*" if lib.chosen else "", family_of(lib.stem) or "",
                         "" if lib.is_cuda else " ".join(lib.links), lib.path))
        what = "CUDA libraries and libraries linking one" if target else "CUDA libraries"
        head = (f"{len(libs)} {what} {where}; rows {off + 1}-{off + len(shown)}. "
                f"'*' = the copy a bare name (libcudart) picks; allowed = on the probe allow-list "
                f"({self.allow_list_text()}); typed = the catalogue family that types its functions (else "
                f"declare them in the spec); links = the CUDA libraries a non-CUDA library links.")
        body = _csv(("soname", "version", "symbols", "build_id", "allowed", "chosen", "typed", "links", "path"),
                    rows)
        more = f"\nnext page: offset={off + lim}" if off + lim < len(libs) else ""
        return cap(head + "\n" + _wrap(body) + more)

    # -- list_symbols -------------------------------------------------------------------------------------
    def _library(self, library: str, pid: int = 0):
        """(Library, note): in a live trace from the traced process's mappings, falling back to this
        machine's search paths (with a note) when it has not mapped the library."""
        from ingero.errors import LibraryNotFound
        from ingero.symbols import resolve_library

        target = self._pid_for(pid)
        if target is None:
            return resolve_library(library), ""
        try:
            return resolve_library(library, pid=target), ""
        except LibraryNotFound as e:
            try:
                lib = resolve_library(library)
            except LibraryNotFound:
                raise e from None
            return lib, (f"note: pid {target} has not mapped {library}; showing the copy on this machine's "
                         "search paths (a probe on it sees calls only once the process maps this file)\n")

    def list_symbols(self, library: str, pattern: str = "*", limit: int = 100, offset: int = 0,
                     pid: int = 0) -> str:
        from ingero.catalogue import load_catalogue
        from ingero.errors import SymbolNotFound, suggestion
        from ingero.symbols import read_symbols

        lib, note = self._library(library, pid)
        table = read_symbols(lib)
        pattern = pattern or "*"
        matched = table.match(pattern)
        # one row per name (a name may have several versions/copies)
        names = list(dict.fromkeys(s.name for s in matched))
        if not names:
            hint = None
            if not any(ch in pattern for ch in "*?["):
                hint = suggestion(pattern, table.names())
            else:
                stem = pattern.split("*")[0].rstrip("?[")
                hint = suggestion(stem, table.names()) if stem else None
            raise SymbolNotFound(f"no function of {lib_label(lib)} matches '{pattern}' "
                                 f"({len(table.names())} functions)", hint=hint or "try a broader glob")
        lim, off = _page(limit, offset, 100)
        cat = load_catalogue()
        major = cat.major_of(lib.version, lib.soname)
        by_name = {s.name: s for s in matched}
        rows = []
        for n in names[off: off + lim]:
            s = by_name[n]
            rows.append((s.demangled, _spec_name(lib, s), "yes" if _sig(cat, n, major) is not None else "",
                         s.section))
        head = (f"{note}{lib_label(lib)} ({lib.path}), build-id {(lib.build_id or '-')[:16]}: "
                f"{len(table.names())} functions; {len(names)} match '{pattern}'; rows {off + 1}-"
                f"{off + len(rows)}. spec = the target to write in a probe spec (a C++ function by its "
                f"demangled name, quoted); sig = the catalogue knows its typed arguments (describe_symbol).")
        tail = ""
        if off + lim < len(names):
            tail = f"\nnext page: offset={off + lim}"
            if len(names) > 2 * lim:
                groups = Counter(_prefix(n) for n in names).most_common(8)
                tail += ("\nhint: narrow the pattern; largest groups: "
                         + ", ".join(f"'{g}*' {c}" for g, c in groups))
        return cap(head + "\n" + _wrap(_csv(("name", "spec", "sig", "table"), rows)) + tail)

    # -- describe_symbol ---------------------------------------------------------------------------------
    def describe_symbol(self, library: str, symbol: str, pid: int = 0) -> str:
        from ingero.catalogue import load_catalogue
        from ingero.symbols import read_symbols

        lib, note = self._library(library, pid)
        table = read_symbols(lib)
        sym = table.get(symbol)  # SymbolNotFound with a did-you-mean
        cat = load_catalogue()
        major = cat.major_of(lib.version, lib.soname)
        sig = _sig(cat, sym.name, major)
        out = [note.rstrip("\n")] if note else []
        out.append(f"{lib_label(lib)}:{sym.name} at file offset {sym.file_offset:#x}, {sym.size} bytes"
                   + (f" ({sym.demangled}; in a spec: {_spec_name(lib, sym)})" if sym.demangled != sym.name else ""))
        if sig is None:
            out.append("signature: not in the catalogue. A spec can use arg0..argN (64-bit integers), or declare "
                       f"the arguments: probe p = {lib.stem}:{sym.name}(u64 a, ptr b) -> i32")
            out.append("built-in fields: retval, latency (return probe), pid, tid, comm, symbol, stack, ts")
            return cap("\n".join(out))
        out.append(f"signature: {sig.declaration()}  [CUDA {sig.cuda_major}, {sig.header}]")
        if sig.called_as != sym.name and sig.called_as:
            out.append(f"note: programs calling {sig.name} land on {sig.called_as}")
        rows = [(p.name, p.type, p.ctype.kind, p.ctype.size or "") for p in sig.params]
        rows.append(("retval", sig.return_type, sig.return_ctype.kind + " (at return)", sig.return_ctype.size or ""))
        rows.append(("latency", "u64", "ns entry to return (adds a return probe)", 8))
        out.append("fields a spec can use (plus pid, tid, comm, symbol, stack, ts):")
        out.append(_csv(("field", "c_type", "kind", "bytes"), rows))
        enums = [(p.name, p.ctype.enum) for p in sig.params if p.ctype.kind == "enum" and p.ctype.enum]
        if sig.return_ctype.kind == "enum" and sig.return_ctype.enum:
            enums.append(("retval", sig.return_ctype.enum))
        for fname, ename in enums:
            try:
                values = cat.enum(ename, sig.cuda_major)
            except IngeroError:
                continue
            items = list(values.items())
            shown = ", ".join(f"{k}={v}" for k, v in items[:16])
            more = f", ... ({len(items)} values; compare by name in where)" if len(items) > 16 else ""
            out.append(f"enum {fname} ({ename}): {shown}{more}")
        ex_fields = ", ".join([p.name for p in sig.params if p.ctype.kind in ("int", "uint", "enum")][:3]
                              + ["latency", "retval"])
        out.append(f"example: probe p = {lib.stem}:{sym.name}\n    record {ex_fields}\n    limit ttl 60s")
        return cap("\n".join(out))
