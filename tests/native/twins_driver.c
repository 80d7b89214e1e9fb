/* Calls libtwins (twins_a.c, twins_b.c) and prints what it called, for tests/e2e/test_bind_tree.py:
 *   twins_driver calls NA NB        call_a(NA), call_b(NB): prints "a PID NA" and "b PID NB"
 *   twins_driver fork N1 N2         forks two children; child i calls call_a(Ni), prints "a PID Ni"; the
 *                                   parent waits for both and calls nothing
 *   twins_driver late LIB K         prints "ready", waits for a line on stdin, then dlopens LIB and calls
 *                                   call_a(K) at once; prints "a PID K"
 *   twins_driver after GO OUT N1 N2 writes its lines to OUT; waits until the file GO exists, then dlopens
 *                                   the library, calls call_a(N1) ("a PID N1") and forks a child that
 *                                   calls call_a(N2) ("a CHILD N2"); stdin is never read (under
 *                                   `ingero mcp --live -- CMD` it is the MCP channel)
 * Links libtwins dynamically (calls, fork) or not at all (late, after). */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

typedef long (*call_fn)(int);

static call_fn lookup(const char *lib, const char *name) {
    void *h = dlopen(lib, RTLD_NOW);
    if (!h) {
        fprintf(stderr, "dlopen %s: %s\n", lib, dlerror());
        exit(2);
    }
    call_fn f = (call_fn)dlsym(h, name);
    if (!f) {
        fprintf(stderr, "dlsym %s: %s\n", name, dlerror());
        exit(2);
    }
    return f;
}

int main(int argc, char **argv) {
    if (argc < 4)
        return 2;
    const char *lib = getenv("TWINS_LIB") ? getenv("TWINS_LIB") : "libtwins.so.1";
    if (!strcmp(argv[1], "calls")) {
        int na = atoi(argv[2]), nb = atoi(argv[3]);
        lookup(lib, "call_a")(na);
        lookup(lib, "call_b")(nb);
        printf("a %d %d\nb %d %d\n", getpid(), na, getpid(), nb);
        return 0;
    }
    if (!strcmp(argv[1], "fork")) {
        call_fn a = lookup(lib, "call_a");
        for (int i = 0; i < 2; i++) {
            int n = atoi(argv[2 + i]);
            fflush(stdout);
            pid_t pid = fork();
            if (pid == 0) {
                a(n);
                printf("a %d %d\n", getpid(), n);
                fflush(stdout);
                _exit(0);
            }
        }
        while (wait(NULL) > 0)
            ;
        return 0;
    }
    if (!strcmp(argv[1], "after") && argc == 6) {
        if (!freopen(argv[3], "w", stdout))
            return 4;
        printf("ready\n");
        fflush(stdout);
        while (access(argv[2], F_OK) != 0)
            usleep(10000);
        int n1 = atoi(argv[4]), n2 = atoi(argv[5]);
        call_fn a = lookup(lib, "call_a");
        a(n1);
        printf("a %d %d\n", getpid(), n1);
        fflush(stdout);
        pid_t pid = fork();
        if (pid == 0) {
            a(n2);
            printf("a %d %d\n", getpid(), n2);
            fflush(stdout);
            _exit(0);
        }
        while (wait(NULL) > 0)
            ;
        return 0;
    }
    if (!strcmp(argv[1], "late")) {
        int k = atoi(argv[3]);
        char line[16];
        printf("ready\n");
        fflush(stdout);
        if (!fgets(line, sizeof line, stdin))
            return 3;
        lookup(argv[2], "call_a")(k);
        printf("a %d %d\n", getpid(), k);
        fflush(stdout);
        return 0;
    }
    return 2;
}
