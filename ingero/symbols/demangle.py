"""C++ names demangled in bulk: libstdc++'s ``__cxa_demangle`` called through ctypes, the same function
the cxxfilt package wraps (so the same text), with less per-name overhead: a PyTorch library demangles
120k names per cold read. Where libstdc++ cannot be loaded, cxxfilt is used (it then fails the same
way, or finds it where this does not).

One ctypes call per name: ``__cxa_demangle`` writes into a buffer of ours (``malloc``'ed once per
:func:`demangle_all`), read through a ctypes array over it; when a name does not fit, it frees that
buffer and returns a bigger one, which becomes ours. libstdc++ is loaded as a :class:`ctypes.PyDLL`
(the call keeps the GIL: a few microseconds each, not worth releasing and taking back 120k times).

Many names at once (:func:`demangle_chunks`, a PyTorch library's listing) are demangled by two processes
when two CPUs are there to run them: a forked worker demangles the tail of the list while the caller
demangles the head and uses it; the worker hands its results back through an anonymous in-memory file
(``memfd``), and if it fails for any reason the caller demangles the tail itself.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from functools import partial

log = logging.getLogger(__name__)

#: bytes of the first output buffer (most demangled names are shorter; longer ones grow it)
BUFFER = 4096
#: names a demangling needs before a worker process takes a part of it (a fork costs milliseconds)
PARALLEL_MIN = 16384
#: the worker's share of the names (their tail): less than half would leave it idle while the caller,
#: which also uses each piece as it comes (a listing formats and writes it), is still busy
WORKER_SHARE = 0.55

_impl: Callable[[Sequence[str]], list[str]] | None = None


def _load() -> Callable[[Sequence[str]], list[str]]:
    global _impl
    if _impl is None:
        import ctypes as ct  # here: a warm read demangles nothing

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
    import ctypes as ct

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
    if len(names) < PARALLEL_MIN:
        return _demangle(_load(), names)
    out: list[str] = []
    for part in demangle_chunks(names, 8192):
        out += part
    return out


def _demangle(impl: Callable[[Sequence[str]], list[str]], names: Sequence[str]) -> list[str]:
    if not any(n.startswith("_Z") for n in names):
        return list(names)
    return impl(names)


def demangle_chunks(names: Sequence[str], size: int) -> Iterator[list[str]]:
    """:func:`demangle_all` of ``names`` in consecutive pieces of ``size`` names (the last one shorter),
    each yielded as soon as it is made. With :data:`PARALLEL_MIN` names or more and two CPUs, a forked
    worker demangles the tail (:data:`WORKER_SHARE`) meanwhile; closing the iterator early stops it."""
    impl = _load()
    n = len(names)
    split = n
    if n >= PARALLEL_MIN and _cpus() > 1 and hasattr(os, "memfd_create"):
        split = min(n, max(size, round(n * (1 - WORKER_SHARE) / size) * size))
    worker = _Worker.start(impl, names, split, size) if split < n else None
    try:
        for i in range(0, split, size):
            yield _demangle(impl, names[i : i + size])
        done = worker.pieces() if worker is not None else None
        for i in range(split, n, size):
            part = names[i : i + size]
            got = next(done, None) if done is not None else None
            if got is None or len(got) != len(part):  # the worker failed: the rest is demangled here
                done = None
                yield _demangle(impl, part)
            else:
                yield [d or name for d, name in zip(got, part, strict=True)]
    finally:
        if worker is not None:
            worker.close()


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class _Worker:
    """A forked process demangling ``names[start:]`` a piece at a time into a memfd: per piece, its byte
    length (8 bytes, little-endian) then the demangled names UTF-8 encoded, NUL-separated (a demangled
    name has no NUL), an empty one where a name stays as it is."""

    def __init__(self, pid: int, fd: int) -> None:
        self.pid: int | None = pid
        self.fd = fd

    @classmethod
    def start(cls, impl, names: Sequence[str], start: int, size: int) -> _Worker | None:
        import warnings

        try:
            fd = os.memfd_create("ingero-demangle", os.MFD_CLOEXEC)
        except OSError as e:
            log.debug("no memfd for a demangling worker (%s): demangling in one process", e)
            return None
        with warnings.catch_warnings():
            # Python 3.12+ warns about forking a process that runs threads (the symbol cache's writer):
            # the child only calls __cxa_demangle, writes its memfd and leaves with os._exit, taking no lock
            # those threads could hold (malloc's are reset by fork itself)
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                pid = os.fork()
            except OSError as e:
                os.close(fd)
                log.debug("no demangling worker (%s): demangling in one process", e)
                return None
        if pid == 0:  # the worker
            code = 1
            try:
                import gc

                gc.disable()  # a collection would touch (and so copy) every page of the parent's objects
                for i in range(start, len(names), size):
                    part = names[i : i + size]
                    got = _demangle(impl, part)
                    blob = "\0".join([d if d is not name else "" for d, name in zip(got, part, strict=True)]).encode()
                    view = memoryview(len(blob).to_bytes(8, "little") + blob)
                    while view:
                        view = view[os.write(fd, view) :]
                code = 0
            finally:
                os._exit(code)
        return cls(pid, fd)

    def pieces(self) -> Iterator[list[str]]:
        """The worker's pieces in order, once it has exited; nothing if it failed."""
        pid, self.pid = self.pid, None
        try:
            _, status = os.waitpid(pid, 0)  # type: ignore[arg-type]
        except ChildProcessError:  # reaped by someone else (a waitpid(-1) elsewhere): its end is unknown
            log.debug("the demangling worker was reaped elsewhere: demangling its part here")
            return
        if os.waitstatus_to_exitcode(status) != 0:
            log.debug("the demangling worker failed (wait status %#x): demangling its part here", status)
            return
        pos = 0
        while len(head := os.pread(self.fd, 8, pos)) == 8:
            length = int.from_bytes(head, "little")
            blob = os.pread(self.fd, length, pos + 8)
            if len(blob) != length:
                return
            pos += 8 + length
            yield blob.decode().split("\0")

    def close(self) -> None:
        if self.pid is not None:  # stopped before its results were wanted
            import signal

            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):  # already reaped elsewhere
                pass
            self.pid = None
        os.close(self.fd)
