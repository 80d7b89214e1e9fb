/* The calling thread's CPython stack, read in the kernel at the moment of a traced call.
 *
 * User space (ingero/pyframes) recognises a traced Python process and puts its runtime's address and
 * layout in ingero_py_procs (tgid -> struct ingero_py_cfg); forks inherit the entry in the kernel (same
 * address space), exec drops it. At a call, ingero_py_capture():
 *   1. finds the calling thread's PyThreadState: the tid -> tstate cache, checked against the thread state
 *      itself (native_thread_id == tid; 3.10: thread_id == pthread_self() == the thread's fsbase), else the
 *      interpreter's thread list walked until that thread's (works while the thread has released the GIL:
 *      its thread state stays in the list, it is just not the GIL holder);
 *   2. walks its frames, innermost first, up to INGERO_PY_FRAMES, keeping (code object, instruction)
 *      per frame -- the instruction pointer (3.11+) or f_lasti (3.10); on 3.11+ a frame's whole page is
 *      read at once (its callers are usually below it in the same page of the thread's data stack), on
 *      3.10 (heap frame objects) each frame is read alone; the shim frames the interpreter
 *      pushes where C calls into Python (owner FRAME_OWNED_BY_CSTACK, 3.12+) are flagged, and dropped by
 *      user space;
 *   3. stores them in ingero_py_stacks under a hash of their content (once per distinct stack) and returns
 *      the hash (0: no Python frames: not a Python process or thread, or nothing running).
 * Names, files and lines come later from user space (the code object's line table). Define
 * INGERO_PY_EXTERN to use the process table of another program loaded in the same process. */
#ifndef INGERO_PY_H
#define INGERO_PY_H

#define INGERO_PY_FRAMES 32
#define INGERO_PY_THREADS 128    /* threads of one interpreter looked at to find the caller's */
#define INGERO_PY_NONE 0xffff
#define INGERO_PY_FRAME_BUF 128

struct ingero_py_cfg {
    u64 runtime;        /* address of _PyRuntime */
    u32 fsbase_off;     /* offsetof(struct task_struct, thread.fsbase), when id_is_fsbase */
    u32 rt_interp_head; /* _PyRuntime.interpreters.head */
    u32 interp_threads; /* PyInterpreterState.threads.head */
    u16 ts_next;
    u16 ts_id;          /* native_thread_id, or thread_id when id_is_fsbase */
    u16 ts_frame;       /* frame (3.10), cframe (3.11, 3.12), current_frame (3.13+) */
    u16 cframe_frame;   /* _PyCFrame.current_frame, or NONE */
    u16 fr_previous;
    u16 fr_code;
    u16 fr_instr;
    u16 fr_owner;       /* or NONE */
    u8 id_is_fsbase;
    u8 instr_is_int;    /* 3.10: f_lasti is an int, and a frame is read as 104 bytes (else 72) */
    u8 cstack_owner;    /* owner value of shim frames */
    u8 pad[3];
};

struct ingero_pystack {
    u32 depth;
    u32 truncated;      /* more frames than INGERO_PY_FRAMES */
    u32 shims;          /* bit i: frame i is a shim frame of the interpreter (3.12+), not Python code */
    u32 tgid;           /* the process that captured it first (its code objects are at these addresses) */
    u64 code[INGERO_PY_FRAMES];
    u64 instr[INGERO_PY_FRAMES];
};

/* 3.11+: the frames of a thread live one after the other in its data stack (a caller below its callee),
 * so one read of the page holding a frame usually holds its callers too (a page: never a faulting read) */
#define INGERO_PY_WINDOW 4096

struct ingero_py_scratch_t {
    u8 frame[INGERO_PY_FRAME_BUF + 8];
    struct ingero_pystack s;
    u8 window[INGERO_PY_WINDOW + INGERO_PY_FRAME_BUF + 8];
};

#ifdef INGERO_PY_EXTERN
BPF_TABLE("extern", u32, struct ingero_py_cfg, ingero_py_procs, 4096);
#else
BPF_TABLE_SHARED("hash", u32, struct ingero_py_cfg, ingero_py_procs, 4096);
#endif
BPF_TABLE("lru_hash", u32, u64, ingero_py_threads, 16384);
BPF_TABLE("lru_hash", u64, struct ingero_pystack, ingero_py_stacks, 16384);
BPF_PERCPU_ARRAY(ingero_py_scratch, struct ingero_py_scratch_t, 1);

static __always_inline u64 ingero_py_u64(u64 addr) {
    u64 v = 0;
    if (bpf_probe_read_user(&v, sizeof(v), (void *)addr))
        return 0;
    return v;
}

static __always_inline u64 ingero_py_tstate(struct ingero_py_cfg *c, u32 tid) {
    u64 want = tid;
    if (c->id_is_fsbase) {
        u64 task = bpf_get_current_task();
        want = 0;
        bpf_probe_read_kernel(&want, sizeof(want), (void *)(task + c->fsbase_off));
        if (!want)
            return 0;
    }
    u64 *hit = ingero_py_threads.lookup(&tid);
    if (hit) {
        u64 ts = *hit;
        if (ts && ingero_py_u64(ts + c->ts_id) == want)
            return ts;
    }
    u64 interp = ingero_py_u64(c->runtime + c->rt_interp_head);
    if (!interp)
        return 0;
    u64 ts = ingero_py_u64(interp + c->interp_threads);
    for (int i = 0; i < INGERO_PY_THREADS && ts; i++) {
        if (ingero_py_u64(ts + c->ts_id) == want) {
            ingero_py_threads.update(&tid, &ts);
            return ts;
        }
        ts = ingero_py_u64(ts + c->ts_next);
    }
    return 0;
}

static __always_inline u64 ingero_py_capture(void) {
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32, tid = (u32)id;
    struct ingero_py_cfg *c = ingero_py_procs.lookup(&tgid);
    if (!c)
        return 0;
    u64 ts = ingero_py_tstate(c, tid);
    if (!ts)
        return 0;
    u64 f = ingero_py_u64(ts + c->ts_frame);
    if (f && c->cframe_frame != INGERO_PY_NONE)
        f = ingero_py_u64(f + c->cframe_frame);
    if (!f)
        return 0;
    u32 zero = 0;
    struct ingero_py_scratch_t *b = ingero_py_scratch.lookup(&zero);
    if (!b)
        return 0;
    u32 off_prev = c->fr_previous & (INGERO_PY_FRAME_BUF - 1);
    u32 off_code = c->fr_code & (INGERO_PY_FRAME_BUF - 1);
    u32 off_instr = c->fr_instr & (INGERO_PY_FRAME_BUF - 1);
    u32 off_owner = c->fr_owner & (INGERO_PY_FRAME_BUF - 1);
    u64 cstack = c->cstack_owner;
    u32 depth = 0, shims = 0;
    u64 h = 0xcbf29ce484222325ULL;
    /* The loop bodies have no branch but their exits (the verifier follows one path per frame): a shim
     * frame is kept and flagged in `shims` (user space drops it) rather than skipped. */
    if (c->instr_is_int) {
#pragma nounroll
        for (int i = 0; i < INGERO_PY_FRAMES; i++) {
            if (!f || bpf_probe_read_user(b->frame, 104, (void *)f))
                break;
            u64 code = *(u64 *)(b->frame + off_code);
            u64 instr = (u64)(s64)*(s32 *)(b->frame + off_instr);
            b->s.code[i & (INGERO_PY_FRAMES - 1)] = code;
            b->s.instr[i & (INGERO_PY_FRAMES - 1)] = instr;
            h = ((h ^ code) * 0x100000001b3ULL ^ instr) * 0x100000001b3ULL;
            f = *(u64 *)(b->frame + off_prev);
            depth = i + 1;
        }
    } else {
        u64 win = 0, wlen = 0;  /* address of window[0] and the bytes read there (0: none) */
#pragma nounroll
        for (int i = 0; i < INGERO_PY_FRAMES; i++) {
            if (!f)
                break;
            u64 off = f - win;
            if (f < win || off + 72 > wlen) {
                /* not in the window: read the page holding this frame (mapped, since the frame is: no
                 * faulting read), which usually holds its callers too */
                win = f & ~(u64)(INGERO_PY_WINDOW - 1);
                wlen = INGERO_PY_WINDOW;
                off = f - win;
                if (off + 72 > wlen || bpf_probe_read_user(b->window, INGERO_PY_WINDOW, (void *)win)) {
                    /* the frame spans two pages: it alone */
                    win = f;
                    wlen = 72;
                    off = 0;
                    if (bpf_probe_read_user(b->window, 72, (void *)f))
                        break;
                }
            }
            off &= (INGERO_PY_WINDOW - 1);
            u8 *fr = b->window + off;
            u64 code = *(u64 *)(fr + off_code);
            u64 instr = *(u64 *)(fr + off_instr);
            u64 d = (u64)fr[off_owner] ^ cstack;
            shims |= (u32)((((d | -d) >> 63) ^ 1) << i);  /* owner == FRAME_OWNED_BY_CSTACK, no branch */
            b->s.code[i & (INGERO_PY_FRAMES - 1)] = code;
            b->s.instr[i & (INGERO_PY_FRAMES - 1)] = instr;
            h = ((h ^ code) * 0x100000001b3ULL ^ instr) * 0x100000001b3ULL;
            f = *(u64 *)(fr + off_prev);
            depth = i + 1;
        }
    }
    if (!depth)
        return 0;
    u32 truncated = f ? 1 : 0;
    b->s.depth = depth;
    b->s.truncated = truncated;
    b->s.shims = shims;
    b->s.tgid = tgid;
    h = (h ^ ((u64)depth << 1 | truncated)) * 0x100000001b3ULL;
    if (!h)
        h = 1;
    if (!ingero_py_stacks.lookup(&h))
        ingero_py_stacks.update(&h, &b->s);
    return h;
}

/* a forked process has its parent's address space: the same runtime at the same address */
static __always_inline void ingero_py_fork(u32 parent, u32 child) {
    struct ingero_py_cfg *c = ingero_py_procs.lookup(&parent);
    if (c) {
        struct ingero_py_cfg copy = *c;
        ingero_py_procs.update(&child, &copy);
    }
}

static __always_inline void ingero_py_forget(u32 tgid) {
    ingero_py_procs.delete(&tgid);
}

#endif
