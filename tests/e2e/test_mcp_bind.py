"""attach_probe over MCP on a library no traced process has mapped yet and no search path of ingero's finds
(issue 11): a real MCP client drives `ingero mcp --live --allow-attach -- CMD`, where CMD
(tests/native/twins_driver.c `after`) dlopens libtwins.so.1 from a folder only its own LD_LIBRARY_PATH
names, once the agent has attached. The probe waits (attach_probe and list_probes say so), is checked and
judged against the copy the command loads, and counts what the program itself printed; a library that never
appears ends its probe with that reason; a file the allow-list refuses at bind time ends the probe, in
list_probes, get_probe_results and the audit log."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from tests.e2e.test_bind_tree import _printed, twins  # noqa: F401 - twins: the fixture
from tests.e2e.test_mcp_live import _server_args, audit_rows, call, call_err, db_rows, live_stdio, wait_text

pytestmark = pytest.mark.bpf
SPEC = "probe s = libtwins.so.1:twin\n    record pid\n"


def _command(folder: Path, tmp: Path) -> tuple[list[str], Path, Path]:
    go, out = tmp / "go", tmp / "printed.txt"
    return ["env", f"LD_LIBRARY_PATH={folder}", str(folder / "driver"), "after", str(go), str(out), "4", "3"], go, out


def _probe_id(text: str) -> int:
    return int(text.split("attached probe ")[1].split()[0])


def test_attach_probe_waits_for_a_library_only_the_command_has(need_bpf, twins, tmp_path):  # noqa: F811
    db, audit_db = tmp_path / "live.db", tmp_path / "audit.db"
    cmd, go, printed = _command(twins, tmp_path)

    async def main():
        out = {}
        args = _server_args(None, db, audit_db, "--allow-attach", "--allow-lib", "libtwins*", command=cmd)
        async with live_stdio(args) as s:
            out["valid"] = await call(s, "validate_probe", spec=SPEC)
            out["off_list"] = await call_err(s, "attach_probe", spec="probe o = libother.so.3:f\n")
            out["ttl"] = await call_err(s, "attach_probe", spec=SPEC + "    limit ttl 10min\n")
            out["attached"] = await call(s, "attach_probe", spec=SPEC)
            never = await call(s, "attach_probe", spec="probe z = libtwins_never.so.2:twin\n")
            out["ids"] = (_probe_id(out["attached"]), _probe_id(never))
            # a waiting probe ends like any other: detached by request, or its ttl (run from the attach)
            gone = _probe_id(await call(s, "attach_probe", spec="probe d = libtwins_other.so.5:twin\n"))
            out["detached"] = await call(s, "detach_probe", probe_id=gone)
            short = _probe_id(await call(s, "attach_probe", spec="probe t = libtwins_t.so.4:twin\n    limit ttl 1s\n"))
            out["ttl_listed"] = await wait_text(s, "list_probes", lambda t: "ttl 1s elapsed while waiting" in t)
            out["short"] = (gone, short)
            out["waiting"] = await call(s, "list_probes")
            out["res_waiting"] = await call(s, "get_probe_results", probe_id=out["ids"][0])
            go.touch()
            out["listed"] = await wait_text(s, "list_probes", lambda t: t.startswith("trace: ended"), timeout=60)
            out["res"] = await call(s, "get_probe_results", probe_id=out["ids"][0])
        return out

    out = anyio.run(main)
    sid, zid = out["ids"]
    assert "probe s: waits for libtwins.so.1 in the traced tree (" in out["valid"], out["valid"]
    assert "attach: allowed (to wait)" in out["valid"]
    assert "libother.so.3 is not on this server's library allow-list (libtwins*)" in out["off_list"]
    assert "ttl 600s is over this server's limit of 300s" in out["ttl"]
    assert f"attached probe {sid} 's': waiting for libtwins.so.1 in the traced tree" in out["attached"], out
    rows = {int(ln.split(",")[0]): ln.split(",") for ln in out["waiting"].splitlines() if ln[:1].isdigit()}
    assert rows[sid][2] == "waiting" and rows[zid][2] == "waiting", out["waiting"]
    assert f"probe {sid} 's': waiting (waiting for libtwins.so.1 in the traced tree" in out["res_waiting"]
    gone, short = out["short"]
    assert f"detached probe {gone} 'd'" in out["detached"]
    assert rows[gone][2] == "ended" and "detached by request" in ",".join(rows[gone]), out["waiting"]
    assert rows[short][2] == "ended" and "ttl 1s elapsed while waiting for libtwins_t.so.4 in the traced tree" in \
        ",".join(rows[short]), out["waiting"]
    # ground truth: the program's own printout (the parent and its forked child)
    truth = _printed(printed.read_text())
    assert sorted(truth.values()) == [3, 4], printed.read_text()
    assert f"; {sum(truth.values())} events stored" in out["res"], out["res"]
    by_pid = out["res"].split("by pid: ")[1].split("\n")[0]
    assert {int(k): int(v) for k, v in (x.split(": ") for x in by_pid.split(", "))} == truth, out["res"]
    listed = {int(ln.split(",")[0]): ln for ln in out["listed"].splitlines() if ln[:1].isdigit()}
    assert ",ended," in listed[sid] and "the traced processes exited" in listed[sid], out["listed"]
    assert "libtwins_never.so.2 never appeared in the traced tree (the traced processes exited)" in listed[zid]
    # the row registered while it waited, completed under the same id when it was bound
    stored = db_rows(db, f"SELECT library, fields, symbols FROM probes WHERE id = {sid}")
    assert stored == [("libtwins.so.1", '[{"name":"pid","type":"u32","column":"v0"}]', '["twin"]')], stored
    assert db_rows(db, "SELECT COUNT(*) FROM probes") == [(4,)]
    binds = [json.loads(r[3])["_ingero"] | {"outcome": r[2]} for r in audit_rows(audit_db) if r[0] == "probe/bind"]
    assert [(b["probe_id"], b["library"], b["outcome"]) for b in binds] == [
        (sid, str(twins / "libtwins.so.1"), "ok")], binds


def test_a_file_the_allow_list_refuses_ends_the_waiting_probe(need_bpf, twins, tmp_path):  # noqa: F811
    """An allow-list of paths cannot judge a name: the probe waits, and is refused on the file the command
    loads (outside the listed folder); the reason is the probe's end, in list_probes, get_probe_results and
    the audit log; the program runs on, unprobed."""
    db, audit_db = tmp_path / "live.db", tmp_path / "audit.db"
    cmd, go, printed = _command(twins, tmp_path)

    async def main():
        args = _server_args(None, db, audit_db, "--allow-attach", "--allow-lib", "/nonexistent/*", command=cmd)
        async with live_stdio(args) as s:
            pid_ = _probe_id(await call(s, "attach_probe", spec=SPEC))
            go.touch()
            listed = await wait_text(s, "list_probes", lambda t: t.startswith("trace: ended"), timeout=60)
            return pid_, listed, await call(s, "get_probe_results", probe_id=pid_)

    pid_, listed, res = anyio.run(main)
    assert sorted(_printed(printed.read_text()).values()) == [3, 4]
    lib = str(twins / "libtwins.so.1")
    row = [ln for ln in listed.splitlines() if ln.startswith(f"{pid_},s,")][0]
    assert ",ended," in row and f"loaded {lib}: libtwins.so.1 is not on this server's library allow-list" in row
    assert "; 0 events stored" in res and "is not on this server's library allow-list (/nonexistent/*)" in res
    binds = [r for r in audit_rows(audit_db) if r[0] == "probe/bind"]
    assert len(binds) == 1 and binds[0][2] == "refused" and json.loads(binds[0][3])["_ingero"]["library"] == lib
    assert db_rows(db, f"SELECT COUNT(*) FROM events WHERE source = 100 AND op = {pid_}") == [(0,)]
