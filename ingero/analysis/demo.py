"""Upstream's six synthetic demo scenarios, generated as events and analysed for real.

Each scenario's events (pid 12345, upstream's shapes and durations) are written by the store's own
:class:`~ingero.store.EventWriter` into a database of a temporary folder, so the demo's database is
upstream's schema written the one way every trace is; ``run_scenario`` then runs the same stats and
causal-chain analysis as a stored trace gets. No GPU, no root and no sleeping: timestamps are synthetic.
"""

from __future__ import annotations

import random
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ingero.analysis.chains import ChainsResult, causal_chains
from ingero.analysis.stats import TraceStats, trace_stats
from ingero.errors import IngeroError, suggestion
from ingero.store.reader import TraceReader
from ingero.store.records import Event, SessionInfo, SystemSnapshot
from ingero.store.writer import EventWriter

PID = 12345
T0 = 1_774_000_000_000_000_000  # a fixed start time keeps outputs reproducible
NODE = "demo"  # event ids are demo:1, demo:2, ...
US, MS = 1_000, 1_000_000


class _Gen:
    """Appends events at a moving synthetic clock."""

    def __init__(self) -> None:
        self.t = T0
        self.events: list[Event] = []
        self.snaps: list[SystemSnapshot] = []
        self.rng = random.Random(42)

    def ev(self, source: int, op: int, dur: int, pid: int = PID, arg0: int = 0, arg1: int = 0) -> None:
        self.events.append(Event(self.t, pid, pid, source, op, dur, arg0=arg0, arg1=arg1))
        self.t += dur + 5 * US

    def jitter(self, ns: int, pct: float = 0.1) -> int:
        return max(1, int(ns * (1 + self.rng.uniform(-pct, pct))))

    def snap(self, cpu: float, mem: float = 40.0, load: float = 2.0) -> None:
        self.snaps.append(SystemSnapshot(self.t, cpu, mem, 16000, 0, load))


def _incident(g: _Gen) -> None:
    def normal(n: int) -> None:
        for i in range(n):
            g.ev(1, 3, g.jitter(14 * US))
            g.ev(1, 4, g.jitter(800 * US), arg0=4 << 20, arg1=1)
            g.ev(1, 5, g.jitter(16 * MS))
            if i % 20 == 0:
                g.ev(1, 1, g.jitter(300 * US), arg0=64 << 20)
            if i % 10 == 0:
                g.snap(35.0)
    normal(100)
    for i in range(50):
        for _ in range(17):
            g.ev(3, 1, g.jitter(2100 * US), arg1=8821)
        g.ev(1, 3, g.jitter(45 * US))
        g.ev(1, 4, g.jitter(3 * MS), arg0=4 << 20, arg1=1)
        g.ev(1, 5, g.jitter(142 * MS))
        if i % 5 == 0:
            g.ev(3, 3, 0, arg0=4 << 20)
        if i % 5 == 0:
            g.snap(97.0, load=14.0)
    normal(50)


def _cold_start(g: _Gen) -> None:
    for i in range(100):
        slow = 200 - i * 30 if i < 6 else 1  # first calls 200x .. 50x slower
        factor = max(slow, 50) if i < 6 else 1
        g.ev(1, 1, g.jitter(100 * US * factor), arg0=16 << 20)
        g.ev(1, 3, g.jitter(10 * US * factor))
        g.ev(1, 5, g.jitter(2 * MS))


def _cpu_contention(g: _Gen) -> None:
    for _ in range(100):
        g.ev(1, 3, g.jitter(12 * US))
        g.ev(1, 5, g.jitter(600 * US))
    g.snap(40.0)
    for i in range(100):
        g.ev(3, 1, g.jitter(5 * MS), arg1=8821)
        g.ev(1, 3, g.jitter(12 * US))
        g.ev(1, 5, g.jitter(2 * MS if i % 2 else 600 * US))
        if i % 10 == 0:
            g.snap(96.0, load=12.0)


def _gpu_steal(g: _Gen) -> None:
    other = PID + 1
    for _ in range(100):
        g.ev(1, 3, g.jitter(12 * US))
        g.ev(1, 5, g.jitter(1 * MS))
    for _ in range(100):
        g.ev(1, 3, g.jitter(12 * US), pid=other)
        g.ev(1, 3, g.jitter(12 * US))
        g.ev(3, 1, g.jitter(1 * MS), arg1=other)
        g.ev(1, 5, g.jitter(1 * MS), pid=other)
        g.ev(1, 5, g.jitter(4 * MS))  # time-sliced with the other process: 4x longer waits
    g.snap(50.0)


def _memcpy_bottleneck(g: _Gen) -> None:
    for _ in range(50):
        g.ev(1, 4, g.jitter(5 * MS), arg0=64 << 20, arg1=1)
        g.ev(1, 3, g.jitter(20 * US))
        g.ev(1, 3, g.jitter(20 * US))
        g.ev(1, 5, g.jitter(300 * US))


def _periodic_spike(g: _Gen) -> None:
    for i in range(100):
        g.ev(1, 1, g.jitter(2500 * US if i % 10 == 9 else 50 * US), arg0=8 << 20)
        g.ev(1, 3, g.jitter(15 * US))
        g.ev(1, 3, g.jitter(15 * US))
        g.ev(1, 5, g.jitter(500 * US))


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    insight: str
    generate: Callable[[_Gen], None]
    aliases: tuple[str, ...] = ()


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("incident", "Full causal chain: CPU spike + sched_switch storm -> cudaStreamSync tail latency",
             "cudaStreamSync p99 jumps from ~16ms to ~142ms while a background process preempts the "
             "training thread 850 times: CPU contention, not the GPU, causes the stall.", _incident),
    Scenario("cold-start", "CUDA context and module loading make the first calls 50-200x slower",
             "The first cudaMalloc/cudaLaunchKernel calls pay for context creation and module loading; "
             "warm up before measuring or serving.", _cold_start),
    Scenario("cpu-contention", "Host CPU contention (5ms preemptions) inflates cudaStreamSync latency",
             "Each preemption of the launching thread delays the next sync: pin the process to "
             "dedicated cores and nice background jobs.", _cpu_contention),
    Scenario("gpu-steal", "Two processes time-slice one GPU: syncs wait for the other process's kernels",
             "cudaStreamSync waits grow ~4x once a second process shares the GPU: isolate it (MIG, "
             "MPS, or a dedicated device).", _gpu_steal, ("gpu-contention", "contention")),
    Scenario("memcpy-bottleneck", "Synchronous cudaMemcpy dominates GPU time",
             "cudaMemcpy takes most of the wall time: use pinned memory, cudaMemcpyAsync and overlap "
             "copies with compute.", _memcpy_bottleneck),
    Scenario("periodic-spike", "cudaMalloc spikes to 2.5ms every ~10 allocations",
             "Periodic cudaMalloc spikes mean the caching allocator keeps growing: pre-allocate or "
             "raise the allocator's cache.", _periodic_spike),
)


def find_scenario(name: str) -> Scenario:
    key = (name or "").strip().lower()
    for s in SCENARIOS:
        if key == s.name or key in s.aliases:
            return s
    names = sorted(s.name for s in SCENARIOS)
    raise IngeroError(f'Unknown scenario "{name}". Available: {", ".join(names)}', suggestion(key, names))


@dataclass(frozen=True)
class DemoResult:
    scenario: Scenario
    stats: TraceStats
    chains: ChainsResult
    events: int


def generate(scenario: Scenario) -> _Gen:
    """The scenario's events and snapshots, in the order they happen (epoch ns timestamps)."""
    g = _Gen()
    scenario.generate(g)
    return g


@contextmanager
def scenario_db(scenario: Scenario) -> Iterator[TraceReader]:
    """The scenario written by the store's writer into a database of a temporary folder (removed on
    exit), open for reading."""
    g = generate(scenario)
    with tempfile.TemporaryDirectory(prefix="ingero-demo-") as tmp:
        path = Path(tmp) / f"{scenario.name}.db"
        with EventWriter(path, node=NODE, session=SessionInfo(command=f"ingero demo scenario {scenario.name}",
                                                               flags="synthetic")) as w:
            for snap in g.snaps:
                w.add_snapshot(snap)
            w.add_events(g.events, epoch=True)
        with TraceReader.open(path) as reader:
            yield reader


def run_scenario(name: str) -> DemoResult:
    scenario = find_scenario(name)
    with scenario_db(scenario) as reader:
        return DemoResult(scenario, trace_stats(reader), causal_chains(reader, top_n=0), reader.count("events"))
