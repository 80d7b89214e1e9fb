/* Watching a traced process tree open the libraries probes wait for (ingero.runtime.libwatch).
 *
 * A traced process (tgid in watch_targets) whose openat() of a file succeeds, the file's name starting
 * with one of the watched stems followed by '.' (libcudart -> libcudart.so.13), or with a watched prefix
 * (a glob's literal head), is reported with its pid and the path it opened. With HOLD set, the process is
 * also stopped (SIGSTOP, delivered as the syscall returns, so before the loader maps the file): user space
 * attaches the waiting probes to that very file, then continues it (SIGCONT). Nothing it calls in that
 * library can run unprobed.
 *
 * watch_targets: the traced tree, seeded by user space, followed through forks and exits here (a private map:
 * a live trace's standard set keeps its own). Its value: TARGET_HOLD (held at a watched open when HOLD is
 * set; every process a fork adds) or TARGET_NO_HOLD (user space's choice for a root it must not stop: the
 * foreground job of a terminal, whose shell would take the stop for a Ctrl-Z).
 *
 * NAME_LEN, MAX_NAMES, TARGET_HOLD and TARGET_NO_HOLD come from ingero/runtime/libwatch.py as -D definitions. */
#include <uapi/linux/ptrace.h>

#define SIGSTOP 19
#define PATH_LEN 256

/* a prefix of a file name, as 8 words and the mask of its bytes (a stem is watched as "libcudart.") */
struct watch_name {
    u64 word[NAME_LEN / 8];
    u64 mask[NAME_LEN / 8];
};

struct lib_load {
    u32 pid;
    u32 held;
    char path[PATH_LEN];
    u64 base[NAME_LEN / 8]; /* scratch: the first bytes of the file name */
    u32 off;                /* scratch: where the file name starts in path */
};

BPF_HASH(watch_targets, u32, u8, 4096);
BPF_ARRAY(watch_names, struct watch_name, MAX_NAMES);
BPF_ARRAY(watch_cfg, u32, 2); /* [0] number of names, [1] hold */
BPF_HASH(open_names, u64, u64, 4096);
BPF_RINGBUF_OUTPUT(lib_loads, 16);
BPF_PERCPU_ARRAY(load_scratch, struct lib_load, 1);

static __always_inline int watched_tgid(u32 tgid) {
    return watch_targets.lookup(&tgid) != 0;
}

/* the traced tree as bpf/follow.bpf.c asks for it, when joined after this text (LibraryWatcher(forks=True):
 * `ingero probe run` holds each new process of the tree until its links exist) */
static __always_inline int traced(u32 tgid) {
    return watched_tgid(tgid);
}

TRACEPOINT_PROBE(syscalls, sys_enter_openat) {
    u64 id = bpf_get_current_pid_tgid();
    if (!watched_tgid(id >> 32))
        return 0;
    u64 ptr = (u64)args->filename;
    open_names.update(&id, &ptr);
    return 0;
}

static __always_inline int name_matches(struct lib_load *e, struct watch_name *w) {
    u64 diff = 0;
    for (u32 j = 0; j < NAME_LEN / 8; j++)
        diff |= (e->base[j] ^ w->word[j]) & w->mask[j];
    return diff == 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_openat) {
    u64 id = bpf_get_current_pid_tgid();
    u64 *ptr = open_names.lookup(&id);
    if (!ptr)
        return 0;
    u64 filename = *ptr;
    open_names.delete(&id);
    if (args->ret < 0)
        return 0;
    int zero = 0, one = 1;
    struct lib_load *e = load_scratch.lookup(&zero);
    u32 *count = watch_cfg.lookup(&zero);
    u32 *hold = watch_cfg.lookup(&one);
    if (!e || !count || !hold)
        return 0;
    int n = bpf_probe_read_user_str(e->path, sizeof(e->path), (const char *)filename);
    if (n <= 1)
        return 0;
    u32 base = 0;
    for (u32 i = 0; i < PATH_LEN - 1; i++) {
        char c = e->path[i];
        if (c == 0)
            break;
        if (c == '/')
            base = i + 1;
    }
    /* through memory, so the verifier does not track each possible offset as a state of its own */
    *(volatile u32 *)&e->off = base;
    u32 off = *(volatile u32 *)&e->off;
    __builtin_memset(e->base, 0, sizeof(e->base));
    bpf_probe_read_kernel(e->base, sizeof(e->base), e->path + (off & (PATH_LEN - 1)));
    int found = 0;
    for (u32 k = 0; k < MAX_NAMES; k++) {
        if (k >= *count)
            break;
        u32 key = k;
        struct watch_name *w = watch_names.lookup(&key);
        if (w && name_matches(e, w)) {
            found = 1;
            break;
        }
    }
    if (!found)
        return 0;
    u32 tgid = id >> 32;
    u8 *target = watch_targets.lookup(&tgid);
    e->pid = tgid;
    e->held = *hold && target && *target != TARGET_NO_HOLD ? 1 : 0;
    if (e->held)
        bpf_send_signal(SIGSTOP);
    lib_loads.ringbuf_output(e, 8 + PATH_LEN, 0);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_fork) {
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (!watched_tgid(tgid))
        return 0;
    u32 child = args->child_pid;
    u8 one = TARGET_HOLD;
    /* a thread's tid is never another live process's tgid; it is removed when the thread exits */
    watch_targets.update(&child, &one);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exit) {
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32, tid = (u32)id;
    if (!watched_tgid(tgid))
        return 0;
    if (tid != tgid)
        watch_targets.delete(&tid); /* the entry the thread's creation added */
    if (args->group_dead)
        watch_targets.delete(&tgid); /* the last thread of the process, whichever it is */
    return 0;
}
