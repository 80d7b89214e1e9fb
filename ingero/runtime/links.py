"""uprobe_multi links: many uprobes of one file in one ``bpf(BPF_LINK_CREATE)`` call, detached by one close.

bcc compiles and loads the program (with ``expected_attach_type = BPF_TRACE_UPROBE_MULTI``); this
module creates the link with a raw syscall through ctypes, because bcc 0.26 knows nothing of these
links. Never mix them with bcc's classic ``attach_uprobe`` on the same functions (iovisor/bcc#5236: the
classic probe then carries a garbage ref_ctr_offset and later links on that offset fail with EINVAL).

Offsets are FILE offsets (``vaddr - p_vaddr + p_offset`` of the containing PT_LOAD segment), which
``ingero.symbols`` computes. The attach cookie of each offset is what ``bpf_get_attach_cookie()``
returns in the program: ingero uses it as the index of the symbol that fired.
"""

from __future__ import annotations

import ctypes as ct
import errno
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from ingero.errors import BpfUnavailable, IngeroError, NoSuchProcess, NotFound, PermissionProblem

SYS_bpf = 321  # x86-64
BPF_LINK_CREATE = 28
BPF_TRACE_UPROBE_MULTI = 48  # enum bpf_attach_type, Linux >= 6.6
BPF_F_UPROBE_MULTI_RETURN = 1
BPF_TRACE_UPROBE_SESSION = 57  # Linux >= 6.13: one program at entry and return (ingero.runtime.kfuncs)


class _LinkCreateUprobeMulti(ct.Structure):
    """``union bpf_attr`` as used by BPF_LINK_CREATE with its ``uprobe_multi`` member (64 bytes)."""

    _fields_ = [
        ("prog_fd", ct.c_uint32),
        ("target_fd", ct.c_uint32),
        ("attach_type", ct.c_uint32),
        ("flags", ct.c_uint32),
        ("path", ct.c_uint64),
        ("offsets", ct.c_uint64),
        ("ref_ctr_offsets", ct.c_uint64),
        ("cookies", ct.c_uint64),
        ("cnt", ct.c_uint32),
        ("um_flags", ct.c_uint32),
        ("pid", ct.c_uint32),
        ("_pad", ct.c_uint32),
    ]


assert ct.sizeof(_LinkCreateUprobeMulti) == 64

_libc = ct.CDLL(None, use_errno=True)
_libc.syscall.restype = ct.c_long
_libc.syscall.argtypes = [ct.c_long, ct.c_int, ct.c_void_p, ct.c_uint]


#: ``ingero_linked`` values of ``bpf/follow.bpf.c`` (the fork handshake, :mod:`ingero.tracer.follow`), given to
#: each loader of that file as ``-D`` definitions: the C file does not write them again
HOLD_LINKED, HOLD_HELD = 1, 2
FOLLOW_DEFINES: dict[str, int] = {"HOLD_LINKED": HOLD_LINKED, "HOLD_HELD": HOLD_HELD}

@dataclass
class UprobeMultiLink:
    """One attached link: ``cnt`` uprobes (or uretprobes) of one file. ``close()`` detaches all of them."""

    fd: int
    path: str
    offsets: tuple[int, ...]
    retprobe: bool
    pid: int
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def closed(self) -> bool:
        return self.fd < 0

    def link_id(self) -> int | None:
        """The kernel's link id (as ``bpftool link`` shows it), read from fdinfo."""
        if self.closed:
            return None
        try:
            with open(f"/proc/self/fdinfo/{self.fd}") as f:
                for line in f:
                    if line.startswith("link_id:"):
                        return int(line.split()[1])
        except OSError:
            return None
        return None

    def close(self) -> None:
        with self._lock:
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1

    def __enter__(self) -> UprobeMultiLink:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def attach_uprobe_multi(
    prog_fd: int,
    path: str | os.PathLike,
    offsets: Sequence[int],
    cookies: Sequence[int] | None = None,
    *,
    retprobe: bool = False,
    session: bool = False,
    pid: int = 0,
) -> UprobeMultiLink:
    """Attach ``prog_fd`` at every file offset of ``path`` as one link (``pid`` 0 = every process).

    The program must have been loaded with attach type 48 (``BPF_TRACE_UPROBE_MULTI``), e.g.
    ``bpf.load_func(name, BPF.KPROBE, attach_type=48)``. ``session``: the program was loaded with attach
    type 57 (``BPF_TRACE_UPROBE_SESSION``, Linux 6.13+) and runs at entry and at return of each call (see
    :mod:`ingero.runtime.kfuncs`). Raises a clear error for an empty or bad offset
    list, a missing file, a vanished pid, a permission problem or a kernel without uprobe_multi.
    """
    offsets = tuple(int(o) for o in offsets)
    n = len(offsets)
    if n == 0:
        raise IngeroError("no offsets to attach (a uprobe_multi link needs at least one)")
    if cookies is not None and len(cookies) != n:
        raise IngeroError(f"{len(cookies)} cookies for {n} offsets")
    if any(o <= 0 for o in offsets):
        raise IngeroError("uprobe offsets must be positive file offsets")
    spath = os.fspath(path)
    if not os.path.exists(spath):
        raise NotFound(f"cannot attach: no such file {spath}")
    offs = (ct.c_uint64 * n)(*offsets)
    cks = (ct.c_uint64 * n)(*cookies) if cookies is not None else None
    cpath = ct.create_string_buffer(os.fsencode(spath))
    attr = _LinkCreateUprobeMulti(
        prog_fd=prog_fd,
        attach_type=BPF_TRACE_UPROBE_SESSION if session else BPF_TRACE_UPROBE_MULTI,
        path=ct.addressof(cpath),
        offsets=ct.addressof(offs),
        cookies=ct.addressof(cks) if cks is not None else 0,
        cnt=n,
        um_flags=BPF_F_UPROBE_MULTI_RETURN if retprobe else 0,
        pid=pid,
    )
    fd = _libc.syscall(SYS_bpf, BPF_LINK_CREATE, ct.byref(attr), ct.sizeof(attr))
    if fd < 0:
        e = ct.get_errno()
        kind = ", return" if retprobe else ", session" if session else ""
        what = f"uprobe_multi link on {spath} ({n} offset{'s' if n != 1 else ''}{kind})"
        if e in (errno.EPERM, errno.EACCES):
            raise PermissionProblem(f"not allowed to attach {what}: {os.strerror(e)}", hint="run as root")
        if e == errno.ESRCH:
            raise NoSuchProcess(f"cannot attach {what}: no process with pid {pid}")
        if e == errno.ENOENT:
            raise NotFound(f"cannot attach {what}: {os.strerror(e)}")
        if e in (errno.ENOSYS, errno.EOPNOTSUPP):
            raise BpfUnavailable(f"this kernel cannot create {what}: {os.strerror(e)} (needs Linux 6.6+)")
        if e == errno.EINVAL:
            raise IngeroError(
                f"the kernel refused {what}: invalid argument",
                hint="an offset may not be a function start in this file, the program may not be loaded "
                "with attach type uprobe_multi, or a classic uprobe with another ref_ctr_offset sits there",
            )
        raise IngeroError(f"cannot attach {what}: {os.strerror(e)}")
    return UprobeMultiLink(fd=fd, path=spath, offsets=offsets, retprobe=retprobe, pid=pid)


@dataclass(frozen=True)
class LinkSpec:
    """What one uprobe_multi link attaches: a loaded program at offsets of one file, entry or return."""

    prog_fd: int
    path: str
    offsets: tuple[int, ...]
    cookies: tuple[int, ...] | None = None
    retprobe: bool = False
    session: bool = False  # a uprobe session link (entry and return in one program)


class ProcessLinks:
    """The links of some :class:`LinkSpec` values, one per spec and traced process (the link's pid field).

    A pid-filtered link plants its breakpoints only in that process's pages (the kernel's
    ``uprobe_multi_link_filter``) and runs its program only there (``uprobe_prog_run`` checks
    ``same_thread_group``), so other processes mapping the same file never trap. A forked child inherits
    its parent's breakpoints with the copied pages but not the parent's link: it needs its own
    (:meth:`add`, which the standard probe set calls while the new process is held at its first return to
    user space, see ``bpf/follow.bpf.c``). Thread-safe."""

    def __init__(self, specs: Sequence[LinkSpec]) -> None:
        if not specs:
            raise IngeroError("nothing to attach")
        self.specs = tuple(specs)
        self._by_pid: dict[int, list[UprobeMultiLink]] = {}
        self._lock = threading.Lock()
        self._closed = False

    def add(self, pid: int) -> bool:
        """Attach every spec to process ``pid`` (nothing if it has them). False if the process is gone."""
        with self._lock:
            if self._closed or pid in self._by_pid:
                return not self._closed
            links: list[UprobeMultiLink] = []
            try:
                for s in self.specs:
                    links.append(attach_uprobe_multi(s.prog_fd, s.path, s.offsets, s.cookies,
                                                     retprobe=s.retprobe, session=s.session, pid=pid))
            except NoSuchProcess:
                for link in links:
                    link.close()
                return False
            except BaseException:
                for link in links:
                    link.close()
                raise
            self._by_pid[pid] = links
            return True

    def extend(self, spec: LinkSpec) -> None:
        """Attach one more spec (another file) to every process that has the others."""
        with self._lock:
            if self._closed:
                return
            self.specs += (spec,)
            for pid, links in list(self._by_pid.items()):
                try:
                    links.append(attach_uprobe_multi(spec.prog_fd, spec.path, spec.offsets, spec.cookies,
                                                     retprobe=spec.retprobe, session=spec.session, pid=pid))
                except NoSuchProcess:
                    continue  # exited meanwhile: its links go when it is dropped

    def drop(self, pid: int) -> None:
        """Detach process ``pid``'s links (it exited, or stops being traced)."""
        with self._lock:
            links = self._by_pid.pop(pid, [])
        for link in links:
            link.close()

    def pids(self) -> set[int]:
        with self._lock:
            return set(self._by_pid)

    @property
    def links(self) -> list[UprobeMultiLink]:
        with self._lock:
            return [link for links in self._by_pid.values() for link in links]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            by_pid, self._by_pid = self._by_pid, {}
        for links in by_pid.values():
            for link in links:
                link.close()
