"""``ingero probe check`` and ``ingero probe run``: the engineer's workflow for probe specs."""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import click


@click.group()
def probe() -> None:
    """Check and run probe specs (see docs/dsl.md)."""


def _read(path: str) -> tuple[bytes, str]:
    """The spec's bytes (the checker reports any that are not text, located)."""
    if path == "-":
        return sys.stdin.buffer.read(), "<stdin>"
    try:
        with open(path, "rb") as f:
            return f.read(), path
    except OSError as e:
        raise click.ClickException(f"cannot read {path}: {e.strerror}") from None


def _fail(result, as_json: bool) -> None:
    from ingero.dsl.diagnostics import render

    if as_json:
        click.echo(json.dumps({"ok": False, "errors": [d.as_dict() for d in result.errors]}, indent=2))
    else:
        click.echo(render(result.errors, result.source), err=True)
        n = len(result.errors)
        click.echo(f"{n} error{'s' if n != 1 else ''}", err=True)
    sys.exit(1)


@probe.command()
@click.argument("file")
@click.option("--emit", type=click.Choice(["ast", "resolved", "c"]), help="Print this stage instead of a summary.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable result.")
@click.option("--pid", type=int, help="Resolve libraries from what this process mapped.")
def check(file: str, emit: str | None, as_json: bool, pid: int | None) -> None:
    """Check a probe spec (FILE, or - for stdin) against this machine's libraries and the catalogue.

    No root needed. Exit 1 with located errors and hints if the spec is wrong.

    \b
    Example:
        ingero probe check examples/big_copies.probe
        ingero probe check examples/launches.probe --emit c
    """
    from ingero.dsl import check as check_spec
    from ingero.dsl.ast import dump
    from ingero.dsl.resolved import describe

    text, name = _read(file)
    result = check_spec(text, name, pid=pid)
    if not result.ok:
        _fail(result, as_json)
    spec = result.resolved()
    if emit == "ast":
        click.echo(dump(result.tree))
        return
    if emit == "c":
        from ingero.compiler import compile_spec

        click.echo(compile_spec(spec).c_text, nl=False)
        return
    if as_json:
        click.echo(json.dumps({"ok": True, "probes": [_probe_json(p) for p in spec.probes]}, indent=2))
        return
    n = len(spec.probes)
    click.echo(f"{name}: {n} probe{'s' if n != 1 else ''} OK")
    for p in spec.probes:
        click.echo(describe(p, full=emit == "resolved"))


def _probe_json(p) -> dict:
    lib = p.library
    return {
        "name": p.name,
        "library": {
            "name": lib.name,
            "path": lib.path,
            "soname": lib.soname,
            "installed": lib.installed,
            "build_id": lib.build_id,
            "cuda_major": lib.cuda_major,
        },
        "symbols": [{"name": s.name, "file_offset": s.file_offset, "file_offsets": list(s.offsets),
                     "typed_by": s.typed_by} for s in p.symbols],
        "direction": p.direction,
        "record": list(p.record),
        "aggregate": [a.label for a in p.aggregates],
        "by": list(p.by),
        "budgets": {
            "ttl_s": p.budgets.ttl_s,
            "events": p.budgets.events,
            "rate": p.budgets.rate,
            "symbols": p.budgets.symbols,
        },
        "notes": list(p.notes),
    }


@probe.command(context_settings={"ignore_unknown_options": True})
@click.argument("file")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.option("--pid", type=int, help="Attach to this process only.")
@click.option("--interval", type=float, default=0.0, help="Print live aggregates every this many seconds.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per event, then the final results.")
def run(file: str, command: tuple[str, ...], pid: int | None, interval: float, as_json: bool) -> None:
    """Attach a probe spec and print what it sees (root needed).

    Streams recorded events as they come; at the end (Ctrl-C, the command exiting, or every probe's
    budget spent) prints each probe's counts and in-kernel aggregates, histograms as bpftrace does.

    \b
    Example:
        sudo ingero probe run examples/alloc_sizes.probe --pid 4242
        sudo ingero probe run examples/big_copies.probe -- python train.py
    """
    from ingero.dsl import check as check_spec
    from ingero.dsl.lookup import MACHINE, TreeLookups
    from ingero.errors import BpfUnavailable, NoSuchProcess
    from ingero.runtime.group import ProbeGroup
    from ingero.runtime.kernel import bpf_problem

    if command and pid is not None:
        raise click.UsageError("give either --pid or a command after --, not both")
    problem = bpf_problem()
    if problem:
        raise BpfUnavailable(f"cannot run probes here: {problem}")
    if pid is not None and not os.path.exists(f"/proc/{pid}"):
        raise NoSuchProcess(f"no process with pid {pid}", hint="list processes with `ps -e`")
    text, name = _read(file)
    tree_run = bool(command) or pid is not None
    # on a tree: a library the process has not mapped (yet) is checked on the search path, and one found
    # nowhere is waited for (checked against the copy the tree loads)
    result = check_spec(text, name, pid=pid, lookups=TreeLookups() if tree_run else MACHINE, may_wait=tree_run)
    if not result.ok:
        _fail(result, as_json)
    printer = _Printer(as_json)
    held = child = watcher = follower = group = None
    stop = _Stop()
    try:
        stop.install()
        if command:
            from ingero.runtime.spawn import spawn_gated

            held = spawn_gated(list(command))
            child = held.proc
            pid = child.pid
        if tree_run:
            from ingero.runtime.libwatch import LibraryWatcher, not_holdable
            from ingero.tracer.follow import follow_tree

            # the probes bind to the copies the tree maps, when it maps them: the watcher holds a process at
            # each open of such a library until the probes are on that file; each process the tree forks is
            # held until its links exist
            watcher = LibraryWatcher(hold=True, forks=True).start()
            why_not = not_holdable(pid) if child is None else None
            watcher.follow(pid, hold=why_not is None)
            if why_not:
                printer.status(f"pid {pid} is not stopped when it opens a library ({why_not}): calls it makes in "
                               "the first milliseconds after a late load may be missed")
            follower = follow_tree(watcher.bpf, [pid])
        group = ProbeGroup(result, pid=pid, tree=follower, bind_mapped=tree_run, ringbuf_pages=RUN_RINGBUF_PAGES)
        if watcher is not None:
            from ingero.runtime.libwatch import watch_names

            watcher.watch(watch_names(group.library_names()))
        group.start()
        printer.session = group
        # the copies a --pid tree maps already: attached before the status line says it is attached
        mapped = _bind_mapped(group, follower.linked if follower else {pid}) if child is None and pid else []
        names = ", ".join(n for n in group.order if n not in group.unbound()) or "nothing yet"
        printer.status(
            f"attached {names} in {group.load_seconds + group.attach_seconds:.2f}s"
            + (f" to pid {pid} and the processes it forks" if pid else
               " to every process (any process calling these functions traps; --pid N or -- CMD limits it)")
            + "; Ctrl-C to stop"
        )
        for b in mapped:
            if isinstance(b, str):
                printer.status(b)
            else:
                printer.bound(b)
        for pname, what in group.waiting().items():
            printer.waiting(pname, what)
        if held is not None:
            held.release()
        next_print = time.monotonic() + interval if interval > 0 else None
        while not stop.signum:
            if watcher is not None:
                _bind_loads(watcher, group, printer)
            printer.rows(group.wait(20 if watcher is not None else 100))
            group.enforce_budgets()
            for pname, why in list(group.ended.items()):
                printer.ended(pname, why)
            if not group.active:
                break
            alive = follower.drop_exited() if follower is not None else set()
            if child is not None and child.poll() is not None and not alive:
                break
            if pid is not None and child is None and not alive and not os.path.exists(f"/proc/{pid}"):
                printer.status(f"process {pid} exited" + (" (and every process it forked)" if follower else ""))
                break
            if next_print is not None and time.monotonic() >= next_print:
                printer.aggregates(group, final=False)
                next_print = time.monotonic() + interval
    finally:
        # a signal from here on only sets the flag again: the summary always prints, no traceback
        if held is not None:
            held.cancel()  # not released (nothing attached): the command never runs
        try:
            if watcher is not None and group is not None:
                _bind_loads(watcher, group, printer)  # opens reported as the tree exited: said, not lost
            if follower is not None:
                follower.close()  # lets go any process still held at its fork
            if watcher is not None:
                watcher.close()  # ... or at an open
            if group is not None and group.started:
                group.detach_all("run ended")
                deadline = time.monotonic() + DRAIN_SECONDS
                while time.monotonic() < deadline:  # what the kernel wrote before the links closed
                    batches = group.read()
                    if not batches:
                        break
                    printer.rows(batches)
                printer.aggregates(group, final=True)
                if stop.signum:
                    printer.status(f"stopped by {signal.Signals(stop.signum).name}")
        finally:
            if group is not None:
                group.close()
            stop.restore()
            if child is not None:
                if child.poll() is None:
                    child.terminate()
                child.wait()
    _exit_now()


def _exit_now() -> None:
    """End the process as soon as the run is over: everything is detached, closed and printed, and the
    interpreter's own teardown (libbcc's LLVM destructors) would take up to a second more after a Ctrl-C.
    Only when run as the ``ingero`` command (not inside another program, such as a test's CLI runner)."""
    if click.get_current_context().find_root().info_name != "ingero":
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(0)


#: ring buffer pages per recording probe of ``probe run`` (16 MiB: bursts of ~100k events at full speed)
RUN_RINGBUF_PAGES = 4096
#: at most this long to print what was recorded before the probes detached
DRAIN_SECONDS = 2.0


class _Stop:
    """SIGINT and SIGTERM set a flag the run loop looks at every few ms (never an exception raised in the
    middle of reading or printing), so the summary with the in-kernel aggregates always prints."""

    def __init__(self) -> None:
        self.signum = 0
        self._old: dict[int, object] = {}

    def _handler(self, signum, frame) -> None:
        self.signum = self.signum or signum

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handler)

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}


def _bind_loads(watcher, group, printer) -> None:
    """Attach the waiting probes to the libraries the tree has just opened, then let it go on."""
    from ingero.errors import IngeroError
    from ingero.runtime.libwatch import loaded_library

    for load in watcher.poll(0):
        try:
            lib = loaded_library(load)
            for b in group.offer(lib) if lib is not None else ():
                printer.bound(b, held=load.held)
        except IngeroError as e:
            printer.status(f"cannot probe {load.path} opened by pid {load.pid}: {e.message}")
        finally:
            watcher.release(load.pid)


def _bind_mapped(group, pids) -> list:
    """Attach the waiting probes to the copies the processes of a ``--pid`` tree have mapped already;
    returns the bindings, and the text of each failure."""
    from ingero.errors import IngeroError
    from ingero.symbols import find_libraries

    out: list = []
    for pid in sorted(pids):
        for lib_name in group.waits_for():
            try:
                libs = find_libraries(pid=pid, name=lib_name) if "/" not in lib_name else []
            except IngeroError:
                continue  # exited meanwhile
            for lib in libs:
                try:
                    out += group.offer(lib)
                except IngeroError as e:
                    out.append(f"cannot probe {lib.path} mapped by pid {pid}: {e.message}")
    return out


class _Printer:
    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.session = None
        self.reported: set[str] = set()
        self._formats: dict[str, object] = {}

    def status(self, msg: str) -> None:
        if not self.as_json:
            click.echo(msg, err=True)

    def waiting(self, name: str, what: str) -> None:
        if self.as_json:
            click.echo(json.dumps({"waiting": name, "reason": what}))
        else:
            click.echo(f"probe {name}: {what}", err=True)

    def bound(self, b, held: bool = True) -> None:
        if not held and b.symbols:
            self.status(f"probe {b.probe}: pid {b.pid} was not held at its open of {b.path}: calls it made before "
                        "the probe attached are not counted")
        if self.as_json:
            click.echo(json.dumps({"attached": b.probe, "path": b.path, "pid": b.pid, "symbols": b.symbols,
                                   "addresses": b.addresses, "missing": list(b.missing)}))
        elif b.symbols:
            several = (f", {b.symbols} function{'s' if b.symbols != 1 else ''} at {b.addresses} addresses"
                       if b.addresses > b.symbols else "")
            click.echo(f"probe {b.probe}: attached to {b.path} (mapped by pid {b.pid}{several})"
                       + (f"; that copy lacks {', '.join(b.missing)}" if b.missing else ""), err=True)
        else:
            click.echo(f"probe {b.probe}: {b.path} (pid {b.pid}) has none of its functions", err=True)

    def ended(self, name: str, why: str) -> None:
        if name in self.reported or why == "run ended":
            return
        self.reported.add(name)
        if self.as_json:
            click.echo(json.dumps({"ended": name, "reason": why}))
        else:
            click.echo(f"probe {name} detached: {why}", err=True)

    def rows(self, batches) -> None:
        """Print batches of record tuples as :meth:`ProbeSession.read` gives them: plain values through a
        formatter made once per probe (the fast path), stacks and host-function names event by event."""
        s = self.session
        for p, rows in batches:
            fmt = None if self.as_json else self._formats.get(p.name)
            if fmt is None and not self.as_json and p.name not in self._formats:
                from ingero.runtime.format import row_formatter

                fmt = self._formats[p.name] = row_formatter(p, s.enum_name)
            if fmt is not None:
                sys.stdout.write("".join(map(fmt, rows)))
            else:
                for r in rows:
                    self.event(s.event(p, r))
        sys.stdout.flush()

    def event(self, ev) -> None:
        if self.as_json:
            click.echo(
                json.dumps(
                    {
                        "probe": ev.probe,
                        "symbol": ev.symbol,
                        "pid": ev.pid,
                        "tid": ev.tid,
                        "ts_ns": ev.ts_ns,
                        "latency_ns": ev.latency_ns,
                        "fields": ev.fields,
                        "names": ev.names,
                    }
                )
            )
            return
        from ingero.runtime.format import value_text

        s = self.session
        rp = next(p.cp.probe for p in s.probes if p.name == ev.probe)
        parts = [f"{k}={value_text(rp, k, v, ev.names, s.enum_name)}" for k, v in ev.fields.items() if k != "stack"]
        click.echo(f"{ev.probe} {ev.symbol} pid={ev.pid} " + " ".join(parts))
        if "stack" in ev.fields:
            for frame in ev.fields["stack"] or ("[no stack]",):
                click.echo(f"    {frame}")

    def aggregates(self, session, final: bool) -> None:
        from ingero.runtime.format import ABSENT, hist_lines, lhist_lines, value_text

        out = {}
        if not final and not self.as_json:
            click.echo(f"\n--- {time.strftime('%H:%M:%S')} (live)")
        by_name = {p.name: p for p in session.probes}
        for name in session.order:
            p = by_name.get(name)
            if p is None:  # its library was found nowhere, and the tree never loaded a copy it could check
                why = session.ended.get(name) or session.waiting().get(name, "")
                if self.as_json:
                    out[name] = {"stats": session.stats(name).__dict__, "ended": why, "aggregates": []}
                else:
                    click.echo(f"\nprobe {name}: 0 matched of 0 calls: not attached, "
                               + (why.split(" (")[0] if "never appeared" in why else why))
                continue
            rp = p.cp.probe
            st = session.stats(rp.name)
            rows = session.aggregates(rp.name)
            if self.as_json:
                out[rp.name] = {
                    "stats": st.__dict__,
                    "ended": session.ended.get(rp.name),
                    "aggregates": [r.__dict__ for r in rows],
                }
                continue
            click.echo("")
            extra = [f"{k.replace('_', ' ')} {v}" for k, v in st.__dict__.items() if v and k not in ("hits", "matched")]
            why = session.ended.get(rp.name, "")
            never = why.split(" (")[0] if "never appeared" in why else ""
            click.echo(
                f"probe {rp.name}: {st.matched} matched of {st.hits} calls"
                + (f" ({', '.join(extra)})" if extra else "")
                + (f": not attached, {never}" if never else "")
            )
            for r in rows:
                key = ", ".join(f"{k}={value_text(rp, k, v, r.names, session.enum_name)}" for k, v in r.key.items())
                vals = ", ".join(f"{k} {ABSENT if v is None else v}" for k, v in r.values.items())
                where = f"[{key}]" if key else ""
                click.echo(f"@{rp.name}{where}: count {r.count}" + (f", {vals}" if vals else ""))
                lin = {a.label: a for a in rp.aggregates if a.func == "lhist"}
                for hname, buckets in r.hists.items():
                    click.echo(f"{hname}" + (f" [{key}]" if key else "") + ":")
                    is_time = "latency" in hname or "(ts" in hname
                    if hname in lin:
                        lo, hi, step = lin[hname].params
                        lines = lhist_lines(buckets, lo, hi, step, time=is_time)
                    else:
                        lines = hist_lines(buckets, time=is_time)
                    for line in lines:
                        click.echo(line)
        if self.as_json and final:
            click.echo(json.dumps({"final": out}))
