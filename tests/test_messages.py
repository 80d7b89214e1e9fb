"""Every answer says what it means: each message on a database made for it, checked against direct SQL."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

import anyio
import pytest

from ingero.mcp.format import PREAMBLE
from ingero.store import Event, EventWriter, ProbeField, ProbeInfo, SessionInfo, TraceReader
from ingero.store.records import Aggregate
from tests.replay_helpers import ingero_cmd

S = 10**9
T0 = 1_800_000_000 * S   # epoch ns, on a minute boundary


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> Path:
    """cudaMalloc: 5 calls of 1 s in the last 5 s of a 100 s trace (plus one at its start); 3 failing cudaFree
    calls (error 35, as without a GPU); a block_read; a
    dynamic probe 'mallocs' with 2 events; event_aggregates counting 600 cudaMalloc calls in the last minute
    (the stored events are a sample, as --selective stores them)."""
    path = tmp_path_factory.mktemp("msg") / "messages.db"
    with EventWriter(path, node="n", session=SessionInfo(command="x")) as w:
        probe = w.register_probe(ProbeInfo("mallocs", fields=(ProbeField("size"),)))
        end = T0 + 100 * S
        rows = [Event(T0, 7, 7, 1, 1, 1000)]
        rows += [Event(end - (4 - i) * S, 7, 7, 1, 1, S) for i in range(5)]
        rows += [Event(T0 + 50 * S, 7, 7, 5, 1, 2000, arg0=8)]
        rows += [Event(T0 + 20 * S + i, 7, 7, 1, 2, 1000, ret_code=35) for i in range(3)]  # failing cudaFree
        rows += [Event(T0 + 60 * S + i, 7, 7, 100, probe.op, 500, values=(4096,)) for i in range(2)]
        w.add_events(rows, epoch=True)
        w.add_aggregates([Aggregate(T0 + 60 * S, 1, 1, 7, count=600, stored=3)])
        w.add_process_names({7: "trainer"})
        w.add_events([], epoch=True)
    return path


def _sql(db: Path, q: str):
    c = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return c.execute(q).fetchall()
    finally:
        c.close()


def _call(db: Path, tool: str, args: dict) -> tuple[bool, str]:
    from mcp import Client

    from ingero.mcp.server import build_server

    reader = TraceReader.open(db)

    async def main():
        from mcp.shared.exceptions import MCPError

        async with Client(build_server(reader, None)) as c:
            try:
                r = await c.call_tool(tool, args)
            except MCPError as e:  # invalid params: a JSON-RPC error
                return True, f"invalid params: {e.error.message}"
            return r.is_error, r.content[0].text
    try:
        return anyio.run(main)
    finally:
        reader.close()


def test_wall_share_is_over_the_window_asked_for(db):
    _, text = _call(db, "get_trace_stats", {"since": "10s"})
    ops = {o["op"]: o for o in json.loads(text[len(PREAMBLE):])["ops"]}
    summed = _sql(db, f"SELECT SUM(duration) FROM events WHERE source = 1 AND op = 1 AND timestamp >= "
                      f"{T0 + 90 * S}")[0][0]
    assert ops["cudaMalloc"]["w%"] == f"{100 * summed / (10 * S):.1f}" == "50.0"   # over the events' 4 s: 125%


def test_empty_filter_says_so_with_the_database_count(db):
    total = _sql(db, "SELECT COUNT(*) FROM events")[0][0]
    _, text = _call(db, "get_trace_stats", {"until": "@1000"})
    assert text == f"No events match the filter (the time window): {total} events in the database."
    _, text = _call(db, "get_causal_chains", {"pids": [424242]})
    assert text == f"No events match the filter (pid 424242): {total} events in the database."


def test_source_labels_and_probe_ops_by_name(db):
    _, text = _call(db, "get_trace_stats", {"tsc": False})
    assert "[IO] block_read" in text and "[CUDA] cudaMalloc" in text and "[Probe] probe:mallocs" in text
    out = subprocess.run([ingero_cmd(), "stats", "--db", str(db)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    name = _sql(db, "SELECT name FROM ops WHERE source_id = 100")[0][0]
    assert f"probe:{name}" in out.stdout and "probe_op(" not in out.stdout


def test_negative_or_huge_estimate_window_refused(db, cudart12):
    from ingero.mcp.live import ProbeTools, ToolRefused

    spec = f"probe m = {cudart12}:cudaMalloc\n"
    for bad, bound in ((-5, "more than 0"), (0, "more than 0"), (86400, "at most 3600")):
        err, text = _call(db, "validate_probe", {"spec": spec, "window_s": bad})
        assert err and f'invalid params: invalid arguments for validate_probe: argument "window_s" must be {bound}, ' \
                       f"got {bad}" in text, text
    with TraceReader.open(db) as r, pytest.raises(ToolRefused, match="more than 0 and at most 3600 seconds, got -5"):
        ProbeTools(r).validate(spec, window_s=-5)


def test_estimate_uses_event_aggregates_where_stored_events_are_sampled(db, cudart12):
    err, text = _call(db, "validate_probe", {"spec": f"probe m = {cudart12}:cudaMalloc\n", "window_s": 3600})
    assert not err
    counted = _sql(db, "SELECT SUM(count) FROM event_aggregates WHERE source = 1 AND op = 1")[0][0]
    stored = _sql(db, "SELECT COUNT(*) FROM events WHERE source = 1 AND op = 1")[0][0]
    assert f"{counted} calls counted in " in text and f"the stored events are sampled, {stored} stored" in text


def test_get_stacks_on_a_filter_without_stacks_says_why(db):
    n = _sql(db, "SELECT COUNT(*) FROM events WHERE source = 5 AND op = 1")[0][0]
    _, text = _call(db, "get_stacks", {"op": "block_read"})
    assert text.startswith(f"No stacks found: {n} block_read events, none with a call stack") and "--stacks" not in text


def test_run_sql_description_states_the_servers_own_limit(db):
    from mcp import Client

    from ingero.mcp.server import ServerOptions, build_server

    with TraceReader.open(db) as reader:
        async def main():
            async with Client(build_server(reader, None, ServerOptions("stdio", 7.5))) as c:
                return {t.name: t.description for t in (await c.list_tools()).tools}["run_sql"]
        desc = anyio.run(main)
    assert "7.5 s wall clock" in desc and "30 s" not in desc


def test_recomputed_chains_say_so(db):
    """This database has no stored chains: what get_causal_chains gives is computed now, and says so."""
    assert _sql(db, "SELECT COUNT(*) FROM causal_chains")[0][0] == 0
    _, text = _call(db, "get_causal_chains", {})
    arr = json.loads(text[len(PREAMBLE):])
    assert arr and all(c["src"] == "computed now from the stored events of the window asked for" for c in arr)


def test_probe_view_comm_is_the_process_name(db):
    view = _sql(db, "SELECT view FROM probes")[0][0]
    names = {pid: name for pid, name in _sql(db, "SELECT pid, name FROM process_names")}
    rows = _sql(db, f'SELECT pid, comm FROM "{view}"')
    assert len(rows) == 2 and all(comm == names[pid] == "trainer" for pid, comm in rows)


def test_one_symbol_count_per_library_everywhere(cudart12):
    """`ingero symbols`, list_symbols, list_libraries and a DSL glob count the same functions."""
    import re

    from ingero.dsl import check
    from ingero.mcp.live import ProbeTools

    cli = subprocess.run([ingero_cmd(), "symbols", str(cudart12)], capture_output=True, text=True, timeout=120)
    n_cli = int(re.search(r"# (\d+) of (\d+) function symbols match", cli.stdout).group(2))
    tools = ProbeTools(None)
    n_list = int(re.search(r"(\d+) functions; ", tools.list_symbols(str(cudart12), "*", limit=1)).group(1))
    libs = [line.split(",") for line in tools.list_libraries(0, 500, 0).splitlines() if str(cudart12) in line]
    n_libs = int(libs[0][2])
    n_glob = len(check(f"probe p = {cudart12}:*\n").resolved().probes[0].symbols)
    assert n_cli == n_list == n_libs == n_glob > 100, (n_cli, n_list, n_libs, n_glob)


def test_hits_matched_and_stored_differences_are_explained():
    from ingero.mcp.live import _counters_explained
    from ingero.runtime.values import ProbeStats

    def st(hits, filtered, matched, budget=0, lost=0):
        return ProbeStats(hits, filtered, 0, matched, budget, lost, 0, 0, 0, 0)

    assert _counters_explained(st(10, 2, 8), 8) == []                    # everything accounted for
    lines = _counters_explained(st(12, 2, 8), 8)
    assert len(lines) == 1 and lines[0].startswith("hits - filtered - rate dropped - matched = 2: calls entered")
    lines = _counters_explained(st(10, 0, 10, budget=3, lost=1), 4)
    assert lines == ["4 events stored of 6 recorded in the kernel (matched - budget dropped - lost): the rest are "
                     "in the ring buffer or the writer's queue, stored within a batch"]


def test_source_codes_in_tool_descriptions_come_from_the_one_table_and_are_accepted(db):
    """get_stacks' source description lists every source of the table, as get_stacks takes it (a code or
    a name, the same answer); run_sql's legend names every upstream op of the table by its code."""
    import re

    from mcp import Client

    from ingero.mcp.server import build_server
    from ingero.store.schema import INGERO_OPS, OP_NAMES, SOURCE_NAMES

    with TraceReader.open(db) as reader:
        async def main():
            async with Client(build_server(reader, None)) as c:
                return {t.name: t for t in (await c.list_tools()).tools}
        tools = anyio.run(main)
    described = tools["get_stacks"].input_schema["properties"]["source"]["description"]
    pairs = re.findall(r"(\d+)/(\w+)", described)
    assert {int(code): name for code, name in pairs} == SOURCE_NAMES and len(pairs) == len(SOURCE_NAMES)
    for code, name in pairs:
        by_code, by_name = _call(db, "get_stacks", {"source": int(code)}), _call(db, "get_stacks", {"source": name})
        assert by_code == by_name and not by_code[0], (code, name, by_code)
    legend = tools["run_sql"].description
    for (source, op), name in OP_NAMES.items():
        if (source, op) not in INGERO_OPS:
            assert re.search(rf"{SOURCE_NAMES[source].upper()} ops: [^.]*\b{op}={name}\b", legend), name


@pytest.mark.parametrize("with_names", [True, False])
def test_probe_view_comm_of_a_database_written_before_it_was_filled(db, tmp_path, with_names):
    """A database whose probe view selects the event's own (empty) comm, as ingero wrote them before (the
    shipped demo recording has such views): replay fills comm from process_names, or, where the database has
    none, from another event of the process -- in run_sql and the reader alike; the file is not changed."""
    import hashlib
    import shutil

    old = tmp_path / "old.db"
    shutil.copy(db, old)
    view = _sql(old, "SELECT view FROM probes")[0][0]
    c = sqlite3.connect(old)
    sql = c.execute("SELECT sql FROM sqlite_master WHERE name = ?", (view,)).fetchone()[0]
    start, end = sql.index("e.tid, ") + len("e.tid, "), sql.index(" AS comm, ") + len(" AS comm")
    c.execute(f'DROP VIEW "{view}"')
    c.execute(sql[:start] + "e.comm" + sql[end:])  # the view's SQL as ingero wrote it before
    if not with_names:
        c.execute("DROP TABLE process_names")
        c.execute("UPDATE events SET comm = 'trainer' WHERE source = 1 AND pid = 7")  # the CUDA calls' own
    c.commit()
    c.close()
    assert _sql(old, f'SELECT DISTINCT comm FROM "{view}"') == [("",)]  # what such a view gives by itself
    digest = hashlib.sha256(old.read_bytes()).hexdigest()
    err, text = _call(old, "run_sql", {"query": f'SELECT pid, comm, COUNT(*) FROM "{view}" GROUP BY 1, 2'})
    assert not err and '"data":[[7,"[traced-data]trainer[/traced-data]",2]]' in text, text
    reader = TraceReader.open(old)
    try:
        assert reader.query(f'SELECT DISTINCT comm FROM "{view}"') == [("trainer",)]
    finally:
        reader.close()
    assert hashlib.sha256(old.read_bytes()).hexdigest() == digest
