"""Run each guarded query in its own short-lived process, killed at the deadline (``run_sql``, ``ingero query``).

SQLite's progress handler never runs inside one SQL function call, so ``instr()``, ``LIKE``, ``replace()``
or ``printf()`` over megabyte strings could run for minutes past any limit inside the server. Here the
query runs in a child process that opens the database itself, applies every guard of
:mod:`ingero.store.sqlguard` (read-only connection, authorizer allow-list, heap and length limits,
progress-handler time limit) and sends back the result; the parent kills it at the wall-clock deadline,
whatever it is doing. The child exits after one query, so the memory a query used is given back at once.
Each query has its own process: one client's query never waits behind another's (up to
:data:`MAX_CONCURRENT` at once; more wait for a free slot within their own time limit). The query processes
run at a lower CPU priority (:data:`QUERY_NICE`): on a busy machine a runaway query takes the CPU time the
server's other clients do not need, instead of an equal share of it (the server answers them first).
"""

from __future__ import annotations

import marshal
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from ingero.store.sqlguard import (
    DEFAULT_ROWS,
    DEFAULT_TIMEOUT_S,
    MAX_OUTPUT_BYTES,
    QueryResult,
    SqlFailed,
    SqlRefused,
    guard_connection,
    run_guarded,
    time_limit_refusal,
)

#: queries running at once (each in its own process, each with its own heap limit)
MAX_CONCURRENT = 4
#: how long past the deadline the parent waits for the child's own "time limit" answer before killing it
KILL_GRACE_S = 0.3
#: the query processes' nice value (the server's own threads keep theirs): a CPU bomb yields to other clients
QUERY_NICE = 10
_ROOT = str(Path(__file__).resolve().parents[2])
_CHILD = ["-c", "import sys; sys.path.insert(0, sys.argv[1]); from ingero.store.sqlworker import child_main; "
          "child_main()", _ROOT]


class SqlRunner:
    """Runs guarded queries on one database URI, each in a fresh child process killed at its deadline.

    A spare child is started ahead (its interpreter and imports ready) so a query does not pay the start-up."""

    def __init__(self, uri: str, *, timeout_s: float = DEFAULT_TIMEOUT_S, spare: bool = True) -> None:
        self.uri = uri
        self.timeout_s = timeout_s
        self._slots = threading.BoundedSemaphore(MAX_CONCURRENT)
        self._lock = threading.Lock()
        self._keep_spare = spare
        self._spare: subprocess.Popen | None = self._spawn() if spare else None

    def close(self) -> None:
        with self._lock:
            spare, self._spare, self._keep_spare = self._spare, None, False
        if spare is not None:
            _kill(spare)

    def _spawn(self) -> subprocess.Popen:
        child = subprocess.Popen([sys.executable, *_CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, close_fds=True, env={**os.environ, "PYTHONHASHSEED": "0"})
        try:  # from its start (its interpreter's start-up competes with the server's answers too)
            os.setpriority(os.PRIO_PROCESS, child.pid, min(19, os.getpriority(os.PRIO_PROCESS, 0) + QUERY_NICE))
        except OSError:  # it exited already: its answer (or its failure) says so
            pass
        return child

    def _take(self) -> subprocess.Popen:
        with self._lock:
            child, self._spare = self._spare, None
            if self._keep_spare:
                self._spare = self._spawn()
        if child is None or child.poll() is not None:
            child = self._spawn()
        return child

    def run(self, sql: str, *, limit: int = DEFAULT_ROWS, max_bytes: int = MAX_OUTPUT_BYTES) -> QueryResult:
        """Run ``sql``; raises :class:`SqlRefused` / :class:`SqlFailed` as :func:`run_guarded` does."""
        start = time.monotonic()
        deadline = start + self.timeout_s
        if not self._slots.acquire(timeout=self.timeout_s):
            raise SqlRefused(f"{MAX_CONCURRENT} queries are already running on this server and none finished "
                             f"within the {self.timeout_s:g} s time limit", "retry later")
        try:
            child = self._take()
            request = marshal.dumps((self.uri, sql, limit, deadline - time.monotonic(), self.timeout_s, max_bytes))
            try:
                out, _ = child.communicate(request, timeout=max(0.0, deadline - time.monotonic()) + KILL_GRACE_S)
            except subprocess.TimeoutExpired:
                _kill(child)
                raise time_limit_refusal(self.timeout_s) from None
        finally:
            self._slots.release()
        return _decode(out, child.returncode, self.timeout_s, start)


def _kill(child: subprocess.Popen) -> None:
    child.kill()
    try:
        child.communicate(timeout=5)
    except (subprocess.TimeoutExpired, ValueError, OSError):
        child.wait()


def _decode(out: bytes, rc: int | None, timeout_s: float, start: float) -> QueryResult:
    try:
        msg = marshal.loads(out)
    except (EOFError, ValueError, TypeError):
        raise SqlFailed(f"the query process ended without an answer (exit status {rc})",
                        "the query may have needed more memory than the machine could give; add LIMIT or "
                        "filter first") from None
    kind = msg[0]
    if kind == "ok":
        _, columns, rows, truncated = msg
        return QueryResult(tuple(columns), tuple(tuple(r) for r in rows), truncated,
                           int((time.monotonic() - start) * 1000))
    _, text, hint = msg
    raise (SqlRefused if kind == "refused" else SqlFailed)(text, hint or None)


def child_main() -> None:
    """The child: read one request from stdin, answer on stdout, exit."""
    import sqlite3

    raw = sys.stdin.buffer.read()
    if not raw:  # a spare never used: its server ended
        os._exit(0)
    uri, sql, limit, timeout_s, stated_s, max_bytes = marshal.loads(raw)
    try:
        conn = sqlite3.connect(uri, uri=True)
        guard_connection(conn)
        res = run_guarded(conn, sql, limit=limit, timeout_s=max(0.0, timeout_s), max_bytes=max_bytes,
                          stated_timeout_s=stated_s)
        msg: tuple = ("ok", list(res.columns), [list(r) for r in res.rows], res.truncated)
    except SqlRefused as e:
        msg = ("refused", e.message, e.hint)
    except SqlFailed as e:
        msg = ("failed", e.message, e.hint)
    except sqlite3.Error as e:
        msg = ("failed", f"cannot open the database for the query: {e}", "")
    sys.stdout.buffer.write(marshal.dumps(msg))
    sys.stdout.buffer.flush()
    os._exit(0)
