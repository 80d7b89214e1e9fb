"""Streamable HTTP for the MCP server: bearer token required, loopback by default, TLS with a cert.

Every request must carry ``Authorization: Bearer <token>``; a missing or wrong token gets ``401`` with
``WWW-Authenticate: Bearer error="invalid_token"`` and the body ``unauthorized`` (upstream's reply),
and the refusal is written to the audit log, as is every request the transport refuses after the token
(bad Host or Origin, malformed JSON, no or unknown session...), with its status and reason. Tokens are
compared as SHA-256 digests in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import re
import secrets
import time
from dataclasses import dataclass

from ingero.audit import AuditLog, AuditRecord, now_ns, token_fingerprint
from ingero.errors import IngeroError

TOKEN_ENV = "INGERO_MCP_TOKEN"
UPSTREAM_TOKEN_ENV = "INGERO_MCP_BEARER_TOKEN"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HttpAddress:
    host: str
    port: int

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def url(self, tls: bool) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if tls else 'http'}://{host}:{self.port}/mcp"


def parse_address(text: str, flag: str = "--http") -> HttpAddress:
    """``HOST:PORT``, ``:PORT`` (loopback) or ``[::1]:PORT`` (``flag``: the option named in the error)."""
    t = text.strip()
    if t.startswith("["):
        host, sep, port = t[1:].partition("]:")
    else:
        host, sep, port = t.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise IngeroError(f'invalid {flag} address "{text}"', "use HOST:PORT, e.g. 127.0.0.1:8080 or :8080")
    return HttpAddress(host or "127.0.0.1", int(port))


def resolve_token(env: dict[str, str]) -> tuple[str, bool]:
    """(token, generated): from INGERO_MCP_TOKEN or upstream's INGERO_MCP_BEARER_TOKEN, else a new one."""
    tok = env.get(TOKEN_ENV) or env.get(UPSTREAM_TOKEN_ENV) or ""
    if tok.strip():
        return tok.strip(), False
    return secrets.token_urlsafe(32), True


def _digest(s: str) -> bytes:
    return hashlib.sha256(s.encode()).digest()


class BearerGuard:
    """ASGI middleware: refuse every HTTP request without the right bearer token."""

    def __init__(self, app, token: str, audit: AuditLog | None = None, db: str = "") -> None:
        if not token:
            raise ValueError("a bearer token is required")
        self.app = app
        self._want = _digest(token)
        self.audit = audit
        self.db = db

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        auth = ""
        for k, v in scope.get("headers", []):
            if k == b"authorization":
                auth = v.decode("latin-1")
                break
        got = auth[7:].strip() if auth[:7].lower() == "bearer " else None
        if got and hmac.compare_digest(_digest(got), self._want):
            await self._serve_recording_refusals(scope, receive, send, token_fingerprint(got))
            return
        self._record(scope, token_fingerprint(got or ""), "unauthorized", "missing or invalid bearer token", 13, 0.0)
        await send({"type": "http.response.start", "status": 401, "headers": [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"www-authenticate", b'Bearer error="invalid_token"')]})
        await send({"type": "http.response.body", "body": b"unauthorized\n"})

    async def _serve_recording_refusals(self, scope, receive, send, token_fp: str) -> None:
        """Pass an authorized request on; if the transport refuses it (bad Host 421, bad Origin 403, malformed
        JSON or no session 400, unknown session 404, wrong Accept 406 or content type 415, ...) before any
        MCP handler saw it, record the refusal with its status and the reason the transport gave."""
        status = 0
        body = bytearray()
        t0 = time.perf_counter()

        async def watch(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message.get("status", 0))
            elif message["type"] == "http.response.body" and status >= 400 and len(body) < _REASON_BYTES:
                body.extend(message.get("body", b"")[:_REASON_BYTES - len(body)])
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            if status >= 400:
                self._record(scope, token_fp, "refused", f"HTTP {status}: {_reason(bytes(body))}", len(body),
                             (time.perf_counter() - t0) * 1000)

    def _record(self, scope, token_fp: str, outcome: str, reason: str, nbytes: int, ms: float) -> None:
        if self.audit is None:
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])
                   if k in (b"host", b"origin", b"mcp-session-id", b"content-type", b"accept")}
        args = json.dumps({"http_method": scope.get("method", ""), "path": scope.get("path", ""), **headers})
        try:
            self.audit.record(AuditRecord(now_ns(), "", "", "http", token_fp, "http", "", args, ms, outcome,
                                          reason, nbytes, self.db))
        except Exception:  # noqa: BLE001 - never fail a request because the log could not be written
            log.exception("could not write the audit record")


#: how much of a refusal's body is kept as its reason
_REASON_BYTES = 2000


def _reason(body: bytes) -> str:
    """The reason a refusal's body gives: a JSON-RPC error's message, else its text."""
    text = body.decode("utf-8", "replace").strip()
    try:
        doc = json.loads(text)
    except ValueError:  # not JSON, or a JSON-RPC error cut at _REASON_BYTES: its message's first line
        m = re.search(r'"message":\s*"((?:[^"\\]|\\.)*)', text)
        return m.group(1).split("\\n")[0] if m else (text or "(no body)")
    err = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(err, dict) and err.get("message"):
        return str(err["message"])
    return text
