"""Binding probes to the library files a traced process tree really maps, when it maps them.

A probe names its library by a stem (``libcudart``), a soname (``libcudart.so.13``), a glob or a path.
Only a path names one file; any other name means "the copy the traced processes load", which may be
none of the copies on ingero's own search path (PyTorch's wheels bring theirs). :class:`LibraryWatcher`
tells which files those are, as they appear:

* at start, the files already mapped by the traced processes (``/proc/PID/maps``);
* afterwards, every successful ``openat`` by a process of the tree of a file whose name starts with a
  watched stem (``bpf/libwatch.bpf.c``). With ``hold``, the process is stopped by the kernel before it
  returns from ``openat`` and continued once the probes are attached to that file, so no call into the
  library runs unprobed: every process of a command ingero started, and of a ``--pid`` tree, except a
  root that is the foreground job of a terminal (:func:`not_holdable`: its shell would take the stop for
  a Ctrl-Z), whose probes attach as soon as the open is seen -- calls made in the first milliseconds after
  such a late load may be missed, and the load says it was not held (``LibraryLoad.held``).

Each load comes out of :meth:`LibraryWatcher.poll` as a :class:`LibraryLoad`; the caller resolves it
(:func:`loaded_library`), attaches, then :meth:`LibraryWatcher.release` continues the process. A live trace
hands that work to :meth:`LibraryWatcher.serve`: a thread of the watcher's own reads the loads, binds and
lets the process go, so a stalled main loop (a slow disk under the writer, a blocked terminal under the live
view) never leaves a process stopped; and whatever the binding waits for, the process goes on after
:data:`HOLD_MAX_S` at most (noted in :attr:`LibraryWatcher.early`: its first calls may be missing).
"""

from __future__ import annotations

import ctypes as ct
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

from ingero.errors import BpfUnavailable, IngeroError
from ingero.runtime.links import FOLLOW_DEFINES
from ingero.runtime.memory import release_compiler_memory

log = logging.getLogger(__name__)

#: the kernel program matches at most this many names, each shorter than NAME_LEN (bpf/libwatch.bpf.c, which
#: gets these and the TARGET_* values below as -D definitions)
MAX_NAMES = 8
NAME_LEN = 64
#: the longest a process stays stopped at a watched open when :meth:`LibraryWatcher.serve` binds
HOLD_MAX_S = 5.0
#: how often the serving thread looks at its stop flag (ms)
SERVE_POLL_MS = 50
#: ``watch_targets`` values (bpf/libwatch.bpf.c)
TARGET_HOLD, TARGET_NO_HOLD = 1, 2


def not_holdable(pid: int) -> str | None:
    """Why process ``pid`` must not be stopped at a library open, or None: the foreground job of a
    terminal (its shell takes a stop for a Ctrl-Z and takes the terminal back). A process with no
    controlling terminal, or in the background, is stopped for the few milliseconds the probes take to
    attach and continued."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        pgrp, tty, tpgid = int(fields[2]), int(fields[4]), int(fields[5])
    except (OSError, IndexError, ValueError):
        return None
    if tty != 0 and tpgid == pgrp:
        return "it is the foreground job of a terminal, which a stop would hand back to its shell"
    return None


@dataclass(frozen=True)
class LibraryLoad:
    """A traced process opened a watched library. ``held``: it is stopped until :meth:`release`."""

    pid: int
    path: str
    held: bool


@dataclass(frozen=True)
class WatchName:
    """What the kernel compares a file name with: ``text`` followed by ``.`` (a stem), or a prefix."""

    text: str
    exact: bool


def watch_names(library_names: Iterable[str]) -> list[WatchName]:
    """The kernel-side names for the library names of probe specs (path names need no watching).

    ``cudart`` and ``libcudart`` and ``libcudart.so.13`` -> the stem ``libcudart``; a glob -> its literal
    head as a prefix. User space checks the full name of every reported file again."""
    from ingero.symbols.discovery import stem_of

    out: list[WatchName] = []
    for name in library_names:
        if "/" in name:
            continue
        if any(c in name for c in "*?["):
            head = min((name.split(c, 1)[0] for c in "*?["), key=len)
            wanted = [WatchName(head or "lib", False)]
        elif stem_of(name) != name:  # a soname or file name
            wanted = [WatchName(stem_of(name), True)]
        else:  # a bare stem: "cudart" means libcudart, and "python3.11" may still be an executable's name
            wanted = [WatchName(name, True)] + ([] if name.startswith("lib") else [WatchName("lib" + name, True)])
        out += [w for w in wanted if w not in out]
    too_long = [w.text for w in out if len(w.text.encode()) + w.exact > NAME_LEN]
    if too_long:
        raise IngeroError(f"library name too long to watch for: {too_long[0]}",
                          hint=f"a library name of at most {NAME_LEN - 1} bytes, or a path")
    return out


class LibraryWatcher:
    """Reports the watched libraries the traced tree opens (see the module docstring).

    It follows the tree from the pids given to :meth:`start` through forks and exits itself. ``forks``: its
    BPF object also holds each new process of the tree at its first return from ``fork``
    (``bpf/follow.bpf.c``), for a :class:`~ingero.tracer.follow.ProcessFollower` on :attr:`bpf` to give it
    its links first (``ingero probe run``, which loads no standard probe set to do that)."""

    def __init__(self, *, hold: bool, forks: bool = False) -> None:
        self.hold = hold
        self.forks = forks
        self.names: list[WatchName] = []
        self._bpf = None
        self._loads: list[LibraryLoad] = []
        self._held: set[int] = set()
        self._serving: threading.Thread | None = None
        self._stop = threading.Event()
        self._binder: ThreadPoolExecutor | None = None
        #: processes let go at HOLD_MAX_S before their binding finished -> why (their first calls may be missing)
        self.early: dict[int, str] = {}
        self.holds = 0  # processes held at a watched open and let go by serve()
        self.hold_max_ns = 0  # the longest such hold, from the report of the open to the release

    def start(self, pids: Iterable[int] = ()) -> LibraryWatcher:
        from ingero.paths import data_dir

        try:
            from bcc import BPF
        except ImportError as e:
            raise BpfUnavailable("the bcc Python package is missing (Debian: python3-bpfcc)") from e
        bpf_dir = data_dir("bpf")
        text = "\n".join((bpf_dir / name).read_text()
                         for name in ("libwatch.bpf.c", *(("follow.bpf.c",) if self.forks else ())))
        defines = {"NAME_LEN": NAME_LEN, "MAX_NAMES": MAX_NAMES, "TARGET_HOLD": TARGET_HOLD,
                   "TARGET_NO_HOLD": TARGET_NO_HOLD} | (FOLLOW_DEFINES if self.forks else {})
        try:
            self._bpf = BPF(text=text, cflags=[f"-D{name}={value}" for name, value in defines.items()])
        except Exception as e:
            raise IngeroError(f"the kernel refused the library watcher: {e}",
                              hint="this is a bug in ingero: report it") from e
        release_compiler_memory()
        cfg = self._bpf["watch_cfg"]
        cfg[ct.c_int(1)] = ct.c_uint32(int(self.hold))
        self._bpf["lib_loads"].open_ring_buffer(self._on_load)
        for pid in pids:
            self.follow(pid)
        return self

    @property
    def bpf(self):
        """The loaded BPF object (its ``holds`` ring and ``ingero_linked`` map with ``forks``)."""
        return self._bpf

    def follow(self, pid: int, hold: bool = True) -> None:
        """Watch process ``pid`` and the processes it forks from now on; ``hold`` False: never stop ``pid``
        itself at an open (its forks still are, with ``hold``)."""
        t = self._bpf["watch_targets"]
        t[t.Key(int(pid))] = t.Leaf(TARGET_HOLD if hold else TARGET_NO_HOLD)

    def watch(self, names: Iterable[WatchName]) -> None:
        """Watch these names too (the names already watched stay)."""
        new = [n for n in names if n not in self.names]
        if not new:
            return
        if len(self.names) + len(new) > MAX_NAMES:
            raise IngeroError(f"at most {MAX_NAMES} different library names can be waited for at once",
                              hint="name the library by its path, or use fewer libraries")
        table = self._bpf["watch_names"]
        for n in new:
            raw = (n.text + ("." if n.exact else "")).encode()
            padded = raw.ljust(NAME_LEN, b"\0")
            mask = (b"\xff" * len(raw)).ljust(NAME_LEN, b"\0")
            leaf = table.Leaf()
            for j in range(NAME_LEN // 8):
                leaf.word[j] = int.from_bytes(padded[8 * j : 8 * j + 8], "little")
                leaf.mask[j] = int.from_bytes(mask[8 * j : 8 * j + 8], "little")
            table[ct.c_int(len(self.names))] = leaf
            self.names.append(n)
        self._bpf["watch_cfg"][ct.c_int(0)] = ct.c_uint32(len(self.names))

    def poll(self, timeout_ms: int = 0) -> list[LibraryLoad]:
        if self._bpf is None:
            return []
        self._bpf.ring_buffer_poll(timeout_ms)
        out, self._loads = self._loads, []
        return out

    def _on_load(self, ctx, data, size) -> int:
        class Rec(ct.Structure):
            _fields_ = [("pid", ct.c_uint32), ("held", ct.c_uint32), ("path", ct.c_char * 256)]

        rec = ct.cast(data, ct.POINTER(Rec)).contents
        load = LibraryLoad(int(rec.pid), rec.path.decode("utf-8", "replace"), bool(rec.held))
        if load.held:
            self._held.add(load.pid)
        self._loads.append(load)
        return 0

    def serve(self, bind: Callable[[LibraryLoad], None]) -> None:
        """From now on a thread of its own reads the loads: ``bind(load)`` for each (in a worker, waited for
        at most :data:`HOLD_MAX_S`), then the process goes on. :meth:`poll` is the thread's alone after this."""
        self._binder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingero-libbind")
        self._serving = threading.Thread(target=self._serve, args=(bind,), name="ingero-libwatch", daemon=True)
        self._serving.start()

    def _serve(self, bind: Callable[[LibraryLoad], None]) -> None:
        while not self._stop.is_set():
            try:
                loads = self.poll(SERVE_POLL_MS)
            except Exception:  # noqa: BLE001 - keep serving: a stopped process waits for this thread
                log.exception("reading the library loads failed")
                time.sleep(SERVE_POLL_MS / 1000)
                continue
            for load in loads:
                self._bind_and_release(bind, load)

    def _bind_and_release(self, bind: Callable[[LibraryLoad], None], load: LibraryLoad) -> None:
        t0 = time.monotonic_ns()
        try:
            self._binder.submit(bind, load).result(timeout=HOLD_MAX_S)
        except FutureTimeout:
            self.early[load.pid] = (f"let go {HOLD_MAX_S:g} s after it opened {load.path}, before the probes "
                                    "were on it (the trace was busy): its first calls into it may be missing")
            log.warning("process %d: %s", load.pid, self.early[load.pid])
        except Exception as e:  # noqa: BLE001 - the process goes on whatever happened
            log.info("cannot probe %s opened by %d: %s", load.path, load.pid, e)
        finally:
            if load.held:
                self.holds += 1
                self.hold_max_ns = max(self.hold_max_ns, time.monotonic_ns() - t0)
            self.release(load.pid)

    def release(self, pid: int) -> None:
        """Continue a process the kernel stopped at a watched open (a no-op for any other)."""
        if pid in self._held:
            self._held.discard(pid)
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        if self._serving is not None:
            self._stop.set()
            self._serving.join()
            self._serving = None
            self._binder.shutdown(wait=False, cancel_futures=True)
        if self._bpf is not None:
            try:
                self.poll(0)  # loads reported but not read yet may have stopped their process
            finally:
                for pid in list(self._held):
                    self.release(pid)
                self._bpf.cleanup()
                self._bpf = None


def load_path(load: LibraryLoad) -> str | None:
    """The path this process can read the opened file at (the process's mount namespace first)."""
    path = load.path
    if not path.startswith("/"):
        try:
            path = os.path.join(os.readlink(f"/proc/{load.pid}/cwd"), path)
        except OSError:
            return None
    for candidate in (f"/proc/{load.pid}/root{path}", path):
        if os.path.exists(candidate):
            return candidate
    return None


def loaded_library(load: LibraryLoad):
    """The :class:`~ingero.symbols.Library` a load opened, named as the process names it (its path,
    normalised) and read where this process can read it; None if it is gone. Raises IngeroError for a
    file that is no library (NotAnElf, ...)."""
    from dataclasses import replace

    from ingero.symbols import resolve_library

    here = load_path(load)
    if here is None:
        return None
    return replace(resolve_library(here), path=os.path.normpath(load.path), pid=load.pid)

