/* A paced producer of calls for bench/bench_trace_ingest.py: calls FN(dst, src, count, kind) of a shared
 * library (cudaMemcpy of libcudart: a probe with latency and two arguments, count and kind) at a given
 * rate, phase after phase, as told on stdin.
 *   usage: pacedcalls LIB SYMBOL
 *   prints "ready PID" once loaded, then for each stdin line "RATE SECONDS PHASE" calls FN RATE times a
 *   second for SECONDS (kind = PHASE, count = 4096 << (i % 8)) and prints "done CALLS ELAPSED_NS".
 * Pacing: every 64 calls the clock is read and the loop sleeps while it is ahead of RATE * elapsed, so a
 * producer that cannot reach RATE runs flat out and reports the rate it achieved. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: %s LIB SYMBOL\n", argv[0]); return 2; }
    void *h = dlopen(argv[1], RTLD_NOW);
    if (!h) { fprintf(stderr, "%s\n", dlerror()); return 1; }
    int (*fn)(void *, const void *, size_t, int) = (int (*)(void *, const void *, size_t, int))dlsym(h, argv[2]);
    if (!fn) { fprintf(stderr, "%s\n", dlerror()); return 1; }
    static char dst[64], src[64];
    volatile int sink = 0;
    for (int i = 0; i < 16; i++) sink += fn(dst, src, 64, 0);  /* first-call initialisation */
    printf("ready %d\n", getpid());
    fflush(stdout);
    char line[256];
    while (fgets(line, sizeof(line), stdin)) {
        double rate = 0, secs = 0;
        int phase = 0;
        if (sscanf(line, "%lf %lf %d", &rate, &secs, &phase) != 3 || rate <= 0 || secs <= 0) break;
        long long t0 = now_ns(), end = t0 + (long long)(secs * 1e9), t = t0;
        long long calls = 0;
        while (t < end) {
            for (int j = 0; j < 64; j++, calls++) sink += fn(dst, src, (size_t)4096 << (calls & 7), phase);
            t = now_ns();
            long long due = (long long)((double)(t - t0) * rate / 1e9);  /* calls due by now */
            if (calls > due) {
                long long ahead_ns = (long long)((double)(calls - due) * 1e9 / rate);
                if (ahead_ns > 50000) {  /* more than 50 us ahead: sleep it off */
                    struct timespec s = {0, ahead_ns > 999999999 ? 999999999 : ahead_ns};
                    nanosleep(&s, NULL);
                    t = now_ns();
                }
            }
        }
        printf("done %lld %lld\n", calls, now_ns() - t0);
        fflush(stdout);
    }
    return sink == 12345 ? 3 : 0;
}
