// Calls the real libcudart's cudaLaunchKernel with the address of a C++ function standing in for a
// kernel's host stub, so a probe can report `func` by its demangled name. Waits for a line on stdin.
#include <dlfcn.h>
#include <cstdio>
#include <cstddef>

struct dim3 { unsigned x, y, z; };
typedef int (*launch_t)(const void *, dim3, dim3, void **, size_t, void *);

namespace demo {
__attribute__((noinline)) void scale_kernel(float *p, int n) {
    for (int i = 0; i < n; i++) p[i] *= 2;
}
}  // namespace demo

int main(int argc, char **argv) {
    void *h = dlopen(argv[1], RTLD_NOW);
    if (!h) { std::printf("dlopen failed\n"); return 1; }
    launch_t launch = (launch_t)dlsym(h, "cudaLaunchKernel");
    char line[16];
    std::printf("ready\n");
    std::fflush(stdout);
    if (!std::fgets(line, sizeof line, stdin)) return 1;
    void *args[1] = {nullptr};
    int rc = launch((const void *)&demo::scale_kernel, dim3{4, 2, 1}, dim3{32, 1, 1}, args, 128, (void *)0x5EED0000);
    std::printf("done %d\n", rc);
    std::fflush(stdout);
    std::fgets(line, sizeof line, stdin);  // stay alive until the tester has read the events
    return 0;
}
