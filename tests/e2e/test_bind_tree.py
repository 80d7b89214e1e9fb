"""Binding a probe to every definition of a name and to every process of the traced tree, as the tree
loads its libraries (issue 11): a name defined at two addresses (two ``static`` functions of one library,
tests/native/twins_*.c) is probed at both; ``probe run -- CMD`` follows the command's forks;
``probe run --pid N`` binds a library N loads after ingero started; a library found only in the
command's own environment is checked and bound when the command maps it. Ground truth: the programs'
own printouts (and ``nm`` for the addresses)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import ROOT, skip_or_fail
from tests.helpers import torch_python

pytestmark = pytest.mark.bpf
INGERO = [str(Path(sys.executable).parent / "ingero")]
NATIVE = ROOT / "tests" / "native"


@pytest.fixture(scope="module")
def twins(tmp_path_factory) -> Path:
    """A folder with libtwins.so.1 (soname libtwins.so.1; `twin` defined at two addresses), and the driver
    (tests/native/twins_driver.c), found by nothing on ingero's search paths."""
    if shutil.which("gcc") is None:
        skip_or_fail("needs gcc")
    d = tmp_path_factory.mktemp("twins")
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-Wl,-soname,libtwins.so.1", "-o", d / "libtwins.so.1",
                    NATIVE / "twins_a.c", NATIVE / "twins_b.c"], check=True)
    subprocess.run(["gcc", "-O0", "-o", d / "driver", NATIVE / "twins_driver.c", "-ldl"], check=True)
    return d


def _final(out: str) -> dict:
    for line in reversed(out.splitlines()):
        if line.startswith('{"final"'):
            return json.loads(line)["final"]
    raise AssertionError(f"no final results in:\n{out}")


def _printed(out: str) -> dict[int, int]:
    """The driver's own count per process: lines ``a PID N`` / ``b PID N``, summed per pid."""
    calls: dict[int, int] = {}
    for ln in out.splitlines():
        words = ln.split()
        if len(words) == 3 and words[0] in ("a", "b") and words[1].isdigit():
            calls[int(words[1])] = calls.get(int(words[1]), 0) + int(words[2])
    return calls


def _nm_addresses(lib: Path, name: str) -> int:
    out = subprocess.run(["nm", str(lib)], capture_output=True, text=True, check=True).stdout
    return sum(1 for ln in out.splitlines() if ln.split()[-1:] == [name] and ln.split()[1] in "tT")


def test_a_name_at_two_addresses_is_probed_at_both(need_bpf, twins, tmp_path):
    lib = twins / "libtwins.so.1"
    assert _nm_addresses(lib, "twin") == 2
    spec = tmp_path / "t.probe"
    spec.write_text(f"probe t = {lib}:twin\n    aggregate count by symbol\n")
    chk = subprocess.run([*INGERO, "probe", "check", str(spec)], capture_output=True, text=True, timeout=60)
    assert chk.returncode == 0, chk.stderr
    assert "twin: 2 addresses, all probed" in chk.stdout
    js = json.loads(subprocess.run([*INGERO, "probe", "check", "--json", str(spec)], capture_output=True,
                                   text=True, timeout=60, check=True).stdout)
    assert len(js["probes"][0]["symbols"][0]["file_offsets"]) == 2
    p = subprocess.run([*INGERO, "probe", "run", "--json", str(spec), "--", "env", f"TWINS_LIB={lib}",
                        str(twins / "driver"), "calls", "5", "7"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    truth = _printed(p.stdout)
    assert sum(truth.values()) == 12
    final = _final(p.stdout)["t"]
    # both copies' calls, counted under the one name
    assert final["stats"]["matched"] == final["stats"]["hits"] == 12, final
    assert [(r["key"], r["count"]) for r in final["aggregates"]] == [({"symbol": "twin"}, 12)]


def test_probe_run_follows_the_commands_forks(need_bpf, twins, tmp_path):
    """`probe run -- CMD` probes every process of the command's tree: two forked children calling `twin`
    3 and 4 times are counted exactly, each under its own pid (the parent calls nothing)."""
    lib = twins / "libtwins.so.1"
    spec = tmp_path / "f.probe"
    spec.write_text(f"probe f = {lib}:twin\n    aggregate count by pid\n")
    p = subprocess.run([*INGERO, "probe", "run", "--json", str(spec), "--", "env", f"TWINS_LIB={lib}",
                        str(twins / "driver"), "fork", "3", "4"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    truth = _printed(p.stdout)
    assert sorted(truth.values()) == [3, 4], p.stdout
    final = _final(p.stdout)["f"]
    assert {r["key"]["pid"]: r["count"] for r in final["aggregates"]} == truth, (final, p.stderr)
    assert final["stats"]["matched"] == 7


def test_a_library_only_the_command_has_is_checked_and_bound_when_it_loads_it(need_bpf, twins, tmp_path):
    """A soname no search path of ingero's finds: `probe check` says what it searched and that `-- CMD`
    binds it; `probe run -- CMD` waits for it (saying so), checks the probe against the copy the command
    loads, and counts every call of its forked children; a command that never loads it ends with that
    reason."""
    spec = tmp_path / "s.probe"
    spec.write_text("probe s = libtwins.so.1:twin\n    aggregate count by pid\n")
    chk = subprocess.run([*INGERO, "probe", "check", str(spec)], capture_output=True, text=True, timeout=60)
    assert chk.returncode == 1
    assert "no library 'libtwins.so.1' found on this machine's search paths" in chk.stderr
    assert "Searched: " in chk.stderr and "the ldconfig cache" in chk.stderr
    assert "`ingero probe run SPEC -- CMD` waits for it" in chk.stderr
    p = subprocess.run([*INGERO, "probe", "run", "--json", str(spec), "--", "env", f"LD_LIBRARY_PATH={twins}",
                        str(twins / "driver"), "fork", "5", "2"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    lines = [json.loads(ln) for ln in p.stdout.splitlines() if ln.startswith("{")]
    waiting = [x for x in lines if "waiting" in x]
    assert waiting and "waiting for libtwins.so.1 in the traced tree" in waiting[0]["reason"], p.stdout
    attached = [x for x in lines if "attached" in x]
    assert attached and attached[0]["path"] == str(twins / "libtwins.so.1") and attached[0]["addresses"] == 2
    truth = _printed(p.stdout)
    final = _final(p.stdout)["s"]
    assert {r["key"]["pid"]: r["count"] for r in final["aggregates"]} == truth and sorted(truth.values()) == [2, 5]
    never = subprocess.run([*INGERO, "probe", "run", str(spec), "--", "/bin/true"], capture_output=True, text=True,
                           timeout=60)
    assert never.returncode == 0, never.stderr
    assert ("probe s: 0 matched of 0 calls: not attached, libtwins.so.1 never appeared in the traced tree"
            in never.stdout), never


def test_pid_run_binds_a_library_loaded_after_it_started(need_bpf, twins, tmp_path):
    """`probe run --pid N` on a process that dlopens the library only later (after ingero said it waits):
    bound when it opens it, the process held meanwhile, so the 9 calls it makes at once are all counted.
    Once with the library named by its soname (found nowhere: checked when it is loaded), once by path."""
    lib = twins / "libtwins.so.1"
    for target in ("libtwins.so.1", str(lib)):
        spec = tmp_path / "late.probe"
        spec.write_text(f"probe late = {target}:twin\n    aggregate count by pid\n")

        def ready(run: subprocess.Popen, target: str = target) -> None:
            if "/" in target:  # attached to the file at once: its breakpoints go in when the process maps it
                _wait_for_links(run.pid)
            else:
                first = json.loads(run.stdout.readline())
                assert first.get("waiting") == "late" and "libtwins.so.1" in first["reason"], first

        pid, printed, (out, err), code = _late(twins, lambda pid, spec=spec: [
            *INGERO, "probe", "run", "--json", str(spec), "--pid", str(pid)], ready)
        assert code == 0, err
        truth = _printed(printed)
        assert truth == {pid: 9}, printed
        final = _final(out)["late"]
        assert {r["key"]["pid"]: r["count"] for r in final["aggregates"]} == truth, (target, final, err)


def _wait_for_links(pid: int, timeout: float = 60) -> None:
    """Until process ``pid`` holds a BPF link (a probe attached)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for fd in os.listdir(f"/proc/{pid}/fdinfo"):
            try:
                with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                    if "link_id" in f.read():
                        return
            except FileNotFoundError:
                continue  # closed meanwhile
        time.sleep(0.05)
    raise AssertionError(f"process {pid} attached no probe in {timeout} s")


def test_torch_venv_libc10_cuda_is_bound_when_the_command_loads_it(need_bpf, tmp_path):
    """The PyTorch fixture's libc10_cuda.so lives only in its venv's torch/lib: `probe check` finds no copy
    and says `-- CMD` binds it; `probe run -- bpftrace ... -c "python script"` waits for it in the tree,
    binds the copy python (bpftrace's forked child) loads, and counts c10::cuda::device_count() exactly as
    bpftrace does on the same process. A local C++ name of that library defined at two addresses is
    probed at both (`check` on its path, against nm)."""
    py = torch_python()
    c10 = next(Path(str(py)).parent.parent.glob("lib/python3*/site-packages/torch/lib/libc10_cuda.so"))
    if shutil.which("bpftrace") is None:
        skip_or_fail("needs bpftrace")
    spec = tmp_path / "c10.probe"
    spec.write_text('probe d = libc10_cuda.so:"c10::cuda::device_count()"\n    aggregate count\n')
    chk = subprocess.run([*INGERO, "probe", "check", str(spec)], capture_output=True, text=True, timeout=120)
    assert chk.returncode == 1 and "no library 'libc10_cuda.so' found" in chk.stderr, chk.stderr
    assert "`ingero probe run SPEC -- CMD` waits for it" in chk.stderr
    script = tmp_path / "tc.py"
    script.write_text("import torch\nprint(torch.cuda.is_available(), torch.cuda.device_count())\n")
    bt = f"uprobe:{c10}:_ZN3c104cuda12device_countEv {{ @n = count(); }}"
    p = subprocess.run([*INGERO, "probe", "run", "--json", str(spec), "--", "bpftrace", "-e", bt, "-c",
                        f"{py} {script}"], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    lines = [json.loads(ln) for ln in p.stdout.splitlines() if ln.startswith("{")]
    assert any("waiting for libc10_cuda.so in the traced tree" in x.get("reason", "") for x in lines), p.stdout
    attached = [x for x in lines if "attached" in x]
    assert [a["path"] for a in attached] == [str(c10)], p.stdout
    truth = int(p.stdout.split("@n:")[1].split()[0])
    assert truth > 0
    assert _final(p.stdout)["d"]["stats"]["matched"] == truth, p.stdout

    # a local C++ name at several addresses: every one probed, as nm lists them
    names = subprocess.run(["nm", str(c10)], capture_output=True, text=True, check=True).stdout.split("\n")
    counts: dict[str, int] = {}
    for ln in names:
        w = ln.split()
        if len(w) == 3 and w[1] in "tT":
            counts[w[2]] = counts.get(w[2], 0) + 1
    name, n = max(counts.items(), key=lambda kv: kv[1])
    assert n >= 2, "libc10_cuda.so has no name at several addresses"
    multi = tmp_path / "multi.probe"
    multi.write_text(f"probe m = {c10}:{name}\n")
    chk = subprocess.run([*INGERO, "probe", "check", "--json", str(multi)], capture_output=True, text=True,
                         timeout=120)
    assert chk.returncode == 0, chk.stderr
    (sym,) = json.loads(chk.stdout)["probes"][0]["symbols"]
    assert len(sym["file_offsets"]) == n, sym
    text = subprocess.run([*INGERO, "probe", "check", str(multi)], capture_output=True, text=True, timeout=120)
    assert f": {n} addresses, all probed" in text.stdout


def test_trace_pid_binds_a_probe_library_loaded_after_it_started(need_bpf, twins, tmp_path):
    """`ingero trace --pid N --probe SPEC` (the path `mcp --live --pid` shares): a library N dlopens after
    the trace started is bound when N opens it (N held meanwhile), so the 9 calls it makes at once are all
    stored. The library is on a search path here (LD_LIBRARY_PATH of ingero), not mapped by N at start."""
    import sqlite3

    from ingero.store.schema import SOURCE_PROBE

    spec = tmp_path / "late.probe"
    spec.write_text("probe late = libtwins.so.1:twin\n    record pid\n")
    db = tmp_path / "t.db"
    pid, printed, (out, _), code = _late(
        twins, lambda pid: [*INGERO, "trace", "--db", str(db), "--probe", str(spec), "--pid", str(pid)],
        lambda tr: _wait_for_probe(db, tr),  # the probe is registered: the trace is on, its probe waiting
        env=os.environ | {"LD_LIBRARY_PATH": str(twins)}, stderr=subprocess.STDOUT)
    assert code == 0, out
    truth = _printed(printed)
    assert truth == {pid: 9}, printed
    conn = sqlite3.connect(db)
    try:
        stored = dict(conn.execute(f"SELECT pid, COUNT(*) FROM events WHERE source = {SOURCE_PROBE} GROUP BY pid"))
    finally:
        conn.close()
    assert stored == truth, out


def _wait_for_probe(db: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until the trace writing ``db`` has registered a probe (its row in ``probes``)."""
    import sqlite3

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[0]
        if db.exists():
            try:
                conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
                try:
                    if conn.execute("SELECT COUNT(*) FROM probes").fetchone()[0]:
                        return
                finally:
                    conn.close()
            except sqlite3.OperationalError:
                pass  # not created yet
        time.sleep(0.1)
    raise AssertionError(f"no probe registered in {db} after {timeout} s")


def test_a_terminals_foreground_job_is_never_stopped_and_the_run_says_so(need_bpf, twins, tmp_path):
    """A `--pid` process that is the foreground job of a terminal (here a pty's session leader) is not held
    at its late open -- its shell would take a stop for Ctrl-Z -- and `probe run` says that calls in the
    first milliseconds may be missed, both at start and when it binds; the process runs on unstopped."""
    import pty

    lib = twins / "libtwins.so.1"
    spec = tmp_path / "late.probe"
    spec.write_text(f"probe late = {lib.name}:twin\n    aggregate count\n")
    pid, fd = pty.fork()
    if pid == 0:  # the child: session leader, the pty its controlling terminal, in the foreground
        os.execv(str(twins / "driver"), [str(twins / "driver"), "late", str(lib), "9"])
    run = None
    try:
        seen = b""
        while b"ready" not in seen:
            seen += os.read(fd, 1024)
        run = subprocess.Popen([*INGERO, "probe", "run", str(spec), "--pid", str(pid)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        first = run.stderr.readline()
        assert f"pid {pid} is not stopped when it opens a library (it is the foreground job of a terminal" in first
        while "waiting for libtwins.so.1" not in run.stderr.readline():
            pass
        os.write(fd, b"go\n")
        while b"a " not in seen:
            seen += os.read(fd, 1024)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0  # never left stopped
        out, err = run.communicate(timeout=60)
    finally:
        os.close(fd)
        if run is not None and run.poll() is None:
            run.kill()
    assert run.returncode == 0, err
    assert f"pid {pid} was not held at its open of {lib}" in err, err
    counted = int(out.split("probe late: ")[1].split()[0])
    assert counted <= 9  # labelled above: the first calls may have run before the probe was on


def _late(twins: Path, tracer: Callable[[int], list[str]], ready: Callable[[subprocess.Popen], None], **popen):
    """The driver in `late` mode (in a session of its own: no controlling terminal, so ingero may hold it),
    then ``tracer(pid)`` on it; once ``ready(tracer process)`` returns, the driver dlopens libtwins and calls
    `twin` 9 times at once. Returns (driver pid, its printout, the tracer's (stdout, stderr), its exit code)."""
    d = subprocess.Popen([str(twins / "driver"), "late", str(twins / "libtwins.so.1"), "9"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, start_new_session=True)
    run = None
    try:
        assert d.stdout.readline().strip() == "ready"
        run = subprocess.Popen(tracer(d.pid), stdout=subprocess.PIPE, text=True,
                               **({"stderr": subprocess.PIPE} | popen))
        ready(run)
        d.stdin.write("go\n")
        d.stdin.flush()
        printed = d.stdout.read()
        d.wait(timeout=30)
        outs = run.communicate(timeout=120)
    finally:
        for proc in (d, run):
            if proc is not None and proc.poll() is None:
                proc.kill()
    return d.pid, printed, outs, run.returncode


def test_a_trace_probe_whose_library_never_appears_ends_with_that_reason(need_bpf, tmp_path):
    """`trace --probe` on a command that never loads the probe's library: the stored probe ends saying so."""
    import sqlite3

    spec = tmp_path / "z.probe"
    spec.write_text("probe z = libz.so.1:zlibVersion\n    record pid\n")
    db = tmp_path / "t.db"
    p = subprocess.run([*INGERO, "trace", "--quiet", "--db", str(db), "--probe", str(spec), "--", "/bin/true"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    conn = sqlite3.connect(db)
    try:
        (why,) = conn.execute("SELECT end_reason FROM probes WHERE name = 'z'").fetchone()
    finally:
        conn.close()
    assert why.startswith("libz.so.1 never appeared in the traced tree ("), why
    assert "probe z: waiting for libz.so.1 in the traced tree" in p.stderr, p.stderr
    assert f"probe z: not attached: {why}" in p.stderr, p.stderr


def test_trace_probe_on_a_library_only_the_command_has(need_bpf, twins, tmp_path):
    """`trace --probe SPEC -- CMD` with a library no search path of ingero's finds: the probe waits, is checked
    against the copy the command loads, and stores every call of the forked children (their printout); a
    command that never loads it leaves a probes row saying the library never appeared."""
    import sqlite3

    from ingero.store.schema import SOURCE_PROBE

    spec = tmp_path / "s.probe"
    spec.write_text("probe s = libtwins.so.1:twin\n    record pid\n")
    stored = {}
    for name, cmd in (("fork", ["env", f"LD_LIBRARY_PATH={twins}", str(twins / "driver"), "fork", "4", "6"]),
                      ("never", ["/bin/true"])):
        db = tmp_path / f"{name}.db"
        p = subprocess.run([*INGERO, "trace", "--quiet", "--db", str(db), "--probe", str(spec), "--", *cmd],
                           capture_output=True, text=True, timeout=180)
        assert p.returncode == 0, p.stderr
        conn = sqlite3.connect(db)
        try:
            counts = dict(conn.execute(f"SELECT pid, COUNT(*) FROM events WHERE source = {SOURCE_PROBE} "
                                       "GROUP BY pid").fetchall())
            rows = conn.execute("SELECT library, end_reason FROM probes WHERE name = 's'").fetchall()
        finally:
            conn.close()
        stored[name] = (counts, rows, p.stdout)
        assert "probe s: waiting for libtwins.so.1 in the traced tree (" in p.stderr, p.stderr
    counts, rows, out = stored["fork"]
    truth = _printed(out)
    assert sorted(truth.values()) == [4, 6] and counts == truth, (counts, out)
    assert len(rows) == 1 and rows[0][1] == "the traced processes exited", rows
    counts, rows, _ = stored["never"]
    assert counts == {} and len(rows) == 1, rows
    assert rows[0][1].startswith("libtwins.so.1 never appeared in the traced tree ("), rows
    assert f"probe s: not attached: {rows[0][1]}" in p.stderr, p.stderr
