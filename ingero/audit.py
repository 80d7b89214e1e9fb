"""The audit log of MCP invocations: every request an agent makes, in an SQLite database of its own.

The investigated database may be read-only (and must never change), so the log lives apart: by default
``state_dir()/audit.db`` (``--audit-db`` to choose). One row per request: time, client name and version,
transport, a fingerprint of the bearer token (HTTP), the method and tool, the arguments, duration,
outcome and bytes returned. ``ingero audit`` shows it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ingero.errors import IngeroError
from ingero.paths import state_dir

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  ts INTEGER NOT NULL,                 -- Unix ns when the request arrived
  client_name TEXT NOT NULL DEFAULT '',
  client_version TEXT NOT NULL DEFAULT '',
  transport TEXT NOT NULL,             -- stdio | http
  token_fp TEXT NOT NULL DEFAULT '',   -- first 16 hex of SHA-256 of the bearer token (http)
  method TEXT NOT NULL,                -- tools/call, tools/list, prompts/get, initialize, http
  tool TEXT NOT NULL DEFAULT '',
  args TEXT NOT NULL DEFAULT '',       -- JSON
  duration_ms REAL NOT NULL DEFAULT 0,
  outcome TEXT NOT NULL,               -- ok | error | rejected | unauthorized | refused (HTTP)
  error TEXT NOT NULL DEFAULT '',
  bytes_out INTEGER NOT NULL DEFAULT 0,
  db TEXT NOT NULL DEFAULT ''          -- the database being served
);
CREATE INDEX IF NOT EXISTS idx_calls_ts ON calls(ts);
"""

MAX_ARGS_CHARS = 8192


def default_audit_path() -> Path:
    return state_dir() / "audit.db"


def token_fingerprint(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:16] if token else ""


@dataclass(frozen=True)
class AuditRecord:
    ts: int
    client_name: str
    client_version: str
    transport: str
    token_fp: str
    method: str
    tool: str
    args: str
    duration_ms: float
    outcome: str
    error: str
    bytes_out: int
    db: str
    id: int = 0


class AuditLog:
    """Append-only writer of the audit database (thread-safe)."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path else default_audit_path()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA busy_timeout=5000")
            self._conn.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as e:
            raise IngeroError(f"cannot open the audit database {self.path}: {e}",
                              "choose a writable place with --audit-db FILE") from e
        self._lock = threading.Lock()

    def record(self, rec: AuditRecord) -> None:
        args = rec.args if len(rec.args) <= MAX_ARGS_CHARS else rec.args[:MAX_ARGS_CHARS] + "...(truncated)"
        with self._lock:
            self._conn.execute(
                "INSERT INTO calls (ts, client_name, client_version, transport, token_fp, method, tool, "
                "args, duration_ms, outcome, error, bytes_out, db) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (rec.ts, rec.client_name, rec.client_version, rec.transport, rec.token_fp, rec.method,
                 rec.tool, args, round(rec.duration_ms, 3), rec.outcome, rec.error[:2000], rec.bytes_out,
                 rec.db))

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def now_ns() -> int:
    return time.time_ns()


def dumps_args(args: object) -> str:
    try:
        return json.dumps(args, sort_keys=True, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return repr(args)


def read_audit(path: str | Path | None = None, limit: int = 50, tool: str = "") -> list[AuditRecord]:
    """The newest ``limit`` rows (oldest first), opened read-only."""
    p = Path(path) if path else default_audit_path()
    if not p.exists():
        raise IngeroError(f"no audit database at {p}", "it is created by the first `ingero mcp` request")
    conn = sqlite3.connect(f"file:{p}?mode=ro", uri=True)
    try:
        where, params = ("WHERE tool = ?", [tool]) if tool else ("", [])
        rows = conn.execute(
            "SELECT ts, client_name, client_version, transport, token_fp, method, tool, args, duration_ms, "
            f"outcome, error, bytes_out, db, id FROM calls {where} ORDER BY id DESC LIMIT ?",
            params + [limit if limit > 0 else -1]).fetchall()
    finally:
        conn.close()
    return [AuditRecord(*r) for r in reversed(rows)]
