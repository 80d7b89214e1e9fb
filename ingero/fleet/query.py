"""query_fleet: questions across every node's metrics, asked through Prometheus.

Actions (upstream's tool name, answered from Prometheus instead of a fan-out of SQL to each node):

* ``overview`` -- the nodes, their event rates, calls, errors, lost events, top ops, how to reach them;
* ``ops`` -- per-op p50/p99 per node (from the latency histograms: each value lies in the bucket shown);
* ``stragglers`` -- nodes whose p99 of an op exceeds ``k`` times the fleet median p99 of that op, and by how
  much;
* ``errors`` -- failing calls per node, op and CUDA error;
* ``promql`` -- any read-only PromQL query, bounded in time (a Prometheus timeout, a longest range, a
  coarsest step) and in output (series, points, characters).

``since`` empty means everything each node counted since its trace started (the cumulative counters, which
match the node's own database); a duration (``5m``) takes the exact counts of that last window instead
(:func:`_counter`: not ``increase()``, which loses a series' first sample and extrapolates). A
node is told apart by its ``node`` and ``rank`` labels; each answer says how to reach that node's own
``ingero mcp --live`` (the ``mcp`` label of ``ingero_node_info``) so an agent can go there and attach probes.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass

from ingero.errors import IngeroError, suggestion
from ingero.fleet.metrics import BUCKETS_S, CALL_DURATION, CALL_ERRORS, CALLS, LOST, NODE_INFO, TRACE_START
from ingero.fleet.prom import Prometheus, PromQLRefused

#: the counters' series names (a counter family ``x`` is exposed as ``x_total``)
CALLS_TOTAL, ERRORS_TOTAL, LOST_TOTAL = f"{CALLS}_total", f"{CALL_ERRORS}_total", f"{LOST}_total"

ACTIONS = ("overview", "ops", "stragglers", "errors", "promql")
#: the labels that tell two tracing processes apart
NODE_KEY = ("node", "rank")
DEFAULT_K = 2.0
#: a node's op needs this many calls before its p99 takes part in straggler detection (p99 of 10 calls is noise)
MIN_CALLS = 20
DEFAULT_LIMIT, MAX_LIMIT = 100, 1000
#: promql: the longest range, the most points per series, the most characters of an answer
MAX_RANGE_S = 24 * 3600
MAX_POINTS = 120
MAX_OUTPUT = 64 * 1024
MAX_QUERY = 4096
#: the longest value of each string argument (query_fleet's schema and `ingero fleet` both refuse longer)
ARG_CHARS = {"action": 16, "since": 64, "op": 128, "step": 64, "query": MAX_QUERY}
#: stragglers: the largest k (a p99 a thousand times the median's is already a dead node)
MAX_K = 1000.0


@dataclass(frozen=True)
class NodeOp:
    node: tuple[str, str]  # (node, rank)
    source: str
    op: str
    calls: int
    p50_s: float
    p99_s: float


@dataclass(frozen=True)
class Straggler:
    node: tuple[str, str]
    op: str
    p99_s: float
    median_p99_s: float
    factor: float
    nodes: int  # how many nodes the median is over


@dataclass(frozen=True)
class ErrorCount:
    node: tuple[str, str]
    source: str
    op: str
    error: str
    count: int
    calls: int


def _key(labels: dict[str, str]) -> tuple[str, str]:
    return tuple(labels.get(k, "") for k in NODE_KEY)  # type: ignore[return-value]


def _who(key: tuple[str, str]) -> str:
    return f"{key[0]} rank {key[1]}" if key[1] else key[0]


def fmt_s(v: float) -> str:
    if math.isnan(v):
        return "-"
    if math.isinf(v):
        return f">{BUCKETS_S[-1]:g}s"
    if v < 1e-3:
        return f"{v * 1e6:.3g}µs"
    if v < 1:
        return f"{v * 1e3:.3g}ms"
    return f"{v:.3g}s"


def bucket_of(v: float) -> str:
    """The histogram bucket a quantile read from it lies in: its error bound."""
    lo = 0.0
    for b in BUCKETS_S:
        if v <= b:
            return f"({fmt_s(lo) if lo else '0'},{fmt_s(b)}]"
        lo = b
    return f"({fmt_s(BUCKETS_S[-1])},+Inf)"


def _window(since: str) -> str:
    if not since:
        return ""
    from ingero.analysis.window import parse_duration_ns

    try:
        ns = parse_duration_ns(since)
    except IngeroError:
        raise IngeroError(f"since {since!r}: expected a duration such as 30s, 5m, 1h, or nothing for "
                          "everything since each trace started") from None
    if ns <= 0:
        return ""
    return f"{max(1, ns // 1_000_000_000)}s"


def _counter(metric: str, window: str, by: str, match: str = "") -> str:
    """PromQL for a counter's total per ``by``: since each trace started, or over the last ``window``.

    Over a window the count is exact, not ``increase()``'s extrapolation (which also loses a series' first
    sample): the last sample in the window minus the sample at its start (the last one scraped before it),
    and a series first scraped inside the window counted from 0 (a trace's counters start at 0). A node
    whose trace restarted inside the window (its start time changed, or a counter went back) is counted
    from that restart; the answers name such nodes (:meth:`FleetQuery.restarted`)."""
    sel = f"{metric}{{{match}}}" if match else metric
    if not window:
        return f"sum by ({by}) ({sel})"
    last = f"last_over_time({sel}[{window}])"
    return (f"sum by ({by}) ((({last} - {sel} offset {window}) unless (resets({sel}[{window}]) > 0) "
            f"unless on (node, rank) ({_restarts(window)} > 0)) or {last})")


def _restarts(window: str) -> str:
    """PromQL: per node, how often its trace started again within ``window``."""
    return f"max by (node, rank) (changes({TRACE_START}[{window}]))"


def _op_match(op: str) -> str:
    if not op:
        return ""
    if '"' in op or "\\" in op:
        raise IngeroError(f"op {op!r}: an op name has no quotes or backslashes")
    return f'op="{op}"'


class FleetQuery:
    """The actions over one Prometheus server (each returns typed rows; ``answer()`` formats text)."""

    def __init__(self, prom: Prometheus) -> None:
        self.prom = prom

    # -- typed ------------------------------------------------------------------------------------------
    def reach(self) -> dict[tuple[str, str], str]:
        """How to reach each node's own `ingero mcp --live` (its ingero_node_info's mcp label)."""
        return {_key(s.labels): s.labels.get("mcp", "") for s in self.prom.instant(f"max by (node, rank, mcp) "
                                                                                  f"({NODE_INFO})")}

    def node_ops(self, since: str = "", op: str = "") -> list[NodeOp]:
        w, m = _window(since), _op_match(op)
        by = "node, rank, source, op"
        counts = {(_key(s.labels), s.labels.get("source", ""), s.labels.get("op", "")): s.value
                  for s in self.prom.instant(_counter(f"{CALL_DURATION}_count", w, by, m))}
        q = {}
        for quant in (0.5, 0.99):
            buckets = _counter(f"{CALL_DURATION}_bucket", w, by + ", le", m)
            for s in self.prom.instant(f"histogram_quantile({quant}, {buckets})"):
                q[(_key(s.labels), s.labels.get("source", ""), s.labels.get("op", ""), quant)] = s.value
        return sorted((NodeOp(k[0], k[1], k[2], round(n), q.get((*k, 0.5), math.nan), q.get((*k, 0.99), math.nan))
                       for k, n in counts.items() if n > 0), key=lambda r: (r.op, r.node))

    def stragglers(self, since: str = "", op: str = "", k: float = DEFAULT_K,
                   min_calls: int = MIN_CALLS) -> tuple[list[Straggler], list[NodeOp]]:
        """Nodes whose p99 of an op exceeds k x the fleet median p99 of that op (and the rows compared)."""
        check_arguments(k=k)
        rows = [r for r in self.node_ops(since, op) if r.calls >= min_calls and r.p99_s > 0]
        by_op: dict[str, list[NodeOp]] = {}
        for r in rows:
            by_op.setdefault(r.op, []).append(r)
        out = []
        for name, rs in by_op.items():
            if len(rs) < 2:
                continue
            med = statistics.median(r.p99_s for r in rs)
            out += [Straggler(r.node, name, r.p99_s, med, r.p99_s / med, len(rs)) for r in rs
                    if med > 0 and r.p99_s > k * med]
        return sorted(out, key=lambda s: -s.factor), rows

    def errors(self, since: str = "", op: str = "") -> list[ErrorCount]:
        w, m = _window(since), _op_match(op)
        calls = {(_key(s.labels), s.labels.get("op", "")): s.value
                 for s in self.prom.instant(_counter(CALLS_TOTAL, w, "node, rank, op", m))}
        return sorted((ErrorCount(_key(s.labels), s.labels.get("source", ""), s.labels.get("op", ""),
                                  s.labels.get("error", ""), round(s.value),
                                  round(calls.get((_key(s.labels), s.labels.get("op", "")), 0)))
                       for s in self.prom.instant(_counter(ERRORS_TOTAL, w, "node, rank, source, op, error", m))
                       if s.value > 0), key=lambda e: (-e.count, e.node, e.op))

    # -- text -------------------------------------------------------------------------------------------
    def answer(self, action: str, *, since: str = "", op: str = "", k: float = DEFAULT_K, query: str = "",
               step: str = "", limit: int = 0) -> str:
        """The compact text answer of one action (what query_fleet and `ingero fleet` print)."""
        check_arguments(action=action, since=since, op=op, k=k, query=query, step=step, limit=limit)
        action = (action or "").strip().lower()
        if action not in ACTIONS:
            hint = suggestion(action, ACTIONS)
            raise IngeroError(f"unknown action {action!r}: use {', '.join(ACTIONS)}", hint)
        lim = DEFAULT_LIMIT if limit <= 0 else limit
        if action == "promql":
            return promql(self.prom, query, since=since, step=step, limit=lim)
        if query:
            raise IngeroError(f"query is for action promql, not {action}")
        text = getattr(self, f"_{action}_text")(since=since, op=op, k=k, limit=lim)
        return _cap(text)

    def restarted(self, since: str) -> list[tuple[str, str]]:
        """Nodes whose trace restarted (a counter went back) within the last ``since``."""
        w = _window(since)
        if not w:
            return []
        found: set[tuple[str, str]] = set()
        for q in (_restarts(w), f"max by (node, rank) (resets({CALLS_TOTAL}[{w}]))"):
            found |= {_key(s.labels) for s in self.prom.instant(q) if s.value > 0}
        return sorted(found)

    def _scope(self, since: str) -> str:
        if not _window(since):
            return "since each node's trace started"
        again = self.restarted(since)
        note = f"; counted from its restart: {', '.join(map(_who, again))}" if again else ""
        return (f"last {since}: exact counts between the last scrape before the window and the last in it, "
                f"a series first scraped inside it counted from 0{note}")

    def _reach_lines(self, keys) -> list[str]:
        reach = self.reach()
        return [f"reach {_who(key)}: {reach.get(key) or '(no ingero_node_info: reach unknown)'}"
                for key in dict.fromkeys(keys)]

    def _overview_text(self, since: str, op: str, k: float, limit: int) -> str:
        w = _window(since) or "1m"
        m = _op_match(op)
        totals = {}
        for name, q in (("calls", _counter(CALLS_TOTAL, _window(since), "node, rank, job", m)),
                        ("rate", f"sum by (node, rank, job) (rate({CALLS_TOTAL}{{{m}}}[{w}]))" if m else
                         f"sum by (node, rank, job) (rate({CALLS_TOTAL}[{w}]))"),
                        ("errors", _counter(ERRORS_TOTAL, _window(since), "node, rank, job", m)),
                        ("lost", _counter(LOST_TOTAL, _window(since), "node, rank, job"))):
            for s in self.prom.instant(q):
                totals.setdefault(_key(s.labels), {"job": s.labels.get("job", "")})[name] = s.value
        top: dict[tuple[str, str], list[tuple[float, str]]] = {}
        for s in self.prom.instant(_counter(CALLS_TOTAL, _window(since), "node, rank, op", m)):
            top.setdefault(_key(s.labels), []).append((s.value, s.labels.get("op", "")))
        reach = self.reach()
        keys = sorted(set(totals) | set(reach))
        lines = [f"fleet: {len(keys)} node(s) ({self._scope(since)}; rate over the last {w}; Prometheus "
                 f"{self.prom.url})", "node|rank|job|events|events/s|errors|lost|top ops|mcp"]
        for key in keys[:limit]:
            t = totals.get(key, {})
            ops = ", ".join(f"{o} {round(n)}" for n, o in sorted(top.get(key, []), reverse=True)[:4])
            lines.append(f"{key[0]}|{key[1]}|{t.get('job', '')}|{round(t.get('calls', 0))}|"
                         f"{t.get('rate', 0):.1f}|{round(t.get('errors', 0))}|{round(t.get('lost', 0))}|{ops}|"
                         f"{reach.get(key, '')}")
        return _more(lines, len(keys), limit)

    def _ops_text(self, since: str, op: str, k: float, limit: int) -> str:
        rows = self.node_ops(since, op)
        lines = [f"per-op latency per node ({self._scope(since)}; p50/p99 from histograms, each within the "
                 "bucket shown)", "op|node|rank|calls|p50|p99|p99 bucket"]
        lines += [f"{r.op}|{r.node[0]}|{r.node[1]}|{r.calls}|{fmt_s(r.p50_s)}|{fmt_s(r.p99_s)}|{bucket_of(r.p99_s)}"
                  for r in rows[:limit]]
        if not rows and _window(since):
            lines.append(f"no CUDA calls in the last {since}" + (f" for op {op}" if op else ""))
        elif not rows:
            lines.append("no CUDA calls in the fleet's metrics" + (f" for op {op}" if op else "") +
                         " (is Prometheus scraping the nodes' --metrics? see docs/fleet.md)")
        text = _more(lines, len(rows), limit)
        return text + "\n" + "\n".join(self._reach_lines(r.node for r in rows[:limit]))

    def _stragglers_text(self, since: str, op: str, k: float, limit: int) -> str:
        found, rows = self.stragglers(since, op, k)
        nodes = len({r.node for r in rows})
        head = (f"stragglers: p99 > {k:g}x the fleet median p99 of the op ({self._scope(since)}; {nodes} node(s), "
                f"ops with >= {MIN_CALLS} calls)")
        if not found:
            return head + "\nnone: every node's p99 is within " + f"{k:g}x the fleet median of each op"
        lines = [head, "node|rank|op|p99|fleet median p99|factor|nodes compared|p99 bucket"]
        lines += [f"{s.node[0]}|{s.node[1]}|{s.op}|{fmt_s(s.p99_s)}|{fmt_s(s.median_p99_s)}|{s.factor:.2f}x|"
                  f"{s.nodes}|{bucket_of(s.p99_s)}" for s in found[:limit]]
        text = _more(lines, len(found), limit)
        return (text + "\n" + "\n".join(self._reach_lines(s.node for s in found[:limit])) +
                "\nnext: on that node, get_trace_stats / get_causal_chains, then attach a probe (attach_probe)")

    def _errors_text(self, since: str, op: str, k: float, limit: int) -> str:
        rows = self.errors(since, op)
        if not rows:
            return f"no failing calls ({self._scope(since)})"
        lines = [f"failing calls ({self._scope(since)}): {sum(r.count for r in rows)} in "
                 f"{len({r.node for r in rows})} node(s)", "node|rank|source|op|error|failed|of calls"]
        lines += [f"{r.node[0]}|{r.node[1]}|{r.source}|{r.op}|{r.error}|{r.count}|{r.calls}" for r in rows[:limit]]
        text = _more(lines, len(rows), limit)
        return text + "\n" + "\n".join(self._reach_lines(r.node for r in rows[:limit]))


def check_arguments(*, k: float = DEFAULT_K, limit: int = 0, **strings: str) -> None:
    """Refuse an argument over its bound, naming it and the bound (before anything is asked)."""
    for name, value in strings.items():
        if value and len(value) > ARG_CHARS[name]:
            raise IngeroError(f"{name} is {len(value)} characters, more than the {ARG_CHARS[name]} accepted")
    if not 0 <= limit <= MAX_LIMIT:
        raise IngeroError(f"limit {limit}: must be between 1 and {MAX_LIMIT} (0 for the default {DEFAULT_LIMIT})")
    if not (k > 1 and k <= MAX_K):  # NaN fails both
        raise IngeroError(f"k {k:g}: a straggler is k times slower than the fleet median; k must be > 1 and "
                          f"at most {MAX_K:g}")


def promql(prom: Prometheus, query: str, *, since: str = "", step: str = "", limit: int = DEFAULT_LIMIT) -> str:
    """A read-only PromQL query: instant (now), or over the last ``since`` every ``step`` -- bounded."""
    q = (query or "").strip()
    if not q:
        raise IngeroError("query is required for action promql", "e.g. sum by (node) (rate(ingero_calls_total[1m]))")
    check_arguments(query=query, since=since, step=step, limit=limit)
    try:
        if not since:
            if step:
                raise IngeroError("step needs since (the range to evaluate over)")
            samples = prom.instant(q)
            lines = [f"{_labels(s.labels)} {s.value:g}" for s in samples[:limit]]
            return _cap(_more([f"instant query: {len(samples)} series", *lines], len(samples), limit))
        return _range(prom, q, since, step, limit)
    except PromQLRefused as e:
        raise PromQLRefused(f"not a PromQL query Prometheus accepts: {e.message}",
                            "only PromQL expressions are run (read-only); see https://prometheus.io/docs/prometheus/"
                            "latest/querying/basics/") from None


def _range(prom: Prometheus, q: str, since: str, step: str, limit: int) -> str:
    from ingero.analysis.window import parse_duration_ns

    span = parse_duration_ns(since) / 1e9
    if span <= 0 or span > MAX_RANGE_S:
        raise IngeroError(f"since {since!r}: the range must be positive and at most {MAX_RANGE_S // 3600} h")
    step_s = parse_duration_ns(step) / 1e9 if step else 0.0
    coarse = span / MAX_POINTS
    note = ""
    if step_s < coarse:
        if step_s:
            note = f" (step raised from {step} to {coarse:g}s: at most {MAX_POINTS} points per series)"
        step_s = max(coarse, 1.0)
    end = time.time()
    series = prom.range(q, end - span, end, step_s)
    lines = [f"range query over the last {since}, step {step_s:g}s{note}: {len(series)} series"]
    for s in series[:limit]:
        pts = " ".join(f"{t - end:+.0f}s={v:g}" for t, v in s.points)
        lines.append(f"{_labels(s.labels)} {pts}")
    return _cap(_more(lines, len(series), limit))


def _labels(labels: dict[str, str]) -> str:
    name = labels.get("__name__", "")
    rest = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "__name__")
    return f"{name}{{{rest}}}" if rest or not name else name


def _more(lines: list[str], total: int, limit: int) -> str:
    if total > limit:
        lines.append(f"... {total - limit} more (raise limit, max {MAX_LIMIT}, or narrow with op/since)")
    return "\n".join(lines)


def _cap(text: str) -> str:
    if len(text) <= MAX_OUTPUT:
        return text
    cut = text[:MAX_OUTPUT].rsplit("\n", 1)[0]
    return cut + f"\n... output cut at {MAX_OUTPUT} characters (narrow the query or lower limit)"
