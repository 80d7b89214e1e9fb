"""ingero.symbols: reading function symbols from real ELF files (the CUDA runtime wheels, system
libraries, and C/C++ libraries built here from tests/native/), the cache, and the reader's errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from conftest import skip_or_fail
from hypothesis import given, settings
from hypothesis import strategies as st

from ingero.errors import LibraryNotFound, NoSymbols, NotAnElf, SymbolNotFound
from ingero.symbols import SymbolTable, find_libraries, read_symbols, resolve_library
from ingero.symbols.elf import read_elf_info
from ingero.symbols.readers import read_function_symbols

NATIVE = Path(__file__).parent / "native"
SITE = Path(sysconfig.get_paths()["purelib"])
CUDART12 = SITE / "nvidia/cuda_runtime/lib/libcudart.so.12"
CUDART13 = SITE / "nvidia/cu13/lib/libcudart.so.13"


def build(out: Path, src: str, *flags: str, cc: str = "gcc") -> Path:
    if not shutil.which(cc):
        skip_or_fail(f"{cc} is not installed")
    subprocess.run([cc, "-O1", "-fPIC", *flags, "-o", str(out), str(NATIVE / src)], check=True)
    return out


@pytest.fixture(scope="session")
def native(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("native")
    libs = {
        "cxx": build(d / "libcxxdemo.so", "cxxlib.cpp", "-shared", "-Wl,-soname,libcxxdemo.so.1", cc="g++"),
        "versioned": build(
            d / "libversioned.so",
            "versioned.c",
            "-shared",
            "-Wl,-soname,libversioned.so.1",
            f"-Wl,--version-script={NATIVE / 'versioned.map'}",
        ),
        "nofunc": build(d / "libnofunc.so", "nofunc.c", "-shared", "-nostartfiles"),
        "exe": build(d / "offsets", "offsets.c", "-no-pie", "-fno-pie"),
        "nobid": build(d / "libnobid.so", "variant.c", "-shared", "-Wl,--build-id=none"),
    }
    subprocess.run(["strip", "--strip-all", str(libs["nofunc"])], check=True)
    libs["cxx_stripped"] = d / "libcxxdemo-stripped.so"
    shutil.copy(libs["cxx"], libs["cxx_stripped"])
    subprocess.run(["strip", "--strip-all", str(libs["cxx_stripped"])], check=True)
    return libs


@pytest.fixture(scope="session")
def cudart12() -> Path:
    if not CUDART12.exists():
        skip_or_fail(f"the nvidia-cuda-runtime-cu12 wheel is not installed ({CUDART12})")
    return CUDART12


def _real_libraries() -> list[str]:
    """Real libraries of this machine for the reader comparison (C, C++, versioned, CUDA)."""
    paths = [str(p) for p in (CUDART12, CUDART13) if p.exists()]
    for soname in ("libstdc++.so.6", "libc.so.6", "libcupti.so.13", "libcudart.so.13"):
        paths += [lib.path for lib in find_libraries(name=soname)[:1] if lib.path not in paths]
    return paths


# ---------------------------------------------------------------------------------------------------
# the two readers


def test_raw_reader_agrees_with_pyelftools_on_real_libraries(native):
    paths = _real_libraries() + [str(native[k]) for k in ("cxx", "versioned", "exe", "nobid")]
    assert len(paths) >= 6
    for path in paths:
        info_raw, raw = read_function_symbols(path, reader="raw")
        info_ref, ref = read_function_symbols(path, reader="pyelftools")
        assert info_raw == info_ref, path
        assert sorted(raw) == sorted(ref), path
        assert raw, path


def test_libcudart_matches_nm(cudart12):
    """Names, versions and addresses agree with binutils' own reading of the same file."""
    table = read_symbols(cudart12)
    assert table.soname == "libcudart.so.12"
    assert table.build_id == read_elf_info(cudart12).build_id and len(table.build_id) == 40
    out = subprocess.run(
        ["nm", "-D", "--defined-only", "--with-symbol-versions", str(cudart12)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    nm = {}
    for line in out.splitlines():
        addr, kind, name = line.split()
        if kind in "TtWwi":
            nm[name] = int(addr, 16)
    ours = {s.versioned_name: s.address for s in table if s.section == "dynsym"}
    assert ours == nm
    m = table.get("cudaMalloc")
    assert (m.version, m.default_version, m.binding, m.section, m.kind) == (
        "libcudart.so.12",
        True,
        "GLOBAL",
        "dynsym",
        "func",
    )
    assert m.demangled == m.name and m.size > 0
    # libcudart's text segment starts at file offset 0 = vaddr 0
    assert m.file_offset == m.address
    assert [s.name for s in table.symbols] == sorted(s.name for s in table.symbols)


def test_file_offset_is_what_the_process_runs(native):
    """In a non-PIE executable the link address (0x401xxx) and the file offset differ; the bytes the
    running program shows at its function's address are the file's bytes at our file_offset."""
    sym = read_symbols(native["exe"]).get("ingero_probe_me")
    assert sym.address != sym.file_offset
    addr, code = subprocess.run([native["exe"]], capture_output=True, text=True, check=True).stdout.split()
    assert int(addr, 16) == sym.address
    data = native["exe"].read_bytes()
    assert data[sym.file_offset : sym.file_offset + 16].hex() == code


def test_cxx_names_are_demangled_and_globs_match_them(native):
    table = read_symbols(native["cxx"])
    dem = {s.demangled: s for s in table}
    area = dem["ingero_test::Widget::area() const"]
    assert area.name == "_ZNK11ingero_test6Widget4areaEv" and area.section == "dynsym"
    assert "ingero_test::Widget::resize(int, int)" in dem
    assert "int ingero_test::twice<int>(int)" in dem and "double ingero_test::twice<double>(double)" in dem
    assert dem["plain_c_entry"].name == "plain_c_entry"
    # a static function: only in .symtab, LOCAL
    helper = next(s for s in table if "hidden_helper" in s.demangled)
    assert (helper.section, helper.binding) == ("symtab", "LOCAL")

    assert {s.demangled for s in table.match("ingero_test::Widget::*")} == {
        "ingero_test::Widget::area() const",
        "ingero_test::Widget::resize(int)",
        "ingero_test::Widget::resize(int, int)",
    }
    assert len(table.match("*twice*")) == 2
    assert table.match("_ZNK*") == [area]
    assert table.match("INGERO_TEST::*") == []  # case-sensitive
    assert table.get("ingero_test::Widget::area() const") is area
    assert table.get("_ZNK11ingero_test6Widget4areaEv") is area

    stripped = read_symbols(native["cxx_stripped"])
    assert not any("hidden_helper" in s.demangled for s in stripped)
    assert all(s.section == "dynsym" for s in stripped)


def test_symbol_versions_and_ifuncs(native):
    table = read_symbols(native["versioned"])
    assert table.soname == "libversioned.so.1"
    new = table.get("vfunc")
    assert (new.version, new.default_version, new.versioned_name) == ("VERS_2", True, "vfunc@@VERS_2")
    old = table.get("vfunc@VERS_1")
    assert (old.version, old.default_version, old.versioned_name) == ("VERS_1", False, "vfunc@VERS_1")
    assert old.file_offset != new.file_offset
    assert table.get("vfunc@@VERS_2") is new
    with pytest.raises(SymbolNotFound):
        table.get("vfunc@@VERS_1")  # that version exists only hidden
    assert table.get("picked").kind == "ifunc"
    assert table.get("local_only").section == "symtab"
    assert [s.versioned_name for s in table.match("vfunc")] == ["vfunc@VERS_1", "vfunc@@VERS_2"]


# ---------------------------------------------------------------------------------------------------
# the cache


def test_cache_per_build_id_and_warm_path_imports(native, tmp_path):
    cache = tmp_path / "cache"
    env = dict(os.environ, INGERO_CACHE_DIR=str(cache))
    lib = native["cxx"]
    code = (
        "import sys, json\n"
        "from ingero.symbols import read_symbols\n"
        "import ingero.symbols.demangle as d\n"
        f"t = read_symbols({str(lib)!r})\n"
        "n = len(t), t.get('_ZNK11ingero_test6Widget4areaEv').file_offset, d._impl is not None\n"
        "t.display()\n"
        "print(json.dumps([len(t), t.get('_ZNK11ingero_test6Widget4areaEv').demangled,"
        " 'elftools' in sys.modules, d._impl is not None, n[2]]))\n"
    )

    def run() -> list:
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        return json.loads(out.stdout)

    cold = run()
    assert cold[4] is False  # reading and looking up by name demangles nothing: only display() does
    assert cold[:2] != [0, None] and cold[1] == "ingero_test::Widget::area() const"
    assert cold[3] is True  # demangling loaded the demangler
    info = read_elf_info(lib)
    entries = [p.name for p in (cache / "symbols").iterdir()]
    assert entries == [f"{info.build_id}-{info.table_sizes[0]:x}-{info.table_sizes[1]:x}.syms"]
    warm = run()
    assert warm == [cold[0], cold[1], False, False, False]  # no pyelftools, no demangling on the warm path


def test_cached_table_equals_fresh_read(cudart12):
    first = read_symbols(cudart12)
    fresh = read_symbols(cudart12, use_cache=False)
    assert fresh == first
    again = read_symbols(cudart12)
    assert again.symbols == fresh.symbols


def test_file_without_build_id_is_keyed_by_inode_and_mtime(native, tmp_path):
    lib = tmp_path / "libnobid.so"
    shutil.copy(native["nobid"], lib)
    assert read_elf_info(lib).build_id is None
    table = read_symbols(lib)
    assert table.build_id is None and table.get("ingero_variant")
    st = lib.stat()
    from ingero.paths import cache_dir

    assert (
        cache_dir() / "symbols" / f"nobid-{st.st_dev}-{st.st_ino}-{st.st_size}-{st.st_mtime_ns}.syms"
    ).exists()
    # a different file at the same path is not served from the old entry
    build(
        lib,
        "versioned.c",
        "-shared",
        "-Wl,--build-id=none",
        f"-Wl,--version-script={NATIVE / 'versioned.map'}",
    )
    assert "vonly" in read_symbols(lib)


def test_symbol_table_api(cudart12):
    table = read_symbols(cudart12)
    assert isinstance(table, SymbolTable) and len(table) == len(table.symbols) > 300
    assert "cudaMemcpyAsync" in table
    names = [s.name for s in table.match("cudaMemcpy*")]
    assert "cudaMemcpy" in names and "cudaMemcpyAsync" in names
    assert all(n.startswith("cudaMemcpy") for n in names)
    assert table.match("CUDAMEMCPY*") == []
    # a name (not a path) is resolved like the CLI does
    assert read_symbols("libcudart.so.12").build_id == table.build_id


# ---------------------------------------------------------------------------------------------------
# errors


def test_no_such_symbol_suggests(cudart12):
    with pytest.raises(SymbolNotFound) as e:
        read_symbols(cudart12).get("cudaMaloc")
    assert "cudaMaloc" in e.value.message and "libcudart.so.12" in e.value.message
    assert "'cudaMalloc'" in e.value.hint


def test_not_an_elf(tmp_path):
    fake = tmp_path / "libfake.so.1"
    fake.write_text("/* GNU ld script */\nGROUP ( libc.so.6 )\n")
    with pytest.raises(NotAnElf, match="not an ELF"):
        read_symbols(fake)
    with pytest.raises(NotAnElf):
        resolve_library(str(fake))
    short = tmp_path / "libshort.so"
    short.write_bytes(b"\x7fELF\x02\x01\x01")
    with pytest.raises(NotAnElf):
        read_symbols(short)
    with pytest.raises(NotAnElf):
        read_symbols(tmp_path)


def test_no_symbols(native):
    with pytest.raises(NoSymbols) as e:
        read_symbols(native["nofunc"])
    assert str(native["nofunc"]) in e.value.message and e.value.hint
    assert read_elf_info(native["nofunc"]).machine  # a valid ELF all the same


def test_missing_file_and_library(tmp_path):
    with pytest.raises(LibraryNotFound, match="no such file"):
        read_symbols(tmp_path / "libnothere.so")
    with pytest.raises(LibraryNotFound) as e:
        resolve_library("libcudarr")
    assert "'libcudart'" in (e.value.hint or "")
    with pytest.raises(LibraryNotFound) as e:
        read_symbols("cublasss")
    assert "libcublas" in (e.value.hint or "")


# ---------------------------------------------------------------------------------------------------
# a PyTorch-sized C++ library (the torch fixture's libtorch_cuda.so: 120k functions)


def _nm_functions(path: Path, dynamic: bool) -> list[tuple[str, int]]:
    """(name, address) of every defined FUNC/IFUNC symbol binutils' nm lists (sysv format names the
    type), from .dynsym with ``dynamic`` else .symtab."""
    out = subprocess.run(["nm", *(["-D"] if dynamic else []), "--defined-only", "-f", "sysv", str(path)],
                         capture_output=True, text=True, check=True, timeout=120).stdout
    rows = []
    for line in out.splitlines():
        f = line.split("|")
        if len(f) == 7 and f[3].strip() in ("FUNC", "<OS specific>: 10"):  # 10: STT_GNU_IFUNC
            rows.append((f[0].strip(), int(f[1], 16)))
    return rows


def test_torch_library_cache_equals_fresh_parse_and_nm(tmp_path):
    """libtorch_cuda.so through the cache, warm (a new process reading the entry the cold run wrote),
    gives exactly the symbols of a fresh parse without cache; and nm finds the same functions."""
    from tests.helpers import torch_python

    lib = next(torch_python().parent.parent.glob("lib/python3*/site-packages/torch/lib/libtorch_cuda.so"))
    env = dict(os.environ, INGERO_CACHE_DIR=str(tmp_path / "cache"))
    code = (
        "import json, sys\n"
        "from ingero.symbols import read_symbols\n"
        "t = read_symbols(sys.argv[1], write_behind=sys.argv[2] == 'cold')\n"
        "print(json.dumps([[s.name, s.demangled, s.address, s.file_offset, s.size, s.binding, s.version,"
        " s.default_version, s.section, s.kind] for s in t]))\n"
    )
    got = {}
    for run in ("cold", "warm"):
        r = subprocess.run([sys.executable, "-c", code, str(lib), run], env=env, capture_output=True, text=True,
                           check=True, timeout=300)
        got[run] = json.loads(r.stdout)
    assert len(list((tmp_path / "cache" / "symbols").iterdir())) == 1
    fresh = read_symbols(lib, use_cache=False)
    rows = [[s.name, s.demangled, s.address, s.file_offset, s.size, s.binding, s.version, s.default_version,
             s.section, s.kind] for s in fresh]
    assert got["cold"] == rows and got["warm"] == rows
    assert len(rows) > 100_000 and sum(1 for r in rows if r[1] != r[0]) > 100_000  # C++ names, demangled

    # nm: the .dynsym functions, then the .symtab ones not repeating one (same name and address)
    ours = {(r[0], r[2]) for r in rows}
    dyn, sym = _nm_functions(lib, True), _nm_functions(lib, False)
    expected = {(n.split("@", 1)[0], a) for n, a in dyn} | {(n, a) for n, a in sym}
    assert ours == expected and len(rows) == len(expected)


# ---------------------------------------------------------------------------------------------------
# demangling in bulk


def _one_by_one(name: str) -> str:
    """The cxxfilt package's answer for one name (its own ctypes call; the name itself when it fails)."""
    import cxxfilt

    try:
        return cxxfilt.demangleb(name.encode()).decode("utf-8", "replace") if name.startswith("_Z") else name
    except (cxxfilt.InvalidName, UnicodeEncodeError):
        return name


@pytest.fixture(scope="session")
def cxx_names() -> list[str]:
    [lib] = find_libraries(name="libstdc++.so.6")[:1]
    names = read_symbols(lib.path, use_cache=False).all_names
    assert sum(n.startswith("_Z") for n in names) > 3000
    return names


def _long(k: int) -> str:
    """A mangled name whose demangled form is ``f(aaa...a, ...)``: k + 1 parameters of a 1000-letter
    class (libiberty refuses longer identifiers and more substitutions than 8)."""
    return "_Z1f1000" + "a" * 1000 + "S_" * k


def test_bulk_demangling_equals_one_name_at_a_time(cxx_names):
    from ingero.symbols.demangle import BUFFER, demangle_all

    # names longer than the output buffer (it grows, twice), then short ones that fit it again
    names = [*cxx_names[:500], _long(4), *cxx_names[500:900], _long(8), _long(2), *cxx_names[900:], "_Z",
             "_Zfoo", "_ZN3foo", "plain", "", "_Z\udcff"]
    got = demangle_all(names)
    assert got == [_one_by_one(n) for n in names]
    assert got[500] == f"f({', '.join(['a' * 1000] * 5)})" and len(got[901]) > 2 * BUFFER
    assert got[-6:] == names[-6:]


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_bulk_demangling_hypothesis(cxx_names, data):
    from ingero.symbols.demangle import demangle_all

    name = st.one_of(st.sampled_from(cxx_names), st.integers(0, 8).map(_long),
                     st.text(max_size=40).map(lambda s: "_Z" + s), st.text(max_size=20))
    names = data.draw(st.lists(name, max_size=40))
    assert demangle_all(names) == [_one_by_one(n) for n in names]


def _worker_spy(monkeypatch) -> list:
    """A spare CPU whatever the machine has and does (the worker is what is tested), and the workers
    started."""
    from ingero.symbols import demangle

    started: list = []
    start, pieces = demangle._Worker.start, demangle._Worker.pieces

    def spy(*args):
        w = start(*args)
        started.append(w)
        if w is not None:
            w.handed = []  # the pieces it handed back, each a list of names
        return w

    def spy_pieces(self, m):
        self.m = m

        def handing():
            for p in pieces(self, m):
                self.handed.append(p)
                yield p

        return handing()

    monkeypatch.setattr(demangle, "_spare_cpu", lambda: True)
    monkeypatch.setattr(demangle._Worker, "start", spy)
    monkeypatch.setattr(demangle._Worker, "pieces", spy_pieces)
    return started


def _many(cxx_names: list[str]) -> list[str]:
    """PARALLEL_MIN names and more, C++ ones and others: names that do not demangle, one that cannot be
    encoded (a lone surrogate), one longer than the buffer."""
    from ingero.symbols.demangle import PARALLEL_MIN

    odd = ["_Z", "_Zfoo", "plain", "", "_Z\udcff", _long(6)]
    out = []
    while len(out) < PARALLEL_MIN + 5000:
        out += cxx_names + odd
    return out


def test_a_worker_process_demangles_the_tail_in_pieces(cxx_names, monkeypatch):
    """Many names: a worker process demangles the tail (here the caller waits for each of its pieces
    rather than taking them), and the pieces, of the size asked for, hold what one name at a time
    gives."""
    import time

    from ingero.symbols import demangle
    from ingero.symbols.demangle import demangle_all, demangle_chunks

    started = _worker_spy(monkeypatch)
    done = demangle._Worker.done

    def waited(self, k):
        deadline = time.monotonic() + 60
        while not done(self, k) and time.monotonic() < deadline:
            time.sleep(0.001)
        return done(self, k)

    monkeypatch.setattr(demangle._Worker, "done", waited)
    names = _many(cxx_names)
    pieces = list(demangle_chunks(names, 2048))
    assert len(started) == 1 and started[0] is not None and started[0].proc.returncode in (0, -9)  # reaped
    assert [len(p) for p in pieces[:-1]] == [2048] * (len(pieces) - 1) and 0 < len(pieces[-1]) <= 2048
    expected = [_one_by_one(n) for n in names]
    assert [d for p in pieces for d in p] == expected
    # the whole tail came from the worker
    w = started[0]
    assert w.m == w.count == len(w.handed) and w.count >= len(pieces) * demangle.WORKER_SHARE - 1
    assert w.handed == pieces[len(pieces) - w.count :]
    assert demangle_all(names) == expected and len(started) == 2
    # a name holding a NUL (not from an ELF file) cannot be sent: no worker, the same result
    names.append("a\0b")
    assert demangle_all(names) == [*expected, "a\0b"] and len(started) == 3 and started[2] is None


def test_a_failing_worker_leaves_its_part_to_the_caller(cxx_names, monkeypatch, caplog):
    """A worker that fails (here its interpreter is /bin/false) changes nothing in the result: the
    caller demangles the tail itself."""
    import sys

    from ingero.symbols import demangle

    started = _worker_spy(monkeypatch)
    monkeypatch.setattr(sys, "executable", "/bin/false")
    names = _many(cxx_names)
    with caplog.at_level("DEBUG", logger="ingero.symbols.demangle"):
        assert demangle.demangle_all(names) == [_one_by_one(n) for n in names]
    assert len(started) == 1 and started[0] is not None and started[0].m == 0
    assert "the demangling worker failed (exit 1)" in caplog.text


def test_the_caller_takes_the_pieces_a_slow_worker_has_not_reached(cxx_names, monkeypatch, tmp_path):
    """A worker slow to start (as on a busy machine; here its interpreter sleeps 2 s first): the caller,
    done with the head, demangles the tail from its end until it meets the worker, which stops there;
    the result is the same and the worker is not waited for."""
    import sys
    import time

    from ingero.symbols import demangle

    started = _worker_spy(monkeypatch)
    slow = tmp_path / "slow-python"
    slow.write_text(f"#!/bin/sh\nsleep 2\nexec {sys.executable} \"$@\"\n")
    slow.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(slow))
    names = _many(cxx_names)
    expected = [_one_by_one(n) for n in names]
    t0 = time.monotonic()
    got = [d for p in demangle.demangle_chunks(names, 2048) for d in p]
    took = time.monotonic() - t0
    assert got == expected
    w = started[0]
    assert w is not None and w.count >= 4 and w.m == 0 and w.handed == [] and w.proc.returncode is not None
    assert took < 1.5  # not waited for


def test_stopping_early_stops_the_worker(cxx_names, monkeypatch):
    """Closing the pieces after the first one kills and reaps the worker (no process left behind)."""
    from ingero.symbols.demangle import demangle_chunks

    started = _worker_spy(monkeypatch)
    it = demangle_chunks(_many(cxx_names), 2048)
    next(it)
    pid = started[0].proc.pid
    assert os.path.exists(f"/proc/{pid}")
    it.close()
    assert started[0].proc.returncode is not None and not os.path.exists(f"/proc/{pid}")


@pytest.mark.parametrize(("cpus", "load", "running", "spare"), [
    (2, 0.3, 1, True), (2, 1.9, 3, True), (2, 2.1, 3, False), (2, 2.5, 2, True), (2, 2.1, None, False),
    (1, 0.0, 1, False), (8, 7.5, 9, True), (8, 8.2, 9, False), (8, 9.0, 4, True)])
def test_a_worker_only_where_a_cpu_is_spare(monkeypatch, cpus, load, running, spare):
    """By the load average or the tasks running now (this one not counted), whichever is lower."""
    from ingero.symbols import demangle

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)))
    monkeypatch.setattr(demangle, "_load_now", lambda: (load, running))
    assert demangle._spare_cpu() is spare


def test_load_now_reads_proc_loadavg():
    from ingero.symbols.demangle import _load_now

    load, running = _load_now()
    fields = open("/proc/loadavg").read().split()
    assert abs(load - float(fields[0])) < 1 and running is not None and running >= 1  # this test runs
