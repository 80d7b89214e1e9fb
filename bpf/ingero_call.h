/* The record of one traced call, shared by the BPF programs and the Python decoder
 * (ingero/runtime/calltrace.py mirrors it as a ctypes.Structure; tests check the sizes agree).
 * INGERO_MAX_ARGS integer arguments are read from the registers at entry (x86-64 SysV order). */
#ifndef INGERO_CALL_H
#define INGERO_CALL_H

#define INGERO_MAX_ARGS 6

struct ingero_call {
    u64 ts_ns;          /* bpf_ktime_get_ns() at entry (CLOCK_MONOTONIC) */
    u64 latency_ns;     /* return - entry */
    u32 pid;            /* tgid */
    u32 tid;
    u32 cookie;         /* attach cookie: index of the symbol that fired */
    u32 flags;
    s64 retval;
    u64 args[INGERO_MAX_ARGS];
};

struct ingero_call_key {
    u64 pid_tgid;
    u64 cookie;
};

#endif
