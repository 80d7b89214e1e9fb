"""Streamable HTTP for the MCP server: bearer token required, loopback by default, TLS with a cert.

Every request must carry ``Authorization: Bearer <token>``; a missing or wrong token gets ``401`` with
``WWW-Authenticate: Bearer error="invalid_token"`` and the body ``unauthorized`` (upstream's reply),
and the refusal is written to the audit log. Tokens are compared as SHA-256 digests in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import secrets
from dataclasses import dataclass

from ingero.audit import AuditLog, AuditRecord, now_ns, token_fingerprint
from ingero.errors import IngeroError

TOKEN_ENV = "INGERO_MCP_TOKEN"
UPSTREAM_TOKEN_ENV = "INGERO_MCP_BEARER_TOKEN"


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
            await self.app(scope, receive, send)
            return
        if self.audit is not None:
            args = json.dumps({"http_method": scope.get("method", ""), "path": scope.get("path", "")})
            self.audit.record(AuditRecord(
                now_ns(), "", "", "http", token_fingerprint(got or ""), "http", "", args, 0.0, "unauthorized",
                "missing or invalid bearer token", 13, self.db))
        await send({"type": "http.response.start", "status": 401, "headers": [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"www-authenticate", b'Bearer error="invalid_token"')]})
        await send({"type": "http.response.body", "body": b"unauthorized\n"})
