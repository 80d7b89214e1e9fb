"""Causal chains: stored ones (deduplicated as upstream), or recomputed from events.

Stored path (upstream ``deduplicateStoredChains``): group by ``(cuda_op, severity)``, keep the highest
``tail_ratio`` (first seen wins ties), sort HIGH > MEDIUM > LOW then by tail ratio, keep ``top_n``.

Replay path (a database without stored chains, or a pid filter): the rules of upstream's correlator
(``internal/correlate``), evaluated once over the whole window: a tail chain for every CUDA/driver op with
at least 10 calls, p50 > 0 and p99/p50 >= 3 that has a host, system, I/O or network cause; an OOM chain;
a TCP-retransmit burst chain; and a HIGH chain per error code that CUDA runtime or driver calls returned
(``events.ret_code``, ingero's addition: failing calls are findings, on both paths). Results are
deduplicated on the last timeline entry and sorted like stored
chains, so the answer is deterministic (upstream's replay order is random).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field

from ingero.analysis.durations import op_durations
from ingero.analysis.failures import CALLS_OF, calls_per_source, error_name, find_failures, finding_text, meaning
from ingero.analysis.stacks import has_python_frames, top_stacks
from ingero.analysis.stats import event_filter, nearest_rank
from ingero.analysis.window import ALL, TimeWindow, events_access, go_duration
from ingero.store.reader import TraceReader
from ingero.store.schema import (
    SOURCE_CUDA,
    SOURCE_DRIVER,
    SOURCE_HOST,
    SOURCE_IO,
    SOURCE_NET,
    SOURCE_TCP,
    op_code,
    op_name,
)

SEVERITY_RANK = {"HIGH": 3, "MEDIUM": 2, "LOW": 1}
TAIL_RATIO = 3.0
MIN_OP_COUNT = 10
SCHED_THRESHOLD = 5
PAGE_ALLOC_BYTES = 1 << 30
#: failing ops listed one by one in a failure chain's timeline (the explanation names them all)
MAX_FAILING_OPS = 8


@dataclass(frozen=True)
class TimelineEntry:
    layer: str
    op: str
    detail: str
    dur_us: int = 0


@dataclass(frozen=True)
class CausalChain:
    id: str
    severity: str
    summary: str
    root_cause: str
    explanation: str
    recommendations: tuple[str, ...]
    timeline: tuple[TimelineEntry, ...]
    cuda_op: str = ""
    tail_ratio: float = 0.0
    node: str = ""
    detected_at: int = 0


@dataclass(frozen=True)
class ChainsResult:
    chains: tuple[CausalChain, ...]
    path: str                      # "stored" or "replay"
    considered: int                # chains before dedup/truncation
    events: int = 0                # events analysed (replay path)


def rank(sev: str) -> int:
    return SEVERITY_RANK.get(sev.upper(), 0)


def sort_chains(chains: list[CausalChain]) -> list[CausalChain]:
    return sorted(chains, key=lambda c: (-rank(c.severity), -c.tail_ratio))


def dedup_stored(chains: list[CausalChain], top_n: int = 10) -> list[CausalChain]:
    """Upstream's dedup of stored chains; ``top_n`` <= 0 keeps all (upstream maps 0 to 10)."""
    best: dict[tuple[str, str], CausalChain] = {}
    for c in chains:
        key = (c.cuda_op, c.severity)
        if key not in best or c.tail_ratio > best[key].tail_ratio:
            best[key] = c
    out = sort_chains(list(best.values()))
    return out[:top_n] if top_n > 0 else out


def stored_chains(reader: TraceReader, window: TimeWindow = ALL) -> list[CausalChain]:
    if not reader.has_table("causal_chains"):
        return []
    node = "node" if reader.has_column("causal_chains", "node") else "''"
    where, params = window.sql("detected_at")
    rows = reader.query(
        "SELECT id, detected_at, severity, summary, root_cause, explanation, recommendations, cuda_op, "
        f"tail_ratio, timeline, {node} FROM causal_chains {'WHERE ' + where if where else ''} "
        "ORDER BY detected_at DESC", params)
    out = []
    for cid, det, sev, summ, rc, expl, recs, cop, ratio, tl, nd in rows:
        out.append(CausalChain(str(cid), sev, summ, rc, expl, _json_list(recs), _timeline(tl),
                               cop or "", float(ratio or 0), nd or "", int(det or 0)))
    return out


def _json_list(text: str) -> tuple[str, ...]:
    try:
        v = json.loads(text) if text else []
    except ValueError:
        return ()
    return tuple(str(x) for x in v) if isinstance(v, list) else ()


def _timeline(text: str) -> tuple[TimelineEntry, ...]:
    try:
        v = json.loads(text) if text else []
    except ValueError:
        return ()
    if not isinstance(v, list):
        return ()
    return tuple(TimelineEntry(str(e.get("layer", "")), str(e.get("op", "")), str(e.get("detail", "")),
                               int(e.get("dur_us", 0) or 0)) for e in v if isinstance(e, dict))


def causal_chains(reader: TraceReader, window: TimeWindow = ALL, pids: tuple[int, ...] = (),
                  top_n: int = 10) -> ChainsResult:
    """Stored chains when the database has them and no pid filter is given; else replay the events."""
    if not pids:
        stored = stored_chains(reader, window)
        if stored:
            # a database recorded without failure chains (upstream's, an older ingero) still reports them
            found = with_failures(dedup_stored(stored, 0), reader, window)
            return ChainsResult(tuple(found[:top_n] if top_n > 0 else found), "stored", len(stored))
    chains, n = replay_chains(reader, window, pids)
    chains = sort_chains(chains)
    return ChainsResult(tuple(chains[:top_n] if top_n > 0 else chains), "replay", len(chains), n)


# --- replay ---------------------------------------------------------------------------------------------
@dataclass
class _Context:
    cpu: float = 0.0
    mem: float = 0.0
    mem_avail: int = 0
    swap: int = 0
    load: float = 0.0
    sched: int = 0
    off_cpu_ns: int = 0
    alloc_count: int = 0
    alloc_bytes: int = 0
    oom: int = 0
    pod_restart: int = 0
    pod_eviction: int = 0
    io_count: int = 0
    io_total_ns: int = 0
    io_max_ns: int = 0
    io_reads: int = 0
    io_writes: int = 0
    io_bytes: int = 0
    tcp: int = 0
    net_count: int = 0
    net_bytes: int = 0
    ops: dict[tuple[int, int], list[int]] = field(default_factory=lambda: defaultdict(list))


def _collect(reader: TraceReader, window: TimeWindow, pids: tuple[int, ...]) -> tuple[_Context, int]:
    ctx = _Context()
    if reader.has_table("system_snapshots"):
        w, p = window.sql("timestamp")
        row = reader.conn.execute(
            "SELECT MAX(cpu_pct), MAX(mem_pct), MIN(mem_avail), MAX(swap_mb), MAX(load_avg) "
            f"FROM system_snapshots {'WHERE ' + w if w else ''}", p).fetchone()
        if row and row[0] is not None:
            ctx.cpu, ctx.mem, ctx.mem_avail, ctx.swap, ctx.load = (float(row[0]), float(row[1]),
                                                                   int(row[2]), int(row[3]), float(row[4]))
    if not reader.has_table("events"):
        return ctx, 0
    # the codes, from the one table
    host, io, tcp, net, calls = SOURCE_HOST, SOURCE_IO, SOURCE_TCP, SOURCE_NET, (SOURCE_CUDA, SOURCE_DRIVER)
    sched, alloc, oom, pod_oom, restart, eviction, alloc_sum, sched_sum = (op_code(name)[1] for name in (
        "sched_switch", "mm_page_alloc", "oom_kill", "pod_oom_kill", "pod_restart", "pod_eviction",
        "mm_page_alloc_summary", "sched_switch_summary"))
    read, write = op_code("block_read")[1], op_code("block_write")[1]
    access = events_access(reader, window)
    # the CUDA runtime and driver calls: every duration, for their percentiles
    where, params = event_filter(reader, window, pids)
    ctx.ops.update(op_durations(reader, where, params, access, calls))
    n = sum(len(ds) for ds in ctx.ops.values())
    # every other event: counted and summed per op in SQL; a context switch belongs to a pid it left or
    # entered (arg1: the next pid)
    where, params = event_filter(reader, window)
    conds = [where.removeprefix("WHERE ")] if where else []
    conds.append(f"+source NOT IN ({calls[0]}, {calls[1]})")
    if pids:
        marks = ",".join("?" * len(pids))
        conds.append(f"(+pid IN ({marks}) OR (source = {host} AND op = {sched} AND arg1 IN ({marks})))")
        params = params + list(pids) + list(pids)
    # only the sums used below (a sum over every op's arguments could overflow SQLite's 64 bits)
    dur = f"source = {io} OR (source = {host} AND op = {sched})"
    arg0 = f"source = {io} OR (source = {host} AND op IN ({alloc}, {alloc_sum}, {sched_sum}))"
    arg1 = f"source = {net} OR (source = {host} AND op IN ({alloc_sum}, {sched_sum}))"
    rows = reader.query(
        f"SELECT source, op, COUNT(*), SUM(CASE WHEN {dur} THEN duration END), MAX(duration), "
        f"SUM(CASE WHEN {arg0} THEN arg0 END), SUM(CASE WHEN {arg1} THEN arg1 END) FROM events {access} "
        f"WHERE {' AND '.join(conds)} GROUP BY source, op", params)
    for s, o, count, d_sum, d_max, a0, a1 in rows:
        n += count
        d_sum, a0, a1 = d_sum or 0, a0 or 0, a1 or 0
        if s == host:
            if o == sched:
                ctx.sched += count
                ctx.off_cpu_ns += d_sum
            elif o == alloc:
                ctx.alloc_count += count
                ctx.alloc_bytes += a0
            elif o == oom or o == pod_oom:
                ctx.oom += count
            elif o == restart:
                ctx.pod_restart += count
            elif o == eviction:
                ctx.pod_eviction += count
            elif o == alloc_sum and not pids:  # whole-host summaries: no pid to filter on
                ctx.alloc_count += a0
                ctx.alloc_bytes += a1
            elif o == sched_sum and not pids:
                ctx.sched += a0
                ctx.off_cpu_ns += a1
        elif s == io:
            ctx.io_count += count
            ctx.io_total_ns += d_sum
            ctx.io_max_ns = max(ctx.io_max_ns, d_max)
            ctx.io_bytes += a0 * 512
            if o == read:
                ctx.io_reads += count
            elif o == write:
                ctx.io_writes += count
        elif s == tcp:
            ctx.tcp += count
        elif s == net:
            ctx.net_count += count
            ctx.net_bytes += a1
    return ctx, n


#: Python lines named in a chain's timeline
CHAIN_PYTHON_LINES = 3


def _with_python_lines(c: CausalChain, reader: TraceReader, window: TimeWindow, pids: tuple[int, ...],
                       calls: int, python: bool = True) -> CausalChain:
    """The chain with, before its op's entry, the Python lines that made the op's calls (when the trace has
    Python frames; ``python``: False when the caller knows it has none): the op's stacks grouped by their
    innermost Python frame, exact counts."""
    if len(pids) > 1 or not c.cuda_op or not python:
        return c
    from dataclasses import replace

    try:
        lines = top_stacks(reader, op=c.cuda_op, pid=pids[0] if pids else 0, window=window,
                           limit=CHAIN_PYTHON_LINES, group="python_line")
    except Exception:  # noqa: BLE001 - an op the stack query cannot name: the chain as it is
        return c
    if not lines:
        return c
    entries = tuple(TimelineEntry("PYTHON", "python_line", f"{s.count} of {calls} {c.cuda_op} calls from "
                                  f"{s.python_line}") for s in lines)
    return replace(c, timeline=(*c.timeline[:-1], *entries, c.timeline[-1]))


def replay_chains(reader: TraceReader, window: TimeWindow = ALL, pids: tuple[int, ...] = ()
                  ) -> tuple[list[CausalChain], int]:
    """Chains recomputed from the events of the window; returns (chains, events analysed)."""
    ctx, n = _collect(reader, window, pids)
    python = has_python_frames(reader)  # else no stack has a Python line: no query per chain
    chains: list[CausalChain] = []
    for (s, o), ds in sorted(ctx.ops.items()):
        p50, p99 = nearest_rank(ds, 0.50), nearest_rank(ds, 0.99)
        if p50 <= 0 or len(ds) < MIN_OP_COUNT or p99 / p50 < TAIL_RATIO:
            continue
        c = _tail_chain(ctx, s, op_name(s, o), p50, p99)
        if c is not None:
            chains.append(_with_python_lines(c, reader, window, pids, len(ds), python))
    if ctx.oom:
        chains.append(CausalChain(
            "oom", "HIGH", f"OOM killer invoked ({ctx.oom} event(s)) during GPU work",
            "out-of-memory kill", f"The kernel OOM killer fired {ctx.oom} time(s) while the workload ran. ",
            ("Reduce host memory use or add RAM; check for leaks in data loading",),
            (TimelineEntry("HOST", "oom_kill", f"{ctx.oom} OOM kill(s)"), TimelineEntry("CUDA", "all",
                                                                                       "GPU work at risk"))))
    if ctx.tcp > 10:
        sev = "HIGH" if ctx.tcp > 100 else "MEDIUM"
        chains.append(CausalChain(
            f"tcp-retransmit-{sev.lower()}", sev, f"{ctx.tcp} TCP retransmits during GPU work",
            f"{ctx.tcp} TCP retransmits",
            f"{ctx.tcp} TCP retransmissions indicate network congestion or packet loss. ",
            ("Check network health: switch errors, NIC stats (ethtool -S), MTU mismatches",),
            (TimelineEntry("NET", "tcp_retransmit", f"{ctx.tcp} retransmits"),
             TimelineEntry("CUDA", "all", "GPU work at risk"))))
    chains += failure_chains(reader, window, pids, calls_per_source({k: len(v) for k, v in ctx.ops.items()}))
    # merge on the last timeline entry, keeping the strictly higher severity (upstream's replay merge)
    merged: dict[str, CausalChain] = {}
    for c in chains:
        last = c.timeline[-1]
        key = f"{last.layer}:{last.op}"
        if key not in merged or rank(c.severity) > rank(merged[key].severity):
            merged[key] = c
    return list(merged.values()), n


def failure_chains(reader: TraceReader, window: TimeWindow = ALL, pids: tuple[int, ...] = (),
                   calls: dict[int, int] | None = None) -> list[CausalChain]:
    """A HIGH chain per error code returned by CUDA runtime or driver calls in the window (most frequent
    first): "7 of 7 CUDA runtime calls returned cudaErrorInsufficientDriver (35): this process has no usable
    NVIDIA driver", with the failing ops in its timeline."""
    failures = find_failures(reader, window, pids, calls)
    out = []
    for source, code, count, ops in failures.by_code():
        layer = "DRIVER" if source == SOURCE_DRIVER else "CUDA"
        err = error_name(source, code) or f"error {code}"
        text = finding_text(failures, source, code, count)
        tl = [TimelineEntry(layer, e.op_name, f"{e.op_name}: {e.count} call(s) returned {e.label}")
              for e in ops[:MAX_FAILING_OPS]]
        if len(ops) > MAX_FAILING_OPS:
            rest = ops[MAX_FAILING_OPS:]
            tl.append(TimelineEntry(layer, "other", f"{len(rest)} more ops: {sum(e.count for e in rest)} call(s)"))
        tl.append(TimelineEntry(layer, err, text))
        total = failures.calls.get(source, count)
        expl = (f"{text}. Failing calls: {', '.join(f'{e.op_name} x{e.count}' for e in ops)}. "
                + (f"Every one of the {CALLS_OF[source]} recorded failed: no GPU work was done through them. "
                   if count == total else ""))
        if meaning(source, code):
            recs = ("Make an NVIDIA driver and GPU usable by this process (kernel module loaded, libcuda.so "
                    "and /dev/nvidia* visible in its container), or run it on a machine that has them",
                    "Check how the program handles the failure: a framework may fall back to the CPU silently")
        else:
            recs = (f"Find the code path of the failing calls (get_stacks op={ops[0].op_name})",
                    "Check the arguments and the state (device, stream, context) of the failing calls")
        out.append(CausalChain(f"cuda-error-{layer.lower()}-{code}", "HIGH", text, f"{err} returned by {count} "
                               f"of {total} {CALLS_OF[source]}", expl, recs, tuple(tl), err))
    return out


def with_failures(chains: list[CausalChain], reader: TraceReader, window: TimeWindow = ALL,
                  pids: tuple[int, ...] = ()) -> list[CausalChain]:
    """``chains`` plus the failure chains of the window that are not among them, sorted."""
    have = {(c.cuda_op, c.severity) for c in chains}
    return sort_chains(chains + [c for c in failure_chains(reader, window, pids)
                                 if (c.cuda_op, c.severity) not in have])


def _tail_chain(ctx: _Context, source: int, op: str, p50: int, p99: int) -> CausalChain | None:
    sev = "MEDIUM"
    causes: list[str] = []
    recs: list[str] = []
    tl: list[TimelineEntry] = []
    if ctx.cpu > 90:
        tl.append(TimelineEntry("SYSTEM", "cpu", f"CPU {ctx.cpu:.0f}%"))
        causes.append("high CPU utilization")
        sev = "HIGH"
    if ctx.mem > 95:
        tl.append(TimelineEntry("SYSTEM", "memory", f"Memory {ctx.mem:.0f}% ({ctx.mem_avail} MB available)"))
        causes.append("memory pressure")
        sev = "HIGH"
    if ctx.swap > 0:
        tl.append(TimelineEntry("SYSTEM", "swap", f"Swap {ctx.swap} MB in use"))
        causes.append("swap activity")
        sev = "HIGH"
        recs.append("Investigate memory consumers, consider adding RAM")
    if ctx.load > 10:
        tl.append(TimelineEntry("SYSTEM", "load", f"Load average {ctx.load:.1f}"))
        causes.append("high system load")
    if ctx.sched >= SCHED_THRESHOLD:
        off = round(ctx.off_cpu_ns / 1e6) * 1_000_000
        tl.append(TimelineEntry("HOST", "sched_switch",
                                f"{ctx.sched} context switches ({go_duration(off)} off-CPU)", off // 1000))
        causes.append(f"{ctx.sched} sched_switch events")
        recs += ["Pin training process to dedicated cores with taskset",
                 "Add nice -n 19 to background jobs (logrotate, cron)"]
    if ctx.alloc_bytes > PAGE_ALLOC_BYTES:
        tl.append(TimelineEntry("HOST", "mm_page_alloc",
                                f"{ctx.alloc_count} allocations ({ctx.alloc_bytes / 2**30:.1f} GB)"))
        causes.append("large host memory allocations")
        recs.append("Identify the process allocating host memory during GPU work")
    if ctx.io_count and (ctx.io_count >= 200 or ctx.io_total_ns >= 10**9 or ctx.io_max_ns >= p99 / 100):
        tl.append(TimelineEntry(
            "IO", "block_io",
            f"{ctx.io_count} I/O ops ({ctx.io_reads} reads, {ctx.io_writes} writes), "
            f"{go_duration(ctx.io_total_ns)}, {ctx.io_bytes / 1e6:.1f} MB, peak {go_duration(ctx.io_max_ns)}",
            ctx.io_total_ns // 1000))
        causes.append("heavy block I/O")
        if ctx.io_max_ns > 50_000_000 or ctx.io_total_ns > 2 * 10**9:
            sev = "HIGH"
        if ctx.io_max_ns > 20_000_000:
            recs.append(f"Block I/O peak latency {go_duration(ctx.io_max_ns)} suggests spinning disk or "
                        "network storage — NVMe SSD reduces this to <1ms")
        if ctx.io_writes > ctx.io_reads:
            recs.append("Write-heavy I/O during GPU work: check checkpoint saves, use async checkpointing "
                        "or a separate fast volume")
        elif ctx.io_reads > ctx.io_writes:
            recs.append("Read-heavy I/O during GPU work: DataLoader bottleneck — pre-load data to /dev/shm, "
                        "increase RAM for page cache, or use NVMe")
        else:
            recs.append("Check for checkpoint writes, model loads, or DataLoader disk reads during GPU work")
    if ctx.tcp > 5:
        tl.append(TimelineEntry("NET", "tcp_retransmit", f"{ctx.tcp} retransmits"))
        causes.append(f"{ctx.tcp} TCP retransmits")
        if ctx.tcp > 50:
            sev = "HIGH"
        recs.append("Check network health: switch errors, NIC stats (ethtool -S), MTU mismatches")
    if ctx.net_count > 100 and ctx.net_bytes > 1 << 20:
        tl.append(TimelineEntry("NET", "socket_io",
                                f"{ctx.net_count} socket ops ({ctx.net_bytes / 1e6:.1f} MB)"))
        causes.append("heavy network socket I/O")
        recs.append("Profile network calls — GPU may be idle waiting for HTTP/gRPC responses or NCCL "
                    "transfers")
    if not causes:
        return None
    ratio = p99 / p50
    layer = "DRIVER" if source == SOURCE_DRIVER else "CUDA"
    tl.append(TimelineEntry(layer, op, f"p99={go_duration(p99)} ({ratio:.1f}x p50={go_duration(p50)})",
                            p99 // 1000))
    root = " + ".join(causes)
    expl = f"{op} tail latency is {ratio:.1f}x higher than typical (p99={go_duration(p99)} vs " \
           f"p50={go_duration(p50)}). "
    if ctx.cpu > 90:
        expl += f"The system CPU is at {ctx.cpu:.0f}%, indicating heavy contention for CPU resources. "
    if ctx.swap > 0:
        expl += f"The system is using {ctx.swap} MB of swap, causing memory access latency spikes. "
    if ctx.io_count > 50 or ctx.io_total_ns > 500_000_000:
        expl += (f"Block I/O activity ({ctx.io_count} ops, {go_duration(ctx.io_total_ns)} total, "
                 f"{ctx.io_bytes / 1e6:.1f} MB) is concurrent with GPU stalls. ")
    if ctx.tcp > 5:
        expl += f"{ctx.tcp} TCP retransmissions indicate network congestion or packet loss. "
    for c in causes:
        if c.endswith("sched_switch events") or c in ("memory pressure", "high system load",
                                                      "large host memory allocations"):
            expl += f"Contributing factor: {c}. "
    summary = f"{op} p99={go_duration(p99)} ({ratio:.1f}x p50) — {root}"
    return CausalChain(f"tail-{sev.lower()}-{op}", sev, summary, root, expl, tuple(dict.fromkeys(recs)),
                       tuple(tl), op, round(ratio, 1))
