/* libtwins (twins_a.c + twins_b.c): each translation unit has its own static function `twin`, so the
 * library defines the name `twin` at two addresses (tests/e2e/test_bind_tree.py). call_a and call_b
 * call their own unit's twin n times. */
static volatile long sum_a;

__attribute__((noinline, noclone)) static long twin(long x) {
    sum_a += x;
    __asm__ volatile("" ::: "memory");
    return sum_a;
}

long call_a(int n) {
    long s = 0;
    for (int i = 0; i < n; i++)
        s += twin(i);
    return s;
}
