/* A stand-in for the NVIDIA driver library (this machine has no libcuda): the driver API symbols the
 * standard probe set traces, with their real signatures, returning CUDA_SUCCESS. Built as
 * libcuda.so.1 (soname libcuda.so.1) by the tests. */
#include <stddef.h>

typedef unsigned long long CUdeviceptr;
typedef int CUresult;
typedef void *CUfunction;
typedef void *CUstream;

static CUdeviceptr next_ptr = 0x7000000000ULL;

CUresult cuInit(unsigned int flags) { (void)flags; return 0; }
CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t bytesize) { *dptr = next_ptr; next_ptr += bytesize; return 0; }
CUresult cuMemAllocManaged(CUdeviceptr *dptr, size_t bytesize, unsigned int flags) {
    (void)flags; *dptr = next_ptr; next_ptr += bytesize; return 0;
}
CUresult cuMemcpy(CUdeviceptr dst, CUdeviceptr src, size_t n) { (void)dst; (void)src; (void)n; return 0; }
CUresult cuMemcpyAsync(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s) {
    (void)dst; (void)src; (void)n; (void)s; return 0;
}
CUresult cuLaunchKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned shared, CUstream s, void **params, void **extra) {
    (void)f; (void)gx; (void)gy; (void)gz; (void)bx; (void)by; (void)bz; (void)shared; (void)s; (void)params;
    (void)extra;
    return 0;
}
CUresult cuCtxSynchronize(void) { return 0; }
