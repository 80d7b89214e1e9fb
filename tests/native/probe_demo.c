/* A small C library for the probe end-to-end tests (tests/e2e/test_probe_clib.py): more than six
 * arguments, structs by value in registers and on the stack, a string, a double before an integer. */
#include <string.h>

struct pair { int x; int y; long z; };      /* 16 bytes: two integer registers when two are free */
struct big { long a; long b; long c; };     /* 24 bytes: always on the stack */

__attribute__((noinline)) long many(int a, long b, short c, unsigned d, long e, long f, long g, int h) {
    return a + b + c + d + e + f + g + h;
}

__attribute__((noinline)) long take_pair(long a, struct pair p, long q) {
    return a + p.x + p.y + p.z + q;
}

/* five registers used: the pair does not fit in the one left, goes on the stack, and z takes r9 */
__attribute__((noinline)) long late_pair(long a, long b, long c, long d, long e, struct pair p, long z) {
    return a + b + c + d + e + p.x + p.y + p.z + z;
}

__attribute__((noinline)) long take_big(int k, struct big s) {
    return k + s.a + s.b + s.c;
}

__attribute__((noinline)) int greet(const char *name, int n) {
    return (int)strlen(name) + n;
}

__attribute__((noinline)) long after_double(double d, long x) {
    return (long)d + x;
}

__attribute__((noinline)) const char *label(int k) {
    return k % 2 ? "odd" : "even";
}
