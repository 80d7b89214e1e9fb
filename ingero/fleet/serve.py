"""Serve a node's metrics at ``/metrics`` for Prometheus to scrape, behind a bearer token.

Loopback by default (``--metrics :9464``); another address needs TLS (``--tls-cert``/``--tls-key``), as
``ingero mcp --http`` does, or the token would cross the network in clear. The token is the HTTP MCP
server's (``INGERO_MCP_TOKEN``); Prometheus sends it with ``authorization: {credentials_file: ...}``.
A request without it gets ``401``. The server runs on its own thread; a scrape costs the tracing loop
only the lock :meth:`FleetMetrics.snapshot` takes.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from ingero.errors import IngeroError
from ingero.fleet.metrics import FleetMetrics, registry_for

log = logging.getLogger(__name__)

#: the path Prometheus scrapes
METRICS_PATH = "/metrics"
#: Prometheus's exporters' default port range starts at 9100; 9464 is OpenTelemetry's Prometheus exporter's
DEFAULT_PORT = 9464


class MetricsServer:
    """``/metrics`` over HTTP(S) on a thread: ``MetricsServer(metrics, ":9464", token).start()``."""

    def __init__(self, metrics: FleetMetrics, address: str, token: str, *, tls_cert: Path | None = None,
                 tls_key: Path | None = None) -> None:
        from ingero.mcp.http import parse_address

        if not token:
            raise IngeroError("the metrics endpoint needs a bearer token (INGERO_MCP_TOKEN)")
        self.address = parse_address(address, "--metrics")
        if not self.address.is_loopback and not tls_cert:
            raise IngeroError(f"refusing to serve metrics on {self.address.host} without TLS: the bearer token "
                              "would cross the network in clear", "add --tls-cert and --tls-key, or bind "
                              "loopback (--metrics :PORT)")
        self.metrics = metrics
        self.tls = tls_cert is not None
        self._want = hashlib.sha256(f"Bearer {token}".encode()).digest()
        self._registry = registry_for(metrics)
        self._cert, self._key = tls_cert, tls_key
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.scrapes = 0

    @property
    def url(self) -> str:
        host = f"[{self.address.host}]" if ":" in self.address.host else self.address.host
        port = self._httpd.server_address[1] if self._httpd else self.address.port
        return f"{'https' if self.tls else 'http'}://{host}:{port}{METRICS_PATH}"

    def start(self) -> MetricsServer:
        from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                got = hashlib.sha256(self.headers.get("Authorization", "").encode()).digest()
                if not hmac.compare_digest(got, server._want):
                    self._reply(401, b"unauthorized\n", "text/plain",
                                [("WWW-Authenticate", 'Bearer error="invalid_token"')])
                    return
                if self.path.split("?", 1)[0] != METRICS_PATH:
                    self._reply(404, b"not found: metrics are at /metrics\n", "text/plain")
                    return
                body = generate_latest(server._registry)
                server.scrapes += 1
                self._reply(200, body, CONTENT_TYPE_LATEST)

            def _reply(self, code: int, body: bytes, ctype: str, headers=()) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in headers:
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt: str, *args) -> None:
                log.debug("metrics %s " + fmt, self.client_address[0], *args)

        try:
            httpd = ThreadingHTTPServer((self.address.host, self.address.port), Handler)
        except OSError as e:
            raise IngeroError(f"cannot serve metrics on {self.address.host}:{self.address.port}: {e.strerror}",
                              "choose another port with --metrics HOST:PORT") from e
        httpd.daemon_threads = True
        if self._cert:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(self._cert), str(self._key))
            httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, name="ingero-metrics", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
