"""The probe tools without root: replay mode on library files, guards, estimates, output caps, CLI flags."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import pytest

from ingero.errors import SymbolNotFound
from ingero.mcp.live import LiveOptions, ProbeTools, ToolRefused, cap
from ingero.store import TraceReader
from tests.replay_helpers import DATALOADER, ingero_cmd


@pytest.fixture
def tools() -> ProbeTools:
    return ProbeTools(None)


def test_list_symbols_pages_and_counts(tools, cudart12):
    text = tools.list_symbols(str(cudart12), "cudaMemcpy*", limit=5)
    assert "libcudart.so.12" in text and "rows 1-5" in text and "next page: offset=5" in text
    assert "cudaMemcpy,yes,dynsym" in text
    total = int(text.split("; ")[1].split()[0])
    assert f"{total} match 'cudaMemcpy*'" in text and total > 10
    everything = tools.list_symbols(str(cudart12), limit=10)
    assert "hint: narrow the pattern; largest groups: 'cudaGraph*'" in everything


def test_list_symbols_did_you_mean(tools, cudart12):
    with pytest.raises(SymbolNotFound) as e:
        tools.list_symbols(str(cudart12), "cudaMaloc")
    assert "did you mean 'cudaMalloc'" in str(e.value)


def test_describe_symbol_fields_and_enums(tools, cudart12):
    text = tools.describe_symbol(str(cudart12), "cudaMemcpyAsync")
    assert "cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t count" in text
    assert "count,size_t,uint,8" in text and "cudaMemcpyDeviceToHost=2" in text
    assert "example: probe p = libcudart:cudaMemcpyAsync" in text


def test_validate_reports_located_errors_and_resolution(tools, cudart12):
    bad = tools.validate(f"probe m = {cudart12}:cudaMalloc\n  record sise\n")[0]
    assert bad.startswith("INVALID: 1 error") and ":2:" in bad and "did you mean 'size'" in bad
    good, facts = tools.validate(f"probe m = {cudart12}:cudaMalloc\n  record size\n  limit events 10\n")
    assert good.startswith("VALID: 1 probe") and "budgets in force: ttl 300s, events 10" in good
    assert "estimate: no basis (no trace database is open)" in good
    assert facts == {"valid": True, "resolved": {"m": ["cudaMalloc"]}}
    over = tools.validate(f"probe m = {cudart12}:cudaMalloc\n  limit events 5000000\n")[0]
    assert "OVER THE LIMIT: events 5000000 > limit 1000000" in over


def test_estimate_from_a_stored_trace(cudart12):
    reader = TraceReader.open(DATALOADER)
    try:
        tools = ProbeTools(reader)
        text = tools.validate(f"probe m = {cudart12}:cudaMalloc\n  record size\n", window_s=3600)[0]
        none = tools.validate(f"probe f = {cudart12}:cudaMemset\n")[0]
        # in the standard set now, but not in the one that recorded this (upstream's) database
        older = tools.validate(f"probe g = {cudart12}:cudaGetDeviceCount\n")[0]
    finally:
        reader.close()
    conn = sqlite3.connect(f"file:{DATALOADER}?mode=ro&immutable=1", uri=True)
    first, last = conn.execute("SELECT MIN(timestamp), MAX(timestamp) FROM events").fetchone()
    n = conn.execute("SELECT COUNT(*) FROM events WHERE source = 1 AND op = 1").fetchone()[0]
    conn.close()
    span = (last - first) / 1e9
    assert f"m: {n} calls in {span:.1f} s -> ~{n / span:.1f} events/s" in text
    assert "no basis: the standard set does not trace cudaMemset" in none
    assert "no basis: this database was recorded by a standard set that did not trace cudaGetDeviceCount" in older


def test_allow_list_defaults_to_cuda_and_globs_replace_it():
    default = ProbeTools(None)
    assert default.allowed("libcudart", "libcudart.so.12", "/x/libcudart.so.12")
    assert not default.allowed("libc", "libc.so.6", "/lib/libc.so.6")
    only = ProbeTools(None, options=LiveOptions(allow_libs=("libcublas*", "/opt/*")))
    assert only.allowed("libcublasLt", "libcublasLt.so.12", "/x/libcublasLt.so.12")
    assert only.allowed("libfoo", None, "/opt/libfoo.so")
    assert not only.allowed("libcudart", "libcudart.so.12", "/x/libcudart.so.12")


def test_replay_refuses_pids_and_attaching(tools, cudart12):
    with pytest.raises(ToolRefused, match="replay server works on library files"):
        tools.list_libraries(pid=1)
    with pytest.raises(ToolRefused, match="needs a live trace"):
        tools.attach("probe m = libcudart:cudaMalloc\n", "stdio")
    assert "attach: would be refused: libc.so.6 is not on this server's library allow-list" in \
        tools.validate("probe m = libc.so.6:malloc\n")[0]


def test_outputs_are_capped():
    text = "\n".join(f"row {i}" for i in range(100_000))
    out = cap(text, 4096)
    assert len(out.encode()) <= 4096 and out.endswith("use limit/offset or a narrower pattern")


@pytest.mark.parametrize("args, msg", [
    (["--db", "x.db", "--allow-attach"], "--allow-attach and --allow-lib need a live trace"),
    (["--pid", "1"], "add --live"),
    (["--live"], "--live needs --pid N or a command"),
    (["--live", "--pid", "1", "--", "true"], "not both"),
])
def test_cli_flag_combinations(args, msg, tmp_path: Path):
    r = subprocess.run([ingero_cmd(), "mcp", "--audit-db", str(tmp_path / "a.db"), *args], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode != 0 and msg in r.stderr, r.stderr


def test_replay_server_lists_probe_tools_and_explains_absent_attach(tmp_path: Path):
    import anyio

    from tests.replay_helpers import stdio_session, text_of

    async def main():
        async with stdio_session(DATALOADER, tmp_path / "audit.db") as s:
            names = {t.name for t in (await s.list_tools()).tools}
            attach = await s.call_tool("attach_probe", {"spec": "probe m = libcudart:cudaMalloc\n"})
            detach = await s.call_tool("detach_probe", {"probe_id": 1})
            doc = await s.read_resource("ingero://docs/dsl")
            return names, attach, detach, doc

    names, attach, detach, doc = anyio.run(main)
    assert {"list_libraries", "list_symbols", "describe_symbol", "validate_probe", "list_probes",
            "get_probe_results"} <= names and not ({"attach_probe", "detach_probe"} & names)
    assert attach.is_error and "this server replays a stored database" in text_of(attach)
    assert detach.is_error and "detach_probe is not available" in text_of(detach)
    assert doc.contents[0].text.startswith("# Probe specs: the DSL")


def test_probe_name_and_spec_size_bounds(tools, cudart12):
    ok = tools.validate(f"probe {'n' * 64} = {cudart12}:cudaMalloc\n")[0]
    assert ok.startswith("VALID: 1 probe"), ok
    long = tools.validate(f"probe {'n' * 65} = {cudart12}:cudaMalloc\n")[0]
    assert long.startswith("INVALID: 1 error") and ":1:7-71:" in long
    assert "the probe name is 65 characters, more than the 64 allowed" in long
    huge = tools.validate(f"probe {'n' * 100_000} = {cudart12}:cudaMalloc\n")[0]
    assert huge.startswith("INVALID") and "more than the 65536 allowed" in huge
