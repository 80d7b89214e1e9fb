/* Calls every function of probe_demo.c REPEAT times, after a line arrives on stdin (so probes attach
 * first). Prints "ready" when loaded and "done" at the end. */
#include <stdio.h>
#include <stdlib.h>

struct pair { int x; int y; long z; };
struct big { long a; long b; long c; };
long many(int, long, short, unsigned, long, long, long, int);
long take_pair(long, struct pair, long);
long late_pair(long, long, long, long, long, struct pair, long);
long take_big(int, struct big);
int greet(const char *, int);
long after_double(double, long);
const char *label(int);

int main(int argc, char **argv) {
    int repeat = argc > 1 ? atoi(argv[1]) : 1;
    char line[16];
    printf("ready\n");
    fflush(stdout);
    if (!fgets(line, sizeof line, stdin))
        return 1;
    long sum = 0;
    for (int i = 0; i < repeat; i++) {
        sum += many(-1, 2, -3, 4000000000u, 5, 6, 7000000007L, -8);
        sum += take_pair(10, (struct pair){11, -12, 13000000013L}, 14);
        sum += late_pair(1, 2, 3, 4, 5, (struct pair){21, 22, 23}, 24);
        sum += take_big(30, (struct big){31, 32, 33});
        sum += greet("hello, probe", i);
        sum += greet("x", 100);
        sum += after_double(2.5, 77);
        sum += label(i)[0];
    }
    printf("done %ld\n", sum);
    fflush(stdout);
    return 0;
}
