/* Loads a libcuda (argv[1]) and, after a line arrives on stdin, calls cuInit(0) once, then the driver API
 * REPEAT times: cuMemAlloc_v2(1 MiB), cuMemcpy(4096), cuMemcpyAsync(8192), cuLaunchKernel(0xf00d),
 * cuCtxSynchronize.
 * Prints "ready" once loaded and "done" at the end. */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

typedef unsigned long long CUdeviceptr;
int main(int argc, char **argv) {
    void *h = dlopen(argv[1], RTLD_NOW);
    if (!h) { fprintf(stderr, "%s\n", dlerror()); return 1; }
    int repeat = argc > 2 ? atoi(argv[2]) : 1;
    int (*init)(unsigned) = dlsym(h, "cuInit");
    int (*alloc)(CUdeviceptr *, size_t) = dlsym(h, "cuMemAlloc_v2");
    int (*copy)(CUdeviceptr, CUdeviceptr, size_t) = dlsym(h, "cuMemcpy");
    int (*copy_async)(CUdeviceptr, CUdeviceptr, size_t, void *) = dlsym(h, "cuMemcpyAsync");
    int (*launch)(void *, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, void *, void **,
                  void **) = dlsym(h, "cuLaunchKernel");
    int (*sync)(void) = dlsym(h, "cuCtxSynchronize");
    printf("ready\n");
    fflush(stdout);
    char line[8];
    if (!fgets(line, sizeof line, stdin)) return 1;
    init(0);
    for (int i = 0; i < repeat; i++) {
        CUdeviceptr p = 0;
        alloc(&p, 1 << 20);
        copy(p, p, 4096);
        copy_async(p, p, 8192, (void *)0x5eed);
        launch((void *)0xf00d, 1, 1, 1, 32, 1, 1, 0, (void *)0x5eed, NULL, NULL);
        sync();
    }
    printf("done\n");
    fflush(stdout);
    return 0;
}
