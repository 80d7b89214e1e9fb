/* Drives libdsltruth (dsl_truth.c) and prints ground truth, one call per line:
 *   rec tid=T n=N tag=G ret=R outer_ns=L   (L: the call's own duration as its caller measured it)
 *   keyed s=<NULL>|'text' ret=R
 *   negative x=X ret=R
 *   outp x=X out=O wide=W
 *   member y=Y tag=G
 *   arith a=A b=B
 * Waits for "go" on stdin first (the probes attach meanwhile); prints "done" at the end. */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

struct point { int32_t x; int64_t y; uint16_t tag; };
long rec(int n, long tag, long *inner_ns);
int keyed(const char *s);
int negative(int x);
int outp(int x, int *out, int64_t *wide);
long member(const struct point *p);
long arith(long a, unsigned long b);

static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;

static long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000L + t.tv_nsec;
}

/* calls rec(15, tag) and, to know each level's duration, calls rec(n, tag) for every n too (each call
 * at every depth prints the duration its caller saw) */
static void recurse(long tag) {
    long tid = syscall(SYS_gettid);
    for (int top = 15; top >= 15; top--) {
        long inner[16];
        long t0 = now_ns();
        long r = rec(top, tag, &inner[0]);
        long outer = now_ns() - t0;
        pthread_mutex_lock(&out_lock);
        printf("rec tid=%ld n=%d tag=%ld ret=%ld outer_ns=%ld inner_ns=%ld\n", tid, top, tag, r, outer, inner[0]);
        pthread_mutex_unlock(&out_lock);
    }
}

static void *worker(void *arg) {
    long tag = (long)arg;
    for (int i = 0; i < 5; i++)
        recurse(tag);
    return NULL;
}

int main(int argc, char **argv) {
    char line[16];
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready\n");
    if (!fgets(line, sizeof line, stdin))
        return 1;
    recurse(1);
    pthread_t th[4];
    for (long i = 0; i < 4; i++)
        pthread_create(&th[i], NULL, worker, (void *)(i + 2));
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    const char *strs[] = {NULL, "", "a-rather-long-string-of-forty-bytes-ok!", "short", NULL, "", "short"};
    for (int i = 0; i < 7; i++) {
        int r = keyed(strs[i]);
        if (strs[i])
            printf("keyed s='%s' ret=%d\n", strs[i], r);
        else
            printf("keyed s=<NULL> ret=%d\n", r);
    }
    for (int x = 990; x < 995; x++)
        printf("negative x=%d ret=%d\n", x, negative(x));
    for (int x = 1; x <= 6; x++) {
        int out = 0;
        int64_t wide = 0;
        outp(x, &out, x == 3 ? NULL : &wide);
        printf("outp x=%d out=%d wide=%lld null_wide=%d\n", x, out, (long long)wide, x == 3);
    }
    for (int i = 0; i < 5; i++) {
        struct point p = {i, (int64_t)i * -123456789012LL, (uint16_t)(i + 40000)};
        member(&p);
        printf("member y=%lld tag=%u\n", (long long)p.y, p.tag);
    }
    member(NULL);
    printf("member null\n");
    for (long a = -3; a <= 3; a++) {
        unsigned long b = (unsigned long)(a * a * 1000 + 7);
        arith(a, b);
        printf("arith a=%ld b=%lu\n", a, b);
    }
    printf("done\n");
    if (fgets(line, sizeof line, stdin)) { /* "bye" */ }
    return 0;
}
