"""``ingero mcp``: serve a stored trace to MCP clients (stdio, or streamable HTTP with a bearer token)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from ingero.cli.fleet_opts import fleet_options, start_export
from ingero.errors import IngeroError
from ingero.limits import DEFAULT_SYMBOLS, MAX_PROBES, MAX_SYMBOLS, PROBE_EVENTS, PROBE_TTL_S

#: what ``ingero mcp --live -- CMD`` does with the command when the server stops (the first is the default)
WORKLOAD_ON_EXIT = ("terminate", "keep")


@click.command("mcp", context_settings={"ignore_unknown_options": False})
@click.option("--db", "db", type=click.Path(path_type=Path), envvar="INGERO_DB",
              help="The trace database to serve (read-only; env INGERO_DB). With --live and --pid/CMD: the "
                   "database the live trace writes (default: STATE_DIR/live/trace-TIME-PID.db).")
@click.option("--http", "http", metavar="HOST:PORT",
              help="Serve streamable HTTP at HOST:PORT (path /mcp) instead of stdio. ':PORT' binds loopback.")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="PEM certificate: serve HTTPS (with --tls-key).")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="PEM private key for --tls-cert.")
@click.option("--audit-db", type=click.Path(dir_okay=False, path_type=Path),
              help="Where to record every MCP request (default: STATE_DIR/audit.db).")
@click.option("--sql-timeout", type=float, default=30.0, show_default=True,
              help="Time limit of one run_sql query, in seconds.")
@click.option("--live", is_flag=True,
              help="Trace a process now (--pid N or -- CMD ARGS) and serve the live database with the probe "
                   "tools; without --pid/CMD: the --db file is being written by another tracer (mode=ro).")
@click.option("--pid", "pid", type=int, help="--live: trace this running process (and its children).")
@click.option("--allow-attach", is_flag=True,
              help="--live: offer attach_probe/detach_probe (off: they are not even listed).")
@click.option("--allow-lib", "allow_libs", multiple=True, metavar="GLOB",
              help="Libraries probes may attach to, by stem, soname, file name or path glob (repeatable; "
                   "default: the CUDA libraries).")
@click.option("--max-probes", type=int, default=MAX_PROBES, show_default=True, help="--live: live probes at once.")
@click.option("--probe-ttl", default=f"{PROBE_TTL_S:g}s", show_default=True,
              help="--live: longest probe ttl (a spec may lower it).")
@click.option("--probe-events", type=int, default=PROBE_EVENTS, show_default=True,
              help="--live: most events per probe (a spec may lower it).")
@click.option("--probe-symbols", type=int, default=DEFAULT_SYMBOLS, show_default=True,
              help=f"--live: most symbols one probe may match (at most {MAX_SYMBOLS}).")
@click.option("--workload-on-exit", "on_exit", type=click.Choice(WORKLOAD_ON_EXIT), default="terminate",
              show_default=True,
              help="--live -- CMD: what happens to the command when the server stops (stdio: the client went "
                   "away; HTTP: the server was stopped): terminate it (SIGTERM, SIGKILL after 5 s; it shares "
                   "ingero's process group), or keep it running untraced (started in a session of its own).")
@click.option("--http-idle-timeout", type=float, default=300.0, show_default=True,
              help="HTTP: end a client session idle this long (its probes end with it), in seconds.")
@click.option("--prometheus", envvar="INGERO_PROMETHEUS", metavar="URL",
              help="Offer query_fleet: the fleet's metrics through this Prometheus server (env INGERO_PROMETHEUS).")
@fleet_options(tls=False)
@click.option("--log-level", default="WARNING", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def mcp(db: Path | None, http: str | None, tls_cert: Path | None, tls_key: Path | None,
        audit_db: Path | None, sql_timeout: float, live: bool, pid: int | None, allow_attach: bool,
        allow_libs: tuple[str, ...], max_probes: int, probe_ttl: str, probe_events: int, probe_symbols: int,
        http_idle_timeout: float, log_level: str, command: tuple[str, ...], prometheus: str | None = None,
        on_exit: str = "terminate", **fleet) -> None:
    """Serve the standard seven tools over a trace database, plus the probe tools.

    Replay (--db FILE): the database is never written: it opens read-only (a copy when a non-empty -wal
    sits beside it); list_libraries, list_symbols, describe_symbol and validate_probe work on this
    machine's library files. Live (--live --pid N, or --live -- CMD ARGS): traces the process tree into a
    database and serves it as it grows; with --allow-attach the agent attaches DSL probes itself, within
    the allow-list and budgets. Every request is recorded in the audit database (see `ingero audit`). Over
    HTTP a bearer token is required: set INGERO_MCP_TOKEN, or one is generated and printed on stderr.

    \b
    Examples:
      ingero mcp --db trace.db
      INGERO_MCP_TOKEN=secret ingero mcp --db trace.db --http 127.0.0.1:8765
      sudo ingero mcp --live --allow-attach --pid 4242
      sudo ingero mcp --live --allow-attach --db run.db -- python train.py
      ingero mcp --prometheus http://127.0.0.1:9090        # query_fleet only
    """
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from ingero.audit import AuditLog
    from ingero.mcp.server import ServerOptions, build_server
    from ingero.store import TraceReader

    if bool(tls_cert) != bool(tls_key):
        raise IngeroError("--tls-cert and --tls-key must be given together")
    if sql_timeout <= 0:
        raise IngeroError("--sql-timeout must be positive")
    if (pid or command) and not live:
        raise IngeroError("--pid and a command trace a process: add --live", "ingero mcp --live --pid N")
    if pid and command:
        raise IngeroError("trace either a running process (--pid) or a command (-- CMD ARGS), not both")
    if on_exit != "terminate" and not command:
        raise IngeroError("--workload-on-exit applies to a command started by ingero mcp --live -- CMD ARGS",
                          "a process given with --pid is never terminated by ingero")
    if (allow_attach or allow_libs) and not (pid or command):
        raise IngeroError("--allow-attach and --allow-lib need a live trace",
                          "ingero mcp --live --allow-attach --pid N (or -- CMD ARGS)")
    if live and (pid or command):
        from ingero.analysis.window import parse_duration_ns
        from ingero.mcp.live import LiveOptions
        from ingero.tracer.dynamic import ProbeLimits

        if min(max_probes, probe_events, probe_symbols) <= 0:
            raise IngeroError("--max-probes, --probe-events and --probe-symbols must be positive")
        if probe_symbols > MAX_SYMBOLS:
            raise IngeroError(f"--probe-symbols {probe_symbols} is above the hard limit of {MAX_SYMBOLS} a probe "
                              "may attach to", f"--probe-symbols {MAX_SYMBOLS}")
        limits = ProbeLimits(ttl_s=parse_duration_ns(probe_ttl) / 1e9, events=probe_events,
                             max_probes=max_probes, max_symbols=probe_symbols)
        opts = LiveOptions(allow_attach=allow_attach, allow_libs=tuple(allow_libs), limits=limits)
        _serve_live(db, pid, command, opts, audit_db, http, tls_cert, tls_key, sql_timeout, http_idle_timeout,
                    prometheus or "", fleet, on_exit)
        return
    if fleet.get("metrics") or fleet.get("otlp"):
        raise IngeroError("--metrics and --otlp export a live trace: add --live and --pid N (or -- CMD ARGS)")
    if live and not db:
        raise IngeroError("--live needs --pid N or a command to trace (or --db FILE being written by "
                          "`ingero trace`)")
    reader = TraceReader.open(db, live=live) if db else None
    audit = AuditLog(audit_db)
    try:
        if not http:
            server = build_server(reader, audit, ServerOptions("stdio", sql_timeout, live, prometheus or ""))
            server.run("stdio")
            return
        _serve_http(reader, audit, http, tls_cert, tls_key, sql_timeout, live_db=live, prometheus=prometheus or "")
    finally:
        if reader is not None:
            reader.close()
        audit.close()


def _serve_http(reader, audit, http: str, tls_cert: Path | None, tls_key: Path | None,
                sql_timeout: float, probes=None, idle_timeout: float | None = None, live_db: bool = False,
                prometheus: str = "") -> None:
    import uvicorn

    from ingero.mcp.http import TOKEN_ENV, BearerGuard, parse_address, resolve_token
    from ingero.mcp.server import ServerOptions, build_server

    addr = parse_address(http)
    if not addr.is_loopback and not tls_cert:
        raise IngeroError(f"refusing to serve {addr.host} without TLS: the bearer token would cross the "
                          "network in clear", "add --tls-cert and --tls-key, or bind loopback (:PORT)")
    token, generated = resolve_token(dict(os.environ))
    live = probes is not None and probes.live
    server = build_server(reader, audit, ServerOptions("http", sql_timeout, live or live_db, prometheus), probes)
    if idle_timeout:
        app = server.streamable_http_app(host=addr.host, session_idle_timeout=idle_timeout)
    else:
        app = server.streamable_http_app(host=addr.host)
    watcher = None
    if live:
        from ingero.mcp.sessions import HttpSessionWatcher

        watcher = HttpSessionWatcher(server, probes).start()
    guarded = BearerGuard(app, token, audit, str(reader.path) if reader else "")
    url = addr.url(bool(tls_cert))
    click.echo(f"ingero MCP server (streamable HTTP) at {url}", err=True)
    if generated:
        click.echo(f"Bearer token (generated; set {TOKEN_ENV} to choose one): {token}", err=True)
    else:
        click.echo(f"Bearer token: from ${TOKEN_ENV}", err=True)
    click.echo(f"Audit log: {audit.path}", err=True)
    config = uvicorn.Config(guarded, host=addr.host, port=addr.port, log_level="warning",
                            ssl_certfile=str(tls_cert) if tls_cert else None,
                            ssl_keyfile=str(tls_key) if tls_key else None)
    try:
        uvicorn.Server(config).run()
    finally:
        if watcher is not None:
            watcher.stop()


def _serve_live(db: Path | None, pid: int | None, command: tuple[str, ...], opts, audit_db: Path | None,
                http: str | None, tls_cert: Path | None, tls_key: Path | None, sql_timeout: float,
                idle_timeout: float, prometheus: str = "", fleet: dict | None = None,
                on_exit: str = "terminate") -> None:
    """Trace the process tree in a thread and serve its database as it grows, with the probe tools.

    ``on_exit`` (a command only): when the server stops, ``terminate`` the command or ``keep`` it running
    untraced."""
    import signal
    import threading
    import time

    from ingero.audit import AuditLog
    from ingero.mcp.live import ProbeTools
    from ingero.mcp.server import ServerOptions, build_server
    from ingero.paths import state_dir
    from ingero.store import TraceReader
    from ingero.tracer.session import TraceOptions, TraceSession

    if db is None:
        folder = state_dir() / "live"
        folder.mkdir(parents=True, exist_ok=True)
        db = folder / f"trace-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.db"
    audit = AuditLog(audit_db)
    # the command's stdout is not ours to share: over stdio it is the MCP channel
    if http:
        from ingero.mcp.http import parse_address

        hint = parse_address(http).url(bool(tls_cert))
    else:
        hint = f"stdio: ingero mcp --live (on this node; database {db})"
    export = start_export(fleet or {}, mcp_hint=hint, tls_cert=tls_cert, tls_key=tls_key)
    try:
        session = TraceSession(TraceOptions(db=db, probe_limits=opts.limits), pids=[pid] if pid else (),
                               command=command, command_stdout=2, metrics=export.metrics if export else None,
                               command_detached=on_exit == "keep").start()
    except BaseException:
        if export:
            export.close()
        raise
    runner = threading.Thread(target=session.run, name="ingero-trace", daemon=True)
    runner.start()
    reader = None

    def on_term(*_):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    reason = "the MCP server stopped"
    try:
        reader = TraceReader.open(db, live=True)
        probes = ProbeTools(reader, session=session, options=opts, runner=runner, audit=audit)
        target = f"pid {session.pids[0]}" + (f" ({' '.join(command)})" if command else "")
        click.echo(f"ingero: tracing {target} into {db}; probes: "
                   f"{'attach allowed' if opts.allow_attach else 'validate only (no --allow-attach)'}; "
                   f"audit log {audit.path}", err=True)
        if not http:
            server = build_server(reader, audit, ServerOptions("stdio", sql_timeout, True, prometheus), probes)
            server.run("stdio")
            reason = "the MCP client session ended (stdio closed)"
            probes.end_owner_prefix("stdio", reason)
        else:
            _serve_http(reader, audit, http, tls_cert, tls_key, sql_timeout, probes, idle_timeout,
                        prometheus=prometheus)
    except KeyboardInterrupt:
        reason = "the MCP server was stopped (signal)"
    finally:
        signal.signal(signal.SIGTERM, previous)
        session.stop(reason)
        runner.join(timeout=30)
        if on_exit == "keep" and session.child is not None and session.child.poll() is None:
            click.echo(f"ingero: {reason}; the workload (pid {session.child.pid}) keeps running, untraced "
                       "(--workload-on-exit keep)", err=True)
        elif session.child is not None and session.child.poll() is None:
            session.child.terminate()
            try:
                session.child.wait(5)
            except Exception:  # noqa: BLE001
                session.child.kill()
        if reader is not None:
            reader.close()
        audit.close()
        if export:
            export.close()
