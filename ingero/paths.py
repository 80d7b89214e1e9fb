"""Where ingero keeps and finds its files: package data, the cache and the state dirs.

The cache (symbol tables per build-id) and the state (audit database, selftest reports) follow the XDG
base directories through platformdirs, so ``XDG_CACHE_HOME``/``XDG_STATE_HOME`` move them (CI points both
at a fresh temp folder). ``INGERO_CACHE_DIR``/``INGERO_STATE_DIR`` override them outright.
"""

from __future__ import annotations

import os
from pathlib import Path

_PKG = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    """A shipped data folder (``grammar``, ``probe_templates``, ``bpf``): in a wheel it is packaged under
    ``ingero/_data``; in a source checkout (editable install) it is the folder at the project root."""
    packaged = _PKG / "_data" / name
    if packaged.is_dir():
        return packaged
    return _PKG.parent / name


def cache_dir() -> Path:
    env = os.environ.get("INGERO_CACHE_DIR")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("ingero", appauthor=False))


def state_dir() -> Path:
    env = os.environ.get("INGERO_STATE_DIR")
    if env:
        return Path(env)
    from platformdirs import user_state_dir

    return Path(user_state_dir("ingero", appauthor=False))


def selftest_dir() -> Path:
    """Where ``ingero selftest`` writes its reports (``get_test_report`` reads the newest)."""
    return state_dir() / "selftest"
