"""Per-process links for a traced process tree, with no fork race (the user-space half of
``bpf/follow.bpf.c``).

Every probe of a live trace (the standard set's libraries, DSL probes) is one uprobe_multi link per traced
process, so no process outside the tree ever traps. :class:`ProcessFollower` keeps them in step with the
tree: the roots are linked when followed; a new process of the tree stops itself at its first return from
``fork`` (in the kernel) and says so on the ``holds`` ring; the follower's thread attaches its links --
every library's and every listener's (:meth:`on_process`) -- and lets it go. Exited processes are unlinked.

A guard process (:class:`_Guard`) lets go whatever the tracer might leave stopped if it dies without
closing (SIGKILL): it is told each process of the tree, and when its pipe closes without a goodbye it
continues every stopped process of the tree and every stopped child of one.
"""

from __future__ import annotations

import ctypes as ct
import logging
import mmap
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from ingero.runtime.links import HOLD_HELD, HOLD_LINKED
from ingero.runtime.ring import RingReader

log = logging.getLogger(__name__)

#: ``struct hold_event`` (bpf/follow.bpf.c) after the ring's record header: pid, when it stopped (ns)
HOLD_RECORD = struct.Struct("<8xI4xQ")
_BPF_NOEXIST = 1
HOLDS_RING_PAGES = 16

_GUARD = r"""
import os, signal, sys
known = set()
for line in sys.stdin:
    words = line.split()
    if words == ["bye"]:
        sys.exit(0)
    known.update(int(w) for w in words)
# the tracer went away without closing: let go every stopped process of its tree, and every stopped child
# of one (held at its first return from fork a moment before the tracer died)
for name in os.listdir("/proc"):
    if not name.isdigit():
        continue
    try:
        with open(f"/proc/{name}/stat") as f:
            state, ppid = f.read().rsplit(")", 1)[1].split()[:2]
    except (OSError, ValueError):
        continue
    if state == "T" and (int(name) in known or int(ppid) in known):
        try:
            os.kill(int(name), signal.SIGCONT)
        except OSError:
            pass
"""


class _Guard:
    """A small process that outlives a killed tracer just long enough to let its held processes go."""

    def __init__(self) -> None:
        self._proc = subprocess.Popen([sys.executable, "-c", _GUARD], stdin=subprocess.PIPE, text=True,
                                      start_new_session=True)  # a Ctrl-C to the tracer's group spares it
        self._lock = threading.Lock()

    def tell(self, pid: int) -> None:
        with self._lock:
            if self._proc.stdin is not None:
                try:
                    self._proc.stdin.write(f"{pid}\n")
                    self._proc.stdin.flush()
                except OSError:  # the guard died: tracing goes on without it
                    log.warning("the guard process is gone")
                    self._proc.stdin = None

    def bye(self) -> None:
        with self._lock:
            if self._proc.stdin is not None:
                try:
                    self._proc.stdin.write("bye\n")
                    self._proc.stdin.close()
                except OSError:
                    pass
                self._proc.stdin = None
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


class ProcessFollower:
    """Keeps per-process links in step with the traced tree of one loaded standard probe set.

    ``link(pid)`` / ``unlink(pid)`` attach and detach the caller's own links of one process (the standard
    set's libraries); listeners added with :meth:`on_process` get the same calls. :attr:`lock` is held while
    a process is being linked: take it to attach a new library to every linked process atomically."""

    def __init__(self, bpf, link: Callable[[int], None], unlink: Callable[[int], None]) -> None:
        self._bpf = bpf
        self._link = link
        self._unlink = unlink
        self.lock = threading.RLock()
        self.linked: set[int] = set()
        self._listeners: list[tuple[Callable[[int], None], Callable[[int], None]]] = []
        self._ring: RingReader | None = RingReader(bpf["holds"].map_fd, HOLDS_RING_PAGES * mmap.PAGESIZE,
                                                   HOLD_RECORD)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._guard: _Guard | None = None
        #: processes let go without their links (attaching failed, or the trace stopped meanwhile): calls
        #: they made before their links existed are missing
        self.unlinked: dict[int, str] = {}
        self.held = 0  # new processes held until their links existed
        self.held_max_ns = 0  # the longest such hold

    def start(self) -> ProcessFollower:
        self._guard = _Guard()
        for pid in self.linked:
            self._guard.tell(pid)
        self._set_holding(True)
        self._thread = threading.Thread(target=self._run, name="ingero-holds", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Hold no more; let go every process still held; end the guard. Links stay until unlinked."""
        if self._thread is not None:
            self._set_holding(False)
            self._stop.set()
            self._thread.join()
            self._thread = None
            t = self._bpf["ingero_linked"]
            for k, v in list(t.items()):
                if v.value == HOLD_HELD:
                    self.unlinked.setdefault(k.value, "the trace stopped while it was held")
                    _continue(k.value)
        if self._guard is not None:
            self._guard.bye()
            self._guard = None

    def close(self) -> None:
        self.stop()
        if self._ring is not None:
            self._ring.close()
            self._ring = None

    # -- the tree --------------------------------------------------------------------------------------
    def on_process(self, added: Callable[[int], None], dropped: Callable[[int], None]) -> set[int]:
        """Be told of each process that joins the tree (``added(pid)``, called while a new process is held,
        before it runs) and leaves it (``dropped(pid)``); returns the processes linked now."""
        with self.lock:
            self._listeners.append((added, dropped))
            return set(self.linked)

    def off_process(self, added: Callable[[int], None]) -> None:
        with self.lock:
            self._listeners = [pair for pair in self._listeners if pair[0] != added]

    def add(self, pid: int) -> bool:
        """Attach process ``pid``'s links (the caller's and every listener's), then let it go if it is
        held; True if it was held."""
        if self._guard is not None:
            self._guard.tell(pid)
        problem = ""
        with self.lock:
            try:
                self._link(pid)
                for added, _ in self._listeners:
                    added(pid)
            except Exception as e:  # noqa: BLE001 - a held process must never stay stopped
                log.warning("attaching the probes of process %d failed: %s", pid, e)
                problem = str(e)
            self.linked.add(pid)
        if problem:
            self.unlinked[pid] = problem
        return self._mark_linked(pid)

    def drop_exited(self) -> set[int]:
        """Drop the linked processes that have exited (gone, or a zombie); returns those still running."""
        with self.lock:
            linked = set(self.linked)
        alive = {pid for pid in linked if _running(pid)}
        for pid in linked - alive:
            self.drop(pid)
        return alive

    def drop(self, pid: int) -> None:
        """Process ``pid`` left the tree (exited): detach its links."""
        with self.lock:
            self.linked.discard(pid)
            self._unlink(pid)
            for _, dropped in self._listeners:
                try:
                    dropped(pid)
                except Exception:  # noqa: BLE001
                    log.exception("dropping the probes of process %d failed", pid)
        t = self._bpf["ingero_linked"]
        try:
            del t[t.Key(pid)]
        except KeyError:
            pass

    # -- the handshake with bpf/follow.bpf.c -----------------------------------------------------------
    def _mark_linked(self, pid: int) -> bool:
        """Insert LINKED; if the process got there first (HELD), it is stopped waiting for us: continue it."""
        from bcc import libbcc

        t = self._bpf["ingero_linked"]
        k, v = t.Key(pid), t.Leaf(HOLD_LINKED)
        if libbcc.lib.bpf_update_elem(t.map_fd, ct.byref(k), ct.byref(v), _BPF_NOEXIST) == 0:
            return False
        try:
            state = t[k].value
        except KeyError:
            state = 0
        if state != HOLD_HELD:
            return False
        t[k] = v
        _continue(pid)
        return True

    def _set_holding(self, on: bool) -> None:
        self._bpf["hold_enabled"][ct.c_int(0)] = ct.c_uint32(int(on))

    def _run(self) -> None:
        ep = select.epoll()
        try:
            ep.register(self._ring.fd, select.EPOLLIN)
            while not self._stop.is_set():
                ep.poll(0.05)
                for pid, since_ns in self._ring.read():
                    if self.add(pid):
                        self.held += 1
                        self.held_max_ns = max(self.held_max_ns, time.monotonic_ns() - since_ns)
        except Exception:  # noqa: BLE001 - stop() lets held processes go whatever happens here
            log.exception("the holder thread failed")
        finally:
            ep.close()


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def follow_tree(bpf, roots) -> ProcessFollower:
    """A started :class:`ProcessFollower` of the tree rooted at ``roots``, on a BPF object that has
    ``bpf/follow.bpf.c`` and a ``traced()`` of its own (a :class:`~ingero.runtime.libwatch.LibraryWatcher`
    made with ``forks=True``), with no links of its own: its listeners' (:meth:`ProcessFollower.on_process`,
    e.g. a :class:`~ingero.runtime.probes.ProbeSession` given it as ``tree``) are all there is."""
    follower = ProcessFollower(bpf, _no_links, _no_links)
    for pid in roots:
        follower.add(int(pid))
    return follower.start()


def _no_links(pid: int) -> None:
    return None


def _continue(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass
