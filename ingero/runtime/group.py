"""Every probe of one spec on one traced process tree (``ingero probe run --pid N`` and ``-- CMD``).

The probes the checker could resolve at start run in one :class:`~ingero.runtime.probes.ProbeSession`;
each one whose library was found nowhere (``CheckResult.waiting``: a library only the program's own
environment has, such as a virtualenv's ``torch/lib/libc10_cuda.so``) is checked against the file the
tree opens when it opens one of that name, compiled and loaded then, in a session of its own, while the
opening process is held (:mod:`ingero.runtime.libwatch`). Until then it says what it waits for; if the
file never shows, it ends with that reason. A probe that binds to a file but not to all its functions, or
cannot be checked against it, says so.

:class:`ProbeGroup` answers what one session answers (read, stats, aggregates, budgets, ended), over
all of them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ingero.compiler import compile_spec
from ingero.dsl.check import CheckResult, Waiting
from ingero.errors import IngeroError
from ingero.runtime.probes import Binding, ProbeSession, ProbeStats, wait_read


@dataclass
class _Deferred:
    waiting: Waiting
    session: ProbeSession | None = None
    ended: str | None = None


class ProbeGroup:
    """The sessions of one spec on one tree (see the module docstring). ``tree``: a process follower
    (:class:`~ingero.tracer.follow.ProcessFollower`) whose processes each get their own links, or None
    (``pid`` alone, or every process); ``bind_mapped``: probes naming their library by a stem or soname
    attach to the copies the tree maps, as :meth:`offer` gives them."""

    def __init__(self, result: CheckResult, *, pid: int | None, tree=None, bind_mapped: bool = False,
                 ringbuf_pages: int) -> None:
        self.source = result.source
        self.pid = pid
        self.tree = tree
        self.bind_mapped = bind_mapped
        self.ringbuf_pages = ringbuf_pages
        self.started = False  # every session loaded and attached (what is waited for, waiting)
        self.sessions: list[ProbeSession] = []
        spec = result.resolved()
        if spec.probes:
            self.sessions.append(self._session(spec))
        self._deferred = {w.probe: _Deferred(w) for w in result.waiting}
        #: every probe's name, in the spec's order
        self.order = [p.name for p in (result.tree.probes if result.tree else ())
                      if p.name in self._deferred or any(rp.name == p.name for rp in spec.probes)]

    def _session(self, spec) -> ProbeSession:
        if self.tree is not None:  # the tree's processes each get links; the pid only chose what was checked
            spec = replace(spec, probes=tuple(replace(rp, pid=rp.target_pid) for rp in spec.probes))
        return ProbeSession(compile_spec(spec, ringbuf_pages=self.ringbuf_pages), pid=self.pid, tree=self.tree,
                            bind_mapped=self.bind_mapped)

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> ProbeGroup:
        for s in self.sessions:
            s.start()
        self.started = True
        return self

    @property
    def loaded(self) -> bool:
        return any(s.loaded for s in self.sessions)

    @property
    def load_seconds(self) -> float:
        return sum(s.load_seconds for s in self.sessions)

    @property
    def attach_seconds(self) -> float:
        return sum(s.attach_seconds for s in self.sessions)

    def offer(self, lib) -> list[Binding]:
        """A process of the tree opened or maps ``lib``: attach the probes waiting for a file of its name;
        check, compile and load a probe whose library was found nowhere against this very file. Raises
        IngeroError (after ending that probe with the reason) when it cannot be checked against it."""
        from ingero.dsl import check
        from ingero.dsl.lookup import TreeLookups
        from ingero.symbols.discovery import names_library

        out = [b for s in list(self.sessions) for b in s.offer(lib)]
        for name, d in self._deferred.items():
            if d.session is not None or d.ended or not names_library(d.waiting.library, lib.path, lib.soname):
                continue
            result = check(self.source.text, self.source.name, lookups=TreeLookups(bound=lib),
                           only=frozenset({name}))
            if not result.ok:
                e = result.errors[0]
                d.ended = (f"cannot be checked against {lib.path}, the {d.waiting.library} pid {lib.pid} loaded: "
                           f"line {e.span.line}: {e.message}" + (f" ({e.hint})" if e.hint else ""))
                raise IngeroError(f"probe {name} {d.ended}")
            d.session = self._session(result.resolved()).start()
            self.sessions.append(d.session)
            out += d.session.offer(lib)
        return out

    def waiting(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for s in self.sessions:
            out.update(s.waiting())
        for name, d in self._deferred.items():
            if d.session is None and not d.ended:
                out[name] = (f"waiting for {d.waiting.library} in the traced tree ({d.waiting.searched}: "
                             "checked against the copy the tree loads, when it loads it)")
        return out

    def waits_for(self) -> list[str]:
        """The library names probes still wait for (deferred ones included)."""
        names = [s_p.cp.probe.library.name for s in self.sessions for s_p in s.probes if s_p.waiting]
        names += [d.waiting.library for d in self._deferred.values() if d.session is None and not d.ended]
        return list(dict.fromkeys(names))

    def library_names(self) -> list[str]:
        """Every library name the probes give (to watch for)."""
        names = [p.cp.probe.library.name for s in self.sessions for p in s.probes]
        names += [d.waiting.library for d in self._deferred.values()]
        return list(dict.fromkeys(names))

    def detach_all(self, reason: str = "detached") -> None:
        for s in self.sessions:
            s.detach_all(reason)
        for d in self._deferred.values():
            if d.session is None and not d.ended:
                d.ended = f"{d.waiting.library} never appeared in the traced tree ({reason})"

    def close(self) -> None:
        for s in self.sessions:
            s.close()

    @property
    def ended(self) -> dict[str, str]:
        out = {name: d.ended for name, d in self._deferred.items() if d.ended}
        for s in self.sessions:
            out.update(s.ended)
        return out

    @property
    def active(self) -> list[str]:
        out = [name for s in self.sessions for name in s.active]
        return out + [n for n, d in self._deferred.items() if d.session is None and not d.ended]

    def enforce_budgets(self) -> list[tuple[str, str]]:
        return [x for s in self.sessions for x in s.enforce_budgets()]

    # -- reading ---------------------------------------------------------------------------------
    @property
    def probes(self) -> list:
        return [p for s in self.sessions for p in s.probes]

    def unbound(self) -> dict[str, str]:
        """The probes that never got a file to check against (none loaded), with why."""
        return {n: d.ended or "" for n, d in self._deferred.items() if d.session is None}

    def read(self, max_events: int = 4096) -> list:
        return [b for s in self.sessions for b in s.read(max_events)]

    def wait(self, timeout_ms: int) -> list:
        return wait_read(self.read, timeout_ms)

    def _owner(self, name: str) -> ProbeSession | None:
        for s in self.sessions:
            if any(p.name == name for p in s.probes):
                return s
        return None

    def event(self, p, row):
        return self._owner(p.name).event(p, row)

    def stats(self, name: str) -> ProbeStats:
        s = self._owner(name)
        return s.stats(name) if s is not None else ProbeStats(*([0] * len(ProbeStats.__dataclass_fields__)))

    def aggregates(self, name: str) -> list:
        s = self._owner(name)
        return s.aggregates(name) if s is not None else []

    def enum_name(self, enum: str, value: int) -> str | None:
        return ProbeSession.enum_name(self.sessions[0], enum, value) if self.sessions else None
