"""The first end-to-end test: real uprobe_multi links (entry + return) on the real CUDA runtime.

Attach to cudaMalloc in the nvidia-cuda-runtime-cu12 wheel's libcudart.so.12, run the bundled workload,
and check the exact calls, sizes and return codes the kernel saw; then check nothing stays attached.
"""

from __future__ import annotations

import ctypes as ct
import json
import os
import subprocess

import pytest

from ingero import workload
from ingero.runtime.links import BPF_TRACE_UPROBE_MULTI, attach_uprobe_multi
from ingero.symbols import read_symbols
from tests.helpers import Workload

pytestmark = pytest.mark.bpf

PROG = r"""
#include <uapi/linux/ptrace.h>
struct start_t { u64 ts; u64 size; };
struct event_t { u32 pid; u32 tid; u64 cookie; u64 size; s64 retval; u64 latency_ns; };
BPF_HASH(starts, u64, struct start_t, 10240);
BPF_RINGBUF_OUTPUT(events, 16);

int on_entry(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    struct start_t s = {.ts = bpf_ktime_get_ns(), .size = PT_REGS_PARM2(ctx)};
    starts.update(&id, &s);
    return 0;
}

int on_return(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    struct start_t *s = starts.lookup(&id);
    if (!s) return 0;
    struct event_t *e = events.ringbuf_reserve(sizeof(*e));
    if (e) {
        e->pid = id >> 32; e->tid = (u32)id; e->cookie = bpf_get_attach_cookie(ctx);
        e->size = s->size; e->retval = (int)PT_REGS_RC(ctx);
        e->latency_ns = bpf_ktime_get_ns() - s->ts;
        events.ringbuf_submit(e, 0);
    }
    starts.delete(&id);
    return 0;
}
"""


class Event(ct.Structure):
    _fields_ = [
        ("pid", ct.c_uint32), ("tid", ct.c_uint32), ("cookie", ct.c_uint64), ("size", ct.c_uint64),
        ("retval", ct.c_int64), ("latency_ns", ct.c_uint64),
    ]


def prog_id(fd: int) -> int:
    with open(f"/proc/self/fdinfo/{fd}") as f:
        return int(next(line.split()[1] for line in f if line.startswith("prog_id:")))


def links_of_prog(pid_of_prog: int) -> list[dict]:
    out = subprocess.run(["bpftool", "-j", "link", "list"], capture_output=True, text=True, check=True)
    return [link for link in json.loads(out.stdout or "[]") if link.get("prog_id") == pid_of_prog]


def own_uprobe_multi_fds() -> list[str]:
    found = []
    for fd in os.listdir("/proc/self/fdinfo"):
        try:
            with open(f"/proc/self/fdinfo/{fd}") as f:
                if "link_type:\tuprobe_multi" in f.read():
                    found.append(fd)
        except OSError:
            pass
    return found


def test_cudamalloc_entry_and_return_exact(need_bpf, cudart12):
    from bcc import BPF

    sym = read_symbols(cudart12).get("cudaMalloc")
    b = BPF(text=PROG)
    f_entry = b.load_func("on_entry", BPF.KPROBE, attach_type=BPF_TRACE_UPROBE_MULTI)
    f_return = b.load_func("on_return", BPF.KPROBE, attach_type=BPF_TRACE_UPROBE_MULTI)
    ids = (prog_id(f_entry.fd), prog_id(f_return.fd))
    events: list[tuple] = []

    def on_event(ctx, data, size):
        e = ct.cast(data, ct.POINTER(Event)).contents
        events.append((e.pid, e.tid, e.cookie, e.size, e.retval, e.latency_ns))
        return 0

    b["events"].open_ring_buffer(on_event)
    with Workload("--repeat", "2") as w:
        w.expect("waiting calls")
        # only this workload: the link's pid filter keeps other processes' calls out
        links = [
            attach_uprobe_multi(f_entry.fd, cudart12, [sym.file_offset], [7], pid=w.pid),
            attach_uprobe_multi(f_return.fd, cudart12, [sym.file_offset], [7], retprobe=True, pid=w.pid),
        ]
        try:
            assert {link["prog_id"] for i in ids for link in links_of_prog(i)} == set(ids)
            w.go()
            summary = w.finish()
            b.ring_buffer_poll(200)
        finally:
            for link in links:
                link.close()
        assert summary["return_codes"] == [workload.cudaErrorInsufficientDriver]

    sizes = [e[3] for e in events]
    assert sizes == list(workload.MALLOC_SIZES) * 2  # exact calls, exact sizes, in order
    assert all(e[0] == w.pid for e in events)
    assert all(e[2] == 7 for e in events)  # the attach cookie says which symbol fired
    assert all(e[4] == 35 for e in events)  # cudaErrorInsufficientDriver
    assert all(e[5] > 0 for e in events)

    # nothing stays attached: no link of our programs in the kernel, no link fd in this process
    assert all(link.closed for link in links)
    assert links_of_prog(ids[0]) == [] and links_of_prog(ids[1]) == []
    assert own_uprobe_multi_fds() == []
    b.cleanup()
