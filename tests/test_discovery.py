"""ingero.symbols discovery on real processes and files: /proc/PID/maps (late dlopen, another mount
namespace, a deleted or replaced library), the search paths and their precedence, build-id dedup, and the
errors a user can act on. Uprobe paths are checked with real tracefs uprobes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import uuid
from pathlib import Path

import pytest
from conftest import skip_or_fail

from ingero.errors import LibraryNotFound, NoSuchProcess
from ingero.symbols import find_libraries, read_symbols, resolve_library, search_dirs, symbol_count
from ingero.symbols.discovery import ldconfig_entries, read_maps
from ingero.symbols.elf import read_elf_info

NATIVE = Path(__file__).parent / "native"
SITE = Path(sysconfig.get_paths()["purelib"])
CUDART12 = SITE / "nvidia/cuda_runtime/lib/libcudart.so.12"
CUDART13 = SITE / "nvidia/cu13/lib/libcudart.so.13"
TRACEFS = Path("/sys/kernel/tracing")

# The child: loads a libcudart (at once, or after SIGUSR1), reports where cudaMalloc landed and its first
# bytes, then calls cudaGetDeviceCount N times for each line N on stdin (no GPU: each returns 35).
CHILD = r"""
import ctypes, signal, sys
path, when = sys.argv[1], sys.argv[2]
if when == "signal":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    print("waiting", flush=True)
    signal.sigwait({signal.SIGUSR1})
lib = ctypes.CDLL(path)
addr = ctypes.cast(lib.cudaMalloc, ctypes.c_void_p).value
print("loaded", hex(addr), ctypes.string_at(addr, 16).hex(), flush=True)
for line in sys.stdin:
    n = ctypes.c_int()
    for _ in range(int(line)):
        lib.cudaGetDeviceCount(ctypes.byref(n))
    print("called", flush=True)
"""


class Child:
    def __init__(self, lib: Path | str, when: str = "now", prefix: list[str] | None = None) -> None:
        cmd = [*(prefix or []), sys.executable, "-c", CHILD, str(lib), when]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.pid = self.proc.pid
        self.addr = self.code = None
        if when == "now":
            self.wait_loaded()
        else:
            assert self.proc.stdout.readline().strip() == "waiting"

    def wait_loaded(self) -> None:
        line = self.proc.stdout.readline().split()
        assert line and line[0] == "loaded", f"child failed: {line}"
        self.addr, self.code = int(line[1], 16), line[2]

    def signal(self) -> None:
        os.kill(self.pid, signal.SIGUSR1)
        self.wait_loaded()

    def call(self, n: int) -> None:
        self.proc.stdin.write(f"{n}\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "called"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def children():
    made: list[Child] = []

    def spawn(*a, **kw) -> Child:
        c = Child(*a, **kw)
        made.append(c)
        return c

    yield spawn
    for c in made:
        c.close()


@pytest.fixture(scope="session")
def cudart12() -> Path:
    if not CUDART12.exists():
        skip_or_fail(f"the nvidia-cuda-runtime-cu12 wheel is not installed ({CUDART12})")
    return CUDART12


def build(out: Path, src: str, *flags: str) -> Path:
    if not shutil.which("gcc"):
        skip_or_fail("gcc is not installed")
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["gcc", "-O1", "-fPIC", "-shared", *flags, "-o", str(out), str(NATIVE / src)], check=True)
    return out


def uprobe_hits(path: str, offset: int, trigger) -> int:
    """Create a real uprobe on ``path:offset`` through tracefs, run ``trigger``, return the hit count."""
    events = TRACEFS / "uprobe_events"
    if not events.exists():
        skip_or_fail("tracefs is not mounted at /sys/kernel/tracing")
    group, name = "ingero_symtest", f"p{uuid.uuid4().hex[:12]}"
    _tracefs_append(events, f"p:{group}/{name} {path}:{offset:#x}\n")
    enable = TRACEFS / "events" / group / name / "enable"
    try:
        enable.write_text("1")
        trigger()
        for line in (TRACEFS / "uprobe_profile").read_text().splitlines():
            parts = line.split()
            if parts[-2:-1] == [name]:
                return int(parts[-1])
        raise AssertionError(f"uprobe {name} missing from uprobe_profile")
    finally:
        enable.write_text("0")
        _tracefs_append(events, f"-:{group}/{name}\n")


def _tracefs_append(path: Path, line: str) -> None:
    """O_APPEND so other users' probes stay (opening with "w" clears them all); os.open, because
    Python's "a" mode seeks to the end, which tracefs refuses with EINVAL."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def check_mapped_symbols(lib, child: Child) -> None:
    """The table read through the library's path agrees with what the process runs: the file offset of
    cudaMalloc computed from its runtime address and /proc/PID/maps, and its first bytes."""
    table = read_symbols(lib)
    sym = table.get("cudaMalloc")
    for line in Path(f"/proc/{child.pid}/maps").read_text().splitlines():
        rng, _perms, off = line.split()[:3]
        start, end = (int(x, 16) for x in rng.split("-"))
        if start <= child.addr < end:
            assert child.addr - start + int(off, 16) == sym.file_offset
            break
    else:
        raise AssertionError("cudaMalloc's address is in no mapping")
    with open(lib.read_path, "rb") as f:
        f.seek(sym.file_offset)
        assert f.read(16).hex() == child.code


# ---------------------------------------------------------------------------------------------------
# by pid


def test_discovery_by_pid(children, cudart12):
    child = children(cudart12)
    libs = find_libraries(pid=child.pid)
    assert [lib.soname for lib in libs] == ["libcudart.so.12"]
    lib = libs[0]
    assert lib.path == str(cudart12) and lib.mapped_path == str(cudart12) and lib.attach_path == str(cudart12)
    assert (lib.source, lib.pid, lib.chosen, lib.deleted, lib.replaced) == (
        "pid",
        child.pid,
        True,
        False,
        False,
    )
    assert lib.build_id == read_elf_info(cudart12).build_id
    assert lib.version.startswith("12.") and symbol_count(lib) > 300
    check_mapped_symbols(lib, child)
    # a bare name, a soname, a glob and a path all pick it
    for spec in ("cudart", "libcudart", "libcudart.so.12", "libcuda*", str(cudart12)):
        assert resolve_library(spec, pid=child.pid).build_id == lib.build_id, spec
    # an explicit name reaches a non-CUDA library, or the executable, the process mapped
    assert resolve_library("libc.so.6", pid=child.pid).soname == "libc.so.6"
    exe = os.path.realpath(f"/proc/{child.pid}/exe")
    assert resolve_library(os.path.basename(exe), pid=child.pid).path == exe
    with pytest.raises(LibraryNotFound) as e:
        resolve_library("libcudart.so.13", pid=child.pid)
    assert "libcudart.so.12" in e.value.hint


def test_library_loaded_late_with_dlopen(children, cudart12):
    child = children(cudart12, when="signal")
    assert find_libraries(pid=child.pid) == []
    with pytest.raises(LibraryNotFound) as e:
        resolve_library("libcudart", pid=child.pid)
    assert "no CUDA library" in e.value.hint
    child.signal()
    lib = resolve_library("libcudart", pid=child.pid)
    assert lib.path == str(cudart12)
    check_mapped_symbols(lib, child)


def test_process_in_its_own_mount_namespace(need_root, children, cudart12, tmp_path):
    """The library's path exists only inside the child's mount namespace (a private tmpfs)."""
    if not shutil.which("unshare"):
        skip_or_fail("unshare (util-linux) is not installed")
    nsdir = tmp_path / "only-in-ns"
    nsdir.mkdir()
    script = 'mount -t tmpfs ingero-test "$1" && cp "$2" "$1/" && shift 2 && exec "$@"'
    prefix = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
        "sh",
        str(nsdir),
        str(cudart12),
    ]
    # unshare and sh exec: the pid we spawn is the Python child's
    child = children(nsdir / "libcudart.so.12", prefix=prefix)
    assert not (nsdir / "libcudart.so.12").exists()
    lib = resolve_library("libcudart", pid=child.pid)
    inside = f"/proc/{child.pid}/root{nsdir}/libcudart.so.12"
    assert lib.path == str(nsdir / "libcudart.so.12")
    assert lib.mapped_path == inside and lib.attach_path == inside and not lib.deleted
    assert lib.build_id == read_elf_info(cudart12).build_id
    check_mapped_symbols(lib, child)
    off = read_symbols(lib).get("cudaGetDeviceCount").file_offset
    assert uprobe_hits(lib.attach_path, off, lambda: child.call(3)) == 3


def test_library_deleted_after_loading(need_root, children, cudart12, tmp_path):
    copy = tmp_path / "libcudart.so.12"
    shutil.copy(cudart12, copy)
    child = children(copy)
    copy.unlink()
    lib = resolve_library("libcudart", pid=child.pid)
    assert lib.deleted and lib.path == str(copy)
    assert lib.mapped_path.startswith(f"/proc/{child.pid}/map_files/") and lib.attach_path == lib.mapped_path
    assert lib.build_id == read_elf_info(cudart12).build_id
    check_mapped_symbols(lib, child)
    off = read_symbols(lib).get("cudaGetDeviceCount").file_offset
    assert uprobe_hits(lib.attach_path, off, lambda: child.call(2)) == 2


def test_library_replaced_after_loading(need_root, children, cudart12, tmp_path):
    """An upgrade in place: the path now holds another build (the kernel marks the mapped name deleted,
    even when another hard link keeps the old file). The mapped build is the one read."""
    if not CUDART13.exists():
        skip_or_fail(f"the nvidia-cuda-runtime wheel (13) is not installed ({CUDART13})")
    path = tmp_path / "libcudart.so.12"
    shutil.copy(cudart12, path)
    child = children(path)
    shutil.copy(CUDART13, tmp_path / "new")
    os.replace(tmp_path / "new", path)
    lib = resolve_library("libcudart", pid=child.pid)
    assert lib.replaced and lib.deleted
    assert lib.mapped_path.startswith(f"/proc/{child.pid}/map_files/")
    assert (lib.soname, lib.build_id) == ("libcudart.so.12", read_elf_info(cudart12).build_id)
    check_mapped_symbols(lib, child)


def test_library_covered_by_a_bind_mount(need_root, children, cudart12, tmp_path):
    """The mapped name is intact (not deleted) but the path now shows another file: replaced, and the
    mapped build is read through map_files."""
    if not CUDART13.exists():
        skip_or_fail(f"the nvidia-cuda-runtime wheel (13) is not installed ({CUDART13})")
    path = tmp_path / "libcudart.so.12"
    shutil.copy(cudart12, path)
    child = children(path)
    subprocess.run(["mount", "--bind", str(CUDART13), str(path)], check=True)
    try:
        lib = resolve_library("libcudart", pid=child.pid)
        assert (lib.replaced, lib.deleted) == (True, False)
        assert lib.mapped_path.startswith(f"/proc/{child.pid}/map_files/")
        assert lib.build_id == read_elf_info(cudart12).build_id != read_elf_info(path).build_id
        check_mapped_symbols(lib, child)
    finally:
        subprocess.run(["umount", str(path)], check=True)


# ---------------------------------------------------------------------------------------------------
# without a pid


@pytest.fixture
def search_env(monkeypatch, tmp_path):
    """A clean environment: only what a test puts in it (the real sys.path's wheels stay visible)."""
    for var in (
        "LD_LIBRARY_PATH",
        "CUDA_HOME",
        "CUDA_PATH",
        "CONDA_PREFIX",
        "CONDA_EXE",
        "CONDA_ROOT",
        "MAMBA_ROOT_PREFIX",
        "VIRTUAL_ENV",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "no-cuda-home"))
    return monkeypatch


def test_search_precedence(search_env, tmp_path):
    """One distinct copy of libcufft.so.11 per place, each found by its source, in precedence order."""
    t = tmp_path
    places = {
        "venv": t / "venv/lib/python3.11/site-packages/nvidia/cufft/lib",
        "ld1": t / "ld1",
        "ld2": t / "ld2",
        "cuda64": t / "cuda/lib64",
        "cuda": t / "cuda/lib",
        "prefix": t / "miniconda/envs/ml/lib",
        "base": t / "miniconda/lib",
        "other": t / "miniconda/envs/other/lib",
    }
    for i, (_key, d) in enumerate(places.items()):
        build(d / "libcufft.so.11", "variant.c", f"-DVARIANT={i}", "-Wl,-soname,libcufft.so.11")
    build(t / "cuda/lib64/libcufft.so.10", "variant.c", "-DVARIANT=99", "-Wl,-soname,libcufft.so.10")
    search_env.setenv("VIRTUAL_ENV", str(t / "venv"))
    search_env.setenv("LD_LIBRARY_PATH", f"{places['ld1']}::{places['ld2']}")
    search_env.setenv("CUDA_HOME", str(t / "cuda"))
    search_env.setenv("CONDA_PREFIX", str(places["prefix"].parent))

    libs = find_libraries(name="libcufft")
    got = [(lib.source, Path(lib.path).parent) for lib in libs]
    assert got == [
        ("pip", places["venv"]),
        ("LD_LIBRARY_PATH", places["ld1"]),
        ("LD_LIBRARY_PATH", places["ld2"]),
        ("CUDA_HOME", places["cuda64"]),  # .so.10 sorts before .so.11 in the same directory
        ("CUDA_HOME", places["cuda64"]),
        ("CUDA_HOME", places["cuda"]),
        ("conda", places["prefix"]),
        ("conda", places["base"]),
        ("conda", places["other"]),
    ]
    assert [lib.chosen for lib in libs] == [True] + [False] * 8
    assert libs[0].alternatives == tuple(libs[1:])
    assert len({lib.build_id for lib in libs}) == 9
    assert [lib.version for lib in libs][:2] == ["11", "11"]

    assert resolve_library("cufft").path == libs[0].path
    assert resolve_library("libcufft.so.11").path == libs[0].path
    assert resolve_library("libcufft.so.10").path == str(t / "cuda/lib64/libcufft.so.10")  # picks exactly
    assert find_libraries(name="libcufft.so.1?")[0].path == libs[0].path  # a glob
    dirs = search_dirs()
    assert [d for s, d in dirs if s != "pip"] == [str(p) for p in places.values() if p != places["venv"]]


def test_build_id_dedup(search_env, tmp_path, cudart12):
    """The same file through a symlink and an identical copy is one entry; another build is another."""
    ld1, ld2 = tmp_path / "ld1", tmp_path / "ld2"
    a = build(ld1 / "libcufft.so.11", "variant.c", "-DVARIANT=1", "-Wl,-soname,libcufft.so.11")
    os.symlink("libcufft.so.11", ld1 / "libcufft.so")  # development symlink, sorts first
    ld2.mkdir()
    shutil.copy(a, ld2 / "libcufft.so.11")  # identical copy: same build-id
    build(ld2 / "libcufft.so.11.2.0", "variant.c", "-DVARIANT=2", "-Wl,-soname,libcufft.so.11")
    shutil.copy(cudart12, ld1 / "libcudart.so.12")  # the wheel's file again
    search_env.setenv("LD_LIBRARY_PATH", f"{ld1}:{ld2}")

    libs = find_libraries(name="libcufft")
    assert [lib.path for lib in libs] == [str(a), str(ld2 / "libcufft.so.11.2.0")]
    first, second = libs
    assert set(first.duplicates) == {str(ld1 / "libcufft.so"), str(ld2 / "libcufft.so.11")}
    assert first.chosen and first.alternatives == (second,) and not second.chosen
    assert second.version == "11.2.0" and first.version == "11"

    cudarts = find_libraries(name="libcudart.so.12")
    assert cudarts[0].source == "pip" and cudarts[0].path == str(cudart12)
    assert str(ld1 / "libcudart.so.12") in cudarts[0].duplicates
    assert cudarts[0].version.startswith("12.")  # from the wheel's dist-info RECORD
    assert all(lib.build_id != cudarts[0].build_id for lib in cudarts[1:])


def test_files_without_build_id(search_env, tmp_path):
    d1, d2 = tmp_path / "d1", tmp_path / "d2"
    a = build(d1 / "libcufft.so.11", "variant.c", "-Wl,--build-id=none")
    os.symlink(a, d1 / "libcufft.so.11.0")
    d2.mkdir()
    shutil.copy(a, d2 / "libcufft.so.11")  # a copy without a build-id cannot be told apart: kept
    search_env.setenv("LD_LIBRARY_PATH", f"{d1}:{d2}")
    libs = find_libraries(name="cufft")
    assert [lib.path for lib in libs] == [str(a), str(d2 / "libcufft.so.11")]
    assert libs[0].duplicates == (str(d1 / "libcufft.so.11.0"),) and libs[0].build_id is None


def test_ldconfig_cache_source(search_env):
    if not shutil.which("ldconfig") and not os.path.exists("/sbin/ldconfig"):
        skip_or_fail("ldconfig is not installed")
    out = subprocess.run([shutil.which("ldconfig") or "/sbin/ldconfig", "-p"], capture_output=True, text=True)
    expected = {
        (line.strip().split(" (", 1)[0], line.rsplit(" => ", 1)[1])
        for line in out.stdout.splitlines()[1:]
        if " => " in line
    }
    assert set(ldconfig_entries()) == expected
    libc = find_libraries(name="libc.so.6")
    assert libc[0].source == "ldconfig" and libc[0].soname == "libc.so.6"
    assert libc[0].attach_path == os.path.realpath(libc[0].path)


def test_this_machines_libcudart_listing():
    """What the design calls out: the toolkit's libcudart.so.13 beside the wheels' copies."""
    libs = find_libraries(name="libcudart")
    assert libs and libs[0].chosen and all(not lib.chosen for lib in libs[1:])
    assert len({lib.build_id for lib in libs}) == len(libs)
    sources = [lib.source for lib in libs]
    assert sources == sorted(sources, key=["pip", "LD_LIBRARY_PATH", "CUDA_HOME", "conda", "ldconfig"].index)
    if CUDART12.exists():
        assert str(CUDART12) in [lib.path for lib in libs]
    for lib in libs:
        assert lib.soname.startswith("libcudart.so.") and lib.version and symbol_count(lib) > 300


# ---------------------------------------------------------------------------------------------------
# errors


def test_no_such_process():
    p = subprocess.Popen(["true"])
    p.wait()
    with pytest.raises(NoSuchProcess, match=str(p.pid)):
        find_libraries(pid=p.pid)
    with pytest.raises(NoSuchProcess):
        resolve_library("libcudart", pid=p.pid)


def test_no_permission_to_read_maps(need_root, children, cudart12):
    """An unprivileged user asks about a root process: PermissionProblem, not 'not found'."""
    target = children(cudart12)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child drops to nobody and tries
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            try:
                resolve_library("libcudart", pid=target.pid)
                res = "no error"
            except Exception as e:  # noqa: BLE001 - reported to the parent
                res = f"{type(e).__name__}: {e}"
            os.write(w, res.encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        res = f.read()
    os.waitpid(pid, 0)
    assert res.startswith("PermissionProblem: ") and f"/proc/{target.pid}/maps" in res, res
    assert read_maps(target.pid)  # root can


def test_library_not_found_names(search_env):
    with pytest.raises(LibraryNotFound) as e:
        resolve_library("libcudartt")
    assert "'libcudart'" in e.value.hint
    with pytest.raises(LibraryNotFound, match="no such file"):
        resolve_library("/nonexistent/libcudart.so.12")
    assert find_libraries(name="/nonexistent/libcudart.so.12") == []
