"""One real PyTorch process (the fixture): `libs --pid` lists every mapped nvidia library plus
libtorch_cuda and libc10_cuda, each the copy the process mapped (ground truth: its /proc/PID/maps); a
probe on a quoted demangled C++ name and one on a demangled glob of libc10_cuda attach and count what
bpftrace counts on the same process over the same calls."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import skip_or_fail
from tests.helpers import torch_python

pytestmark = pytest.mark.bpf
INGERO = str(Path(sys.executable).parent / "ingero")
CALLS = 7
PROG = (
    "import sys, torch\n"
    "print('ready', flush=True)\n"
    "sys.stdin.readline()\n"
    f"for _ in range({CALLS}):\n"
    "    torch._C._cuda_getDeviceCount()\n"
    "print('done', flush=True)\n"
    "sys.stdin.readline()\n"
)


def _wait_line(stream, want: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            raise AssertionError(f"stream ended before {want!r}")
        if want in line:
            return
    raise AssertionError(f"no {want!r} within {timeout} s")


def test_libs_and_cxx_names_on_a_torch_process(need_bpf, tmp_path):
    if shutil.which("bpftrace") is None:
        skip_or_fail("needs bpftrace (the ground truth)")
    py = torch_python()
    proc = subprocess.Popen([str(py), "-c", PROG], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    tools: list[subprocess.Popen] = []
    try:
        assert proc.stdout.readline().strip() == "ready"
        maps = {}
        for line in open(f"/proc/{proc.pid}/maps"):
            parts = line.split(None, 5)
            if len(parts) == 6 and parts[5].startswith("/"):
                maps[os.path.basename(parts[5].strip())] = parts[5].strip()
        # 1. libs --pid: every mapped nvidia library, libtorch_cuda and libc10_cuda, each the mapped file
        r = subprocess.run([INGERO, "libs", "--pid", str(proc.pid), "--json"], capture_output=True, text=True,
                           timeout=600)
        assert r.returncode == 0, r.stderr
        listed = {os.path.basename(d["path"]): d for d in map(json.loads, r.stdout.splitlines())}
        wanted = {b for b, p in maps.items() if "/nvidia/" in p and ".so" in b} | {"libtorch_cuda.so",
                                                                                     "libc10_cuda.so"}
        assert wanted <= set(listed), wanted - set(listed)
        for b in wanted:
            assert listed[b]["path"] == maps[b] and listed[b]["source"] == "pid"
        assert "libcudart.so.13" in listed["libc10_cuda.so"]["links"]
        assert listed["libcudart.so.13"]["typed_by_catalogue"] == "cudart"
        assert listed["libc10_cuda.so"]["typed_by_catalogue"] is None

        # 2. a quoted demangled name and a demangled glob, beside bpftrace on the mangled symbol
        c10 = maps["libc10_cuda.so"]
        spec = tmp_path / "c10.probe"
        spec.write_text('probe one = libc10_cuda.so:"c10::cuda::device_count()"\n    aggregate count\n'
                        'probe all = libc10_cuda.so:"c10::cuda::*"\n    aggregate count by symbol\n')
        check = subprocess.run([INGERO, "probe", "check", "--pid", str(proc.pid), str(spec)], capture_output=True,
                               text=True, timeout=300)
        assert check.returncode == 0, check.stderr
        assert "c10::cuda::device_count() [_ZN3c104cuda12device_countEv]" in check.stdout
        assert "compiler fragment" in check.stdout  # the glob says how many .cold/.part pieces it left out
        bt = subprocess.Popen(["bpftrace", "-p", str(proc.pid), "-e",
                               f"uprobe:{c10}:_ZN3c104cuda12device_countEv {{ @n = count(); }}"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        tools.append(bt)
        _wait_line(bt.stdout, "Attaching")
        run = subprocess.Popen([INGERO, "probe", "run", "--json", "--pid", str(proc.pid), str(spec)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        tools.append(run)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # --json prints nothing until the end: wait for the links
            if _links(run.pid) >= 2:
                break
            time.sleep(0.2)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "done"
        run.send_signal(signal.SIGINT)
        out, err = run.communicate(timeout=120)
        bt.send_signal(signal.SIGINT)
        bt_out, _ = bt.communicate(timeout=60)
        truth = int(bt_out.split("@n:")[1].split()[0])
        assert truth >= CALLS
        final = json.loads([ln for ln in out.splitlines() if ln.startswith('{"final"')][0])["final"]
        assert final["one"]["stats"]["matched"] == truth, (final, bt_out, err)
        by_symbol = {r["key"]["symbol"]: r["count"] for r in final["all"]["aggregates"]}
        assert by_symbol["c10::cuda::device_count()"] == truth, by_symbol  # keys print demangled
    finally:
        for t in tools:
            if t.poll() is None:
                t.kill()
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _links(pid: int) -> int:
    """How many BPF links process ``pid`` holds (an fd closed while counting is skipped)."""
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                n += "link_id" in f.read()
        except FileNotFoundError:
            continue
    return n
