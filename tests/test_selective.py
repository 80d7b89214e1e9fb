"""Upstream's selective storage rules, one by one."""

from __future__ import annotations

from ingero.tracer.selective import MINUTE_NS, SelectiveStorage

S = 1_000_000_000


def after_warmup() -> SelectiveStorage:
    sel = SelectiveStorage(warmup_s=10, stack_samples=3)
    assert sel.decide(0, 3, 5, 1, 0, 0)  # process_exec at t=0 starts the session
    return sel


def test_page_allocations_are_never_stored_but_always_counted():
    sel = SelectiveStorage()
    assert not sel.decide(1, 3, 3, 7, 0, 4096)
    [agg] = sel.take_aggregates()
    assert (agg.source, agg.op, agg.pid, agg.count, agg.stored, agg.sum_arg0) == (3, 3, 7, 1, 0, 4096)


def test_warmup_stores_everything_else():
    sel = after_warmup()
    assert sel.decide(5 * S, 1, 1, 7, 1000, 1 << 20)
    assert not sel.decide(11 * S, 1, 1, 7, 1000, 1 << 20)  # a plain cudaMalloc after the warm-up


def test_lifecycle_sync_and_slow_io_are_stored_after_warmup():
    sel = after_warmup()
    t = 20 * S
    assert sel.decide(t, 3, 7, 7, 0, 0)  # process_fork
    assert sel.decide(t, 1, 5, 7, 100, 0)  # cudaStreamSynchronize
    assert sel.decide(t, 4, 4, 7, 100, 0)  # cuCtxSynchronize
    assert sel.decide(t, 5, 1, 7, 20_000_000, 8)  # a 20 ms block read
    assert not sel.decide(t, 5, 1, 7, 1_000_000, 8)  # a 1 ms one


def test_sched_switch_only_for_processes_that_called_cuda():
    sel = after_warmup()
    t = 20 * S
    assert not sel.decide(t, 3, 1, 8, 5000, 0)
    sel.decide(t, 1, 3, 8, 10, 0x1234)
    assert sel.decide(t, 3, 1, 8, 5000, 0)


def test_anomalies_are_stored_and_bypass_the_stack_sample_limit():
    sel = after_warmup()
    t = 20 * S
    for _ in range(50):
        assert not sel.decide(t, 1, 3, 9, 1000, 0x1, stack_hash=42)
    assert sel.decide(t, 1, 3, 9, 5000, 0x1, stack_hash=42)  # > 3x the median of the last calls


def test_stack_sample_limit():
    sel = SelectiveStorage(warmup_s=1000, stack_samples=3)
    stored = [sel.decide(i, 1, 1, 9, 1000, 64, stack_hash=7) for i in range(5)]
    assert stored == [True, True, True, False, False]


def test_buckets_are_per_minute_op_and_pid_and_skip_pointer_sums():
    sel = SelectiveStorage()
    sel.decide(0, 1, 3, 1, 10, 0x7F0000001234)  # cudaLaunchKernel: arg0 is a function pointer
    sel.decide(MINUTE_NS + 5, 1, 3, 1, 30, 0x7F0000001234)
    sel.decide(MINUTE_NS + 6, 1, 3, 1, 20, 0x7F0000001234)
    aggs = sorted(sel.take_aggregates(), key=lambda a: a.bucket)
    assert [(a.bucket, a.count, a.sum_dur, a.min_dur, a.max_dur, a.sum_arg0) for a in aggs] == [
        (0, 1, 10, 10, 10, 0), (MINUTE_NS, 2, 50, 20, 30, 0)]
    assert sel.take_aggregates() == []
