"""Resolved probe spec -> BPF C (rendered from ``probe_templates/``) plus the layouts to decode it.

:func:`compile_spec` is the whole public surface; :mod:`ingero.abi` (shared with the checker) places
arguments and :mod:`ingero.compiler.record` defines the record layouts once for both C and Python.
"""

from ingero.compiler.codegen import CompiledProbe, CompiledSpec, compile_spec

__all__ = ["CompiledProbe", "CompiledSpec", "compile_spec"]
