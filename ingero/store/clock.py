"""Kernel monotonic time to Unix epoch nanoseconds, as upstream stores timestamps.

BPF programs stamp events with ``bpf_ktime_get_ns()``, which is ``CLOCK_MONOTONIC``. The database holds
Unix epoch nanoseconds (upstream's ``events.KtimeToWallClock``: one wall offset computed at start).
:meth:`EpochClock.measure` reads (monotonic, realtime, monotonic) triples and keeps the one whose two
monotonic reads are closest: its realtime read sits within half that gap of their midpoint, so the offset
is known to ``uncertainty_ns``. The offset is fixed for the whole trace, as upstream's is; a wall-clock
step during the trace (NTP) shifts nothing already recorded and nothing after.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

#: the clock bpf_ktime_get_ns() reads
KERNEL_CLOCK = time.CLOCK_MONOTONIC


@dataclass(frozen=True)
class EpochClock:
    """``epoch_ns = ktime_ns + offset_ns``; the offset is known to within ``uncertainty_ns``."""

    offset_ns: int
    uncertainty_ns: int = 0

    @classmethod
    def measure(cls, samples: int = 9) -> EpochClock:
        """The best of ``samples`` clock_gettime pairs (the one with the smallest monotonic gap)."""
        best: tuple[int, int] | None = None
        mono = time.clock_gettime_ns
        for _ in range(max(1, samples)):
            m1 = mono(KERNEL_CLOCK)
            wall = time.time_ns()
            m2 = mono(KERNEL_CLOCK)
            gap = m2 - m1
            if best is None or gap < best[0]:
                best = (gap, wall - (m1 + gap // 2))
        assert best is not None
        return cls(best[1], (best[0] + 1) // 2)

    @classmethod
    def identity(cls) -> EpochClock:
        """No conversion: for callers whose timestamps already are epoch nanoseconds."""
        return cls(0, 0)

    def to_epoch(self, ktime_ns: int) -> int:
        return ktime_ns + self.offset_ns

    def to_ktime(self, epoch_ns: int) -> int:
        return epoch_ns - self.offset_ns


def ktime_now() -> int:
    """The kernel's ``bpf_ktime_get_ns()`` clock, read from user space."""
    return time.clock_gettime_ns(KERNEL_CLOCK)
