/* Entry + return of any number of functions of one file, one uprobe_multi link per direction.
 * The entry stashes the time and the integer argument registers; the return emits one ingero_call.
 * struct ingero_call is not written here: the loader (ingero/runtime/calltrace.py) puts it before this
 * text, rendered from its one description (CALL_RECORD in ingero/compiler/record.py) with static
 * assertions of the decoder's offsets. RINGBUF_PAGES is set by the loader. */
#include <uapi/linux/ptrace.h>

struct ingero_call_key {
    u64 pid_tgid;
    u64 cookie;
};

BPF_HASH(inflight, struct ingero_call_key, struct ingero_call, 10240);
BPF_RINGBUF_OUTPUT(calls, RINGBUF_PAGES);
BPF_ARRAY(lost, u64, 1);

int on_entry(struct pt_regs *ctx) {
    struct ingero_call c = {};
    struct ingero_call_key k = {.pid_tgid = bpf_get_current_pid_tgid(), .cookie = bpf_get_attach_cookie(ctx)};
    c.ts_ns = bpf_ktime_get_ns();
    c.pid = k.pid_tgid >> 32;
    c.tid = (u32)k.pid_tgid;
    c.cookie = (u32)k.cookie;
    c.args[0] = PT_REGS_PARM1(ctx);
    c.args[1] = PT_REGS_PARM2(ctx);
    c.args[2] = PT_REGS_PARM3(ctx);
    c.args[3] = PT_REGS_PARM4(ctx);
    c.args[4] = PT_REGS_PARM5(ctx);
    c.args[5] = PT_REGS_PARM6(ctx);
    inflight.update(&k, &c);
    return 0;
}

int on_return(struct pt_regs *ctx) {
    struct ingero_call_key k = {.pid_tgid = bpf_get_current_pid_tgid(), .cookie = bpf_get_attach_cookie(ctx)};
    struct ingero_call *c = inflight.lookup(&k);
    if (!c)
        return 0;
    struct ingero_call *e = calls.ringbuf_reserve(sizeof(*e));
    if (!e) {
        int zero = 0;
        u64 *n = lost.lookup(&zero);
        if (n)
            __sync_fetch_and_add(n, 1);
    } else {
        __builtin_memcpy(e, c, sizeof(*e));
        e->latency_ns = bpf_ktime_get_ns() - c->ts_ns;
        e->retval = PT_REGS_RC(ctx);
        calls.ringbuf_submit(e, 0);
    }
    inflight.delete(&k);
    return 0;
}
