"""Failing CUDA calls as findings: error names from the catalogue, counts per op and error, HIGH chains.

A CUDA runtime call returns a ``cudaError_t``, a driver call a ``CUresult``; both are stored in
``events.ret_code`` (upstream's column, 0 = success). Any database with that column answers: the counts come
from one ``GROUP BY`` over the CUDA and driver events of the window. Names come from the signature
catalogue's enums (newest CUDA major first, then older ones for codes a newer major dropped).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from ingero.analysis.window import ALL, TimeWindow, events_access
from ingero.host import Check
from ingero.store.reader import TraceReader
from ingero.store.schema import SOURCE_CUDA, SOURCE_DRIVER, op_name

#: the enum of each source's return codes, as the catalogue names it
_ENUMS = {SOURCE_CUDA: "cudaError_t", SOURCE_DRIVER: "CUresult"}
#: what a failure means for the process, for the errors that say something about the machine rather than a
#: call's arguments (by enumerator name; the rest are reported by name only)
MEANINGS: dict[str, str] = {
    "cudaErrorInsufficientDriver": "this process has no usable NVIDIA driver",
    "cudaErrorNoDevice": "no CUDA-capable device is visible to this process",
    "cudaErrorStubLibrary": "the process loaded the CUDA driver stub library, not a real driver",
    "cudaErrorCallRequiresNewerDriver": "the installed NVIDIA driver is too old for this CUDA runtime",
    "cudaErrorSystemDriverMismatch": "the NVIDIA kernel module and user-space driver versions differ",
    "cudaErrorDevicesUnavailable": "every device is busy or in exclusive/prohibited compute mode",
    "cudaErrorInitializationError": "the CUDA runtime could not initialise",
    "cudaErrorMemoryAllocation": "the process ran out of GPU (or pinned host) memory",
    "cudaErrorNoKernelImageForDevice": "the binaries were not built for this GPU's architecture",
    "cudaErrorIllegalAddress": "a kernel accessed invalid memory: the CUDA context is unusable from now on",
    "cudaErrorLaunchFailure": "a kernel failed: the CUDA context is unusable from now on",
    "cudaErrorECCUncorrectable": "the GPU reported an uncorrectable ECC error",
    "CUDA_ERROR_NO_DEVICE": "no CUDA-capable device is visible to this process",
    "CUDA_ERROR_NOT_INITIALIZED": "the driver API was used before cuInit succeeded",
    "CUDA_ERROR_STUB_LIBRARY": "the process loaded the CUDA driver stub library, not a real driver",
    "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH": "the NVIDIA kernel module and user-space driver versions differ",
    "CUDA_ERROR_OUT_OF_MEMORY": "the process ran out of GPU memory",
    "CUDA_ERROR_ILLEGAL_ADDRESS": "a kernel accessed invalid memory: the context is unusable from now on",
    "CUDA_ERROR_LAUNCH_FAILED": "a kernel failed: the context is unusable from now on",
}
#: the calls a failure is reported over, per source
CALLS_OF = {SOURCE_CUDA: "CUDA runtime calls", SOURCE_DRIVER: "CUDA driver calls"}


@functools.cache
def _names(source: int) -> dict[int, str]:
    from ingero.catalogue import load_catalogue
    from ingero.errors import IngeroError

    cat = load_catalogue()
    out: dict[int, str] = {}
    for major in sorted(cat.cuda_majors):  # oldest first: a newer major's name wins
        try:
            values = cat.enum(_ENUMS[source], major)
        except IngeroError:
            continue
        out.update({v: k for k, v in values.items()})
    return out


def error_name(source: int, code: int) -> str:
    """``cudaErrorInsufficientDriver`` for (CUDA, 35), ``CUDA_ERROR_NO_DEVICE`` for (DRIVER, 100); ``""``
    for success, a source without error codes, or a code the catalogue does not know."""
    if not code or source not in _ENUMS:
        return ""
    return _names(source).get(code, "")


def error_label(source: int, code: int) -> str:
    """``cudaErrorInsufficientDriver (35)``, or ``error 12345`` for a code the catalogue does not know."""
    name = error_name(source, code)
    return f"{name} ({code})" if name else f"error {code}"


@dataclass(frozen=True)
class OpErrors:
    """The calls of one op that returned one error code."""

    source: int
    op: int
    op_name: str
    code: int
    error: str   # the enumerator's name, "" if unknown
    count: int

    @property
    def label(self) -> str:
        return error_label(self.source, self.code)


@dataclass(frozen=True)
class Failures:
    """Failing calls in a window: per (op, code), and all calls per source."""

    errors: tuple[OpErrors, ...]          # most frequent first
    calls: dict[int, int]                 # source -> calls of that source in the window (failing or not)

    def failed(self, source: int) -> int:
        return sum(e.count for e in self.errors if e.source == source)

    def by_code(self) -> list[tuple[int, int, int, tuple[OpErrors, ...]]]:
        """(source, code, count, its ops) per distinct error, most frequent first."""
        groups: dict[tuple[int, int], list[OpErrors]] = {}
        for e in self.errors:
            groups.setdefault((e.source, e.code), []).append(e)
        out = [(s, c, sum(e.count for e in es), tuple(es)) for (s, c), es in groups.items()]
        return sorted(out, key=lambda x: (-x[2], x[0], x[1]))


NONE = Failures((), {})


def calls_per_source(counts: dict[tuple[int, int], int]) -> dict[int, int]:
    """The CUDA runtime and driver calls per source, from counts per (source, op)."""
    out: dict[int, int] = {}
    for (s, _), n in counts.items():
        if s in CALLS_OF and n:
            out[s] = out.get(s, 0) + n
    return out


def find_failures(reader: TraceReader, window: TimeWindow = ALL, pids: tuple[int, ...] = (),
                  calls: dict[int, int] | None = None) -> Failures:
    """Counts of the CUDA runtime and driver calls of the window that returned an error (ret_code != 0).

    Two queries, neither sorting every call: the calls per source (the whole trace: from the covering index
    on ``source``; a pid filter: one pass over the table; a time window: see ``events_access``), unless the
    caller counted them for the same window and pids (``calls``), and the failing calls per (source, op,
    code), one pass over the table or the window's rows."""
    if not (reader.has_table("events") and reader.has_column("events", "ret_code")):
        return NONE
    where, params = window.sql("timestamp")
    # "+": no index on source or pid (the window's access path says which, if any, is used)
    parts = [f"+source IN ({SOURCE_CUDA}, {SOURCE_DRIVER})"] + ([where] if where else [])
    if pids:
        parts.append(f"+pid IN ({','.join('?' * len(pids))})")
        params = list(params) + list(pids)
    access = events_access(reader, window)
    cond = " AND ".join(parts)
    if calls is None:
        if window.is_open and not pids:
            rows = reader.query(f"SELECT source, COUNT(*) FROM events WHERE source IN ({SOURCE_CUDA}, "
                                f"{SOURCE_DRIVER}) GROUP BY source")
        else:
            rows = reader.query(f"SELECT source, COUNT(*) FROM events {access} WHERE {cond} GROUP BY source",
                                params)
        calls = {s: n for s, n in rows}
    rows = reader.query(f"SELECT source, op, ret_code, COUNT(*) FROM events {access} WHERE ret_code != 0 AND "
                        f"{cond} GROUP BY source, op, ret_code", params)
    errors = [OpErrors(s, o, op_name(s, o), rc, error_name(s, rc), n) for s, o, rc, n in rows]
    errors.sort(key=lambda e: (-e.count, e.source, e.op, e.code))
    return Failures(tuple(errors), calls)


def meaning(source: int, code: int) -> str:
    return MEANINGS.get(error_name(source, code), "")


def finding_text(failures: Failures, source: int, code: int, count: int) -> str:
    """``7 of 7 CUDA runtime calls returned cudaErrorInsufficientDriver (35): this process has no usable
    NVIDIA driver``."""
    what = meaning(source, code)
    return (f"{count} of {failures.calls.get(source, count)} {CALLS_OF[source]} returned "
            f"{error_label(source, code)}" + (f": {what}" if what else ""))


def failure_findings(failures: Failures) -> list[str]:
    """One line per error code the calls returned: ``HIGH: 7 of 7 CUDA runtime calls returned ...``."""
    return ["HIGH: " + finding_text(failures, s, c, n) for s, c, n, _ in failures.by_code()]


def trace_calls_check(reader: TraceReader, window: TimeWindow = ALL) -> Check:
    """The trace's own diagnostic line for ``get_check``: did its CUDA calls work?"""
    name = "CUDA calls in the trace"
    if not (reader.has_table("events") and reader.has_column("events", "ret_code")):
        return Check(name, False, "", "the database has no events.ret_code column", optional=True)
    f = find_failures(reader, window)
    total = sum(f.calls.values())
    if not total:
        return Check(name, False, "no CUDA runtime or driver call recorded", optional=True)
    if not f.errors:
        return Check(name, True, f"{total} calls, none failed")
    return Check(name, False, "; ".join(failure_findings(f)),
                 recommendation="see get_causal_chains for the failing calls")
