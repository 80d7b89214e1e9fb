"""Which CUDA libraries are there to probe, and the functions (with file offsets) inside them.

Finding libraries
-----------------
**With a pid**, only what the process really mapped counts (a probe on another copy of the same library
gets no events): the file mappings of ``/proc/PID/maps`` whose name stem is a CUDA library
(:data:`CUDA_LIBRARY_STEMS`; an explicit name or path matches any library). Each is read through the
first of these that holds the very file mapped (same device and inode):

1. its path here (same mount namespace);
2. ``/proc/PID/root/<path>`` (a process in another mount namespace, e.g. a container);
3. ``/proc/PID/map_files/<start>-<end>`` when the file was deleted (``(deleted)`` in maps) or the path
   now holds another file (``replaced``). Reading map_files needs root (CAP_SYS_ADMIN).

``Library.attach_path`` is that same path: the kernel resolves the ``/proc`` links when a uprobe is
created (checked in tests/test_discovery.py with real tracefs uprobes), and the probe then holds the
file itself.

**Without a pid**, every copy on this machine, one entry per GNU build-id, in this precedence:

1. ``pip`` -- ``nvidia-*`` wheels of the active environment: ``<site-packages>/nvidia/*/lib{,64}`` for
   each ``sys.path`` entry, then ``$VIRTUAL_ENV``'s site-packages;
2. ``LD_LIBRARY_PATH`` -- its directories, in order (empty entries ignored);
3. ``CUDA_HOME`` -- ``$CUDA_HOME`` (else ``$CUDA_PATH``, else ``/usr/local/cuda``): ``lib64``, then ``lib``;
4. ``conda`` -- ``$CONDA_PREFIX/lib``, then the conda root's ``lib`` and ``envs/*/lib`` (the root from
   ``$CONDA_ROOT``, ``$MAMBA_ROOT_PREFIX``, ``$CONDA_EXE`` or ``$CONDA_PREFIX``);
5. ``ldconfig`` -- the dynamic linker's cache (``/etc/ld.so.cache``, else ``ldconfig -p``).

Within a directory files are taken by name; within the ldconfig cache, by path. A directory reached
twice (``lib64 -> lib``) counts once, under its first source. The same build-id reached again (a symlink,
a copy, the ldconfig entry of a toolkit already found through ``CUDA_HOME``) is not a new entry: its path
goes to the first entry's ``duplicates``. Within one directory the file named after the soname
represents the entry rather than a development symlink (``libcudart.so.13``, not ``libcudart.so``).

Picking one: a **bare name** (``libcudart``, ``cudart``) or a glob takes the first copy in that order,
marked ``chosen``, which lists the other copies of the same stem (different build-ids) as
``alternatives``; a **soname** (``libcudart.so.12``) takes the first copy with that soname or file name;
a **path** or a **pid** picks exactly.

``Library.version`` comes from the real file name (``libcudart.so.12.9.79``), else from the pip wheel
that installed the file (its dist-info ``RECORD``: ``nvidia_cuda_runtime_cu12-12.9.79``), else from the
soname's major (``12``).

Reading symbols
---------------
:func:`read_symbols` returns the defined functions of ``.dynsym`` and ``.symtab`` with their file
offsets, symbol versions and demangled names (:mod:`ingero.symbols.elf`), cached per build-id in
``cache_dir()/symbols/`` (:mod:`ingero.symbols.cache`); a warm read neither imports pyelftools nor
demangles (:mod:`ingero.symbols.demangle`: libstdc++'s ``__cxa_demangle`` in bulk).
"""

from ingero.symbols.discovery import (
    CUDA_LIBRARY_STEMS,
    SOURCES,
    Library,
    find_libraries,
    resolve_library,
    search_dirs,
)
from ingero.symbols.table import Symbol, SymbolTable, read_symbols, symbol_count

__all__ = [
    "CUDA_LIBRARY_STEMS",
    "SOURCES",
    "Library",
    "Symbol",
    "SymbolTable",
    "find_libraries",
    "read_symbols",
    "resolve_library",
    "search_dirs",
    "symbol_count",
]
