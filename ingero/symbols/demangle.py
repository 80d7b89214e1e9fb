"""C++ names demangled in bulk: libstdc++'s ``__cxa_demangle`` called through ctypes, the same function
the cxxfilt package wraps (so the same text), with less per-name overhead: a PyTorch library demangles
120k names per cold read. Where libstdc++ cannot be loaded, cxxfilt is used (it then fails the same
way, or finds it where this does not).
"""

from __future__ import annotations

import ctypes as ct
import logging
from collections.abc import Callable, Sequence

log = logging.getLogger(__name__)

_impl: Callable[[bytes], bytes | None] | None = None


def _load() -> Callable[[bytes], bytes | None]:
    global _impl
    if _impl is None:
        try:
            cxx = ct.CDLL("libstdc++.so.6")
            libc = ct.CDLL(None)
            fn = cxx.__cxa_demangle
            fn.restype = ct.c_void_p
            fn.argtypes = (ct.c_char_p, ct.c_void_p, ct.c_void_p, ct.POINTER(ct.c_int))
            free = libc.free
            free.argtypes = (ct.c_void_p,)
            free.restype = None
        except (OSError, AttributeError) as e:
            log.debug("no __cxa_demangle through ctypes (%s): using cxxfilt", e)
            _impl = _cxxfilt
        else:
            status = ct.c_int()
            pstatus = ct.byref(status)
            string_at = ct.string_at

            def demangle(name: bytes) -> bytes | None:
                p = fn(name, None, None, pstatus)
                if not p:
                    return None
                try:
                    return string_at(p)
                finally:
                    free(p)

            _impl = demangle
    return _impl


def _cxxfilt(name: bytes) -> bytes | None:
    import cxxfilt

    try:
        return cxxfilt.demangleb(name)
    except cxxfilt.InvalidName:
        return None


def demangle_all(names: Sequence[str]) -> list[str]:
    """The demangled form of each name (the name itself when it is not a mangled C++ name)."""
    if not any(n.startswith("_Z") for n in names):
        return list(names)
    demangle = _load()
    out = []
    for n in names:
        if n.startswith("_Z"):
            try:
                got = demangle(n.encode())
            except UnicodeEncodeError:  # a lone surrogate cannot come from an ELF file; kept as is
                got = None
            if got is not None:
                out.append(got.decode("utf-8", "replace"))
                continue
        out.append(n)
    return out
