/* Calls tick(i) about 1000 times a second until killed (tests/e2e/test_probe_run_signals.py). */
#include <time.h>

__attribute__((noinline)) long tick(long i) {
    __asm__ volatile("" : "+r"(i));
    return i * 2;
}

int main(void) {
    struct timespec ms = {0, 1000000};
    for (long i = 0;; i++) {
        tick(i);
        nanosleep(&ms, 0);
    }
}
