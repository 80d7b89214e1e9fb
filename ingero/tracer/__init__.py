"""Live tracing: the standard probe set (CUDA runtime and driver calls, host tracepoints) for a process
tree, feeding the store. ``host`` holds the host-side tracepoints."""
