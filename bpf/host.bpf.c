/* Host-side tracepoints for the traced process tree, in upstream Ingero's event meanings.
 *
 * ingero_targets: the traced processes (tgid -> 1). User space seeds it; forks of a traced process add the
 * child in the kernel (so DataLoader-style workers are followed without a race); exits remove it.
 * Events (source HOST=3 / IO=5, upstream op codes):
 *   sched_switch  pid/tid = the resuming traced thread, duration = its off-CPU time, arg1 = prev (preemptor)
 *   sched_wakeup  pid/tid = waker, arg1 = wakee; when the waker or the sleeping wakee is traced
 *   mm_page_alloc arg0 = bytes (4096 << order)
 *   process_exec, oom_kill (arg1 = victim)
 *   process_fork (arg1 = child pid): a new process (clone without CLONE_THREAD, fork, vfork)
 *   thread_create (ingero op 40, arg1 = new tid): a new thread of a traced process (clone with CLONE_THREAD)
 *   process_exit: the process is gone, whichever of its threads exits last (group_dead); tid = that thread
 *   thread_exit (ingero op 41): a thread exits while others of its process live on
 *   block_read / block_write / block_discard: issue -> complete, arg0 = sectors, arg1 = sector
 * RINGBUF_PAGES is set by the loader; INGERO_PY=1 (with ingero_py.h's text joined
 * before this one: bcc rewrites map calls only in the main text) adds the Python frame walker: forks inherit a Python parent's entry, exec and exit drop it. */
#include <uapi/linux/ptrace.h>

/* SRC_HOST, SRC_IO and the OP_* codes used here come from the one table (ingero/store/schema.py), given to the
 * compiler by the loader (-D, ingero/tracer/host.py: C_DEFINES) */
#define CLONE_THREAD_FLAG 0x00010000ULL

struct host_event {
    u64 ts_ns;
    u64 duration_ns;
    u32 pid;
    u32 tid;
    u8 source;
    u8 op;
    u16 flags;
    u32 cpu;
    u64 arg0;
    u64 arg1;
    char comm[16];
};

struct offcpu_t { u64 ts; u32 tgid; u32 pad; };
struct io_key_t { u32 dev; u32 pad; u64 sector; };
struct io_val_t { u64 ts; u32 tgid; u32 tid; };

/* shared by name with the DSL probes loaded in the same process (BPF_TABLE("extern", ...)), which filter
 * on the same traced tree */
BPF_TABLE_SHARED("hash", u32, u8, ingero_targets, 4096);
BPF_HASH(offcpu, u32, struct offcpu_t, 16384);
BPF_HASH(inflight_io, struct io_key_t, struct io_val_t, 4096);
BPF_RINGBUF_OUTPUT(host_events, RINGBUF_PAGES);
BPF_ARRAY(lost, u64, 1);

static __always_inline int traced(u32 tgid) {
    return ingero_targets.lookup(&tgid) != 0;
}

static __always_inline struct host_event *reserve(u8 source, u8 op) {
    struct host_event *e = host_events.ringbuf_reserve(sizeof(struct host_event));
    if (!e) {
        int zero = 0;
        u64 *n = lost.lookup(&zero);
        if (n)
            __sync_fetch_and_add(n, 1);
        return 0;
    }
    __builtin_memset(e, 0, sizeof(*e));
    e->ts_ns = bpf_ktime_get_ns();
    e->source = source;
    e->op = op;
    e->cpu = bpf_get_smp_processor_id();
    return e;
}

static __always_inline void current_ids(struct host_event *e) {
    u64 id = bpf_get_current_pid_tgid();
    e->pid = id >> 32;
    e->tid = (u32)id;
    bpf_get_current_comm(&e->comm, sizeof(e->comm));
}

TRACEPOINT_PROBE(sched, sched_switch) {
    u64 now = bpf_ktime_get_ns();
    u32 tgid = bpf_get_current_pid_tgid() >> 32;  /* current is prev */
    u32 prev = args->prev_pid, next = args->next_pid;
    if (prev && traced(tgid)) {
        struct offcpu_t o = {.ts = now, .tgid = tgid};
        offcpu.update(&prev, &o);
    }
    struct offcpu_t *o = offcpu.lookup(&next);
    if (!o)
        return 0;
    struct host_event *e = reserve(SRC_HOST, OP_SCHED_SWITCH);
    if (e) {
        e->ts_ns = now;
        e->duration_ns = now - o->ts;
        e->pid = o->tgid;
        e->tid = next;
        e->arg1 = prev;
        bpf_probe_read_kernel(&e->comm, sizeof(e->comm), args->next_comm);
        host_events.ringbuf_submit(e, 0);
    }
    offcpu.delete(&next);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_wakeup) {
    u32 wakee = args->pid;
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (!traced(tgid) && !offcpu.lookup(&wakee))
        return 0;
    struct host_event *e = reserve(SRC_HOST, OP_SCHED_WAKEUP);
    if (e) {
        current_ids(e);
        e->arg1 = wakee;
        host_events.ringbuf_submit(e, 0);
    }
    return 0;
}

TRACEPOINT_PROBE(kmem, mm_page_alloc) {
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (!traced(tgid))
        return 0;
    struct host_event *e = reserve(SRC_HOST, OP_PAGE_ALLOC);
    if (e) {
        current_ids(e);
        e->arg0 = 4096ULL << args->order;
        host_events.ringbuf_submit(e, 0);
    }
    return 0;
}

/* task_newtask rather than sched_process_fork: it carries the clone flags, so a new thread is told from a
 * new process (upstream records both as process_fork), and it fires where copy_process can no longer fail */
TRACEPOINT_PROBE(task, task_newtask) {
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (!traced(tgid))
        return 0;
    u32 child = args->pid;
    u8 op = OP_THREAD_CREATE;
    if (!(args->clone_flags & CLONE_THREAD_FLAG)) {
        /* a new process's pid becomes its tgid: its own calls and its children are traced from now on */
        u8 one = 1;
        ingero_targets.update(&child, &one);
#if INGERO_PY
        ingero_py_fork(tgid, child);
#endif
        op = OP_FORK;
    }
    struct host_event *e = reserve(SRC_HOST, op);
    if (e) {
        current_ids(e);
        e->arg1 = child;
        host_events.ringbuf_submit(e, 0);
    }
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exec) {
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (!traced(tgid))
        return 0;
#if INGERO_PY
    ingero_py_forget(tgid);  /* a new program: user space looks at it again */
#endif
    struct host_event *e = reserve(SRC_HOST, OP_EXEC);
    if (e) {
        current_ids(e);
        e->arg1 = args->old_pid;
        host_events.ringbuf_submit(e, 0);
    }
    return 0;
}

/* Every exiting thread passes here; the one that finds the thread group dead (group_dead: the last one, which
 * need not be the main thread -- exit_group() makes the caller exit first and the others after it) ends
 * the process. */
TRACEPOINT_PROBE(sched, sched_process_exit) {
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32, tid = (u32)id;
    if (!traced(tgid))
        return 0;
    offcpu.delete(&tid);
    u8 group_dead = args->group_dead;
    struct host_event *e = reserve(SRC_HOST, group_dead ? OP_EXIT : OP_THREAD_EXIT);
    if (e) {
        current_ids(e);
        host_events.ringbuf_submit(e, 0);
    }
    if (group_dead) {
        ingero_targets.delete(&tgid);
#if INGERO_PY
        ingero_py_forget(tgid);
#endif
    }
    return 0;
}

TRACEPOINT_PROBE(oom, mark_victim) {
    u32 victim = args->pid;
    if (!traced(victim))
        return 0;
    struct host_event *e = reserve(SRC_HOST, OP_OOM_KILL);
    if (e) {
        current_ids(e);
        e->arg1 = victim;
        host_events.ringbuf_submit(e, 0);
    }
    return 0;
}

TRACEPOINT_PROBE(block, block_rq_issue) {
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    if (!traced(tgid))
        return 0;
    struct io_key_t k = {.dev = args->dev, .sector = args->sector};
    struct io_val_t v = {.ts = bpf_ktime_get_ns(), .tgid = tgid, .tid = (u32)id};
    inflight_io.update(&k, &v);
    return 0;
}

TRACEPOINT_PROBE(block, block_rq_complete) {
    struct io_key_t k = {.dev = args->dev, .sector = args->sector};
    struct io_val_t *v = inflight_io.lookup(&k);
    if (!v)
        return 0;
    u8 op = 0;
    char rwbs[4] = {};
    bpf_probe_read_kernel(&rwbs, sizeof(rwbs), args->rwbs);
#pragma unroll
    for (int i = 0; i < 4 && !op; i++) {
        if (rwbs[i] == 'R') op = OP_BLOCK_READ;
        else if (rwbs[i] == 'W') op = OP_BLOCK_WRITE;
        else if (rwbs[i] == 'D') op = OP_BLOCK_DISCARD;
    }
    if (op) {
        struct host_event *e = reserve(SRC_IO, op);
        if (e) {
            u64 now = e->ts_ns;
            e->duration_ns = now - v->ts;
            e->pid = v->tgid;
            e->tid = v->tid;
            e->arg0 = args->nr_sector;
            e->arg1 = args->sector;
            host_events.ringbuf_submit(e, 0);
        }
    }
    inflight_io.delete(&k);
    return 0;
}
