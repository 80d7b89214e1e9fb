"""The MCP server: upstream's standard seven tools over a stored trace, every request audited.

Tools are typed functions; the SDK derives their schemas. Structured output is off for every tool
(``structured_output=False``): upstream found that ``structuredContent`` broke Claude Code, so results
are a single compact text block as upstream's. User errors reach the agent as ``ToolError`` messages.
"""


import contextvars
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

from ingero.analysis import causal_chains, make_window, top_stacks, trace_stats
from ingero.analysis.demo import SCENARIOS, find_scenario, run_scenario
from ingero.analysis.failures import trace_calls_check
from ingero.analysis.stacks import why_no_stacks
from ingero.analysis.stats import no_events_message
from ingero.audit import AuditLog, AuditRecord, dumps_args, now_ns, token_fingerprint
from ingero.dsl.check import MAX_SPEC_CHARS
from ingero.errors import IngeroError
from ingero.errors import render as render_error
from ingero.host import format_checks, run_all_checks
from ingero.mcp import format as fmt
from ingero.mcp.dslref import DSL_SUMMARY, DSL_URI, dsl_reference
from ingero.mcp.live import MAX_ESTIMATE_WINDOW_S, ProbeTools
from ingero.mcp.prompt import INVESTIGATE_DESCRIPTION, INVESTIGATE_TEXT, INVESTIGATE_TITLE
from ingero.mcp.strict import (
    MAX_ARG_CHARS,
    MAX_PATH_CHARS,
    MAX_SYMBOL_CHARS,
    OutputBoundMiddleware,
    StrictArgsMiddleware,
    make_strict,
)
from ingero.store import TraceReader
from ingero.store.schema import INGERO_OPS, OP_NAMES, SOURCE_NAMES, SOURCE_PROBE, source_choices
from ingero.store.sqlguard import (
    DEFAULT_TIMEOUT_S,
    MAX_OUTPUT_BYTES,
    MAX_SQL_CHARS,
    MAX_VALUE_BYTES,
    SqlFailed,
    SqlRefused,
)
from ingero.store.sqlworker import SqlRunner

log = logging.getLogger(__name__)

NO_DB = "No database available. Run 'ingero trace' first to create and populate the event store."
SERVER_TITLE = "Ingero GPU Causal Observability — AI-first analysis"
TSC_DESC = "telegraphic compression (default: true). Set false for verbose output."
SINCE_DESC = ("time range: a duration counted back from the END of the trace for saved DBs (e.g. 1m, 5m, "
              "1h), or an absolute time (2026-03-20T13:56:02, @unix-seconds). Omit to use ALL events.")
PID_DESC = "filter by single process ID. 0 = all. Deprecated: use pids."
TOP_N_DESC = ("max chains to return (default 10). Deduplicates by operation, keeps highest severity. Use 0 "
              "(or a negative value) for all.")
UNTIL_DESC = "end of the time range, same forms as since (a duration counts back from the end). Omit for all."


#: Tools that change what the kernel traces: registered only by a live server started with --allow-attach.
ATTACH_TOOLS = ("attach_probe", "detach_probe")
#: What a tool adds to its audit record (the resolved symbols of a spec, the probe ids attached).
AUDIT_EXTRA: contextvars.ContextVar[dict | None] = contextvars.ContextVar("ingero_audit_extra", default=None)


@dataclass(frozen=True)
class ServerOptions:
    transport: str = "stdio"           # stdio | http
    sql_timeout_s: float = DEFAULT_TIMEOUT_S
    live: bool = False                 # the database is being written: re-read its bounds on every call
    prometheus: str = ""               # query_fleet asks this Prometheus server (empty: no query_fleet)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("ingero")
    except Exception:  # noqa: BLE001 - a source checkout without metadata
        return "dev"


def _tsc(v: bool | None) -> bool:
    return v is None or bool(v)


class _Backend:
    """The reader plus the run_sql runner. No lock: the reader gives each worker thread its own connection
    and each run_sql query runs in its own process, so no client's call waits behind another's query."""

    def __init__(self, reader: TraceReader | None, sql_timeout_s: float, live: bool = False) -> None:
        self.reader = reader
        self.sql_timeout_s = sql_timeout_s
        self.live = live
        self._sql = SqlRunner(reader.uri, timeout_s=sql_timeout_s) if reader is not None else None

    def anchor(self) -> int | None:
        b = self.reader.time_bounds if self.reader else None
        return b[1] if b else None

    def sql(self, query: str, limit: int):
        return self._sql.run(query, limit=limit)

    def refresh(self) -> None:
        """A live database grows: forget what the reader cached about its events and ops."""
        if self.live and self.reader is not None:
            for k in ("time_bounds", "op_descriptions"):
                self.reader.__dict__.pop(k, None)


async def _call(backend: _Backend, fn: Callable[[], str]) -> str:
    def work() -> str:
        backend.refresh()
        return fn()
    try:
        return await anyio.to_thread.run_sync(work)
    except IngeroError as e:
        raise ToolError(render_error(e)) from None


def _codes_legend() -> str:
    """Sources and upstream's ops by code (``Sources: 1=CUDA, ... CUDA ops: 1=cudaMalloc, ...``), from the
    one table of each (:mod:`ingero.store.schema`)."""
    shown = [(code, name.upper()) for code, name in SOURCE_NAMES.items() if code != SOURCE_PROBE]
    text = "Sources: " + ", ".join(f"{code}={name}" for code, name in shown) + "."
    for code, name in shown:
        ops = [f"{op}={n}" for (src, op), n in OP_NAMES.items() if src == code and (src, op) not in INGERO_OPS]
        text += f" {name} ops: {', '.join(ops)}." if ops else ""
    return text


def run_sql_description(reader: TraceReader | None, timeout_s: float = DEFAULT_TIMEOUT_S) -> str:
    text = (
        "Execute read-only SQL on the Ingero database. For ad-hoc analysis the fixed tools can't do: "
        "temporal bucketing, threshold queries, per-PID breakdowns, throughput calculations. One "
        "SELECT/WITH/EXPLAIN statement; writes, ATTACH, state-changing pragmas and extension loading are "
        "refused by the SQLite engine. Limits (this server): "
        f"{timeout_s:g} s wall clock (the query's process is killed at the limit), 1000 rows by default "
        f"(limit up to 10000), {MAX_OUTPUT_BYTES >> 20} MiB of output, {MAX_VALUE_BYTES >> 20} MiB per value.\n"
        "JOINs: events.source=sources.id, events.(source,op)=ops.(source_id,op_id), "
        "events.stack_hash=stack_traces.hash, events.cgroup_id=cgroup_metadata.cgroup_id, "
        "events.pid=process_names.pid (qualify pid as e.pid when joining).\n"
        f"{_codes_legend()} ingero databases add ops from 40 up (CUDA: "
        "cudaGetDeviceCount, cudaGetLastError, cudaStreamCreate*, cudaHostAlloc...; DRIVER: cuInit...; HOST: "
        "40=thread_create, 41=thread_exit, so process_fork/process_exit are processes only): JOIN ops for "
        "their names. ret_code: the cudaError_t/CUresult of CUDA/driver calls (0 = success).\n"
        "Args: cudaMalloc arg0=size; cudaMemcpy* arg0=bytes, arg1=kind (0 H2H, 1 H2D, 2 D2H, 3 D2D, "
        "4 default); "
        "cudaLaunchKernel arg0=function pointer; mm_page_alloc arg0=bytes; sched_switch pid=resumed thread, "
        "duration=off-CPU ns, arg1=preempting pid; net_send/net_recv arg0=fd, arg1=bytes; block I/O "
        "arg0=sectors. Timestamps: Unix nanos. Durations: nanos (/1e3 = µs).\n"
        "Performance: for large DBs query event_aggregates (per-minute, small) or stack_traces instead of "
        "scanning events; use get_stacks for call stacks.\n"
        "Dynamic probes (ingero databases; attach_probe or ingero trace --probe): probes(id, name, spec, fields, "
        "library, symbols, status, started_at, ended_at, end_reason, view) has one row per probe with its spec "
        "text and recorded fields; each probe event is an events row with source=100 and op=probes.id (ops has "
        "the probe's name), latency as duration and retval as ret_code; every recorded field is in "
        "probe_values(event_id, probe_id, v0..v7, more) and readable by name through the probe's view "
        "(probes.view, e.g. SELECT size, retval FROM probe_mallocs); in-kernel aggregates as last read are in "
        "probe_aggregates(probe_id, key, count, aggs, hists, read_at) (JSON; use get_probe_results).")
    if reader is not None:
        tables = "; ".join(f"{t}({', '.join(cols)})" for t, cols in reader.tables.items())
        text += f"\nTables in this database (schema {reader.schema_version}): {tables}"
    return text


def build_server(reader: TraceReader | None, audit: AuditLog | None,
                 options: ServerOptions = ServerOptions(), probes: ProbeTools | None = None) -> MCPServer:
    """An MCP server over ``reader`` (None: the DB tools answer that there is no database).

    ``probes``: the probe tools' state; a live server passes one holding its trace session, a replay server
    gets one over ``reader`` that works on library files (and has no attach tools)."""
    backend = _Backend(reader, options.sql_timeout_s, options.live)
    probes = probes if probes is not None else ProbeTools(reader)
    attach = probes.live and probes.options.allow_attach
    db_label = str(reader.path) if reader else ""
    middleware: list = [_AuditMiddleware(audit, options.transport, db_label)] if audit else []
    middleware.append(_AbsentToolMiddleware(probes))
    strict = StrictArgsMiddleware()
    middleware += [strict, OutputBoundMiddleware({"run_sql": MAX_OUTPUT_BYTES + 4096})]
    if probes.live:
        intro = ("Investigate a live CUDA process: start with get_trace_stats and get_causal_chains. When the "
                 "standard trace is not enough, list_libraries -> list_symbols -> describe_symbol -> "
                 "validate_probe" + (" -> attach_probe -> get_probe_results -> detach_probe." if attach else
                                     " (attaching is off on this server: no --allow-attach)."))
    else:
        intro = ("Investigate a GPU trace: start with get_trace_stats, then get_causal_chains. Saved databases: "
                 "omit 'since'.")
    server = MCPServer(name="ingero", title=SERVER_TITLE, version=_version(), middleware=middleware,
                       instructions=intro)
    strict.server = server

    @server.tool(structured_output=False, description="Run system diagnostics: kernel version, BTF support, "
                 "NVIDIA driver, CUDA libraries, running GPU processes; over a trace database, also whether "
                 "the trace's CUDA calls failed (error counts and names)")
    async def get_check() -> str:
        text = await anyio.to_thread.run_sync(lambda: format_checks(run_all_checks()))
        if reader is None:
            return text

        def calls() -> str:  # the trace's own verdict: did its CUDA calls work?
            return format_checks((trace_calls_check(reader),))
        return text + await _call(backend, calls)

    @server.tool(structured_output=False, description=(
        "Get CUDA and host operation statistics: count, p50/p95/p99/max (exact, over all stored events), "
        "share of wall time (w%: summed call durations over the window asked for, the whole trace without "
        "since/until; calls overlapping on several threads can add up past 100%) and anomalies (> 3x p50) per "
        "operation. Works with both live and "
        "saved/offline databases. Omit 'since' for saved DBs."))
    async def get_trace_stats(
        since: Annotated[str, Field(description=SINCE_DESC, max_length=MAX_ARG_CHARS)] = "",
        tsc: Annotated[bool | None, Field(description=TSC_DESC)] = None,
        until: Annotated[str, Field(description=UNTIL_DESC, max_length=MAX_ARG_CHARS)] = "",
    ) -> str:
        def work() -> str:
            if reader is None:
                return NO_DB
            w = make_window(since, until, backend.anchor())
            st = trace_stats(reader, w)
            if not st.ops:
                return no_events_message(reader, w)
            return fmt.format_stats(st, _tsc(tsc), since)
        return await _call(backend, work)

    @server.tool(structured_output=False, description=(
        "Analyze CUDA + host events and return causal chains with severity, root cause, and "
        "recommendations. Deduplicates by operation, returns top 10 by default (use top_n to adjust). "
        "AI-first: TSC-compressed by default. Works with both live and saved/offline databases. "
        "Omit 'since' for saved DBs."))
    async def get_causal_chains(
        since: Annotated[str, Field(description=SINCE_DESC, max_length=MAX_ARG_CHARS)] = "",
        pid: Annotated[int, Field(description=PID_DESC)] = 0,
        pids: Annotated[list[int] | None, Field(description="filter by process ID(s). Takes precedence over "
                                                            "pid.")] = None,
        tsc: Annotated[bool | None, Field(description=TSC_DESC)] = None,
        top_n: Annotated[int, Field(description=TOP_N_DESC)] = 10,
        until: Annotated[str, Field(description=UNTIL_DESC, max_length=MAX_ARG_CHARS)] = "",
    ) -> str:
        def work() -> str:
            if reader is None:
                return "No database available. Run 'ingero trace' first."
            w = make_window(since, until, backend.anchor())
            chosen = tuple(p for p in (pids or []) if p > 0) or ((pid,) if pid > 0 else ())
            res = causal_chains(reader, w, chosen, top_n)
            if res.path == "replay" and res.events == 0 and not res.chains:
                return no_events_message(reader, w, chosen)
            return fmt.format_chains(res.chains, _tsc(tsc), res.path)
        return await _call(backend, work)

    names = ", ".join(sorted(s.name for s in SCENARIOS))

    @server.tool(structured_output=False, description="Run a synthetic demo scenario and return the stats "
                 "snapshot and causal chains of its generated events. No GPU or root needed.")
    async def run_demo(scenario: Annotated[str, Field(description=f"scenario name: {names}",
                                                      max_length=MAX_ARG_CHARS)] = "") -> str:
        def work() -> str:
            find_scenario(scenario)  # a ToolError (through _call) naming the scenarios
            r = run_scenario(scenario)
            stats = fmt.format_stats(r.stats, True).removeprefix(fmt.PREAMBLE)
            chains = fmt.format_chains(r.chains.chains, True, r.chains.path).removeprefix(fmt.PREAMBLE)
            return (f"Scenario: {r.scenario.name} — {r.scenario.description}\n\n{stats}\n\n"
                    f"Causal chains: {chains}\n\nInsight: {r.scenario.insight}")
        return await _call(backend, work)

    @server.tool(structured_output=False, description=(
        "Get the newest GPU integration test report (JSON) written by `ingero selftest`. Includes per-test "
        "status, timing, and system info."))
    async def get_test_report(tsc: Annotated[bool | None, Field(description=TSC_DESC)] = None) -> str:
        return await anyio.to_thread.run_sync(lambda: fmt.test_report_text(_tsc(tsc)))

    @server.tool(structured_output=False, description=run_sql_description(reader, options.sql_timeout_s))
    async def run_sql(
        query: Annotated[str, Field(description="Read-only SQL (SELECT/WITH/EXPLAIN). See tool description "
                                                "for schema.", max_length=MAX_SQL_CHARS)],
        limit: Annotated[int, Field(description="max rows returned (default 1000, max 10000)")] = 0,
        tsc: Annotated[bool | None, Field(description=TSC_DESC)] = None,
    ) -> str:
        def work() -> str:
            if reader is None:
                return "No database available. Run 'ingero trace' first."
            if not query.strip():
                raise ToolError("query parameter is required")
            try:
                res = backend.sql(query, limit)
            except (SqlRefused, SqlFailed) as e:
                raise ToolError(render_error(e)) from None
            text = fmt.sql_result_json(res, _tsc(tsc))
            if len(text.encode()) > MAX_OUTPUT_BYTES:
                raise ToolError(f"SQL response too large ({len(text.encode())} bytes, max {MAX_OUTPUT_BYTES}). "
                                "Add LIMIT or narrow the query.")
            return fmt.PREAMBLE + text
        return await _call(backend, work)

    @server.tool(structured_output=False, description=(
        "Get resolved call stacks for CUDA/driver operations. Returns top stacks by frequency with symbol "
        "names, source files, and timing stats. One call answers 'what code path caused this operation?' "
        "For older DBs without resolved symbols, falls back to raw IPs (hex addresses)."))
    async def get_stacks(
        source: Annotated[int | Annotated[str, Field(max_length=MAX_ARG_CHARS)], Field(
            description=f"Source filter, a code or a name: {source_choices()}")] = 0,
        op: Annotated[str, Field(description="Operation name as get_trace_stats prints it (e.g. cudaMalloc, "
                                             "cuLaunchKernel, probe:NAME); wins over source",
                                 max_length=MAX_ARG_CHARS)] = "",
        pid: Annotated[int, Field(description="Process ID filter")] = 0,
        since: Annotated[str, Field(description=SINCE_DESC, max_length=MAX_ARG_CHARS)] = "",
        limit: Annotated[int, Field(description="Max stacks returned (default 10, max 100)")] = 10,
        tsc: Annotated[bool | None, Field(description=TSC_DESC)] = None,
        until: Annotated[str, Field(description=UNTIL_DESC, max_length=MAX_ARG_CHARS)] = "",
        group_by: Annotated[Literal["stack", "python_line"], Field(
            description="stack (default), or python_line: merge the stacks by their innermost Python frame "
                        "('train.py:84 in train_step': which line of the Python code makes these calls)",
        )] = "stack",
    ) -> str:
        def work() -> str:
            if reader is None:
                return "No database available. Run 'ingero trace' first."
            w = make_window(since, until, backend.anchor())
            lim = 10 if limit <= 0 else min(limit, 100)
            try:
                stacks = top_stacks(reader, source=source, op=op, pid=pid, window=w, limit=lim, group=group_by)
                if not stacks:
                    return why_no_stacks(reader, source=source, op=op, pid=pid, window=w)
            except IngeroError as e:
                raise ToolError(str(e)) from None
            return fmt.format_stacks(stacks, lim, _tsc(tsc))
        return await _call(backend, work)

    @server.prompt(name="investigate", title=INVESTIGATE_TITLE, description=INVESTIGATE_DESCRIPTION)
    def investigate() -> str:
        return INVESTIGATE_TEXT

    _add_probe_tools(server, probes, attach)
    if options.prometheus:
        from ingero.mcp.fleet import add_fleet_tool

        add_fleet_tool(server, options.prometheus)
    make_strict(server)
    return server


async def _probe_call(fn: Callable[[], Any]) -> Any:
    try:
        return await anyio.to_thread.run_sync(fn)
    except IngeroError as e:
        raise ToolError(render_error(e)) from None


def _audit_extra(facts: dict) -> None:
    extra = AUDIT_EXTRA.get()
    if extra is not None:
        extra.update(facts)


def session_owner(ctx: Context | None) -> str:
    """Who attached a probe: the HTTP session (its mcp-session-id) or the stdio client."""
    headers = None
    try:
        headers = ctx.headers if ctx is not None else None
    except Exception:  # noqa: BLE001 - no request context (direct calls in tests)
        headers = None
    sid = headers.get("mcp-session-id") if headers else None
    name = ""
    try:
        info = ctx.request_context.session.client_params.client_info  # type: ignore[union-attr]
        name = str(info.name or "")
    except Exception:  # noqa: BLE001
        name = ""
    base = f"http:{sid}" if sid else "stdio"
    return f"{base} ({name})" if name else base


def _add_probe_tools(server: MCPServer, probes: ProbeTools, attach: bool) -> None:
    where = ("the traced process's mapped libraries (pid: another process of the traced tree)" if probes.live
             else "this machine's library files (replay: no process)")

    @server.tool(structured_output=False, description=(
        f"List the CUDA libraries a probe can attach to: {where}. Columns: soname, version, symbols (function "
        "count), build_id, allowed (on the server's probe allow-list), chosen, path. Paginated."))
    async def list_libraries(
        pid: Annotated[int, Field(description="a process of the traced tree (live only); 0 = the traced "
                                              "process")] = 0,
        limit: Annotated[int, Field(description="rows per page (default 50, max 500)")] = 50,
        offset: Annotated[int, Field(description="first row (for the next page)")] = 0,
    ) -> str:
        return await _probe_call(lambda: probes.list_libraries(pid, limit, offset))

    @server.tool(structured_output=False, description=(
        "List the function symbols of a library (demangled) matching a case-sensitive shell glob, with the "
        "total count and whether the signature catalogue knows their typed arguments (sig=yes: fields by "
        "name in a spec). Paginated; a large result suggests how to narrow it; no match gives a did-you-mean."))
    async def list_symbols(
        library: Annotated[str, Field(description="soname stem (libcudart), soname (libcudart.so.12) or path",
                                       max_length=MAX_PATH_CHARS)],
        pattern: Annotated[str, Field(description="shell glob on the name, e.g. cudaMemcpy* (default *)",
                                       max_length=MAX_ARG_CHARS)] = "*",
        limit: Annotated[int, Field(description="rows per page (default 100, max 500)")] = 100,
        offset: Annotated[int, Field(description="first row (for the next page)")] = 0,
    ) -> str:
        return await _probe_call(lambda: probes.list_symbols(library, pattern, limit, offset))

    @server.tool(structured_output=False, description=(
        "Describe one function of a library: its C signature from the catalogue, the fields a probe spec can "
        "use (arguments by name, retval, latency, built-ins), enum values, and an example spec."))
    async def describe_symbol(
        library: Annotated[str, Field(description="soname stem (libcudart), soname or path",
                                       max_length=MAX_PATH_CHARS)],
        symbol: Annotated[str, Field(description="exact function name, e.g. cudaMemcpyAsync",
                                      max_length=MAX_SYMBOL_CHARS)],
    ) -> str:
        return await _probe_call(lambda: probes.describe_symbol(library, symbol))

    @server.tool(structured_output=False, description=(
        "Check a probe spec without attaching it (no root needed): the resolved library, symbols, fields, "
        "filter and budgets in force, whether this server would allow attaching it, and an estimate of "
        "events/s and CPU overhead from the calls to those symbols the standard trace already recorded over a "
        "stated window (or a plain statement that there is no basis). Errors come with line, column and a "
        "did-you-mean hint: fix and validate again.\n" + DSL_SUMMARY))
    async def validate_probe(
        spec: Annotated[str, Field(description="the probe spec text (one or more probes)",
                                    max_length=MAX_SPEC_CHARS)],
        window_s: Annotated[float, Field(description="estimate window in seconds, counted back from now "
                                                     "(live) or the end of the trace (default 10, at most 3600)",
                                         gt=0, le=MAX_ESTIMATE_WINDOW_S)] = 10.0,
    ) -> str:
        text, facts = await _probe_call(lambda: probes.validate(spec, window_s))
        _audit_extra(facts)
        return text

    @server.tool(structured_output=False, description=(
        "List the probes of this trace (attached over MCP or with ingero trace --probe): id, name, status "
        "(active/ended), events stored, symbols, library, owner (the client session that attached it), "
        "attach/end time and why it ended (detached by request, budget spent, ttl, target exited, client "
        "session gone, the tracer stopped without closing it). Paginated."))
    async def list_probes(
        limit: Annotated[int, Field(description="rows per page (default 50, max 500)")] = 50,
        offset: Annotated[int, Field(description="first row (for the next page)")] = 0,
    ) -> str:
        return await _probe_call(lambda: probes.list_probes(limit, offset))

    @server.tool(structured_output=False, description=(
        "Results of one probe: status and why it ended, events stored, kernel counters (hits, matched, "
        "filtered, dropped), in-kernel aggregates and histograms, exact counts per value of each recorded "
        "field, and the most recent events (paginated from the newest). All events are also in run_sql "
        "(the probe's view) and in get_trace_stats / get_causal_chains as op probe:NAME."))
    async def get_probe_results(
        probe_id: Annotated[int, Field(description="the id attach_probe or list_probes gave")],
        limit: Annotated[int, Field(description="events/aggregate rows per page (default 20, max 500)")] = 20,
        offset: Annotated[int, Field(description="skip this many of the newest rows (next page)")] = 0,
    ) -> str:
        return await _probe_call(lambda: probes.results(probe_id, limit, offset))

    @server.resource(DSL_URI, name="probe-dsl", title="ingero probe spec language (DSL) reference",
                     description="The probe spec language with examples: targets, fields, where, record, "
                                 "aggregate, limit, errors.", mime_type="text/markdown")
    def dsl_doc() -> str:
        return dsl_reference()

    if not attach:
        return

    lim = probes.options.limits

    @server.tool(structured_output=False, description=(
        "Attach a probe spec to the traced process now (validate it first with validate_probe). Returns the "
        "probe id, the symbols attached and the budgets in force; a library no traced process has loaded yet "
        "is waited for ('waiting for LIB in the traced tree': checked and judged again on the file a process "
        "loads). Guards: libraries on the allow-list only, "
        f"only the traced process tree, budgets at most ttl {lim.ttl_s:g}s / events {lim.events} / "
        f"{lim.max_symbols} symbols (a spec may lower them), at most {lim.max_probes} live probes. The probe "
        "ends at its budget, when the target exits, on detach_probe, or when this client session ends. Its "
        "events land in the trace database next to the standard ops."))
    async def attach_probe(
        spec: Annotated[str, Field(description="the probe spec text (see validate_probe's description)",
                                    max_length=MAX_SPEC_CHARS)],
        ctx: Context,
    ) -> str:
        owner = session_owner(ctx)
        facts: dict = {"owner": owner}
        try:
            text, _ = await _probe_call(lambda: probes.attach(spec, owner, facts))
            return text
        finally:
            _audit_extra(facts)

    @server.tool(structured_output=False, description=(
        "Detach a probe now: the kernel drops its uprobes at once; its events stay in the database and "
        "get_probe_results keeps working."))
    async def detach_probe(
        probe_id: Annotated[int, Field(description="the id attach_probe or list_probes gave")],
    ) -> str:
        return await _probe_call(lambda: probes.detach(probe_id))


class _AbsentToolMiddleware:
    """A client calling an attach tool this server does not offer gets a clear reason, not 'unknown tool'."""

    def __init__(self, probes: ProbeTools) -> None:
        self.probes = probes

    async def __call__(self, ctx: Any, call_next: Any) -> Any:
        if ctx.method == "tools/call":
            name = str((ctx.params or {}).get("name", ""))
            if name in ATTACH_TOOLS and not (self.probes.live and self.probes.options.allow_attach):
                from mcp.types import CallToolResult, TextContent

                if not self.probes.live:
                    why = (f"{name} is not available: this server replays a stored database (ingero mcp --db), "
                           "where nothing is traced. Probes attach only to a live trace started with "
                           "`ingero mcp --live --allow-attach --pid N` (or `-- CMD ARGS`). validate_probe, "
                           "list_symbols and describe_symbol work here.")
                else:
                    why = (f"{name} is not available: this live server was started without --allow-attach, so "
                           "it does not change what the kernel traces. validate_probe still checks specs.")
                return CallToolResult(content=[TextContent(type="text", text=why)], is_error=True)
        return await call_next(ctx)


class _AuditMiddleware:
    """Records every request (tools, prompts, lists, initialize) in the audit log."""

    def __init__(self, audit: AuditLog, transport: str, db: str) -> None:
        self.audit = audit
        self.transport = transport
        self.db = db

    async def __call__(self, ctx: Any, call_next: Any) -> Any:
        if ctx.request_id is None:  # a notification, not an invocation
            return await call_next(ctx)
        ts, t0 = now_ns(), time.perf_counter()
        params = dict(ctx.params or {})
        outcome, error, nbytes, result = "ok", "", 0, None
        extra: dict = {}
        token = AUDIT_EXTRA.set(extra)
        try:
            result = await call_next(ctx)
            outcome, error, nbytes = _result_facts(result)
            return result
        except BaseException as e:
            outcome, error = "rejected", f"{type(e).__name__}: {e}"
            raise
        finally:
            AUDIT_EXTRA.reset(token)
            name, version = _client_info(ctx, params)
            tool = str(params.get("name", "")) if ctx.method in ("tools/call", "prompts/get") else ""
            args = params.get("arguments") if tool else {k: v for k, v in params.items() if k != "_meta"}
            if extra:
                args = {**(args or {}), "_ingero": extra}
            try:
                self.audit.record(AuditRecord(
                    ts, name, version, self.transport, _token_fp(ctx), ctx.method, tool,
                    dumps_args(args or {}), (time.perf_counter() - t0) * 1000, outcome, error, nbytes,
                    self.db))
            except Exception:  # noqa: BLE001 - never fail a request because the log could not be written
                log.exception("could not write the audit record")


def _result_facts(result: Any) -> tuple[str, str, int]:
    data = result.model_dump(by_alias=True) if hasattr(result, "model_dump") else (result or {})
    text = "".join(c.get("text", "") for c in data.get("content", []) if isinstance(c, dict))
    nbytes = len(text.encode()) if text else len(json.dumps(data, default=str).encode())
    if data.get("isError") or data.get("is_error"):
        return "error", text[:2000], nbytes
    return "ok", "", nbytes


def _client_info(ctx: Any, params: dict) -> tuple[str, str]:
    info = None
    try:
        cp = ctx.session.client_params
        info = cp.client_info if cp is not None else None
    except Exception:  # noqa: BLE001 - stateless requests carry no session
        info = None
    if info is not None:
        return str(info.name or ""), str(info.version or "")
    ci = params.get("clientInfo") or {}
    return str(ci.get("name", "")), str(ci.get("version", ""))


def _token_fp(ctx: Any) -> str:
    req = getattr(ctx, "request", None)
    headers = getattr(req, "headers", None)
    if not headers:
        return ""
    auth = headers.get("authorization", "")
    return token_fingerprint(auth[7:].strip()) if auth[:7].lower() == "bearer " else ""
