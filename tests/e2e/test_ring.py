"""RingReader on a real BPF ring buffer: every record read once, in order and whole, across hundreds of
wrap-arounds of its once-mapped data area (records that straddle its end included), and the mapping is
the size of the ring, not twice it."""

from __future__ import annotations

import mmap
import os
import struct

import pytest

from ingero.runtime.ring import RingReader

pytestmark = pytest.mark.bpf

# 40-byte payload + 8-byte header: 48-byte records, which do not divide the 4096-byte ring, so every
# 256th record straddles the end of the data area
PROG = r"""
struct rec { u64 seq; u64 a; u64 b; u64 c; u64 d; };
BPF_ARRAY(counter, u64, 1);
BPF_RINGBUF_OUTPUT(ring, 1);

TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    if ((bpf_get_current_pid_tgid() >> 32) != TGID)
        return 0;
    int zero = 0;
    u64 *c = counter.lookup(&zero);
    if (!c)
        return 0;
    u64 seq = __sync_fetch_and_add(c, 1);
    struct rec r = {.seq = seq, .a = seq * 3, .b = ~seq, .c = seq ^ 0x5555aaaa5555aaaaULL, .d = 0xfeedULL};
    ring.ringbuf_output(&r, sizeof(r), 0);
    return 0;
}
"""
RECORD = struct.Struct("<8xQQQQQ")
MASK = (1 << 64) - 1


def _expected(seq: int) -> tuple[int, ...]:
    return (seq, seq * 3 & MASK, ~seq & MASK, seq ^ 0x5555AAAA5555AAAA, 0xFEED)


def test_every_record_once_whole_across_wraps(need_bpf):
    from bcc import BPF

    bpf = BPF(text=PROG, cflags=[f"-DTGID={os.getpid()}"])
    try:
        ring = RingReader(bpf["ring"].map_fd, mmap.PAGESIZE, RECORD)
        with open("/proc/self/maps") as f:
            sizes = [int(hi, 16) - int(lo, 16) for lo, hi in
                     (line.split()[0].split("-") for line in f if "anon_inode:bpf-map" in line)]
        # the consumer page, then the producer page and the data area mapped once
        assert sorted(sizes) == [mmap.PAGESIZE, 2 * mmap.PAGESIZE]
        got: list[tuple] = []
        whole = 0
        for burst in range(600):
            for _ in range(1 + burst % 70):  # up to 70 records of 85 that fit: the ring never fills
                os.getppid()
            # now and then in two reads (a partial read must resume where it stopped)
            part = ring.read(max_records=5) if burst % 7 == 0 else []
            rest = ring.read()
            whole += ring.last_chunk is not None
            got += part + rest
        made = sum(1 + b % 70 for b in range(600))
        assert len(got) == made
        assert got == [_expected(s) for s in range(made)]
        assert made * RECORD.size // mmap.PAGESIZE > 200  # hundreds of wrap-arounds
        assert whole > 0 and ring.pending() == 0
        ring.close()
    finally:
        bpf.cleanup()


def test_a_ring_s_c_struct_is_checked_against_its_decoder_by_the_compiler(need_bpf):
    """record_checks: clang accepts a struct that is what the struct format decodes and refuses one that is
    not (a field one place off); the standard set's own rings carry such checks (its program compiles)."""
    import struct

    from bcc import BPF

    from ingero.runtime.ring import record_checks
    from ingero.tracer.standard import _record_checks

    c = "struct hold { u32 pid; u32 pad; u64 ts_ns; };\nint f(void *ctx) { return 0; }\n"
    BPF(text=c + record_checks("hold", struct.Struct("<8xI4xQ"), ("pid", "ts_ns"))).cleanup()
    with pytest.raises(Exception, match="Failed to compile BPF module"):
        BPF(text=c + record_checks("hold", struct.Struct("<8xIQ4x"), ("pid", "ts_ns")))
    checks = _record_checks()
    assert all(f"sizeof(struct {s})" in checks for s in ("cuda_event", "host_event", "lib_open_event", "hold_event"))
