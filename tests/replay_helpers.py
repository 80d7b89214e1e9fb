"""Shared helpers of the replay tests: the upstream databases, their fingerprints, an MCP client."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
from contextlib import asynccontextmanager
from pathlib import Path

from tests.helpers import wait_for_port

ROOT = Path(__file__).resolve().parents[1]
DB_DIR = (ROOT.parent / "shared" / "data" / "ingero-dbs").resolve()
DBS = sorted(DB_DIR.glob("*.db"))
DATALOADER = DB_DIR / "pytorch-dataloader-starvation.db"
INGERO = ROOT / ".venv" / "bin" / "ingero"


def folder_fingerprint(folder: Path = DB_DIR) -> dict[str, tuple[int, str, float]]:
    """Every entry of the folder: size, SHA-256 and mtime (a new -wal/-shm shows up as a new name)."""
    out = {}
    for p in sorted(folder.iterdir()):
        data = p.read_bytes() if p.is_file() else b""
        out[p.name] = (len(data), hashlib.sha256(data).hexdigest(), p.stat().st_mtime)
    return out


def ingero_cmd() -> str:
    return str(INGERO) if INGERO.exists() else "ingero"


@asynccontextmanager
async def stdio_session(db: Path, audit_db: Path, *extra: str, env: dict[str, str] | None = None):
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    params = StdioServerParameters(command=ingero_cmd(),
                                   args=["mcp", "--db", str(db), "--audit-db", str(audit_db), *extra],
                                   env={**os.environ, **(env or {})})
    async with stdio_client(params) as (r, w), ClientSession(r, w) as s:
        await s.initialize()
        yield s


def text_of(result) -> str:
    assert len(result.content) == 1, result
    return result.content[0].text


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_http(db: Path, audit_db: Path, port: int, token: str | None, *extra: str):
    """``ingero mcp --db DB --http 127.0.0.1:PORT`` with ``token`` (None: the server makes one), serving."""
    env = {k: v for k, v in os.environ.items() if k not in ("INGERO_MCP_TOKEN", "INGERO_MCP_BEARER_TOKEN")}
    if token:
        env["INGERO_MCP_TOKEN"] = token
    proc = subprocess.Popen([ingero_cmd(), "mcp", "--db", str(db), "--audit-db", str(audit_db), "--http",
                             f"127.0.0.1:{port}", *extra], env=env, stderr=subprocess.PIPE, text=True)
    return wait_for_port(proc, port, 60)  # importing the MCP SDK alone takes 10+ s on a loaded machine
