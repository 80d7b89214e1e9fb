"""Finding CUDA libraries: the ones a process mapped, or every copy on this machine.

See the package docstring (:mod:`ingero.symbols`) for the search precedence and how a name picks a copy.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from ingero.errors import (
    IngeroError,
    LibraryNotFound,
    NoSuchProcess,
    NotAnElf,
    PermissionProblem,
    suggestion,
)
from ingero.symbols.elf import ElfInfo, read_elf_info
from ingero.symbols.searchpaths import LD_SO_CACHE, ldconfig_entries, search_dirs  # noqa: F401 - public here too
from ingero.symbols.versions import file_version, version_of

log = logging.getLogger(__name__)

#: Name stems (file name up to ``.so``) that count as CUDA libraries, as ``fnmatch`` patterns.
#: An explicit name or path given by the user matches any library, listed here or not.
CUDA_LIBRARY_STEMS: tuple[str, ...] = (
    "libcuda",  # the driver API (libcuda.so.1)
    "libcudart",  # the runtime API
    "libcublas",
    "libcublasLt",
    "libcudnn",
    "libcudnn_*",  # cuDNN 8/9 sub-libraries: ops, cnn, adv, graph, engines_*, heuristic
    "libnccl",
    "libcupti",
    "libnvrtc",
    "libnvrtc-builtins",
    "libcufft",
    "libcufftw",
    "libcurand",
    "libcusparse",
    "libcusparseLt",
    "libcusolver",
    "libcusolverMg",
    "libcufile",
    "libcufile_rdma",
    "libnvToolsExt",
    "libnvtx3interop",
    "libnvJitLink",
    "libnvidia-ml",
    "libnvblas",
    "libnvjpeg",
    "libnpp*",
    "libnvvm",
    "libnvshmem*",  # libnvshmem_host (PyTorch's wheels), which loads the driver with dlopen, not DT_NEEDED
    "libcutensor*",
    "libcudss*",
)

#: The discovery sources, in precedence order (``Library.source`` takes one of these, or ``pid``/``path``).
SOURCES: tuple[str, ...] = ("pip", "LD_LIBRARY_PATH", "CUDA_HOME", "conda", "ldconfig")



def stem_of(name: str) -> str:
    """``libcudart.so.12.9.79`` -> ``libcudart``; a name without ``.so`` is its own stem."""
    base = os.path.basename(name)
    i = base.find(".so")
    while i >= 0:
        rest = base[i + 3 :]
        if rest == "" or rest.startswith("."):
            return base[:i]
        i = base.find(".so", i + 1)
    return base


def _is_shared_name(name: str) -> bool:
    return stem_of(name) != name


def is_cuda_stem(stem: str) -> bool:
    return any(fnmatch.fnmatchcase(stem, p) for p in CUDA_LIBRARY_STEMS)


@dataclass(frozen=True)
class Library:
    """One library file (one build-id) that can be probed.

    ``path`` is the name a user knows it by: for a pid, the path in the process's ``/proc/PID/maps`` (its
    view, which may be another mount namespace); otherwise the path found on the search path.
    ``mapped_path`` (pid only) is where ingero reads the mapped file: ``path`` when it names the same file
    here, else ``/proc/PID/root/<path>`` (another mount namespace), else ``/proc/PID/map_files/<range>``
    (deleted or replaced since it was mapped). ``attach_path`` is the path to give the kernel for a
    uprobe: the kernel follows the ``/proc`` links, so it is ``mapped_path`` for a pid and the resolved
    ``path`` otherwise. ``duplicates`` are other paths to the same build-id (symlinks, copies);
    ``alternatives`` (on the chosen copy) are the other copies of the same stem with a different
    build-id. ``deleted``: the mapped file has no name left (``(deleted)`` in maps); ``replaced``: the
    path now names another file than the one mapped (an upgrade in place sets both: the kernel marks the
    old name deleted even if another hard link keeps the file).
    """

    path: str
    attach_path: str
    soname: str | None
    stem: str
    version: str | None
    build_id: str | None
    source: str
    chosen: bool = False
    deleted: bool = False
    replaced: bool = False
    pid: int | None = None
    mapped_path: str | None = None
    duplicates: tuple[str, ...] = ()
    alternatives: tuple[Library, ...] = ()
    #: the CUDA libraries this file links (its DT_NEEDED entries with a CUDA stem): with a pid, a mapped
    #: library that is not CUDA itself is listed when it links one (libtorch_cuda.so, libc10_cuda.so)
    links: tuple[str, ...] = ()

    @property
    def is_cuda(self) -> bool:
        """A CUDA library itself (by its stem), not only linking one."""
        return is_cuda_stem(self.stem)

    @property
    def read_path(self) -> str:
        """Where this process reads the file."""
        return self.mapped_path or self.path

    @property
    def name(self) -> str:
        return self.soname or os.path.basename(self.path)


# ---------------------------------------------------------------------------------------------------
# name matching


class _Spec:
    """What a user's library name means: a path, a glob, a soname/file name, or a bare stem."""

    def __init__(self, spec: str | None) -> None:
        self.raw = spec
        self.kind = "cuda"
        if spec is None:
            return
        if "/" in spec:
            self.kind = "path"
        elif any(c in spec for c in "*?["):
            self.kind = "glob"
        elif _is_shared_name(spec):
            self.kind = "soname"
            self.stem = stem_of(spec)
        else:
            self.kind = "stem"  # "cudart" means libcudart; "python3.11" still finds an executable
            self.stem = spec if spec.startswith("lib") else "lib" + spec
            self.stems = {spec, self.stem}

    def prefilter(self, basename: str) -> bool:
        """Cheap test on a file name, before the file is read (directory listings, maps, ld.so.cache)."""
        stem = stem_of(basename)
        if self.kind == "cuda":
            return _is_shared_name(basename) and is_cuda_stem(stem)
        if self.kind == "stem":
            return stem in self.stems
        if self.kind == "soname":
            return stem == self.stem
        if self.kind == "glob":
            return fnmatch.fnmatchcase(stem, self.raw) or fnmatch.fnmatchcase(basename, self.raw)
        return True

    def accepts(self, basename: str, soname: str | None) -> bool:
        """The final test, once the file's soname is known."""
        if self.kind == "soname":
            return self.raw in (basename, soname)
        if self.kind == "stem":
            return stem_of(basename) in self.stems or (soname is not None and stem_of(soname) in self.stems)
        if self.kind == "glob":
            names = (stem_of(basename), basename) + ((stem_of(soname), soname) if soname else ())
            return any(fnmatch.fnmatchcase(n, self.raw) for n in names)
        return self.prefilter(basename)


def names_library(name: str, path: str, soname: str | None) -> bool:
    """Does a probe's library ``name`` (a stem, soname, glob or path) mean this file (``path``, its
    ``soname``)? A path means only the file it names."""
    spec = _Spec(name)
    if spec.kind == "path":
        try:
            return os.path.samefile(name, path)
        except OSError:
            return False
    base = os.path.basename(path)
    return spec.prefilter(base) and spec.accepts(base, soname) or (
        soname is not None and spec.prefilter(soname) and spec.accepts(soname, soname)
    )


# ---------------------------------------------------------------------------------------------------
# search paths


_HOST_MACHINE: int | None = None


def _host_machine() -> int | None:
    global _HOST_MACHINE
    if _HOST_MACHINE is None:
        try:
            _HOST_MACHINE = read_elf_info("/proc/self/exe").machine
        except (IngeroError, OSError):
            _HOST_MACHINE = 0
    return _HOST_MACHINE or None


class _Candidate:
    __slots__ = ("source", "rank", "path", "info", "key")

    def __init__(self, source: str, rank: tuple, path: str, info: ElfInfo, key: str) -> None:
        self.source, self.rank, self.path, self.info, self.key = source, rank, path, info, key


def _file_key(info: ElfInfo, st: os.stat_result) -> str:
    return info.build_id or f"nobid-{st.st_dev}-{st.st_ino}-{st.st_size}-{st.st_mtime_ns}"


def _search(spec: _Spec, env: Mapping[str, str] | None, sys_path: Sequence[str] | None) -> list[Library]:
    files: list[tuple[str, tuple, str]] = []  # (source, rank, path)
    for di, (source, d) in enumerate(search_dirs(env, sys_path)):
        try:
            names = sorted(os.listdir(d))
        except OSError:
            continue
        files += [(source, (di, n), os.path.join(d, n)) for n in names if spec.prefilter(n)]
    nd = len(files) and files[-1][1][0] + 1
    ld = [(name, path) for name, path in ldconfig_entries() if spec.prefilter(name)]
    files += [("ldconfig", (nd, path), path) for _name, path in sorted(ld, key=lambda p: p[1])]

    host = _host_machine()
    by_inode: dict[tuple[int, int], tuple[ElfInfo, str]] = {}
    cands: list[_Candidate] = []
    for source, rank, path in files:
        try:
            st = os.stat(path)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        known = by_inode.get((st.st_dev, st.st_ino))
        if known is None:
            try:
                info = read_elf_info(path)
            except (IngeroError, OSError) as e:  # a linker script (libc.so), unreadable file, ...
                log.debug("skipping %s: %s", path, e)
                continue
            known = by_inode[(st.st_dev, st.st_ino)] = (info, _file_key(info, st))
        info, key = known
        if host and info.machine != host:
            continue
        if not spec.accepts(os.path.basename(path), info.soname):
            continue
        cands.append(_Candidate(source, rank, path, info, key))
    return _group(cands)


def _group(cands: list[_Candidate]) -> list[Library]:
    """One Library per file key, represented by its first path (preferring, within one directory, the
    file named after the soname over a development symlink), in precedence order."""
    groups: dict[str, list[_Candidate]] = {}
    for c in cands:
        groups.setdefault(c.key, []).append(c)
    reps = []
    for members in groups.values():
        first_dir = members[0].rank[0]
        same_dir = [m for m in members if m.rank[0] == first_dir]
        rep = min(same_dir, key=lambda m: (os.path.basename(m.path) != m.info.soname, m.rank))
        reps.append((rep.rank, rep, [m.path for m in members if m is not rep]))
    reps.sort(key=lambda r: r[0])
    libs = []
    for _rank, rep, dups in reps:
        path = rep.path
        libs.append(
            Library(
                path=path,
                attach_path=os.path.realpath(path),
                soname=rep.info.soname,
                stem=stem_of(rep.info.soname or path),
                version=file_version(path, rep.info.soname),
                build_id=rep.info.build_id,
                source=rep.source,
                duplicates=tuple(dict.fromkeys(dups)),
            )
        )
    return libs


def _mark_chosen(libs: list[Library]) -> list[Library]:
    """The first copy of each stem is the chosen one and carries the others as ``alternatives``."""
    first: dict[str, int] = {}
    others: dict[str, list[Library]] = {}
    for i, lib in enumerate(libs):
        if lib.stem in first:
            others[lib.stem].append(lib)
        else:
            first[lib.stem] = i
            others[lib.stem] = []
    out = list(libs)
    for stem, i in first.items():
        out[i] = replace(libs[i], chosen=True, alternatives=tuple(others[stem]))
    return out


# ---------------------------------------------------------------------------------------------------
# with a pid


@dataclass(frozen=True)
class _Mapping:
    start: str
    end: str
    dev: int
    inode: int
    path: str
    deleted: bool


def read_maps(pid: int) -> list[_Mapping]:
    """The file mappings of a process (one per mapped line). NoSuchProcess, PermissionProblem."""
    try:
        with open(f"/proc/{pid}/maps", encoding="utf-8", errors="surrogateescape") as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError):
        raise NoSuchProcess(f"no process with pid {pid}", hint="list processes with `ps -e`") from None
    except PermissionError:
        raise PermissionProblem(
            f"not allowed to read /proc/{pid}/maps (the process belongs to another user)",
            hint="run as root, or as the user that owns the process",
        ) from None
    out = []
    for line in text.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 6 or not parts[5].startswith("/"):
            continue
        rng, _perms, _off, dev, inode, path = parts
        if inode == "0":
            continue
        deleted = path.endswith(" (deleted)")
        if deleted:
            path = path[: -len(" (deleted)")]
        start, _, end = rng.partition("-")
        major, _, minor = dev.partition(":")
        out.append(
            _Mapping(start, end, os.makedev(int(major, 16), int(minor, 16)), int(inode), path, deleted)
        )
    return out


def _same_file(path: str, dev: int, inode: int) -> bool | None:
    """True/False if ``path`` is/is not the mapped file; None if it cannot be told (no such path)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev == dev and st.st_ino == inode


def _build_id_of(path: str) -> str | None:
    try:
        return read_elf_info(path).build_id
    except (IngeroError, OSError):
        return None


def _mapped_library(pid: int, m: _Mapping) -> Library | None:
    map_files = f"/proc/{pid}/map_files/{m.start}-{m.end}"
    in_ns = f"/proc/{pid}/root{m.path}"
    replaced = False
    if m.deleted:
        # the mapped file has no name left; if the path names a file again, that is another one
        read, replaced = map_files, os.path.exists(in_ns) or os.path.exists(m.path)
    elif _same_file(m.path, m.dev, m.inode):
        read = m.path
    elif _same_file(in_ns, m.dev, m.inode):
        read = in_ns
    else:
        # not the same inode through either path: replaced (e.g. a bind mount over the path), or a
        # stacked filesystem (overlayfs) that reports the lower file's inode in maps. Tell them apart
        # by content when map_files is readable.
        here = in_ns if os.path.exists(in_ns) else m.path
        mapped_id = _build_id_of(map_files)
        if mapped_id is None:
            log.debug("%s: cannot read %s to compare; trusting %s", m.path, map_files, here)
            read = here
        elif _build_id_of(here) == mapped_id:
            read = here
        else:
            read, replaced = map_files, True
    try:
        info = read_elf_info(read)
    except PermissionProblem:
        info = None  # map_files needs CAP_SYS_ADMIN; read_symbols will say so
    except (NotAnElf, LibraryNotFound):
        return None
    soname = info.soname if info else None
    return Library(
        path=m.path,
        attach_path=read,
        soname=soname,
        stem=stem_of(soname or m.path),
        # maps names are canonical (no symlinks to resolve); /proc/PID/root paths must not be resolved
        version=version_of((m.path,), soname, None if read == map_files else read),
        build_id=info.build_id if info else None,
        source="pid",
        deleted=m.deleted,
        replaced=replaced,
        pid=pid,
        mapped_path=read,
        links=tuple(n for n in (info.needed if info else ()) if is_cuda_stem(stem_of(n))),
    )


def _mapped(pid: int, spec: _Spec) -> list[Library]:
    maps = read_maps(pid)
    target = None
    if spec.kind == "path":
        try:
            st = os.stat(spec.raw)
            target = (st.st_dev, st.st_ino)
        except OSError:
            target = None
    seen: set[tuple[int, int, str]] = set()
    cands: list[tuple[Library, str]] = []
    for m in maps:
        if (m.dev, m.inode, m.path) in seen:
            continue
        base = os.path.basename(m.path)
        if spec.kind == "path":
            if not (m.path == spec.raw or (m.dev, m.inode) == target or os.path.realpath(spec.raw) == m.path):
                continue
        elif spec.kind == "cuda":
            if not _is_shared_name(base):
                continue
        elif not spec.prefilter(base):
            continue
        seen.add((m.dev, m.inode, m.path))
        lib = _mapped_library(pid, m)
        if lib is None:
            continue
        if spec.kind == "cuda":
            if not (spec.accepts(base, lib.soname) or lib.links):  # CUDA, or links a CUDA library
                continue
        elif spec.kind != "path" and not spec.accepts(base, lib.soname):
            continue
        cands.append((lib, lib.build_id or f"pid-{m.dev}-{m.inode}"))
    out: list[Library] = []
    by_key: dict[str, int] = {}
    for lib, key in cands:
        if key in by_key:
            i = by_key[key]
            out[i] = replace(out[i], duplicates=out[i].duplicates + (lib.path,))
            continue
        by_key[key] = len(out)
        out.append(lib)
    return out


# ---------------------------------------------------------------------------------------------------
# the API


def find_libraries(
    pid: int | None = None,
    name: str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    sys_path: Sequence[str] | None = None,
) -> list[Library]:
    """Libraries that can be probed, in precedence order, one per build-id.

    Without ``pid``: every copy on the search path (see :mod:`ingero.symbols`); with ``pid``: the files
    the process has mapped. ``name`` filters: a stem (``libcudart``/``cudart``), a soname or file name
    (``libcudart.so.12``), a glob (``libcu*``) or a path; without it, only CUDA libraries
    (:data:`CUDA_LIBRARY_STEMS`) are listed, and with a pid also every mapped library that links one
    (``Library.links``: libtorch_cuda.so, libc10_cuda.so, libnvshmem_host.so, ...). The first copy of
    each stem has ``chosen=True`` and lists the other copies in ``alternatives``. ``env``/``sys_path``
    replace ``os.environ``/``sys.path`` for the search (tests, or inspecting another environment).
    """
    spec = _Spec(name)
    if pid is not None:
        return _mark_chosen(_mapped(pid, spec))
    if spec.kind == "path":
        try:
            return [_explicit(name)]
        except LibraryNotFound:
            return []
    return _mark_chosen(_search(spec, env, sys_path))


def _explicit(path: str) -> Library:
    info = read_elf_info(path)  # LibraryNotFound / NotAnElf / PermissionProblem
    if os.path.isdir(path):
        raise NotAnElf(f"{path} is a directory, not an ELF file")
    return Library(
        path=path,
        attach_path=os.path.realpath(path),
        soname=info.soname,
        stem=stem_of(info.soname or path),
        version=file_version(path, info.soname),
        build_id=info.build_id,
        source="path",
        chosen=True,
    )


def known_names(libs: Iterable[Library]) -> list[str]:
    names: list[str] = []
    for lib in libs:
        names += [lib.stem, lib.soname or "", os.path.basename(lib.path)]
    return [n for n in dict.fromkeys(names) if n]


def resolve_library(spec: str, pid: int | None = None) -> Library:
    """The one library a user means: a path or a soname picks exactly, a bare stem (``libcudart``,
    ``cudart``) or glob picks the first copy in precedence order (``chosen``, with the others as
    ``alternatives``). With ``pid``, only what that process mapped.

    Raises LibraryNotFound (with a did-you-mean), NotAnElf, NoSuchProcess, PermissionProblem.
    """
    spec = spec.strip()
    if not spec:
        raise LibraryNotFound("no library named", hint="give a name such as libcudart, a soname or a path")
    if pid is not None:
        found = find_libraries(pid=pid, name=spec)
        if found:
            return found[0]
        files = list(dict.fromkeys(os.path.basename(m.path) for m in read_maps(pid)))
        cuda = [f for f in files if _is_shared_name(f) and is_cuda_stem(stem_of(f))]
        if cuda:
            names = list(dict.fromkeys([stem_of(f) for f in cuda] + cuda))
            hint = suggestion(spec, names) or f"it has mapped {', '.join(cuda)}"
        else:
            # a CUDA name gets no did-you-mean over unrelated libraries ('libcudart' -> 'libc')
            wanted = stem_of(spec)
            hint = None
            if not (is_cuda_stem(wanted) or is_cuda_stem("lib" + wanted)):
                hint = suggestion(spec, list(dict.fromkeys([stem_of(f) for f in files] + files)))
            hint = hint or f"it has mapped no CUDA library yet; list them with `ingero libs --pid {pid}`"
        comm = _comm(pid)
        raise LibraryNotFound(f"process {pid}{comm} has no library '{spec}' mapped", hint=hint)
    if "/" in spec:
        return _explicit(spec)
    found = find_libraries(name=spec)
    if found:
        return found[0]
    everything = find_libraries()
    candidates = known_names(everything) + [s for s in CUDA_LIBRARY_STEMS if "*" not in s]
    hint = suggestion(spec, candidates) or "list the libraries found with `ingero libs`"
    raise LibraryNotFound(f"no library '{spec}' found on this machine's search paths", hint=hint)


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as f:
            return f" ({f.read().strip()})"
    except OSError:
        return ""
