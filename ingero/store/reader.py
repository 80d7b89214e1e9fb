"""Read a stored trace database without ever writing to it.

``TraceReader.open(path)`` picks how to open the file so that nothing beside it changes:

* no ``-wal`` beside it, or an empty one: ``file:...?mode=ro&immutable=1``. Plain ``mode=ro`` would
  create ``-wal``/``-shm`` files beside a WAL database (and fail in a read-only folder).
* a non-empty ``-wal`` (a tracer killed mid-write): the file and its ``-wal`` are copied to a temporary
  folder and the copy is opened, so the WAL's rows are seen (``immutable=1`` would ignore them).
* ``live=True`` (a database a tracer is writing right now): ``mode=ro``.

The reader adapts to the columns a file has (v0.8 INTEGER ids, v0.9 TEXT ids and ``node``, v0.10
``comm``): callers ask :meth:`TraceReader.has_column` rather than assume.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
import tempfile
import threading
import urllib.parse
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from ingero.errors import IngeroError, NotFound
from ingero.store.schema import SOURCE_PROBE, shadow_old_probe_views

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OpenMode:
    """How a file was opened: ``immutable``, ``wal-copy`` or ``live``; ``opened`` is the file SQLite reads."""

    kind: str
    path: Path
    opened: Path


def _uri(path: Path, **params: str) -> str:
    quoted = urllib.parse.quote(str(path.resolve()))
    return f"file:{quoted}?" + "&".join(f"{k}={v}" for k, v in params.items())


class TraceReader:
    """A read-only view of one trace database (upstream Ingero's schema)."""

    def __init__(self, mode: OpenMode, uri: str, tmpdir: Path | None = None) -> None:
        self.mode = mode
        self.path = mode.path
        self._uri = uri
        self._tmpdir = tmpdir
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._first = self.connect()   # fails here, at open, for a file SQLite cannot read
        self._local.conn = self._first
        self._conns.append(self._first)

    @property
    def conn(self) -> sqlite3.Connection:
        """This thread's connection: tools of different clients read at once, none waits behind another."""
        c = getattr(self._local, "conn", None)
        if c is None:
            c = self._local.conn = self.connect()
            with self._conns_lock:
                self._conns.append(c)
        return c

    # -- opening -----------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, *, live: bool = False) -> TraceReader:
        p = Path(path)
        if not p.exists():
            raise NotFound(f"no database at {p}", "give the path of a trace database (ingero mcp --db FILE)")
        if not p.is_file():
            raise IngeroError(f"{p} is not a file")
        _check_header(p)
        wal = p.with_name(p.name + "-wal")
        if live:
            return cls(OpenMode("live", p, p), _uri(p, mode="ro"))
        if wal.exists() and wal.stat().st_size > 0:
            tmp = Path(tempfile.mkdtemp(prefix="ingero-walcopy-"))
            copy = tmp / p.name
            shutil.copyfile(p, copy)
            shutil.copyfile(wal, tmp / wal.name)
            log.info("%s has a non-empty -wal: reading a copy in %s", p, tmp)
            return cls(OpenMode("wal-copy", p, copy), _uri(copy, mode="ro"), tmp)
        return cls(OpenMode("immutable", p, p), _uri(p, mode="ro", immutable="1"))

    @property
    def uri(self) -> str:
        """The SQLite URI this reader opens (a run_sql worker process opens the same)."""
        return self._uri

    def connect(self) -> sqlite3.Connection:
        """A new read-only connection to the same file (``run_sql`` gets its own, guarded one)."""
        try:
            conn = sqlite3.connect(self._uri, uri=True, check_same_thread=False)
            shadow_old_probe_views(conn)  # comm filled in the probe views of older databases
            conn.execute("PRAGMA query_only = 1")
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.DatabaseError as e:
            raise IngeroError(f"cannot read {self.path} as an SQLite database: {e}") from e
        return conn

    def close(self) -> None:
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for c in conns:
            c.close()
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __enter__(self) -> TraceReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- schema --------------------------------------------------------------------------------------
    @cached_property
    def tables(self) -> dict[str, list[str]]:
        """Table name -> its columns, in file order (``sqlite_*`` internal tables left out)."""
        names = [r[0] for r in self.conn.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        return {n: [r[1] for r in self.conn.execute(f'PRAGMA table_info("{n}")')] for n in names}

    def has_table(self, table: str) -> bool:
        return table in self.tables

    def has_column(self, table: str, column: str) -> bool:
        return column in self.tables.get(table, ())

    def has_index(self, name: str) -> bool:
        return self.conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?",
                                 (name,)).fetchone() is not None

    @cached_property
    def schema_version(self) -> str:
        if self.has_table("schema_info"):
            row = self.conn.execute("SELECT value FROM schema_info WHERE key='version'").fetchone()
            if row:
                return str(row[0])
        return "unknown"

    # -- shared small queries ------------------------------------------------------------------------
    def query(self, sql: str, params: tuple | list = ()) -> list[tuple]:
        return self.conn.execute(sql, params).fetchall()

    @cached_property
    def time_bounds(self) -> tuple[int, int] | None:
        """(first, last) event timestamp in Unix ns, or None for a database without events."""
        if not self.has_table("events"):
            return None
        row = self.conn.execute("SELECT MIN(timestamp), MAX(timestamp) FROM events").fetchone()
        return None if row is None or row[0] is None else (int(row[0]), int(row[1]))

    @cached_property
    def op_descriptions(self) -> dict[str, str]:
        """Op name -> description from the ``ops`` table (keyed by name only, as upstream)."""
        if not self.has_table("ops"):
            return {}
        return {r[0]: r[1] for r in self.conn.execute("SELECT name, description FROM ops")}

    @cached_property
    def probe_ops(self) -> dict[int, tuple[str, str]]:
        """Dynamic probes' ops (source :data:`SOURCE_PROBE`, op = probe id) -> (probe name, description),
        from the ``ops`` table the writer fills when a probe is attached."""
        if not self.has_table("ops"):
            return {}
        rows = self.conn.execute("SELECT op_id, name, description FROM ops WHERE source_id = ?", (SOURCE_PROBE,))
        return {int(o): (n, d or "") for o, n, d in rows}

    def count(self, table: str) -> int:
        if not self.has_table(table):
            return 0
        return int(self.conn.execute(f'SELECT COUNT(*) FROM "{table}"').fetchone()[0])


def _check_header(p: Path) -> None:
    try:
        with p.open("rb") as f:
            head = f.read(16)
    except PermissionError as e:
        raise IngeroError(f"cannot read {p}: permission denied") from e
    if head and head != b"SQLite format 3\x00":
        raise IngeroError(f"{p} is not an SQLite database")
