"""C++ names demangled in bulk: libstdc++'s ``__cxa_demangle`` called through ctypes, the same function
the cxxfilt package wraps (so the same text), with less per-name overhead: a PyTorch library demangles
120k names per cold read. Where libstdc++ cannot be loaded, cxxfilt is used (it then fails the same
way, or finds it where this does not).

One ctypes call per name: ``__cxa_demangle`` writes into a buffer of ours (``malloc``'ed once per
:func:`demangle_all`), read through a ctypes array over it; when a name does not fit, it frees that
buffer and returns a bigger one, which becomes ours. libstdc++ is loaded as a :class:`ctypes.PyDLL`
(the call keeps the GIL: a few microseconds each, not worth releasing and taking back 120k times).
"""

from __future__ import annotations

import ctypes as ct
import logging
from collections.abc import Callable, Sequence
from functools import partial

log = logging.getLogger(__name__)

#: bytes of the first output buffer (most demangled names are shorter; longer ones grow it)
BUFFER = 4096

_impl: Callable[[Sequence[str]], list[str]] | None = None


def _load() -> Callable[[Sequence[str]], list[str]]:
    global _impl
    if _impl is None:
        try:
            cxx = ct.PyDLL("libstdc++.so.6")
            libc = ct.CDLL(None)
            fn = cxx.__cxa_demangle
            # no argtypes: every argument is passed ready-made (bytes, c_void_p, byref), nothing converted
            fn.restype = ct.c_void_p
            malloc, free = libc.malloc, libc.free
            malloc.argtypes, malloc.restype = (ct.c_size_t,), ct.c_void_p
            free.argtypes, free.restype = (ct.c_void_p,), None
        except (OSError, AttributeError) as e:
            log.debug("no __cxa_demangle through ctypes (%s): using cxxfilt", e)
            _impl = _cxxfilt
        else:
            _impl = partial(_cxa, fn, malloc, free)
    return _impl


def _cxa(fn, malloc, free, names: Sequence[str]) -> list[str]:
    """Each name demangled by ``__cxa_demangle(name, buffer, &length, &status)`` (see the module)."""
    cap = BUFFER
    addr = malloc(cap)
    if not addr:
        raise MemoryError("malloc failed for the demangling buffer")
    buf, length, status = ct.c_void_p(addr), ct.c_size_t(cap), ct.c_int()
    plen, pstatus = ct.byref(length), ct.byref(status)
    text = (ct.c_char * cap).from_address(addr)
    out: list[str] = []
    append = out.append
    try:
        for n in names:
            if n.startswith("_Z"):
                try:
                    b = n.encode()
                except UnicodeEncodeError:  # a lone surrogate cannot come from an ELF file; kept as is
                    append(n)
                    continue
                p = fn(b, buf, plen, pstatus)
                if p is not None:  # NULL: not a valid name (the buffer is untouched), kept as is
                    if p != addr:  # it did not fit: the buffer was freed, the name is in a new one
                        addr = buf.value = p
                        text = (ct.c_char * length.value).from_address(addr)
                    append(text.value.decode("utf-8", "replace"))
                    continue
            append(n)
    finally:
        free(addr)
    return out


def _cxxfilt(names: Sequence[str]) -> list[str]:
    import cxxfilt

    out = []
    for n in names:
        try:
            out.append(cxxfilt.demangleb(n.encode()).decode("utf-8", "replace") if n.startswith("_Z") else n)
        except (cxxfilt.InvalidName, UnicodeEncodeError):
            out.append(n)
    return out


def demangle_all(names: Sequence[str]) -> list[str]:
    """The demangled form of each name (the name itself when it is not a mangled C++ name)."""
    if not any(n.startswith("_Z") for n in names):
        return list(names)
    return _load()(names)
