"""``ingero mcp``: serve a stored trace to MCP clients (stdio, or streamable HTTP with a bearer token)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from ingero.errors import IngeroError


@click.command("mcp")
@click.option("--db", "db", type=click.Path(path_type=Path), envvar="INGERO_DB",
              help="The trace database to serve (read-only; env INGERO_DB).")
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
@click.option("--live", is_flag=True, help="The database is being written right now: open it with mode=ro.")
@click.option("--log-level", default="WARNING", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
def mcp(db: Path | None, http: str | None, tls_cert: Path | None, tls_key: Path | None,
        audit_db: Path | None, sql_timeout: float, live: bool, log_level: str) -> None:
    """Serve the standard seven tools over a stored trace database.

    The database is never written: it opens read-only (a copy when a non-empty -wal sits beside it).
    Every request is recorded in the audit database (see `ingero audit`). Over HTTP a bearer token is
    required: set INGERO_MCP_TOKEN, or one is generated and printed on stderr at start.

    \b
    Examples:
      ingero mcp --db trace.db
      INGERO_MCP_TOKEN=secret ingero mcp --db trace.db --http 127.0.0.1:8765
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
    reader = TraceReader.open(db, live=live) if db else None
    audit = AuditLog(audit_db)
    try:
        if not http:
            server = build_server(reader, audit, ServerOptions("stdio", sql_timeout))
            server.run("stdio")
            return
        _serve_http(reader, audit, http, tls_cert, tls_key, sql_timeout)
    finally:
        if reader is not None:
            reader.close()
        audit.close()


def _serve_http(reader, audit, http: str, tls_cert: Path | None, tls_key: Path | None,
                sql_timeout: float) -> None:
    import uvicorn

    from ingero.mcp.http import TOKEN_ENV, BearerGuard, parse_address, resolve_token
    from ingero.mcp.server import ServerOptions, build_server

    addr = parse_address(http)
    if not addr.is_loopback and not tls_cert:
        raise IngeroError(f"refusing to serve {addr.host} without TLS: the bearer token would cross the "
                          "network in clear", "add --tls-cert and --tls-key, or bind loopback (:PORT)")
    token, generated = resolve_token(dict(os.environ))
    server = build_server(reader, audit, ServerOptions("http", sql_timeout))
    app = server.streamable_http_app(host=addr.host)
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
    uvicorn.Server(config).run()
