"""`ingero libs`, `ingero symbols` and `ingero describe` as a user runs them: the real console script,
on the wheel's libcudart and on a running workload's pid, checked against pyelftools as an oracle."""

from __future__ import annotations

import fnmatch
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from tests.helpers import Workload

INGERO = str(Path(sys.executable).parent / "ingero")


def ingero(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([INGERO, *args], capture_output=True, text=True, timeout=60)


def oracle(path: Path, glob: str) -> dict[str, int]:
    """name -> file offset of the defined functions matching glob, by pyelftools (not ingero's reader)."""
    out = {}
    with open(path, "rb") as f:
        elf = ELFFile(f)
        loads = [s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
        for sym in elf.get_section_by_name(".dynsym").iter_symbols():
            if sym["st_info"]["type"] != "STT_FUNC" or sym["st_shndx"] == "SHN_UNDEF":
                continue
            if not fnmatch.fnmatchcase(sym.name, glob):
                continue
            v = sym["st_value"]
            seg = next(s for s in loads if s["p_vaddr"] <= v < s["p_vaddr"] + s["p_memsz"])
            out[sym.name] = v - seg["p_vaddr"] + seg["p_offset"]
    return out


def listed(stdout: str) -> dict[str, int]:
    rows = [line.split() for line in stdout.splitlines() if line.startswith("0x")]
    return {r[-1]: int(r[0], 16) for r in rows}


def test_symbols_of_the_wheel_library(cudart12):
    r = ingero("symbols", "libcudart.so.12", "cudaMemcpy*")
    assert r.returncode == 0, r.stderr
    expected = oracle(cudart12, "cudaMemcpy*")
    assert len(expected) > 20
    assert listed(r.stdout) == expected
    assert r.stdout.splitlines()[0].startswith(f"# libcudart.so.12  {cudart12}")
    assert f"# {len(expected)} of 435 function symbols match 'cudaMemcpy*'" in r.stdout


def test_symbols_and_libs_of_a_running_workload(cudart12):
    with Workload() as w:
        w.expect("waiting calls")
        # a bare name with --pid picks what the process mapped (the .so.12), not the first copy on disk
        r = ingero("symbols", "libcudart", "cudaMemcpy*", "--pid", str(w.pid), "--json")
        libs = ingero("libs", "--pid", str(w.pid), "--json")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert {x["name"]: x["file_offset"] for x in rows} == oracle(cudart12, "cudaMemcpy*")
    assert all(x["version"] == "libcudart.so.12" for x in rows)
    assert next(x for x in rows if x["name"] == "cudaMemcpyAsync")["signature"] is True
    [lib] = [json.loads(line) for line in libs.stdout.splitlines()]
    assert lib["soname"] == "libcudart.so.12" and lib["source"] == "pid" and lib["pid"] == w.pid
    assert Path(lib["path"]) == cudart12 and lib["symbols"] == 435 and len(lib["build_id"]) == 40


def test_libs_lists_every_copy_and_marks_the_chosen_one():
    r = ingero("libs")
    assert r.returncode == 0, r.stderr
    cudart = [line for line in r.stdout.splitlines() if "libcudart.so." in line]
    assert cudart[0].startswith("* ") and all(not line.startswith("*") for line in cudart[1:])
    assert any("libcudart.so.12" in line and "12.9.79" in line for line in cudart)


def test_describe_cudamemcpyasync():
    r = ingero("describe", "cudaMemcpyAsync", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert [p["name"] for p in d["params"]] == ["dst", "src", "count", "kind", "stream"]
    assert [p["kind"] for p in d["params"]] == ["pointer", "pointer", "uint", "enum", "pointer"]
    assert d["enums"]["kind"]["cudaMemcpyDeviceToHost"] == 2
    assert d["return_type"] == "cudaError_t" and d["library"] == "cudart"
    text = ingero("describe", "cudaMemcpyAsync", "--cuda", "12").stdout
    assert text.startswith("cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t count, "
                           "enum cudaMemcpyKind kind, cudaStream_t stream)")
    assert "library cudart, CUDA 12" in text and "cudaMemcpyAsync_ptsz" in text


@pytest.mark.parametrize(
    "args,message,hint",
    [
        (["symbols", "libcudar"], "no library 'libcudar' found", "did you mean 'libcudart'"),
        (["symbols", "/etc/hostname"], "not an ELF", None),
        (["symbols", "/nonexistent/libfoo.so"], "/nonexistent/libfoo.so", None),
        (["libs", "--pid", "999999999"], "no process with pid 999999999", "ps -e"),
        (["symbols", "libcudart", "--pid", "999999999"], "no process with pid 999999999", None),
        (["symbols", "libcudart.so.12", "cudaMallocc"], "no symbol of libcudart.so.12 matches", "'cudaMalloc'"),
        (["describe", "cudaMemcpyAsyn"], "has no function 'cudaMemcpyAsyn'", "'cudaMemcpyAsync'"),
    ],
)
def test_errors_are_clear_and_distinct(args, message, hint):
    r = ingero(*args)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith("error: ") and message in r.stderr, r.stderr
    if hint:
        assert "hint: " in r.stderr and hint in r.stderr, r.stderr


def test_symbols_of_a_process_that_has_not_loaded_cuda_yet():
    with Workload(wait_load=True) as w:
        w.expect("waiting load")
        r = ingero("symbols", "libcudart", "--pid", str(w.pid))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"{w.pid}" in r.stderr, r.stderr


def _rows(stdout: str) -> list[tuple]:
    """(file offset, size, binding, version, SIG, name) of each row, cut where the header's columns start."""
    lines = stdout.splitlines()
    header = lines[1]
    at = [header.index(h) for h in ("SIZE", "BIND", "VERSION", "SIG", "NAME")]
    out = []
    for line in lines[2:-1]:
        cells = [line[a:b].strip() for a, b in zip([0, *at], [*at, None], strict=True)]
        out.append((int(cells[0], 16), int(cells[1]), *cells[2:5], line[at[4]:]))
    return out


@pytest.mark.parametrize("lib", ["libcudart.so.12", "libstdc++.so.6"])
def test_whole_listing_cold_and_warm_equals_a_fresh_parse(lib, tmp_path):
    """Every row of a whole listing, on a cold read (demangled while earlier rows are written) and a
    warm one (the same bytes), holds the fields a fresh parse in this process gives, SIG where the JSON
    listing says the catalogue types the function, and no trailing blanks."""
    from ingero.symbols import read_symbols, resolve_library

    env = {**os.environ, "INGERO_CACHE_DIR": str(tmp_path)}
    cold, warm = (subprocess.run([INGERO, "symbols", lib], capture_output=True, text=True, timeout=120, env=env)
                  for _ in range(2))
    assert cold.returncode == 0 and warm.stdout == cold.stdout, cold.stderr
    typed = {x["name"] for x in map(json.loads, ingero("symbols", lib, "--json").stdout.splitlines())
             if x["signature"]}
    fresh = read_symbols(resolve_library(lib).path, use_cache=False)
    expected = [(s.file_offset, s.size, s.binding, s.version or "-", "sig" if s.name in typed else "", s.demangled)
                for s in fresh]
    assert _rows(cold.stdout) == expected and len(expected) > 400
    assert not any(line != line.rstrip() for line in cold.stdout.splitlines())
    assert any(r[4] == "sig" for r in expected) == (lib == "libcudart.so.12")
    assert sum(r[5] != s.name for r, s in zip(expected, fresh, strict=True)) > (3000 if "stdc" in lib else -1)


def test_listing_into_a_pipe_widens_it():
    """Into a pipe, a listing asks for a PIPE_BYTES buffer (seen from the reader's end); the rows are
    those of the same listing into a file."""
    import fcntl

    from ingero.cli.symbols_cmd import PIPE_BYTES

    p = subprocess.Popen([INGERO, "symbols", "libcudart.so.12"], stdout=subprocess.PIPE)
    try:
        piped = p.stdout.read().decode()
        size = fcntl.fcntl(p.stdout.fileno(), fcntl.F_GETPIPE_SZ)
    finally:
        p.stdout.close()
        p.wait(timeout=60)
    assert p.returncode == 0 and size == PIPE_BYTES
    assert piped == ingero("symbols", "libcudart.so.12").stdout


@pytest.mark.parametrize("args", [("symbols", "libcudart.so.12"), ("libs",)])
def test_a_closed_pipe_ends_quietly_with_0(args):
    """Into a pipe whose reader is already gone, a listing ends quietly with exit 0 (as `| head` expects,
    also under `set -o pipefail`), not click's exit 1 or Python's failed flush at exit."""
    r, w = os.pipe()
    os.close(r)
    try:
        p = subprocess.run([INGERO, *args], stdout=w, stderr=subprocess.PIPE, timeout=60)
    finally:
        os.close(w)
    assert (p.returncode, p.stderr) == (0, b"")


def test_a_reader_stopping_early_ends_a_large_listing_quietly_with_0(tmp_path):
    """`ingero symbols libtorch_cuda.so | head -1` through a real pipe, cold (the reader leaves while the
    names are demangled): exit 0, nothing on stderr, and the reader got the header line."""
    from tests.helpers import torch_python

    lib = next(torch_python().parent.parent.glob("lib/python3*/site-packages/torch/lib/libtorch_cuda.so"))
    env = {**os.environ, "INGERO_CACHE_DIR": str(tmp_path)}
    p = subprocess.Popen(["bash", "-c", f'"{INGERO}" symbols "{lib}" | head -1; echo "rc=${{PIPESTATUS[0]}}"'],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out, err = p.communicate(timeout=300)
    lines = out.decode().splitlines()
    assert lines[0].startswith(f"# libtorch_cuda.so  {lib}") and lines[1:] == ["rc=0"], out[:300]
    assert err == b""


def test_sig_marks_what_the_catalogue_types_for_the_library_major(cudart12):
    """SIG (``signature`` in JSON) marks exactly the functions of libcudart.so.12 that the catalogue
    types for CUDA 12, the major probes on that file use."""
    from ingero.catalogue import load_catalogue
    from ingero.symbols import read_symbols

    rows = [json.loads(x) for x in ingero("symbols", "libcudart.so.12", "--json").stdout.splitlines()]
    cat = load_catalogue()
    expected = {n for n in read_symbols(cudart12, use_cache=False).all_names if cat.lookup_symbol(n, 12)}
    assert {r["name"] for r in rows if r["signature"]} == expected and len(expected) > 300
