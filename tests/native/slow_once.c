/* LD_PRELOAD shim for the fleet test: every pthread_once() call sleeps INGERO_TEST_ONCE_DELAY_US first.
 * libcudart calls pthread_once inside each runtime API call (twice in cudaStreamSynchronize), so its
 * calls become slower by a known amount, inside the probed function: a "slow node" without a GPU. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdlib.h>
#include <time.h>

extern int __pthread_once(pthread_once_t *once, void (*init)(void));

static long delay_us = -1;

int pthread_once(pthread_once_t *once, void (*init)(void)) {
    if (delay_us < 0) {
        const char *e = getenv("INGERO_TEST_ONCE_DELAY_US");
        delay_us = e ? atol(e) : 0;
    }
    if (delay_us > 0) {
        struct timespec ts = {delay_us / 1000000, (delay_us % 1000000) * 1000};
        nanosleep(&ts, NULL);
    }
    return __pthread_once(once, init);
}
