"""Make a recorded trace database shippable: no absolute path of the machine that recorded it.

A live trace stores what the local user needs: the command line with its interpreter's path, the library
file each dynamic probe attached to. A recording the project ships (``examples/demo-trace.db``, made by
``make demo-recording``) must not carry the recording machine's folders, so each absolute prefix given
(the venv, the checkout) is replaced by a placeholder in every text value of the database, which is then
compacted into a single self-contained file (no WAL).
"""

from __future__ import annotations

import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Prefix:
    """An absolute folder of the recording machine and what stands for it in the shipped file."""

    path: str
    placeholder: str


def make_portable(src: Path, dst: Path, prefixes: list[Prefix]) -> int:
    """Copy ``src`` to ``dst`` with every prefix replaced (longest first); the number of values changed."""
    tmp = dst.with_name(dst.name + ".tmp")
    tmp.unlink(missing_ok=True)
    with sqlite3.connect(f"file:{src}?mode=ro", uri=True) as s, sqlite3.connect(tmp) as d:
        s.backup(d)
    changed = 0
    conn = sqlite3.connect(tmp)
    try:
        order = sorted(prefixes, key=lambda p: len(p.path), reverse=True)
        tables = [t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                             "AND name NOT LIKE 'sqlite_%'")]
        for table in tables:
            cols = [r[1] for r in conn.execute(f'PRAGMA table_info("{table}")')]
            for col in cols:
                for p in order:
                    cur = conn.execute(
                        f'UPDATE "{table}" SET "{col}" = replace("{col}", ?, ?) '
                        f'WHERE typeof("{col}") = \'text\' AND instr("{col}", ?) > 0',
                        (p.path.rstrip("/") + "/", p.placeholder.rstrip("/") + "/", p.path.rstrip("/") + "/"))
                    changed += cur.rowcount
        conn.commit()
        conn.execute("PRAGMA journal_mode = DELETE")
        conn.execute("VACUUM")
    finally:
        conn.close()
    shutil.move(tmp, dst)
    return changed
