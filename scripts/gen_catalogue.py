#!/usr/bin/env python3
"""Generate the signature catalogue (``ingero/catalogue/data/*.json``) from the real CUDA headers.

    gen_catalogue.py runtime   # CUDA runtime + driver APIs from the installed runtime wheels (12 and 13)
    gen_catalogue.py extra     # cuBLAS/cuBLASLt, NCCL, cuDNN: downloads their wheels (~3 GB) to a temp
                               # dir, unzips only the headers, parses them, deletes the wheels

Both record every header's sha256 and the wheel (name, version) it came from. Needs gcc (for ``gcc -E``).
``extra --wheel-dir DIR`` uses (and keeps) wheels already downloaded there.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ingero.catalogue import build as B  # noqa: E402
from ingero.catalogue import cparse as C  # noqa: E402

DATA = ROOT / "ingero" / "catalogue" / "data"

# per CUDA major: (requirement, units parsed from that wheel's headers)
_CUDNN_HEADERS = (
    "cudnn.h",
    "cudnn_version.h",
    "cudnn_graph.h",
    "cudnn_ops.h",
    "cudnn_adv.h",
    "cudnn_cnn.h",
    "cudnn_subquadratic_ops.h",
    "cudnn_gnn_ops.h",
)
_CUBLAS_UNIT = B.Unit(
    includes=("cublas_v2.h", "cublasLt.h"),
    families={
        "cublas_api.h": "cublas",
        "cublas_v2.h": "cublas",
        "cublas.h": "cublas",  # the legacy (v1) API, still exported: cublasSgemm without a handle
        "cublasLt.h": "cublasLt",
    },
    legacy_includes=("cublas.h",),
)
_NCCL_UNIT = B.Unit(includes=("nccl.h",), families={"nccl.h": "nccl"})
_CUDNN_UNIT = B.Unit(includes=_CUDNN_HEADERS, families={h: "cudnn" for h in _CUDNN_HEADERS})

EXTRA_WHEELS: dict[int, list[tuple[str, B.Unit]]] = {
    12: [
        ("nvidia-cublas-cu12", _CUBLAS_UNIT),
        ("nvidia-nccl-cu12", _NCCL_UNIT),
        ("nvidia-cudnn-cu12", _CUDNN_UNIT),
    ],
    13: [
        ("nvidia-cublas>=13,<14", _CUBLAS_UNIT),  # CUDA 13's cuBLAS dropped the -cu13 suffix
        ("nvidia-nccl-cu13", _NCCL_UNIT),
        ("nvidia-cudnn-cu13", _CUDNN_UNIT),
    ],
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


_ONE_LINE_EACH = ("functions", "variants", "aliases", "legacy", "types", "enums", "constants")


def dump(part: dict, path: Path) -> None:
    """JSON with one line per function/type/enum: compact to load, readable in a diff."""
    lines = ["{"]
    keys = list(part)
    for i, k in enumerate(keys):
        v = part[k]
        comma = "," if i < len(keys) - 1 else ""
        if isinstance(v, dict) and k in _ONE_LINE_EACH:
            lines.append(f"{json.dumps(k)}: {{")
            items = list(v.items())
            for j, (name, rec) in enumerate(items):
                c = "," if j < len(items) - 1 else ""
                lines.append(f"{json.dumps(name)}: {json.dumps(rec, separators=(',', ':'))}{c}")
            lines.append("}" + comma)
        else:
            lines.append(f"{json.dumps(k)}: {json.dumps(v, indent=1)}{comma}")
    lines.append("}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def summary(part: dict) -> str:
    fams: dict[str, int] = {}
    for rec in part["functions"].values():
        fams[rec["lib"]] = fams.get(rec["lib"], 0) + 1
    fam = ", ".join(f"{k} {v}" for k, v in sorted(fams.items()))
    return (
        f"{part['part']}-{part['cuda_major']}: {fam}; {len(part['variants'])} per-thread variants, "
        f"{len(part['aliases'])} aliases, {len(part['legacy'])} legacy, {len(part['types'])} types, "
        f"{len(part['enums'])} enums, {len(part['constants'])} constants"
    )


def cmd_runtime(args: argparse.Namespace) -> None:
    for major in sorted(B.RUNTIME_WHEELS):
        t0 = time.perf_counter()
        part = B.build_part(B.runtime_spec(major, args.gcc))
        out = args.out / f"runtime-{major}.json"
        dump(part, out)
        log(
            f"{summary(part)} -> {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out} "
            f"({time.perf_counter() - t0:.2f} s)"
        )


_WHEEL_RE = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)-.*\.whl$")


def _wheel_for(requirement: str, wheel_dir: Path) -> Path:
    name = re.split(r"[<>=!~ ;\[]", requirement, maxsplit=1)[0]
    norm = name.replace("-", "_").lower()
    have = sorted(p for p in wheel_dir.glob("*.whl") if p.name.lower().startswith(norm + "-"))
    if have:
        return have[-1]
    log(f"downloading {requirement} ...")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d",
           str(wheel_dir), requirement]  # fmt: skip
    subprocess.run(cmd, check=True)
    have = sorted(p for p in wheel_dir.glob("*.whl") if p.name.lower().startswith(norm + "-"))
    if not have:
        raise SystemExit(f"pip download {requirement} produced no wheel")
    return have[-1]


def _unzip_headers(wheel: Path, dest: Path) -> tuple[Path, str, str]:
    """Extract only the headers; (include dir, distribution name, version)."""
    with zipfile.ZipFile(wheel) as z:
        names = [n for n in z.namelist() if n.endswith(".h") and "/include/" in n and "/nccl_device" not in n]
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode()
        for n in names:
            z.extract(n, dest)
    dist = re.search(r"^Name: (.+)$", text, re.M).group(1).strip()  # type: ignore[union-attr]
    version = re.search(r"^Version: (.+)$", text, re.M).group(1).strip()  # type: ignore[union-attr]
    incs = sorted({n.split("/include/")[0] + "/include" for n in names})
    if len(incs) != 1:
        raise SystemExit(f"{wheel.name}: expected one include dir, found {incs}")
    return dest / incs[0], dist, version


def cmd_extra(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="ingero-wheels-") as tmp:
        wheel_dir = args.wheel_dir or Path(tmp) / "wheels"
        wheel_dir.mkdir(parents=True, exist_ok=True)
        for major in args.majors:
            t0 = time.perf_counter()
            rt_inc, _, _ = B.runtime_include_dir(major)
            own: list[Path] = []
            wheels: dict[Path, tuple[str, str]] = {}
            units: list[B.Unit] = []
            for requirement, unit in EXTRA_WHEELS[major]:
                wheel = _wheel_for(requirement, wheel_dir)
                inc, dist, version = _unzip_headers(wheel, Path(tmp) / "headers" / wheel.stem)
                log(f"  {dist} {version}: {inc.relative_to(tmp)}")
                own.append(inc)
                wheels[inc] = (dist, version)
                units.append(unit)
            spec = B.PartSpec(
                part="extra",
                cuda_major=major,
                include_dirs=[*own, rt_inc],
                own_dirs=own,
                units=units,
                wheels=wheels,
                gcc=args.gcc,
            )
            part = B.build_part(spec)
            out = args.out / f"extra-{major}.json"
            dump(part, out)
            log(f"{summary(part)} -> {out} ({time.perf_counter() - t0:.2f} s)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DATA, help="output folder (default: the package's data/)")
    ap.add_argument("--gcc", default="gcc")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("runtime", help="runtime + driver APIs from the installed runtime wheels")
    ex = sub.add_parser("extra", help="cuBLAS/cuBLASLt/NCCL/cuDNN from downloaded wheels")
    ex.add_argument("--wheel-dir", type=Path, help="reuse (and keep) wheels in this folder")
    ex.add_argument("--major", dest="majors", type=int, action="append", choices=sorted(EXTRA_WHEELS))
    args = ap.parse_args(argv)
    if not C.gcc_available(args.gcc):
        raise SystemExit(f"{args.gcc} not found: the generator preprocesses the headers with gcc -E")
    try:
        if args.cmd == "runtime":
            cmd_runtime(args)
        else:
            args.majors = args.majors or sorted(EXTRA_WHEELS)
            cmd_extra(args)
    except C.HeaderParseError as err:
        raise SystemExit(f"error: {err}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
