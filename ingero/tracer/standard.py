"""The standard probe set: CUDA runtime and driver calls plus host tracepoints, for one process tree.

``StandardTracer`` compiles ``bpf/host.bpf.c`` + ``bpf/cuda.bpf.c`` + ``bpf/follow.bpf.c`` once (host
tracepoints + one generic entry/return handler pair for every CUDA symbol), follows the given pids (forks
are added in the kernel), and attaches the CUDA handlers to every libcudart/libcuda file the traced
processes map, as two uprobe_multi links per file and traced process (the link's pid: no other process
ever traps), whose cookies carry upstream's (source, op) codes. A new process of the tree is held at its
first return to user space until its own links exist (a thread of the tracer attaches them and lets it
go: see ``bpf/follow.bpf.c``); an exited one's links are closed. ``scan()`` looks at the traced processes'
maps again, so a library loaded late with dlopen (as PyTorch does) is probed from then on.

Events come out of :meth:`StandardTracer.poll` as :class:`~ingero.tracer.calls.CallRecords` (CUDA/driver
calls: their raw ring records, a sequence of tuples in :data:`CUDA_FIELDS` order; :meth:`CudaCall.of` wraps
one) and :class:`~ingero.tracer.host.HostEvent` values (host/IO), with upstream's argument meanings (see the
comment at the top of ``bpf/cuda.bpf.c``).

The ring buffers are read directly (:class:`RingReader`): mmap'ed as libbpf maps them, every run of records
that has arrived is copied out in one slice -- no callback, ctypes structure or Python object per event (the
per-event path through libbpf callbacks cost ~5 µs an event); the calls are decoded in bulk as they are used
(see :mod:`ingero.tracer.calls`).
"""

from __future__ import annotations

import logging
import mmap
import os
import select
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields

from ingero.paths import data_dir
from ingero.runtime.bpfobj import BpfObject
from ingero.runtime.links import (
    BPF_TRACE_UPROBE_MULTI,
    FOLLOW_DEFINES,
    LinkSpec,
    ProcessLinks,
    UprobeMultiLink,
)
from ingero.runtime.memory import release_compiler_memory
from ingero.runtime.ring import RingReader, record_checks
from ingero.runtime.shared import SharedNames
from ingero.store.schema import SOURCE_CUDA, SOURCE_DRIVER, SOURCE_HOST, op_name
from ingero.tracer.calls import CUDA_FIELDS, CUDA_RECORD, CallRecords
from ingero.tracer.follow import HOLD_RECORD, ProcessFollower
from ingero.tracer.host import C_DEFINES as HOST_DEFINES
from ingero.tracer.host import HOST_LAYOUT, HostEvent
from ingero.tracer.ops import C_DEFINES as CALL_DEFINES
from ingero.tracer.ops import DRIVER_SYMBOLS, OP_MASK, RUNTIME_SYMBOLS

log = logging.getLogger(__name__)


#: ``struct host_event`` (bpf/host.bpf.c) after the record header: the fields of HostEvent
HOST_RECORD = struct.Struct("<8x" + HOST_LAYOUT)
#: ``struct lib_open_event`` after the record header: pid, path
LIB_OPEN_RECORD = struct.Struct("<8xI4x256s")
_OP_EXEC, _OP_EXIT, _OP_FORK = HOST_DEFINES["OP_EXEC"], HOST_DEFINES["OP_EXIT"], HOST_DEFINES["OP_FORK"]



def _record_checks() -> str:
    """The static assertions that the C structs of the rings are what the formats above decode."""
    return "\n".join((record_checks("cuda_event", CUDA_RECORD, CUDA_FIELDS),
                      record_checks("host_event", HOST_RECORD, [f.name for f in fields(HostEvent)]),
                      record_checks("lib_open_event", LIB_OPEN_RECORD, ("pid", "path")),
                      record_checks("hold_event", HOLD_RECORD, ("pid", "ts_ns"))))


#: how often a waiting poll looks at the CUDA ring, which is filled without wakeups
CUDA_POLL_MS = 5


@dataclass(frozen=True)
class CudaCall:
    ts_ns: int  # entry, CLOCK_MONOTONIC
    duration_ns: int
    pid: int
    tid: int
    source: int
    op: int
    ret: int
    arg0: int
    arg1: int
    stack_id: int
    py_stack: int  # the calling thread's Python stack (``StandardTracer.python``), 0 for none
    comm: str

    @classmethod
    def of(cls, t: tuple) -> CudaCall:
        """A call tuple out of :meth:`StandardTracer.poll` as a value."""
        return cls(*t[:11], t[11].split(b"\0", 1)[0].decode(errors="replace"))

    @property
    def op_name(self) -> str:
        return op_name(self.source, self.op)


@dataclass
class AttachedLibrary:
    path: str
    soname: str
    key: tuple[int, int]  # (st_dev, st_ino) of the file: probes attach to a file, not a path
    symbols: tuple[str, ...]
    per_process: ProcessLinks  # entry + return links of every traced process

    @property
    def links(self) -> list[UprobeMultiLink]:
        return self.per_process.links


def _symbols_for(soname: str) -> tuple[int, dict[str, int]] | None:
    base = os.path.basename(soname)
    if base.startswith("libcudart.so"):
        return SOURCE_CUDA, RUNTIME_SYMBOLS
    if base.startswith("libcuda.so"):
        return SOURCE_DRIVER, DRIVER_SYMBOLS
    return None


class StandardTracer(BpfObject):
    """Host tracepoints + CUDA runtime/driver calls of the process trees rooted at ``pids``."""

    def __init__(self, pids: Iterable[int] = (), *, stacks: bool = True, python_frames: bool = True,
                 ringbuf_pages: int = 1024, cuda_ringbuf_pages: int = 1024) -> None:
        for n in (ringbuf_pages, cuda_ringbuf_pages):
            if n <= 0 or n & (n - 1):
                raise ValueError("ring buffer sizes must be powers of two (pages)")
        self.stacks = stacks
        self.python_frames = stacks and python_frames
        #: the Python frame walker's user space (ingero.pyframes), when stacks with Python frames are on
        self.python = None
        self.ringbuf_pages = ringbuf_pages
        self.cuda_ringbuf_pages = cuda_ringbuf_pages
        self._initial = [int(p) for p in pids]
        self._bpf = None
        self._fns: tuple | None = None
        self.libraries: dict[tuple[int, int], AttachedLibrary] = {}
        #: one library attached at a time (the main loop's scans and the library watcher's thread both attach)
        self._attaching = threading.Lock()
        self._rings: dict[str, RingReader] = {}
        self._epoll: select.epoll | None = None
        self._opens: list[tuple[int, str]] = []
        self._detaching: threading.Thread | None = None
        self.follower: ProcessFollower | None = None  # per-process links of the traced tree
        #: this load's names of the maps its DSL probes share (see ingero.runtime.shared)
        self.shared = SharedNames.fresh()

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> StandardTracer:
        from bcc import BPF

        bpf_dir = data_dir("bpf")
        parts = ["ingero_py.h"] if self.python_frames else []
        text = "\n".join((bpf_dir / name).read_text()
                         for name in (*parts, "host.bpf.c", "cuda.bpf.c", "follow.bpf.c"))
        text = self.shared.apply(text) + "\n" + _record_checks()
        self._bpf = BPF(
            text=text,
            cflags=[f"-I{bpf_dir}", f"-DRINGBUF_PAGES={self.ringbuf_pages}",
                    f"-DCUDA_RINGBUF_PAGES={self.cuda_ringbuf_pages}", f"-DSTACKS={int(self.stacks)}",
                    f"-DINGERO_PY={int(self.python_frames)}",
                    *(f"-D{name}={value}" for name, value in (HOST_DEFINES | CALL_DEFINES | FOLLOW_DEFINES).items())],
        )
        try:
            if self.python_frames:
                from ingero.pyframes import PyStacks

                self.python = PyStacks(self._bpf, names=self.shared)
            entry = self._bpf.load_func("on_cuda_entry", BPF.KPROBE, attach_type=BPF_TRACE_UPROBE_MULTI)
            ret = self._bpf.load_func("on_cuda_return", BPF.KPROBE, attach_type=BPF_TRACE_UPROBE_MULTI)
            self._fns = (entry, ret)
            page = mmap.PAGESIZE  # bcc's PAGE_SIZE in BPF_RINGBUF_OUTPUT
            self._epoll = select.epoll()
            for name, (table, pages, record) in {
                "cuda": ("cuda_events", self.cuda_ringbuf_pages, CUDA_RECORD),
                "host": ("host_events", self.ringbuf_pages, HOST_RECORD),
                "opens": ("lib_opens", 16, LIB_OPEN_RECORD),
            }.items():
                ring = RingReader(self._bpf[table].map_fd, pages * page, record)
                self._rings[name] = ring
                self._epoll.register(ring.fd, select.EPOLLIN)
            self.follower = ProcessFollower(self._bpf, self._link_libraries, self._unlink_libraries)
            release_compiler_memory()
            for pid in self._initial:
                self.follow(pid)
            self.follower.start()
            self.scan()
        except BaseException:
            self.close()
            raise
        return self

    def detach(self) -> None:
        """Stop new events: close every uprobe_multi link at once, and detach the host tracepoints in the
        background (each perf-event tracepoint waits for an RCU grace period, ~75 ms apiece, serialised in
        the kernel), so the ring buffers can be drained meanwhile. ``close()`` waits for it. A new process
        held at that moment is let go."""
        if self.follower is not None:
            self.follower.stop()
        for lib in self.libraries.values():
            lib.per_process.close()
        if self._bpf is not None and self._detaching is None:
            bpf = self._bpf

            def detach_tracepoints() -> None:
                for tp in list(bpf.tracepoint_fds):
                    try:
                        bpf.detach_tracepoint(tp)
                    except Exception:  # noqa: BLE001 - cleanup() retries whatever is left
                        log.debug("detaching %s failed", tp, exc_info=True)

            self._detaching = threading.Thread(target=detach_tracepoints, name="ingero-detach", daemon=True)
            self._detaching.start()

    def close(self) -> None:
        self.detach()
        if self._detaching is not None:
            self._detaching.join()
        for ring in self._rings.values():
            ring.close()
        self._rings = {}
        if self.follower is not None:
            self.follower.close()  # its counts stay readable
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None
        self._unload()


    # -- what is traced --------------------------------------------------------------------------------
    def follow(self, pid: int) -> None:
        """Trace process ``pid``, the processes it forks from now on, and the CUDA libraries it maps."""
        t = self._bpf[self.shared.name("ingero_targets")]
        t[t.Key(int(pid))] = t.Leaf(1)
        if self.python is not None:
            self.python.configure(int(pid))
        self.link_process(int(pid))

    def look_for_python(self, pid: int) -> None:
        """Let the kernel walk ``pid``'s Python frames if it runs CPython now and was not known to (Python
        frames on). Its exec event comes before the dynamic loader maps libpython, so this is asked again
        later: at each rescan, and while a process is held at the open of a CUDA library."""
        if self.python is not None and not self.python.is_python(pid):
            self.python.configure(pid)

    def on_process(self, added: Callable[[int], None], dropped: Callable[[int], None]) -> set[int]:
        """Be told of each process that joins the traced tree (``added(pid)``, called while a new process is
        held, before it runs) and leaves it (``dropped(pid)``); returns the processes linked now."""
        return self.follower.on_process(added, dropped)

    @property
    def lock(self):
        """Held while a process joins the tree and gets its links (:attr:`ProcessFollower.lock`): a DSL probe
        binding a new file takes it, so no process joins between linking the tree and the probe counting
        as attached."""
        return self.follower.lock if self.follower is not None else None

    def off_process(self, added: Callable[[int], None]) -> None:
        """Stop telling ``added`` (see :meth:`on_process`)."""
        self.follower.off_process(added)

    def link_process(self, pid: int) -> None:
        """Attach process ``pid``'s own links (every library, every listener), then let it go if held."""
        self.follower.add(pid)

    @property
    def unlinked(self) -> dict[int, str]:
        """New processes let go without their links: calls they made before may be missing."""
        return self.follower.unlinked if self.follower is not None else {}

    def _link_libraries(self, pid: int) -> None:
        for lib in self.libraries.values():
            lib.per_process.add(pid)

    def _unlink_libraries(self, pid: int) -> None:
        for lib in self.libraries.values():
            lib.per_process.drop(pid)

    def followed(self) -> set[int]:
        """The traced processes (tgids) that are alive."""
        out = set()
        for k in self._bpf[self.shared.name("ingero_targets")].keys():
            pid = k.value
            try:
                with open(f"/proc/{pid}/status") as f:
                    tgid = next(int(line.split()[1]) for line in f if line.startswith("Tgid:"))
            except (OSError, StopIteration, ValueError):
                continue
            if tgid == pid:
                out.add(pid)
        return out

    def scan(self) -> list[AttachedLibrary]:
        """Attach to CUDA libraries the traced processes have mapped since the last scan (and close the
        links of processes that exited); returns the new libraries."""
        from ingero.errors import IngeroError
        from ingero.symbols import find_libraries

        alive = self.followed()
        with self.follower.lock:
            gone = self.follower.linked - alive
        for pid in gone:
            self.follower.drop(pid)
        new = []
        for pid in sorted(alive):
            self.look_for_python(pid)  # libpython mapped since, or a program exec'ed since
            try:
                libs = find_libraries(pid=pid)
            except IngeroError:
                continue  # the process exited meanwhile
            for lib in libs:
                attached = self._consider(lib)
                if attached:
                    new.append(attached)
        return new

    def attach_known(self) -> list[AttachedLibrary]:
        """Attach now to every copy of libcudart/libcuda on this machine's search paths (pip wheels,
        LD_LIBRARY_PATH, CUDA_HOME, conda, ldconfig): a traced program that loads one of them and calls it
        at once is caught from its first call, which no scan or open notification can promise. The links
        carry the traced processes' pids: other processes using the same files never trap."""
        from ingero.errors import IngeroError
        from ingero.symbols import find_libraries

        new = []
        for stem in ("libcudart", "libcuda"):
            try:
                found = find_libraries(name=stem)
            except IngeroError:
                continue
            for lib in found:  # every copy, one per build-id
                attached = self._consider(lib)
                if attached:
                    new.append(attached)
        return new

    def attach_symbols(self, path: str, table: dict[str, int], source: int = SOURCE_CUDA) -> AttachedLibrary:
        """Attach the standard handlers to chosen symbols of the library file ``path``, each traced as the op
        given in ``table`` (symbol -> op of ``source``, with :func:`~ingero.tracer.ops.call_shape` bits for an op above
        upstream's): what the probe set does for a library, with your own table (benchmarks, tests: a
        function outside the set recorded as one of its ops)."""
        from ingero.errors import IngeroError
        from ingero.symbols import resolve_library

        lib = resolve_library(str(path))
        st = os.stat(lib.attach_path)
        key = (st.st_dev, st.st_ino)
        with self._attaching:
            if key in self.libraries:
                raise IngeroError(f"{path} is probed already")
            attached = self._attach(lib, key, source, table)
        if attached is None:
            raise IngeroError(f"none of {', '.join(table)} in {path}")
        return attached

    def consider(self, lib) -> AttachedLibrary | None:
        """Attach to ``lib`` (a :class:`~ingero.symbols.Library`) if it is a CUDA runtime/driver library not
        attached yet."""
        return self._consider(lib)

    def _consider(self, lib) -> AttachedLibrary | None:
        """Attach to ``lib`` if it is a CUDA runtime/driver library not attached yet."""
        which = _symbols_for(lib.soname or str(lib.path))
        if which is None:
            return None
        try:
            st = os.stat(lib.attach_path)
        except OSError:
            return None
        key = (st.st_dev, st.st_ino)
        with self._attaching:
            if key in self.libraries:
                return None
            return self._attach(lib, key, *which)

    def _attach_opened(self) -> None:
        """A traced process is opening a CUDA library: attach to that file before the loader maps it."""
        from ingero.errors import IngeroError
        from ingero.symbols import resolve_library

        opens, self._opens = self._opens, []
        for pid, path in opens:
            if not path.startswith("/"):
                try:
                    path = os.path.join(os.readlink(f"/proc/{pid}/cwd"), path)
                except OSError:
                    continue
            for candidate in (f"/proc/{pid}/root{path}", path):
                if os.path.exists(candidate):
                    break
            else:
                continue  # the loader probing a directory where the library is not
            if _symbols_for(os.path.basename(path)) is None:
                continue
            try:
                self._consider(resolve_library(candidate))
            except IngeroError as e:
                log.info("cannot probe %s opened by %d: %s", path, pid, e)

    def _attach(self, lib, key, source: int, table: dict[str, int]) -> AttachedLibrary | None:
        from ingero.symbols import read_symbols

        symtab = read_symbols(lib)
        chosen = [(name, op) for name, op in table.items() if name in symtab]
        if not chosen:
            log.info("no standard symbol in %s", lib.path)
            return None
        offsets = [symtab.get(name).file_offset for name, _ in chosen]
        cookies = [(op & ~OP_MASK) | source << 8 | (op & OP_MASK) for _, op in chosen]  # layout, source, op
        entry, ret = self._fns
        path = str(lib.attach_path)
        per_process = ProcessLinks([LinkSpec(entry.fd, path, tuple(offsets), tuple(cookies)),
                                    LinkSpec(ret.fd, path, tuple(offsets), tuple(cookies), retprobe=True)])
        attached = AttachedLibrary(str(lib.path), lib.soname, key, tuple(n for n, _ in chosen), per_process)
        with self.follower.lock:  # no process joins between linking the tree and registering the library
            try:
                for pid in sorted(self.follower.linked):
                    per_process.add(pid)
            except BaseException:
                per_process.close()
                raise
            self.libraries[key] = attached
        log.info("probing %d functions of %s", len(chosen), lib.path)
        return attached

    # -- events ----------------------------------------------------------------------------------------
    def poll(self, timeout_ms: int = 100, max_events: int = 4096) -> tuple[CallRecords, list[HostEvent]]:
        """Events completed since the last poll, at most ``max_events`` of each kind: (CUDA/driver calls as
        their raw records, a sequence of tuples in :data:`CUDA_FIELDS` order; host events). Waits up to
        ``timeout_ms`` only when none has arrived.

        The CUDA ring is filled without wakeups (``BPF_RB_NO_WAKEUP``: a wakeup costs the traced call
        microseconds), so while waiting it is looked at every :data:`CUDA_POLL_MS`; the host and library-open
        rings wake the wait. Small batches (``max_events``) keep the decoding in the CPU caches: a backlog is
        taken in several polls, each one cheap, rather than one big one."""
        cuda, host = self._read(max_events)
        if not cuda and not host and timeout_ms > 0 and self._epoll is not None:
            deadline = time.monotonic() + timeout_ms / 1000
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._epoll.poll(min(left, CUDA_POLL_MS / 1000))
                cuda, host = self._read(max_events)
                if cuda or host or self._opens:
                    break
        if self._opens:
            self._attach_opened()
        return cuda, host

    def _read(self, max_events: int) -> tuple[CallRecords, list[HostEvent]]:
        rings = self._rings
        if not rings:
            return CallRecords(), []
        for pid, path in rings["opens"].read():
            self._opens.append((pid, path.split(b"\0", 1)[0].decode(errors="replace")))
        host = [HostEvent(*t[:9], t[9].split(b"\0", 1)[0].decode(errors="replace"))
                for t in rings["host"].read(max_events)]
        for h in host:
            if h.source == SOURCE_HOST and h.op == _OP_EXIT:
                self.follower.drop(h.pid)
            elif h.source == SOURCE_HOST and h.op == _OP_EXEC and h.arg1 != h.pid:
                # a thread other than the leader ran exec: the links held the old leader's task, whose
                # address space is gone; attach anew
                self.follower.drop(h.pid)
                self.follower.add(h.pid)
            if self.python is not None and h.source == SOURCE_HOST and h.op in (_OP_EXEC, _OP_FORK):
                if h.op == _OP_FORK:
                    self.python.inherit(h.pid, h.arg1)
                else:  # a new program: the kernel dropped its Python entry; look at it again now
                    self.python.forget(h.pid)
                    self.python.configure(h.pid)
        return CallRecords(rings["cuda"].read_bytes(max_events)), host

    def pending_bytes(self) -> int:
        """Bytes in the ring buffers not read yet (a backlog)."""
        return sum(r.pending() for r in self._rings.values())

    def lost(self) -> dict[str, int]:
        """Events dropped because a ring buffer was full, per buffer."""
        return {
            "cuda": sum(v.value for v in self._bpf["cuda_lost"].values()),
            "host": sum(v.value for v in self._bpf["lost"].values()),
        }

    def python_stack(self, pid: int, py_stack: int):
        """The Python frames (:class:`ingero.pyframes.PyStack`) of a call's ``py_stack``, or None."""
        if self.python is None or not py_stack:
            return None
        return self.python.stack(pid, py_stack)

    def stack_ips(self, stack_id: int) -> list[int]:
        """The user-space return addresses of a captured stack (innermost first)."""
        if not self.stacks or stack_id < 0:
            return []
        return [ip for ip in self._bpf["stacks"].walk(stack_id) if ip]
