/* Static helpers shared by every generated probe program (probe_templates/probe.bpf.c.j2).
 * The event header and the statistics indexes are generated from ingero/compiler/record.py (their one
 * definition) into the program text; this file holds only logic that does not depend on a spec. */
#ifndef INGERO_PROBE_H
#define INGERO_PROBE_H

/* one call in flight: its thread and its entry time (kept in the call's session cookie) */
struct ingero_call_key {
    u64 pid_tgid;
    u64 ts;
};

/* kfuncs of uprobe session links (Linux 6.13+). bcc cannot call kfuncs: these call made-up helper
 * numbers, which ingero.runtime.kfuncs (KFUNC_IDS, the same numbers) rewrites into kfunc calls by BTF id
 * before the program is loaded */
static u64 *(*ingero_session_cookie)(void) = (void *)0x7FF00001;
static u64 (*ingero_session_is_return)(void) = (void *)0x7FF00002;

struct ingero_rate {
    u64 window; /* the second the count is for */
    u64 n;      /* calls let through in that second */
};

/* log2 bucket of a value: 0 for 0 (and negatives), k for [2^(k-1), 2^k), at most 64 */
static __always_inline u32 ingero_log2(u64 v) {
    u32 r = 0;
    if (v >> 32) { v >>= 32; r += 32; }
    if (v >> 16) { v >>= 16; r += 16; }
    if (v >> 8) { v >>= 8; r += 8; }
    if (v >> 4) { v >>= 4; r += 4; }
    if (v >> 2) { v >>= 2; r += 2; }
    if (v >> 1) { v >>= 1; r += 1; }
    return v ? r + 1 : 0;
}

/* compare n bytes (n is a compile-time constant: the literal and its NUL) */
static __always_inline int ingero_streq(const char *a, const char *b, const int n) {
#pragma unroll
    for (int i = 0; i < n; i++) {
        if (a[i] != b[i])
            return 0;
    }
    return 1;
}

/* integer arithmetic of probe specs (ingero.dsl.exprs): division by zero gives 0; shifts by 64 or more
 * give 0 (an arithmetic right shift of a negative value gives -1); + - * wrap in 64 bits */
static __always_inline u64 ingero_udiv(u64 a, u64 b) {
    return b ? a / b : 0;
}

static __always_inline s64 ingero_sdiv(s64 a, s64 b) {
    if (!b)
        return 0;
    u64 ua = a < 0 ? -(u64)a : (u64)a;
    u64 ub = b < 0 ? -(u64)b : (u64)b;
    u64 q = ua / ub;
    return (a < 0) != (b < 0) ? (s64)(0 - q) : (s64)q;
}

static __always_inline u64 ingero_shl(u64 a, u64 n) {
    return n < 64 ? a << n : 0;
}

static __always_inline u64 ingero_shr(u64 a, u64 n) {
    return n < 64 ? a >> n : 0;
}

static __always_inline s64 ingero_sar(s64 a, u64 n) {
    return n < 64 ? a >> n : (a < 0 ? -1 : 0);
}

#endif
