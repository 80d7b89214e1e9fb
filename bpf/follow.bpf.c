/* Per-process probes without a fork race: appended to host.bpf.c + cuda.bpf.c by ingero/tracer/standard.py.
 *
 * The CUDA probes are uprobe_multi links with a pid (one per traced process), so a process outside the
 * traced tree never traps. A forked child inherits its parent's breakpoints with the copied pages, but
 * not the parent's links: the kernel runs a link's program only in its own process (uprobe_prog_run's
 * same_thread_group check), so until user space has attached the child's own links its calls trap and
 * are not seen. To lose none, a new process of the traced tree is held at its very first return to user
 * space (the exit of fork/clone in the child, before it runs an instruction of its own): it stops itself
 * (SIGSTOP, sent here in its own context) and says so on the `holds` ring; user space attaches its links
 * and continues it (SIGCONT). A few hundred microseconds per new process; threads are never held.
 *
 * `ingero_linked` is the handshake (whoever inserts first wins, an atomic insert): user space inserts
 * LINKED after attaching; a child finding LINKED runs on; otherwise it stops and inserts HELD -- and if
 * user space won the insert meanwhile, it undoes its own stop (SIGCONT cancels a pending SIGSTOP). User
 * space, finding HELD, continues the child. Any SIGCONT also ends the stop early: the child runs on, and
 * calls it makes before its links exist are not seen (user space counts such processes). User space's
 * side: ingero/tracer/follow.py, which owns HOLD_LINKED and HOLD_HELD and gives them as -D definitions. */

BPF_HASH(ingero_linked, u32, u8, 16384);
BPF_RINGBUF_OUTPUT(holds, 16);
BPF_ARRAY(hold_enabled, u32, 1);

struct hold_event {
    u32 pid;
    u32 pad;
    u64 ts_ns;  /* when it stopped */
};

static __always_inline int hold_new_process(long ret) {
    if (ret != 0)
        return 0;  /* the parent's return, or a failed fork */
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    if ((u32)id != tgid || !traced(tgid))
        return 0;  /* a new thread (its process is linked already), or not ours */
    int zero = 0;
    u32 *on = hold_enabled.lookup(&zero);
    if (!on || !*on)
        return 0;
    if (ingero_linked.lookup(&tgid))
        return 0;  /* user space attached this process's links already */
    bpf_send_signal(19);  /* SIGSTOP, pending until this return to user space */
    u8 held = HOLD_HELD;
    if (ingero_linked.insert(&tgid, &held) != 0) {
        bpf_send_signal(18);  /* SIGCONT: user space linked it meanwhile; cancel the stop */
        return 0;
    }
    struct hold_event e = {.pid = tgid, .ts_ns = bpf_ktime_get_ns()};
    holds.ringbuf_output(&e, sizeof(e), 0);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_clone) { return hold_new_process(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_exit_clone3) { return hold_new_process(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_exit_fork) { return hold_new_process(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_exit_vfork) { return hold_new_process(args->ret); }
