"""The DSL reference for agents: docs/dsl.md as an MCP resource, and a summary for validate_probe's description."""

from __future__ import annotations

from pathlib import Path

DSL_URI = "ingero://docs/dsl"

#: What validate_probe's description teaches: enough to write a first spec without reading the resource.
DSL_SUMMARY = """\
Probe spec language (full reference with examples: resource ingero://docs/dsl):
  probe NAME = LIBRARY:SYMBOL            library: soname stem (libcudart), soname (libcudart.so.12) or path;
                                         symbol: name or case-sensitive glob (cuda*Synchronize); optional 'pid N'
      where EXPR                         in-kernel filter: == != < <= > >= and/or/not; units KiB MiB GiB, us ms s;
                                         enum names (kind == cudaMemcpyDeviceToHost); "strings" for char*/comm/symbol
      record FIELD, ...                  one event per call: argument names from the catalogue (size, count, kind,
                                         stream), arg0..argN, retval, latency, pid, tid, comm, symbol, stack, ts
      aggregate count, sum(F), min(F), max(F), hist(F) by KEY, ...   in-kernel groups, no per-call events
      limit ttl 60s, events 1000, rate 100/s, symbols 50              budgets (a spec may lower the server's limits)
  Example:
    probe big_copies = libcudart:cudaMemcpyAsync
        where count >= 1MiB and kind == cudaMemcpyDeviceToHost
        record count, stream, latency, retval
        limit ttl 120s, events 10000
  A function the catalogue does not know: declare it, libfoo.so:foo(u64 n, ptr buf) -> i32.
  Use list_symbols to find names and describe_symbol for the fields of one."""


def dsl_reference() -> str:
    """docs/dsl.md of the source tree (or the packaged copy), else the summary."""
    here = Path(__file__).resolve()
    for p in (here.parents[2] / "docs" / "dsl.md", here.parents[1] / "_data" / "docs" / "dsl.md"):
        try:
            return p.read_text(encoding="utf-8")
        except OSError:
            continue
    return DSL_SUMMARY
