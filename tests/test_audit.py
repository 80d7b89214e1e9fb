"""The audit log and the CLI twins of the tools (`ingero stats|chains|stacks|check|explain|query|audit`)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from ingero.audit import AuditLog, AuditRecord, default_audit_path, read_audit, token_fingerprint
from ingero.cli import cli
from ingero.errors import IngeroError
from ingero.mcp.http import BearerGuard, parse_address, resolve_token
from tests.replay_helpers import DATALOADER, DB_DIR, folder_fingerprint

SAMPLE = DB_DIR / "sample-gpu-node-01.db"


@pytest.fixture(autouse=True)
def _dbs_unchanged():
    before = folder_fingerprint()
    yield
    assert folder_fingerprint() == before


def _rec(tool: str, outcome: str = "ok") -> AuditRecord:
    return AuditRecord(1_774_000_000_000_000_000, "claude", "1.0", "stdio", "", "tools/call", tool,
                       '{"query": "SELECT 1"}', 1.5, outcome, "", 42, str(DATALOADER))


def test_audit_log_round_trip(tmp_path):
    log = AuditLog(tmp_path / "a" / "audit.db")
    log.record(_rec("run_sql"))
    log.record(_rec("get_stacks", "error"))
    log.record(AuditRecord(2, "", "", "http", token_fingerprint("t"), "http", "", "x" * 10000, 0, "unauthorized",
                           "", 13, ""))
    log.close()
    rows = read_audit(tmp_path / "a" / "audit.db", 0)
    assert [r.tool for r in rows] == ["run_sql", "get_stacks", ""]
    assert rows[1].outcome == "error" and rows[0].client_name == "claude"
    assert rows[2].args.endswith("...(truncated)") and len(rows[2].args) < 9000
    assert read_audit(tmp_path / "a" / "audit.db", 1)[0].outcome == "unauthorized"
    assert [r.tool for r in read_audit(tmp_path / "a" / "audit.db", 0, "run_sql")] == ["run_sql"]


def test_default_path_is_in_state_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("INGERO_STATE_DIR", str(tmp_path / "st"))
    assert default_audit_path() == tmp_path / "st" / "audit.db"
    AuditLog().close()
    assert (tmp_path / "st" / "audit.db").exists()


def test_unwritable_audit_db_is_a_user_error(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(IngeroError, match="--audit-db"):
        AuditLog(tmp_path / "f" / "audit.db")


def test_token_fingerprint():
    fp = token_fingerprint("secret")
    assert len(fp) == 16 and fp != token_fingerprint("secret2") and token_fingerprint("") == ""


def test_cli_audit(tmp_path):
    log = AuditLog(tmp_path / "audit.db")
    log.record(_rec("run_sql"))
    log.close()
    r = CliRunner().invoke(cli, ["audit", "--audit-db", str(tmp_path / "audit.db")])
    assert r.exit_code == 0, r.output
    assert "run_sql" in r.output and "claude 1.0" in r.output and "stdio" in r.output
    r = CliRunner().invoke(cli, ["audit", "--audit-db", str(tmp_path / "audit.db"), "--json"])
    assert json.loads(r.output)[0]["tool"] == "run_sql"
    r = CliRunner().invoke(cli, ["audit", "--audit-db", str(tmp_path / "none.db")])
    assert r.exit_code != 0


def test_http_address_and_token():
    assert parse_address(":8080").host == "127.0.0.1" and parse_address(":8080").is_loopback
    a = parse_address("[::1]:9000")
    assert (a.host, a.port, a.is_loopback) == ("::1", 9000, True)
    assert not parse_address("0.0.0.0:1").is_loopback
    assert parse_address("localhost:1").url(True) == "https://localhost:1/mcp"
    with pytest.raises(IngeroError, match="invalid --http"):
        parse_address("8080")
    assert resolve_token({"INGERO_MCP_TOKEN": " abc "}) == ("abc", False)
    assert resolve_token({"INGERO_MCP_BEARER_TOKEN": "up"}) == ("up", False)
    tok, gen = resolve_token({})
    assert gen and len(tok) >= 32
    with pytest.raises(ValueError):
        BearerGuard(object(), "")


def _run(*args: str):
    r = CliRunner().invoke(cli, list(args))
    assert r.exit_code == 0, r.output + str(r.exception)
    return r.output


def test_cli_stats():
    out = _run("stats", "--db", str(DATALOADER))
    assert out.splitlines()[0].split() == ["op", "count", "total", "p50", "p95", "p99", "max", "wall"]
    assert "sched_switch       3676  191835" in out and "3807 stored events of" in out
    data = json.loads(_run("stats", "--db", str(DATALOADER), "--json"))
    assert data["stored_events"] == 3807
    assert _run("stats", "--db", str(DATALOADER), "--since", "@1", "--until", "@2") == (
        "No events match the filter (the time window): 3807 events in the database.\n")


def test_cli_chains_and_explain():
    out = _run("chains", "--db", str(DATALOADER))
    assert out.startswith("8 causal chain(s) (4 HIGH, 4 MEDIUM; 316 stored chains, deduplicated)")
    assert len(json.loads(_run("chains", "--db", str(DATALOADER), "--json", "--top", "3"))) == 3
    out = _run("explain", "--db", str(DATALOADER))
    assert out.startswith("INCIDENT REPORT — ") and "[HIGH] cudaLaunchKernel" in out and "Fix: " in out
    out = _run("explain", "--db", str(DATALOADER), "--chains")
    assert out.startswith("INCIDENT REPORT — 8 causal chain(s) found (4 HIGH, 4 MEDIUM)")
    assert "no causal chains" in _run("explain", "--db", str(SAMPLE))


def test_cli_stacks_query_check():
    out = _run("stacks", "--db", str(DATALOADER), "--op", "cudaStreamSync")
    assert out.startswith("stack ") and "n=21" in out and "copy_kernel_cuda" in out
    out = _run("query", "--db", str(DATALOADER), "SELECT source, COUNT(*) AS n FROM events GROUP BY 1")
    assert out.splitlines()[0].split() == ["source", "n"] and "(3 rows)" in out
    r = CliRunner().invoke(cli, ["query", "--db", str(DATALOADER), "DELETE FROM events"])
    assert r.exit_code != 0 and isinstance(r.exception, IngeroError)
    out = _run("check")
    assert out.startswith("Ingero — System Readiness Check") and "Kernel version" in out
    assert json.loads(_run("check", "--json"))["checks"][0]["name"] == "Kernel version"
