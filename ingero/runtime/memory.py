"""Giving back the memory bcc's in-process compiler leaves behind once the BPF programs are loaded.

bcc compiles a program's C text with the LLVM and clang libraries linked into this process. A compile
touches ~80 MB of their code and read-only data and leaves ~30 MB of freed heap: all counted in the
tracer's resident set (its peak RSS) for as long as it runs, though no program is compiled again until the
next probe spec. After a compile :func:`release_compiler_memory`:

* returns the heap's free pages to the system (glibc ``malloc_trim``);
* drops this process's mappings of the compiler libraries' pages that are unchanged copies of the file
  (``madvise(MADV_DONTNEED)`` on read-only private mappings with no anonymous page, per
  ``/proc/self/smaps``): the pages stay in the page cache, and the next compile faults them back in from
  there. A mapping holding any anonymous (copied-on-write) page is left alone, so no change the process
  made to a page is ever thrown away.
"""

from __future__ import annotations

import ctypes as ct
import logging
import os

log = logging.getLogger(__name__)

#: the libraries whose clean pages are dropped after a compile (bcc's compiler: LLVM, clang)
COMPILER_LIBRARIES = ("libLLVM", "libclang")
MADV_DONTNEED = 4

_libc: ct.CDLL | None = None


def _c() -> ct.CDLL | None:
    global _libc
    if _libc is None:
        try:
            libc = ct.CDLL(None, use_errno=True)
            libc.madvise.argtypes = (ct.c_void_p, ct.c_size_t, ct.c_int)
            libc.malloc_trim.argtypes = (ct.c_size_t,)
            _libc = libc
        except (AttributeError, OSError) as e:  # not glibc
            log.debug("no malloc_trim/madvise here: %s", e)
            return None
    return _libc


def clean_compiler_mappings(smaps: str = "/proc/self/smaps") -> list[tuple[int, int, str]]:
    """(start, length, path) of each read-only private mapping of a compiler library whose pages are all
    the file's own (no ``Anonymous`` kB): what :func:`release_compiler_memory` drops."""
    out: list[tuple[int, int, str]] = []
    cur: tuple[int, int, str] | None = None
    try:
        with open(smaps) as f:
            for line in f:
                head = line.split(None, 5)
                if "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
                    cur = None
                    path = head[5].strip() if len(head) > 5 else ""
                    perms = head[1]
                    name = os.path.basename(path)
                    if "w" not in perms and perms.endswith("p") and name.startswith(COMPILER_LIBRARIES):
                        lo, hi = (int(x, 16) for x in head[0].split("-"))
                        cur = (lo, hi - lo, path)
                elif cur is not None and head[0] == "Anonymous:":
                    if int(head[1]) == 0:
                        out.append(cur)
                    cur = None
    except OSError as e:
        log.debug("cannot read %s: %s", smaps, e)
    return out


def release_compiler_memory() -> None:
    """After a BPF compile: free heap back to the system and drop the compiler's clean file pages."""
    libc = _c()
    if libc is None:
        return
    libc.malloc_trim(0)
    for start, length, path in clean_compiler_mappings():
        if libc.madvise(start, length, MADV_DONTNEED) != 0:
            log.debug("madvise(%s) failed: %s", path, os.strerror(ct.get_errno()))
