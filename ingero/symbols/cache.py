"""The on-disk symbol cache: one compact JSON file per library file in ``cache_dir()/symbols/``.

The key is the GNU build-id (the same bytes reached through any path, container or ``/proc`` link share
one entry) plus the sizes of ``.dynsym`` and ``.symtab`` in hex (``strip`` keeps the build-id but drops
``.symtab``): ``<build-id>-<dynsym>-<symtab>``. A file without a build-id is keyed by
``nobid-<dev>-<inode>-<size>-<mtime_ns>``. An entry
holds the table already demangled, so the warm path needs neither pyelftools nor cxxfilt. A cache that
cannot be written (read-only home) only costs speed: it is logged, never raised.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ingero.symbols.elf import ElfInfo

log = logging.getLogger(__name__)

#: Bump when the entry layout or the meaning of a field changes; older entries are then ignored.
FORMAT = 1


def symbols_dir() -> Path:
    from ingero.paths import cache_dir

    return cache_dir() / "symbols"


def file_key(info: ElfInfo, st: os.stat_result | None) -> str:
    if info.build_id:
        dyn, sym = info.table_sizes
        return f"{info.build_id}-{dyn:x}-{sym:x}"
    if st is None:
        raise ValueError("a file without a build-id needs its stat() for a cache key")
    return f"nobid-{st.st_dev}-{st.st_ino}-{st.st_size}-{st.st_mtime_ns}"


def load(key: str) -> dict | None:
    path = symbols_dir() / f"{key}.json"
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("ignoring unreadable symbol cache entry %s: %s", path, e)
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return None
    return data


def store(key: str, data: dict) -> None:
    d = symbols_dir()
    path = d / f"{key}.json"
    tmp = d / f".{key}.{os.getpid()}.tmp"
    try:
        d.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"format": FORMAT, **data}, f, separators=(",", ":"))
        os.replace(tmp, path)
    except OSError as e:
        log.warning("could not write the symbol cache entry %s: %s", path, e)
        try:
            tmp.unlink()
        except OSError:
            pass
