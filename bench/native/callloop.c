/* Calls one no-argument function of a shared library N times and prints the mean ns per call.
 * usage: callloop LIB SYMBOL N [wait]     (e.g. libcudart.so.12 cudaGetLastError 1000000)
 * The library is dlopen()ed, so no CUDA headers are needed. Prints: "<ns per call> <pid>". With "wait",
 * prints "ready <pid>" after the warm-up and waits for a line on stdin before the timed loop. On stderr:
 * "cpu <ns per call>", the CPU time (user + system, traps included) the loop itself used, which other
 * processes competing for the CPU change much less than the wall time. */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: %s LIB SYMBOL N\n", argv[0]); return 2; }
    void *h = dlopen(argv[1], RTLD_NOW);
    if (!h) { fprintf(stderr, "%s\n", dlerror()); return 1; }
    int (*fn)(void) = (int (*)(void))dlsym(h, argv[2]);
    if (!fn) { fprintf(stderr, "%s\n", dlerror()); return 1; }
    long n = atol(argv[3]);
    volatile int sink = 0;
    for (int i = 0; i < 1000; i++) sink += fn();  /* warm up (and let a tracer see us) */
    if (argc > 4 && strcmp(argv[4], "wait") == 0) {
        char line[16];
        printf("ready %d\n", getpid());
        fflush(stdout);
        if (!fgets(line, sizeof line, stdin)) return 1;
    }
    struct timespec a, b, ca, cb;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ca);
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++) sink += fn();
    clock_gettime(CLOCK_MONOTONIC, &b);
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &cb);
    double ns = ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n;
    double cpu = ((cb.tv_sec - ca.tv_sec) * 1e9 + (cb.tv_nsec - ca.tv_nsec)) / n;
    printf("%.1f %d\n", ns, getpid());
    fprintf(stderr, "cpu %.1f\n", cpu);
    return 0;
}
