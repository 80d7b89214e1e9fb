"""What the fleet's end-to-end tests share: free loopback ports, the nodes' databases read-only, a traced
workload started and waited for."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from pathlib import Path

TOKEN = "fleet-e2e-token"
NATIVE = Path(__file__).resolve().parent / "native"


def free_ports(n: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def ro(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)


def calls_in_db(db: Path) -> int:
    with ro(db) as c:
        return c.execute("SELECT count(*) FROM events WHERE source IN (1, 4)").fetchone()[0]


def traced_workload(cmd: list[str]) -> tuple[subprocess.Popen, int]:
    """Start `ingero trace ... -- workload --hold`; once the workload says "done": (the trace, its pid)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "INGERO_MCP_TOKEN": TOKEN})
    for line in proc.stdout:
        if line.startswith("done "):
            return proc, json.loads(line[5:])["pid"]
    proc.wait(60)
    raise AssertionError(proc.stderr.read())
