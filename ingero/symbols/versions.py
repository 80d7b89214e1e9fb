"""A library file's version: from its real file name (``libcudart.so.12.9.79``), else from the pip wheel
that installed it (its dist-info ``RECORD``), else the soname's major."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

_VERSIONED = re.compile(r"\.so\.(\d+(?:\.\d+)+)$")
_SO_MAJOR = re.compile(r"\.so\.(\d+)")


_DISTINFO_MEMO: dict[str, list[tuple[str, str]]] = {}


def _record_rows(dist_root: str) -> list[tuple[str, str]]:
    """(RECORD row, version) for every ``nvidia*`` dist-info in ``dist_root``."""
    rows = _DISTINFO_MEMO.get(dist_root)
    if rows is not None:
        return rows
    rows = []
    try:
        names = [n for n in os.listdir(dist_root) if n.endswith(".dist-info") and n.startswith("nvidia")]
    except OSError:
        names = []
    for n in sorted(names):
        version = n[: -len(".dist-info")].rpartition("-")[2]
        try:
            with open(os.path.join(dist_root, n, "RECORD"), encoding="utf-8", errors="replace") as f:
                rows.extend((line, version) for line in f)
        except OSError:
            continue
    _DISTINFO_MEMO[dist_root] = rows
    return rows


def _wheel_version(real: str) -> str | None:
    """The version of the pip wheel (``nvidia_cuda_runtime_cu12-12.9.79.dist-info``) that installed this
    file: a RECORD row with the same file name and size, in a dist-info up to three levels up (a
    site-packages, or a wheel-built toolkit's ``dist-info/`` folder)."""
    try:
        size = os.stat(real).st_size
    except OSError:
        return None
    base = os.path.basename(real)
    d = os.path.dirname(real)
    for _ in range(4):
        for root in (d, os.path.join(d, "dist-info")):
            for line, version in _record_rows(root):
                name, _, rest = line.partition(",")
                if name.rsplit("/", 1)[-1] == base and rest.rstrip().endswith(f",{size}"):
                    return version
        d = os.path.dirname(d)
    return None


def version_of(names: Sequence[str], soname: str | None, wheel_file: str | None) -> str | None:
    """From a versioned file name among ``names``, else from the wheel that installed ``wheel_file``,
    else the soname's major."""
    for name in names:
        m = _VERSIONED.search(os.path.basename(name))
        if m:
            return m.group(1)
    if wheel_file:
        v = _wheel_version(wheel_file)
        if v:
            return v
    for name in (soname or "", *names):
        m = _SO_MAJOR.search(os.path.basename(name))
        if m:
            return m.group(1)
    return None


def file_version(path: str, soname: str | None) -> str | None:
    real = os.path.realpath(path)
    return version_of((real, path), soname, real)


# ---------------------------------------------------------------------------------------------------
# without a pid
