"""Which exported CUDA function is which op of the standard set, and how its call is read.

``RUNTIME_SYMBOLS`` (source CUDA) and ``DRIVER_SYMBOLS`` (source DRIVER) map an exported symbol to its op
code in upstream's codes (:mod:`ingero.store.schema` names them), with the argument layout of ingero's own
ops in the bits above :data:`OP_MASK` (read by ``bpf/cuda.bpf.c`` from the attach cookie).
"""

from __future__ import annotations

from ingero.store.schema import SOURCE_CUDA, SOURCE_DRIVER, op_code

#: exported symbol -> op in upstream's codes (source CUDA for RUNTIME_SYMBOLS, DRIVER for DRIVER_SYMBOLS);
#: per-thread-default-stream variants share the op. ingero's own ops (schema.INGERO_OPS) are added below.
RUNTIME_SYMBOLS: dict[str, int] = {
    "cudaMalloc": 1, "cudaFree": 2, "cudaLaunchKernel": 3, "cudaLaunchKernel_ptsz": 3,
    "cudaMemcpy": 4, "cudaMemcpy_ptds": 4, "cudaStreamSynchronize": 5, "cudaStreamSynchronize_ptsz": 5,
    "cudaDeviceSynchronize": 6, "cudaMemcpyAsync": 7, "cudaMemcpyAsync_ptsz": 7, "cudaMallocManaged": 8,
    "cudaMemcpy2D": 9, "cudaMemcpy2D_ptds": 9, "cudaMemcpy2DAsync": 10, "cudaMemcpy2DAsync_ptsz": 10,
    "cudaMemcpyPeer": 11, "cudaMemcpyPeerAsync": 12,
}
DRIVER_SYMBOLS: dict[str, int] = {
    "cuLaunchKernel": 1, "cuLaunchKernel_ptsz": 1, "cuMemcpy": 2, "cuMemcpy_ptds": 2,
    "cuMemcpyAsync": 3, "cuMemcpyAsync_ptsz": 3, "cuCtxSynchronize": 4, "cuMemAlloc_v2": 5,
    "cuMemAllocManaged": 6,
}

# argument layouts of ingero's own ops, carried in the attach cookie's bits 16-31 (read by bpf/cuda.bpf.c):
# arg0 from parameter A0, arg1 from parameter A1, an output parameter OUT read at return (when the call
# succeeded) into arg1 as KIND
OUT_U32, OUT_U64, OUT_ALLOC, FREE_SIZE = 1, 2, 3, 4
#: what ``bpf/cuda.bpf.c`` reads these as, given to the compiler as ``-D`` definitions by the loader
C_DEFINES: dict[str, int] = {"SRC_CUDA": SOURCE_CUDA, "SRC_DRIVER": SOURCE_DRIVER, "OUT_U32": OUT_U32,
                             "OUT_U64": OUT_U64, "OUT_ALLOC": OUT_ALLOC, "FREE_SIZE": FREE_SIZE}
#: the op code in a symbol table's value (the bits above it are the argument layout)
OP_MASK = 0xFF


def call_shape(arg0: int = 0, arg1: int = 0, out: int = 0, kind: int = 0) -> int:
    """The cookie bits (above source and op) describing where a call's arg0/arg1 come from."""
    return (arg0 | arg1 << 4 | out << 8 | kind << 12) << 16


_COUNT = call_shape(out=1, kind=OUT_U32)              # f(int *out)
_CREATE = call_shape(arg0=2, out=1, kind=OUT_U64)     # f(handle *out, flags, ...)
_HOST_ALLOC = call_shape(arg0=2, out=1, kind=OUT_ALLOC)  # f(void **out, size, ...)
_FREE = call_shape(arg0=1, kind=FREE_SIZE)            # f(void *p)
_EVENT_RECORD = call_shape(arg0=1, arg1=2)            # f(event, stream)
_FIRST = call_shape(arg0=1)                           # f(x)
_NONE = 0                                             # f(): nothing to read

#: ingero's own calls: exported symbol -> (op name of schema.INGERO_OPS, argument layout)
OWN_CALLS: dict[str, tuple[str, int]] = {
    "cudaGetDeviceCount": ("cudaGetDeviceCount", _COUNT), "cudaGetDevice": ("cudaGetDevice", _COUNT),
    "cudaSetDevice": ("cudaSetDevice", _FIRST), "cudaDriverGetVersion": ("cudaDriverGetVersion", _COUNT),
    "cudaRuntimeGetVersion": ("cudaRuntimeGetVersion", _COUNT),
    "cudaGetLastError": ("cudaGetLastError", _NONE), "cudaPeekAtLastError": ("cudaPeekAtLastError", _NONE),
    "cudaStreamCreate": ("cudaStreamCreate", call_shape(out=1, kind=OUT_U64)),
    "cudaStreamCreateWithFlags": ("cudaStreamCreateWithFlags", _CREATE),
    "cudaStreamCreateWithPriority": ("cudaStreamCreateWithPriority", _CREATE),
    "cudaEventRecord": ("cudaEventRecord", _EVENT_RECORD), "cudaEventRecord_ptsz": ("cudaEventRecord", _EVENT_RECORD),
    "cudaEventSynchronize": ("cudaEventSynchronize", _FIRST),
    "cudaHostAlloc": ("cudaHostAlloc", _HOST_ALLOC), "cudaMallocHost": ("cudaMallocHost", _HOST_ALLOC),
    "cudaFreeHost": ("cudaFreeHost", _FREE),
    "cuInit": ("cuInit", _FIRST), "cuDriverGetVersion": ("cuDriverGetVersion", _COUNT),
    "cuDeviceGetCount": ("cuDeviceGetCount", _COUNT),
    "cuDeviceGet": ("cuDeviceGet", call_shape(arg0=2, out=1, kind=OUT_U32)),
    "cuStreamCreate": ("cuStreamCreate", _CREATE),
    "cuEventRecord": ("cuEventRecord", _EVENT_RECORD), "cuEventRecord_ptsz": ("cuEventRecord", _EVENT_RECORD),
    "cuEventSynchronize": ("cuEventSynchronize", _FIRST),
    "cuMemAllocHost_v2": ("cuMemAllocHost", _HOST_ALLOC), "cuMemHostAlloc": ("cuMemHostAlloc", _HOST_ALLOC),
    "cuMemFreeHost": ("cuMemFreeHost", _FREE),
}
for _sym, (_name, _shape) in OWN_CALLS.items():
    _source, _op = op_code(_name)
    (RUNTIME_SYMBOLS if _source == SOURCE_CUDA else DRIVER_SYMBOLS)[_sym] = _op | _shape
del _sym, _name, _shape, _source, _op
