"""Regenerate examples/demo-trace.db, the recording `ingero demo` replays where BPF is missing.

Runs the live demo (root) into a scratch database, then writes it to examples/ with the venv and the
checkout replaced by placeholders, so the shipped file names no folder of the machine that recorded it.
Usage (what `make demo-recording` runs):  .venv/bin/python scripts/record_demo.py
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from ingero.store.portable import Prefix, make_portable

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "examples" / "demo-trace.db"


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="ingero-record-") as tmp:
        db = Path(tmp) / "demo.db"
        r = subprocess.run([str(Path(sys.executable).parent / "ingero"), "demo", "--db", str(db), "--seconds", "4",
                            "--workers", "2", "--interval", "0.05"], stdout=subprocess.DEVNULL, timeout=300)
        if r.returncode != 0:
            print(f"record_demo: the live demo failed (exit {r.returncode})", file=sys.stderr)
            return 1
        changed = make_portable(db, OUT, [Prefix(sys.prefix, "<venv>"), Prefix(str(ROOT), "<checkout>")])
    print(f"wrote {OUT.relative_to(ROOT)} ({OUT.stat().st_size:,} bytes, {changed} values made portable)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
