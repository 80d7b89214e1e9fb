/* A C library with known answers for the DSL ground-truth test (tests/e2e/test_dsl_truth.py): recursion,
 * strings (NULL, "", a short one after a long one), a negative return, out-parameters, a struct read
 * through a pointer, and plain integers for arithmetic. The driver (dsl_truth_driver.c) prints what
 * every call was given and returned. */
#include <stdint.h>
#include <string.h>
#include <time.h>

struct point { int32_t x; int64_t y; uint16_t tag; };

static long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000L + t.tv_nsec;
}

/* depth n, tag: returns tag * 1000 + n after calling itself for n - 1 down to 0; *inner_ns gets how long
 * the nested call took, as its caller measured it */
__attribute__((noinline)) long rec(int n, long tag, long *inner_ns) {
    if (n <= 0) {
        *inner_ns = 0;
        return tag * 1000;
    }
    long ignored, t0 = now_ns();
    long r = rec(n - 1, tag, &ignored);
    *inner_ns = now_ns() - t0;
    return r + 1 + (r - r);  /* tag * 1000 + n */
}

__attribute__((noinline)) int keyed(const char *s) {
    return s ? (int)strlen(s) : -1;
}

__attribute__((noinline)) int negative(int x) {
    return -x;
}

/* writes *out = x * 7 and *wide = -x * 1000003 (out-parameters), returns 0; a NULL out is skipped */
__attribute__((noinline)) int outp(int x, int *out, int64_t *wide) {
    if (out)
        *out = x * 7;
    if (wide)
        *wide = -(int64_t)x * 1000003;
    return 0;
}

__attribute__((noinline)) long member(const struct point *p) {
    return p ? p->y : 0;
}

__attribute__((noinline)) long arith(long a, unsigned long b) {
    return a + (long)b;
}
