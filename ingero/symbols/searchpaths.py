"""Where CUDA libraries are looked for without a pid, in order (see :mod:`ingero.symbols`): pip wheels'
``nvidia/*/lib`` folders, ``LD_LIBRARY_PATH``, ``CUDA_HOME``, conda, and the dynamic linker's cache."""

from __future__ import annotations

import os
import struct
import sys
from collections.abc import Mapping, Sequence

LD_SO_CACHE = "/etc/ld.so.cache"


def _site_packages(sys_path: Sequence[str], env: Mapping[str, str]) -> list[str]:
    out = [p for p in sys_path if p and os.path.isdir(os.path.join(p, "nvidia"))]
    venv = env.get("VIRTUAL_ENV")
    if venv:
        lib = os.path.join(venv, "lib")
        try:
            pys = sorted(d for d in os.listdir(lib) if d.startswith("python"))
        except OSError:
            pys = []
        for d in pys:
            sp = os.path.join(lib, d, "site-packages")
            if os.path.isdir(os.path.join(sp, "nvidia")) and sp not in out:
                out.append(sp)
    return out


def _conda_dirs(env: Mapping[str, str]) -> list[str]:
    out = []
    prefix = env.get("CONDA_PREFIX")
    if prefix:
        out.append(os.path.join(prefix, "lib"))
    root = env.get("CONDA_ROOT") or env.get("MAMBA_ROOT_PREFIX")
    if not root and env.get("CONDA_EXE"):
        root = os.path.dirname(os.path.dirname(env["CONDA_EXE"]))
    if not root and prefix:
        parent = os.path.dirname(prefix)
        root = os.path.dirname(parent) if os.path.basename(parent) == "envs" else prefix
    if root:
        out.append(os.path.join(root, "lib"))
        envs = os.path.join(root, "envs")
        try:
            out.extend(os.path.join(envs, e, "lib") for e in sorted(os.listdir(envs)))
        except OSError:
            pass
    return out


def search_dirs(
    env: Mapping[str, str] | None = None, sys_path: Sequence[str] | None = None
) -> list[tuple[str, str]]:
    """The directories searched without a pid, as (source, directory), in precedence order.

    A directory reached twice (``lib64 -> lib``, a conda env also in ``LD_LIBRARY_PATH``) counts once,
    under its first source. The ldconfig cache is a list of files, not a directory: see
    :func:`ldconfig_entries`.
    """
    env = os.environ if env is None else env
    sys_path = sys.path if sys_path is None else sys_path
    out: list[tuple[str, str]] = []
    for sp in _site_packages(sys_path, env):
        nv = os.path.join(sp, "nvidia")
        try:
            pkgs = sorted(os.listdir(nv))
        except OSError:
            continue
        for pkg in pkgs:
            for sub in ("lib", "lib64"):
                out.append(("pip", os.path.join(nv, pkg, sub)))
    for d in env.get("LD_LIBRARY_PATH", "").split(":"):
        if d:
            out.append(("LD_LIBRARY_PATH", d))
    cuda = env.get("CUDA_HOME") or env.get("CUDA_PATH") or "/usr/local/cuda"
    out += [("CUDA_HOME", os.path.join(cuda, "lib64")), ("CUDA_HOME", os.path.join(cuda, "lib"))]
    out += [("conda", d) for d in _conda_dirs(env)]
    seen: set[str] = set()
    result = []
    for source, d in out:
        if not os.path.isdir(d):
            continue
        real = os.path.realpath(d)
        if real in seen:
            continue
        seen.add(real)
        result.append((source, d))
    return result


def ldconfig_entries(cache_file: str = LD_SO_CACHE) -> list[tuple[str, str]]:
    """(library name, path) pairs of the dynamic linker's cache, read from ``/etc/ld.so.cache`` (the
    ``glibc-ld.so.cache1.1`` format), or from ``ldconfig -p`` if that file has another format."""
    try:
        with open(cache_file, "rb") as f:
            data = f.read()
    except OSError:
        return []
    magic = b"glibc-ld.so.cache1.1"
    base = data.find(magic)
    if base == 0:
        try:
            nlibs, _strlen = struct.unpack_from("<II", data, 20)
            out = []
            for i in range(nlibs):
                _flags, key, value, _osv, _hwcap = struct.unpack_from("<iIIIQ", data, 48 + 24 * i)
                out.append((_cstr(data, key), _cstr(data, value)))
            return out
        except struct.error:
            pass
    return _ldconfig_p()


def _cstr(data: bytes, off: int) -> str:
    end = data.find(b"\0", off)
    return data[off:end].decode("utf-8", "replace")


def _ldconfig_p() -> list[tuple[str, str]]:
    import shutil
    import subprocess

    exe = shutil.which("ldconfig") or "/sbin/ldconfig"
    try:
        out = subprocess.run([exe, "-p"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    pairs = []
    for line in out.splitlines()[1:]:
        name, sep, path = line.strip().partition(" => ")
        if sep:
            pairs.append((name.split(" (", 1)[0], path))
    return pairs


def searched_text(env: Mapping[str, str] | None = None, sys_path: Sequence[str] | None = None) -> str:
    """What a search without a pid looks at, in order, for a message (``pip wheels (12 folders),
    CUDA_HOME (/usr/local/cuda/lib64), the ldconfig cache``)."""
    by: dict[str, list[str]] = {}
    for source, d in search_dirs(env, sys_path):
        by.setdefault(source, []).append(d)
    label = {"pip": "pip wheels of this environment"}
    parts = [f"{label.get(src, src)} ({dirs[0] if len(dirs) == 1 else f'{len(dirs)} folders'})"
             for src, dirs in by.items()]
    return ", ".join([*parts, f"the ldconfig cache ({LD_SO_CACHE})"])
