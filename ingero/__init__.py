"""ingero: trace CUDA workloads with eBPF and widen the tracing mid-investigation."""

__version__ = "0.1.0"
