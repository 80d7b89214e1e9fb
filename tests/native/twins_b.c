/* The second translation unit of libtwins (see twins_a.c): another static `twin`. */
static volatile long sum_b;

__attribute__((noinline, noclone)) static long twin(long x) {
    sum_b += 2 * x;
    __asm__ volatile("" ::: "memory");
    return sum_b;
}

long call_b(int n) {
    long s = 0;
    for (int i = 0; i < n; i++)
        s += twin(i);
    return s;
}
