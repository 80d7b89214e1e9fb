/* Calls work(i) N times in a tight loop and prints, on stderr, "calls=N ns_per_call=X"
 * (bench/bench_probe_run.py traces work()'s argument and latency). */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

__attribute__((noinline, noipa)) long work(long i) {
    __asm__ volatile("" : "+r"(i));
    return i * 3;
}

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 200000, sink = 0;
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++)
        sink += work(i);
    clock_gettime(CLOCK_MONOTONIC, &b);
    double ns = ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n;
    fprintf(stderr, "calls=%ld ns_per_call=%.1f sink=%ld\n", n, ns, sink);
    return 0;
}
