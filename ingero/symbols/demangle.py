"""C++ names demangled in bulk: libstdc++'s ``__cxa_demangle`` called through ctypes, the same function
the cxxfilt package wraps (so the same text), with less per-name overhead: a PyTorch library demangles
120k names per cold read. Where libstdc++ cannot be loaded, cxxfilt is used (it then fails the same
way, or finds it where this does not).

One ctypes call per name: ``__cxa_demangle`` writes into a buffer of ours (``malloc``'ed once per
:func:`demangle_all`), read through a ctypes array over it; when a name does not fit, it frees that
buffer and returns a bigger one, which becomes ours. libstdc++ is loaded as a :class:`ctypes.PyDLL`
(the call keeps the GIL: a few microseconds each, not worth releasing and taking back 120k times).

Many names at once (:func:`demangle_chunks`, a PyTorch library's listing) are demangled by two processes
when a second CPU is there and not busy: a worker process (this file run by a fresh interpreter, so
nothing of a caller's threads or state is copied) demangles the tail of the list while the caller
demangles the head and uses it, then demangles the tail's last pieces itself until it meets the worker;
names and results go through anonymous in-memory files (``memfd``), and if the worker fails for any
reason the caller demangles its part too.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from functools import partial

log = logging.getLogger(__name__)

#: bytes of the first output buffer (most demangled names are shorter; longer ones grow it)
BUFFER = 4096
#: names a demangling needs before a worker process takes a part of it (starting one costs ~20 ms of CPU)
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
    each yielded as soon as it is made. With :data:`PARALLEL_MIN` names or more and a spare CPU, a worker
    process demangles the tail (:data:`WORKER_SHARE`) meanwhile, from its start; the caller, done with the
    head, takes the tail's pieces from its end until it meets the worker (which stops there: a worker
    slowed by a busy machine is never waited for long). Closing the iterator early stops the worker."""
    impl = _load()
    n = len(names)
    split = n
    if n >= PARALLEL_MIN and hasattr(os, "memfd_create") and _spare_cpu():
        split = min(n, max(size, round(n * (1 - WORKER_SHARE) / size) * size))
    worker = _Worker.start(names, split, size) if split < n else None
    try:
        for i in range(0, split, size):
            yield _demangle(impl, names[i : i + size])
        starts = range(split, n, size)
        if worker is None:
            for i in starts:
                yield _demangle(impl, names[i : i + size])
            return
        taken: list[list[str]] = []  # the tail's last pieces, demangled here, last one first
        m = len(starts)
        while m and not worker.done(m - 1):
            worker.claim(m - 1)
            taken.append(_demangle(impl, names[starts[m - 1] : starts[m - 1] + size]))
            m -= 1
        got = worker.pieces(m)
        for i in starts[:m]:
            part = names[i : i + size]
            piece = next(got, None)
            yield _demangle(impl, part) if piece is None or len(piece) != len(part) else piece
        yield from reversed(taken)
    finally:
        if worker is not None:
            worker.close()


def _spare_cpu() -> bool:
    """Whether a CPU is there for a worker: more than one to run on, and either the load average of the
    last minute or the tasks running right now (besides this one) below their number. With no CPU free
    a worker costs time (+14% wall measured with one CPU for both); the load average alone lags a
    minute behind a machine that just became idle (and counts a benchmark's own runs)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    load, running = _load_now()
    return cpus > 1 and min(load, running - 1 if running is not None else load) < cpus


def _load_now() -> tuple[float, int | None]:
    """The 1-minute load average and the number of tasks running now (``/proc/loadavg``; None if
    unknown)."""
    try:
        with open("/proc/loadavg") as f:
            fields = f.read().split()
        return float(fields[0]), int(fields[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        try:
            return os.getloadavg()[0], None
        except OSError:
            return 0.0, None


class _Worker:
    """A worker process demangling ``names[start:]`` a piece at a time, in order: a fresh interpreter
    running this file (spawned, so nothing of the caller is copied or inherited but two memfds). The
    input memfd holds a byte per piece the caller claimed (the worker stops before it) and a byte per
    piece the worker wrote (single bytes of a shared mapping: no torn reads), then the names UTF-8
    encoded and NUL-separated. The output memfd holds, per piece, its byte length (8 bytes, little-endian)
    then the demangled names likewise (a piece with a NUL in a name kept as it is is sent empty, and done
    by the caller)."""

    def __init__(self, proc, fds: tuple[int, int], flags, count: int) -> None:
        self.proc = proc
        self.fds, self.flags, self.count = fds, flags, count

    def claim(self, k: int) -> None:
        """Piece ``k`` (of the worker's part) is the caller's: the worker stops before it."""
        self.flags[k] = 1

    def done(self, k: int) -> bool:
        """Whether the worker wrote piece ``k`` (and so every one before it)."""
        return self.flags[self.count + k] == 1

    @classmethod
    def start(cls, names: Sequence[str], start: int, size: int) -> _Worker | None:
        import mmap
        import subprocess
        import sys

        tail = names[start:]
        text = "\0".join(tail)
        if text.count("\0") != len(tail) - 1:  # a name holds a NUL: not sent
            return None
        blob = _encode(text)
        count = len(range(0, len(tail), size))
        fds: list[int] = []
        try:
            fds += [os.memfd_create("ingero-demangle-in", os.MFD_CLOEXEC),
                    os.memfd_create("ingero-demangle-out", os.MFD_CLOEXEC)]
            os.ftruncate(fds[0], 2 * count)
            _pwrite_all(fds[0], blob, 2 * count)
            flags = mmap.mmap(fds[0], 2 * count)
            proc = subprocess.Popen(
                [sys.executable, "-S", "-I", __file__, str(fds[0]), str(fds[1]), str(count), str(size), str(len(blob))],
                pass_fds=fds, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except (OSError, ValueError, TypeError) as e:  # TypeError: no sys.executable (an embedded Python)
            for fd in fds:
                os.close(fd)
            log.debug("no demangling worker (%s): demangling in one process", e)
            return None
        return cls(proc, (fds[0], fds[1]), flags, count)

    def pieces(self, m: int) -> Iterator[list[str]]:
        """Its first ``m`` pieces in order, each one it marked written (:meth:`done`): what the worker
        does after them, or how it ends, does not matter."""
        pos, fd = 0, self.fds[1]
        for _ in range(m):
            head = os.pread(fd, 8, pos)
            if len(head) != 8:
                return
            length = int.from_bytes(head, "little")
            blob = os.pread(fd, length, pos + 8)
            if len(blob) != length:
                return
            pos += 8 + length
            yield _decode(blob).split("\0")

    def close(self) -> None:
        if self.proc.poll() is None:  # still at a piece the caller took, or stopped early
            self.proc.kill()
        code = self.proc.wait()
        if code not in (0, -9):
            log.debug("the demangling worker failed (exit %s): the caller demangled its part", code)
        self.flags.close()
        for fd in self.fds:
            os.close(fd)


def _encode(text: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError:  # a lone surrogate of a name kept as it is passes
        return text.encode(errors="surrogatepass")


def _decode(blob: bytes) -> str:
    try:
        return blob.decode()
    except UnicodeDecodeError:  # a lone surrogate of a name kept as it is
        return blob.decode(errors="surrogatepass")


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _pread_all(fd: int, size: int, offset: int) -> bytes:
    parts = []
    while size > 0:
        got = os.pread(fd, size, offset)
        if not got:
            raise OSError(f"short read of the names: {size} bytes missing")
        parts.append(got)
        size, offset = size - len(got), offset + len(got)
    return b"".join(parts)


def _serve(fd_in: int, fd_out: int, count: int, size: int, nbytes: int) -> None:
    """The worker (see :class:`_Worker`)."""
    import mmap

    flags = mmap.mmap(fd_in, 2 * count)
    names = _decode(_pread_all(fd_in, nbytes, 2 * count)).split("\0")
    impl = _load()
    pos = 0
    for k in range(count):
        if flags[k]:  # the caller took this piece and the rest
            break
        part = names[k * size : (k + 1) * size]
        blob = _encode("\0".join(_demangle(impl, part)))
        if blob.count(b"\0") != len(part) - 1:  # a name kept as it is holds a NUL: left to the caller
            blob = b""
        _pwrite_all(fd_out, len(blob).to_bytes(8, "little") + blob, pos)
        pos += 8 + len(blob)
        flags[count + k] = 1


if __name__ == "__main__":  # the worker, run by _Worker.start as ``python -S -I demangle.py FDS...``
    import sys

    _serve(*map(int, sys.argv[1:6]))
