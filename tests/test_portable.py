"""Recorded artifacts the project ships name no folder of the machine that made them."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

from ingero.store.portable import Prefix, make_portable
from tests.conftest import ROOT

# an absolute path: a slash starting a token, then at least two components
ABSOLUTE = re.compile(r"(?<![\w<>.~:/-])/[\w.+-]+/[\w.+/-]+")
SYSTEM = ("/usr/", "/lib/", "/lib64/", "/proc/", "/sys/", "/dev/", "/etc/", "/bin/", "/sbin/")


def _text_values(db: Path):
    conn = sqlite3.connect(f"file:{db}?immutable=1", uri=True)
    try:
        for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
            for row in conn.execute(f'SELECT * FROM "{table}"'):
                for v in row:
                    if isinstance(v, str):
                        yield table, v
    finally:
        conn.close()


def test_the_shipped_recording_has_no_path_of_the_recording_machine():
    shipped = ROOT / "examples" / "demo-trace.db"
    found = [(t, m) for t, v in _text_values(shipped) for m in ABSOLUTE.findall(v) if not m.startswith(SYSTEM)]
    assert found == [], f"regenerate it with `make demo-recording`: {found[:5]}"
    libs = [v for t, v in _text_values(shipped) if t == "probes" and v.endswith(".so.12")]
    assert libs and all(v.startswith("<venv>/") for v in libs), libs
    assert not Path(f"{shipped}-wal").exists()


def test_make_portable_replaces_each_prefix_and_nothing_else(tmp_path):
    src = tmp_path / "src.db"
    conn = sqlite3.connect(src)
    conn.execute("CREATE TABLE t (a TEXT, b BLOB, n INTEGER)")
    rows = [("/opt/venv/bin/python -m x", b"/opt/venv/bin", 1),
            ("on /opt/venv/lib/libcudart.so.12:cudaMalloc and /home/u/proj/spec.probe", None, 2),
            ("/opt/venvs/other stays", None, 3), ("/usr/lib/libc.so.6", None, 4)]
    conn.executemany("INSERT INTO t VALUES (?, ?, ?)", rows)
    conn.commit()
    conn.close()
    out = tmp_path / "out.db"
    changed = make_portable(src, out, [Prefix("/opt/venv", "<venv>"), Prefix("/home/u/proj/", "<checkout>")])
    got = sqlite3.connect(out).execute("SELECT a, b, n FROM t ORDER BY n").fetchall()
    assert got == [("<venv>/bin/python -m x", b"/opt/venv/bin", 1),
                   ("on <venv>/lib/libcudart.so.12:cudaMalloc and <checkout>/spec.probe", None, 2),
                   ("/opt/venvs/other stays", None, 3), ("/usr/lib/libc.so.6", None, 4)]
    assert changed == 3  # row 2 is changed once per prefix
    assert sqlite3.connect(src).execute("SELECT a FROM t WHERE n = 1").fetchone() == (rows[0][0],)


def test_mcp_replay_of_the_shipped_recording_shows_no_path_of_another_machine(tmp_path):
    """Every tool of a real MCP session over the shipped recording: no folder of the recording machine."""
    import anyio

    from tests.replay_helpers import stdio_session

    shipped = ROOT / "examples" / "demo-trace.db"
    texts: dict[str, str] = {}

    async def main() -> None:
        async with stdio_session(shipped, tmp_path / "audit.db") as s:
            tools = {t.name for t in (await s.list_tools()).tools}
            calls = {"get_check": {}, "get_trace_stats": {}, "get_causal_chains": {}, "get_stacks": {},
                     "run_sql": {"query": "SELECT * FROM probes"}, "list_probes": {},
                     "get_probe_results": {"probe_id": 1}}
            for name, args in calls.items():
                if name in tools:
                    res = await s.call_tool(name, args)
                    texts[name] = "\n".join(getattr(c, "text", "") for c in res.content)

    anyio.run(main)
    assert {"get_trace_stats", "run_sql"} <= texts.keys()
    here = [str(p) for p in (ROOT, ROOT.parent, Path.home())]
    for name, text in texts.items():
        found = [m for m in ABSOLUTE.findall(text) if not m.startswith(SYSTEM)]
        assert found == [], (name, found[:5])
        assert not any(h in text for h in here), name
    # run_sql answers in upstream's Go-style JSON, which escapes < and >
    assert "\\u003cvenv\\u003e/lib/python3.11/site-packages/nvidia/cuda_runtime/lib/libcudart.so.12" in texts["run_sql"]
