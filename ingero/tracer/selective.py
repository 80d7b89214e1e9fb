"""Upstream Ingero's selective storage, as an option (``ingero trace --selective``).

By default ingero stores every event. With selective storage, as upstream does, every event is counted
in per-minute ``event_aggregates`` buckets (count, stored, duration sum/min/max, arg0 sum), and only some
get an ``events`` row; a failing call (ret_code != 0) always gets one (ingero's addition: failures are
findings), else the first rule that matches decides (upstream's ``shouldStore``):

1. ``mm_page_alloc``: never (aggregates only);
2. a call stack already stored ``stack_samples`` times, unless the event is an anomaly: no;
3. the first ``warmup_s`` seconds of the session: yes;
4. process exec/exit/fork, thread create/exit and OOM kills: yes; ``sched_switch`` only for processes
   that made CUDA calls;
5. stream, device and context synchronisations: yes;
6. block I/O slower than 10 ms: yes;
7. an anomaly (slower than 3x the op's median over its last 1000 calls): yes;
8. anything else: aggregates only.

``get_trace_stats`` then reports ``total`` from the aggregates next to the stored count.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field

from ingero.store.schema import POINTER_ARG0_OPS as POINTER_ARG0  # sum_arg0 is meaningless there
from ingero.store.schema import SOURCE_CUDA, SOURCE_DRIVER, SOURCE_HOST, SOURCE_IO

MINUTE_NS = 60_000_000_000
SYNC_OPS = {(SOURCE_CUDA, 5), (SOURCE_CUDA, 6), (SOURCE_DRIVER, 4)}
LIFECYCLE = {4, 5, 6, 7, 40, 41}  # oom_kill, process_exec, process_exit, process_fork, thread_create/exit
IO_STORE_NS = 10_000_000
ANOMALY_RATIO = 3
WINDOW = 1000


@dataclass
class _Bucket:
    count: int = 0
    stored: int = 0
    sum_dur: int = 0
    min_dur: int = 0
    max_dur: int = 0
    sum_arg0: int = 0


@dataclass
class _Recent:
    """The last WINDOW durations of an op, kept sorted for the median."""

    order: deque = field(default_factory=deque)
    sorted: list = field(default_factory=list)

    def add(self, d: int) -> None:
        self.order.append(d)
        bisect.insort(self.sorted, d)
        if len(self.order) > WINDOW:
            old = self.order.popleft()
            del self.sorted[bisect.bisect_left(self.sorted, old)]

    def median(self) -> int:
        s = self.sorted
        return s[(len(s) - 1) // 2] if s else 0


class SelectiveStorage:
    def __init__(self, *, warmup_s: float = 10.0, stack_samples: int = 100) -> None:
        self.warmup_ns = int(warmup_s * 1e9)
        self.stack_samples = stack_samples
        self._start: int | None = None
        self._recent: dict[tuple[int, int], _Recent] = {}
        self._stack_seen: dict[int, int] = {}
        self._cuda_pids: set[int] = set()
        self._buckets: dict[tuple[int, int, int, int], _Bucket] = {}

    def decide(self, ts_epoch: int, source: int, op: int, pid: int, duration: int, arg0: int,
               stack_hash: int = 0, ret: int = 0) -> bool:
        """Count the event in its bucket and say whether it gets an ``events`` row (a failing call always
        does: failures are findings)."""
        if self._start is None:
            self._start = ts_epoch
        key = (source, op)
        if source in (SOURCE_CUDA, SOURCE_DRIVER):
            self._cuda_pids.add(pid)
        recent = self._recent.get(key)
        if recent is None:
            recent = self._recent[key] = _Recent()
        p50 = recent.median()
        anomaly = duration > 0 and p50 > 0 and len(recent.sorted) >= 10 and duration > ANOMALY_RATIO * p50
        if duration > 0:
            recent.add(duration)
        store = ret != 0 or self._rule(ts_epoch, source, op, pid, duration, stack_hash, anomaly)
        if store and stack_hash:
            self._stack_seen[stack_hash] = self._stack_seen.get(stack_hash, 0) + 1
        b_key = (ts_epoch - ts_epoch % MINUTE_NS, source, op, pid)
        b = self._buckets.get(b_key)
        if b is None:
            b = self._buckets[b_key] = _Bucket(min_dur=duration)
        b.count += 1
        b.stored += int(store)
        b.sum_dur += duration
        b.min_dur = min(b.min_dur, duration)
        b.max_dur = max(b.max_dur, duration)
        if key not in POINTER_ARG0 and arg0 < 1 << 48:  # sizes and counts, not addresses
            b.sum_arg0 += arg0
        return store

    def _rule(self, ts: int, source: int, op: int, pid: int, duration: int, stack_hash: int,
              anomaly: bool) -> bool:
        if source == SOURCE_HOST and op == 3:
            return False
        if stack_hash and self._stack_seen.get(stack_hash, 0) >= self.stack_samples and not anomaly:
            return False
        if ts - self._start < self.warmup_ns:
            return True
        if source == SOURCE_HOST:
            if op in LIFECYCLE:
                return True
            if op == 1:
                return pid in self._cuda_pids
        if (source, op) in SYNC_OPS:
            return True
        if source == SOURCE_IO and duration > IO_STORE_NS:
            return True
        return anomaly

    def take_aggregates(self) -> list:
        """The buckets counted since the last call (the writer adds them to what is stored)."""
        from ingero.store.records import Aggregate

        out = [Aggregate(bucket, s, o, pid, b.count, b.stored, b.sum_dur, b.min_dur, b.max_dur, b.sum_arg0)
               for (bucket, s, o, pid), b in self._buckets.items()]
        self._buckets = {}
        return out
