"""hits, matched and stored agree with what a program did, over the CLI and over MCP.

A program built here calls ``step(x)`` of a library built here a number of times with x = i % 10 and prints
how many calls it made and how many had x >= THRESHOLD (its own ground truth). Two probes on the function,
one without a filter and one with ``where x >= THRESHOLD``: hits == the calls, matched == the calls passing
the filter, stored == matched (nothing lost), and every difference is explained where it is shown (the
filtered count beside matched; no unexplained gap)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anyio
import pytest

from tests.conftest import skip_or_fail

pytestmark = pytest.mark.bpf
INGERO = str(Path(sys.executable).parent / "ingero")
CALLS = 1000
THRESHOLD = 7

LIB = "int step(int x) { return 2 * x + 1; }\n"
DRIVER = textwrap.dedent("""
    #include <stdio.h>
    #include <stdlib.h>
    #include <unistd.h>
    int step(int);
    /* driver N THRESHOLD [GO END]: waits for the file GO, calls step(i % 10) N times, prints its counts,
       waits for the file END */
    int main(int argc, char **argv) {
        int n = atoi(argv[1]), k = atoi(argv[2]);
        if (argc > 3) while (access(argv[3], F_OK)) usleep(10000);
        long passing = 0, sum = 0;
        for (int i = 0; i < n; i++) {
            int x = i % 10;
            if (x >= k) passing++;
            sum += step(x);
        }
        printf("calls %d passing %ld sum %ld\\n", n, passing, sum);
        fflush(stdout);
        if (argc > 4) while (access(argv[4], F_OK)) usleep(10000);
        return 0;
    }
""")


def _spec(lib: Path) -> str:
    return (f"probe all = {lib}:step(i32 x) -> i32\n    record x, retval, latency\n"
            f"probe big = {lib}:step(i32 x) -> i32\n    where x >= {THRESHOLD}\n    record x, retval, latency\n")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    if shutil.which("gcc") is None:
        skip_or_fail("needs gcc")
    d = tmp_path_factory.mktemp("counters")
    (d / "step.c").write_text(LIB)
    (d / "driver.c").write_text(DRIVER)
    lib = d / "libstep.so"
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", lib, d / "step.c"], check=True)
    subprocess.run(["gcc", "-O2", "-o", d / "driver", d / "driver.c", f"-L{d}", "-lstep", f"-Wl,-rpath,{d}"],
                   check=True)
    return lib, d / "driver"


def _truth(out: str) -> tuple[int, int]:
    m = re.search(r"^calls (\d+) passing (\d+) ", out, re.M)
    assert m, out
    return int(m[1]), int(m[2])


def test_cli_counters_equal_the_programs_counts(need_bpf, built, tmp_path: Path):
    lib, driver = built
    spec = tmp_path / "step.probe"
    spec.write_text(_spec(lib))
    p = subprocess.run([INGERO, "probe", "run", str(spec), "--", str(driver), str(CALLS), str(THRESHOLD)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    calls, passing = _truth(p.stdout)
    assert (calls, passing) == (CALLS, CALLS * (10 - THRESHOLD) // 10)
    # every recorded call printed once (stored == matched: nothing lost)
    printed = {name: len(re.findall(rf"^{name} step ", p.stdout, re.M)) for name in ("all", "big")}
    assert printed == {"all": calls, "big": passing}, (printed, p.stdout[-2000:])
    summary = {m[1]: m[0] for m in re.finditer(r"^probe (\w+): .*$", p.stdout, re.M)}
    # nothing filtered, dropped or lost: the line says only matched of hits, and they are equal
    assert summary["all"] == f"probe all: {calls} matched of {calls} calls", summary
    # the difference is the filter's, and the line says so
    assert summary["big"] == f"probe big: {passing} matched of {calls} calls (filtered {calls - passing})", summary


def test_mcp_counters_equal_the_programs_counts(need_bpf, built, tmp_path: Path):
    from tests.e2e.test_mcp_live import _server_args, call, live_stdio, wait_text

    lib, driver = built
    go, end = tmp_path / "go", tmp_path / "end"
    prog = subprocess.Popen([str(driver), str(CALLS), str(THRESHOLD), str(go), str(end)], stdout=subprocess.PIPE,
                            text=True)
    db, audit_db = tmp_path / "live.db", tmp_path / "audit.db"
    out: dict = {}

    async def main():
        args = _server_args(prog.pid, db, audit_db, "--allow-attach", "--allow-lib", str(lib))
        async with live_stdio(args) as s:
            attached = await call(s, "attach_probe", spec=_spec(lib))
            ids = dict((name, int(i)) for i, name in re.findall(r"attached probe (\d+) '(\w+)'", attached))
            assert set(ids) == {"all", "big"}, attached
            go.touch()
            t0 = time.monotonic()
            while prog.stdout is not None and "truth" not in out:
                line = await anyio.to_thread.run_sync(prog.stdout.readline)
                if line.startswith("calls "):
                    out["truth"] = _truth(line)
                assert time.monotonic() - t0 < 60 and line, "the program never printed its counts"
            calls, passing = out["truth"]
            # the program is alive (waiting for END): the probes are active, their counters final
            for name, want in (("all", calls), ("big", passing)):
                out[name] = await wait_text(s, "get_probe_results", lambda t, w=want: f"; {w} events stored" in t,
                                            probe_id=ids[name])
        end.touch()

    try:
        anyio.run(main)
    finally:
        end.touch()
        prog.wait(30)
    calls, passing = out["truth"]
    assert (calls, passing) == (CALLS, CALLS * (10 - THRESHOLD) // 10)
    for name, matched, filtered in (("all", calls, 0), ("big", passing, calls - passing)):
        text = out[name]
        assert f"; {matched} events stored" in text, text
        assert (f"kernel counters: hits {calls}, matched {matched}, filtered {filtered}, rate dropped 0, "
                f"budget dropped 0, lost 0, agg overflow 0") in text, text
        # hits == filtered + matched and stored == matched: nothing left to explain, and nothing claims a gap
        assert "calls entered but not counted yet" not in text and "events stored of" not in text, text
