/* ingero's standard probe set, CUDA part: appended to host.bpf.c (whose `targets` map, `traced()` and
 * includes it uses) by ingero/tracer/standard.py -- bcc rewrites TRACEPOINT_PROBE only in the main text,
 * so the two files are joined rather than #included. Entry/return uprobes on the CUDA
 * runtime and driver calls upstream Ingero traces, all filtered in the kernel to the traced process tree
 * (the `targets` map of host.bpf.c). One program pair serves every CUDA symbol: it is attached as
 * uprobe_multi links whose attach cookie is (source << 8 | op) in upstream's codes, so the handler knows
 * which call fired and what its arguments mean:
 *   CUDA 1 cudaMalloc(devPtr, size)         arg0 = size, arg1 = the returned device pointer (when ret == 0)
 *   CUDA 2 cudaFree(ptr)                    arg0 = ptr, arg1 = its size if ingero saw the cudaMalloc
 *   CUDA 3 cudaLaunchKernel(func, dim3 grid, dim3 block, args, sharedMem, stream)
 *                                           arg0 = func, arg1 = stream (on the stack at entry: [rsp+16])
 *   CUDA 4 cudaMemcpy / 7 cudaMemcpyAsync   arg0 = count, arg1 = kind
 *   CUDA 5 cudaStreamSynchronize(stream)    arg0 = stream
 *   CUDA 6 cudaDeviceSynchronize()
 *   CUDA 8 cudaMallocManaged(devPtr, size, flags)  as cudaMalloc
 *   CUDA 9/10 cudaMemcpy2D[Async]           arg0 = width, arg1 = 5 (kind unknown)
 *   CUDA 11/12 cudaMemcpyPeer[Async]        arg0 = count, arg1 = 3
 *   DRIVER 1 cuLaunchKernel(f, ...)         arg0 = f
 *   DRIVER 2 cuMemcpy / 3 cuMemcpyAsync     arg0 = bytes
 *   DRIVER 4 cuCtxSynchronize()
 *   DRIVER 5 cuMemAlloc / 6 cuMemAllocManaged  arg0 = bytes, arg1 = the returned pointer (when ret == 0)
 * Calls above upstream's codes (ingero's own ops: cudaGetDeviceCount, cudaSetDevice, cudaHostAlloc, cuInit...)
 * carry their argument layout in the cookie's bits 16-31 (see call_shape in ingero/tracer/standard.py), so
 * adding one needs no change here: arg0 from PARM(bits 16-19), arg1 from PARM(20-23), an output pointer
 * PARM(24-27) read at return when the call succeeded as (28-31) a u32 value, a u64 value, an allocated
 * pointer (its size, arg0, remembered for the free) or, for a free, arg1 = the size of arg0's allocation.
 * The return value is the call's cudaError_t / CUresult. STACKS=1 captures the user stack at entry, and
 * INGERO_PY=1 the calling thread's Python stack (ingero_py.h, included by host.bpf.c). */
/* SRC_CUDA, SRC_DRIVER (ingero/store/schema.py) and OUT_U32, OUT_U64, OUT_ALLOC, FREE_SIZE (the argument
 * layouts of ingero/tracer/ops.py) are given to the compiler by the loader (-D, ops.C_DEFINES) */

struct cuda_event {
    u64 ts_ns;          /* entry time, CLOCK_MONOTONIC */
    u64 duration_ns;
    u32 pid;
    u32 tid;
    u8 source;
    u8 op;
    u16 flags;
    s32 ret;
    u64 arg0;
    u64 arg1;
    s64 stack_id;       /* into `stacks`, or < 0 */
    u64 py_stack;       /* into `ingero_py_stacks`, or 0 */
    char comm[16];
};

struct cuda_entry {
    u64 ts_ns;
    u64 arg0;
    u64 arg1;
    u64 out_ptr;        /* where the callee writes its output (an allocated pointer, a count...) */
    s64 stack_id;
    u64 py_stack;
    u32 out_kind;       /* OUT_* */
    u32 pad;
};

struct cuda_key {
    u64 pid_tgid;
    u64 cookie;
};

BPF_HASH(cuda_inflight, struct cuda_key, struct cuda_entry, 16384);
BPF_HASH(alloc_sizes, u64, u64, 65536);
BPF_RINGBUF_OUTPUT(cuda_events, CUDA_RINGBUF_PAGES);
BPF_ARRAY(cuda_lost, u64, 1);
#if STACKS
BPF_STACK_TRACE(stacks, 16384);
#endif

int on_cuda_entry(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    if (!traced(tgid))
        return 0;
    u64 cookie = bpf_get_attach_cookie(ctx);
    u8 source = cookie >> 8, op = cookie & 0xff;
    u32 shape = cookie >> 16;
    struct cuda_entry e = {.ts_ns = bpf_ktime_get_ns(), .stack_id = -1};
    if (shape) {
        /* the argument registers copied first: a switch over ctx offsets compiles to a load through a
         * modified ctx pointer, which the verifier rejects */
        u64 parm[8] = {0, PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), PT_REGS_PARM3(ctx), PT_REGS_PARM4(ctx),
                       PT_REGS_PARM5(ctx), PT_REGS_PARM6(ctx), 0};
        u32 kind = (shape >> 12) & 0xf;
        e.arg0 = parm[shape & 7];
        e.arg1 = parm[(shape >> 4) & 7];
        if (kind == FREE_SIZE) {
            u64 p = e.arg0;
            u64 *sz = alloc_sizes.lookup(&p);
            if (sz) { e.arg1 = *sz; alloc_sizes.delete(&p); }
        } else if (kind) {
            e.out_ptr = parm[(shape >> 8) & 7];
            e.out_kind = kind;
        }
    } else if (source == SRC_CUDA) {
        switch (op) {
        case 1: case 8:  /* cudaMalloc, cudaMallocManaged */
            e.arg0 = PT_REGS_PARM2(ctx); e.out_ptr = PT_REGS_PARM1(ctx); e.out_kind = OUT_ALLOC; break;
        case 2: {        /* cudaFree */
            u64 p = PT_REGS_PARM1(ctx);
            e.arg0 = p;
            u64 *sz = alloc_sizes.lookup(&p);
            if (sz) { e.arg1 = *sz; alloc_sizes.delete(&p); }
            break;
        }
        case 3: {        /* cudaLaunchKernel: two dim3 take rsi:rdx and rcx:r8, args r9, then the stack */
            u64 stream = 0;
            bpf_probe_read_user(&stream, sizeof(stream), (void *)(PT_REGS_SP(ctx) + 16));
            e.arg0 = PT_REGS_PARM1(ctx); e.arg1 = stream; break;
        }
        case 4: case 7:  /* cudaMemcpy, cudaMemcpyAsync */
            e.arg0 = PT_REGS_PARM3(ctx); e.arg1 = PT_REGS_PARM4(ctx); break;
        case 5:          /* cudaStreamSynchronize */
            e.arg0 = PT_REGS_PARM1(ctx); break;
        case 9: case 10: /* cudaMemcpy2D[Async]: width */
            e.arg0 = PT_REGS_PARM5(ctx); e.arg1 = 5; break;
        case 11: case 12: /* cudaMemcpyPeer[Async]: count */
            e.arg0 = PT_REGS_PARM5(ctx); e.arg1 = 3; break;
        }
    } else {
        switch (op) {
        case 1: e.arg0 = PT_REGS_PARM1(ctx); break;
        case 2: case 3: e.arg0 = PT_REGS_PARM3(ctx); break;
        case 5: case 6: e.arg0 = PT_REGS_PARM2(ctx); e.out_ptr = PT_REGS_PARM1(ctx); e.out_kind = OUT_ALLOC; break;
        }
    }
#if STACKS
    e.stack_id = stacks.get_stackid(ctx, BPF_F_USER_STACK);
#endif
#if INGERO_PY
    e.py_stack = ingero_py_capture();
#endif
    struct cuda_key k = {.pid_tgid = id, .cookie = cookie};
    cuda_inflight.update(&k, &e);
    return 0;
}

int on_cuda_return(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    struct cuda_key k = {.pid_tgid = id, .cookie = bpf_get_attach_cookie(ctx)};
    struct cuda_entry *s = cuda_inflight.lookup(&k);
    if (!s)
        return 0;
    s32 ret = PT_REGS_RC(ctx);
    u64 arg1 = s->arg1;
    if (s->out_ptr && ret == 0) {
        if (s->out_kind == OUT_U32) {
            u32 v = 0;
            bpf_probe_read_user(&v, sizeof(v), (void *)s->out_ptr);
            arg1 = v;
        } else {
            u64 p = 0;
            bpf_probe_read_user(&p, sizeof(p), (void *)s->out_ptr);
            arg1 = p;
            if (p && s->out_kind == OUT_ALLOC) {
                u64 size = s->arg0;
                alloc_sizes.update(&p, &size);
            }
        }
    }
    struct cuda_event *e = cuda_events.ringbuf_reserve(sizeof(struct cuda_event));
    if (!e) {
        int zero = 0;
        u64 *n = cuda_lost.lookup(&zero);
        if (n)
            __sync_fetch_and_add(n, 1);
    } else {
        e->ts_ns = s->ts_ns;
        e->duration_ns = bpf_ktime_get_ns() - s->ts_ns;
        e->pid = id >> 32;
        e->tid = (u32)id;
        e->source = (k.cookie >> 8) & 0xff;
        e->op = k.cookie & 0xff;
        e->flags = 0;
        e->ret = ret;
        e->arg0 = s->arg0;
        e->arg1 = arg1;
        e->stack_id = s->stack_id;
        e->py_stack = s->py_stack;
        bpf_get_current_comm(&e->comm, sizeof(e->comm));
        /* BPF_RB_NO_WAKEUP (1): no wakeup of the reader per record (an irq_work, a self-IPI: microseconds
         * per call whenever the reader has caught up); the reader polls this ring every few ms instead */
        cuda_events.ringbuf_submit(e, 1);
    }
    cuda_inflight.delete(&k);
    return 0;
}

/* A traced process opening a CUDA library ("libcu..." in the name: libcudart, libcuda, libcublas...):
 * tell user space at once, so it attaches to that file before the loader has even mapped it, instead of
 * finding it at the next scan of /proc/PID/maps. */
struct lib_open_event {
    u32 pid;
    u32 pad;
    char path[256];
};
BPF_RINGBUF_OUTPUT(lib_opens, 16);
BPF_PERCPU_ARRAY(lib_open_scratch, struct lib_open_event, 1);

TRACEPOINT_PROBE(syscalls, sys_enter_openat) {
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (!traced(tgid))
        return 0;
    int zero = 0;
    struct lib_open_event *e = lib_open_scratch.lookup(&zero);
    if (!e)
        return 0;
    int n = bpf_probe_read_user_str(e->path, sizeof(e->path), args->filename);
    if (n <= 5)
        return 0;
    int found = 0;
    for (int i = 0; i < 250; i++) {
        if (e->path[i] == 0)
            break;
        if (e->path[i] == 'l' && e->path[i + 1] == 'i' && e->path[i + 2] == 'b' && e->path[i + 3] == 'c' &&
            e->path[i + 4] == 'u') {
            found = 1;
            break;
        }
    }
    if (!found)
        return 0;
    e->pid = tgid;
    lib_opens.ringbuf_output(e, sizeof(*e), 0);
    return 0;
}
