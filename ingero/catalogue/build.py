"""Build one part of the catalogue (JSON-ready dict) from a set of headers.

A *part* is what one JSON file in ``data/`` holds: the runtime + driver APIs of one CUDA major version
(``runtime-12.json``) or the cuBLAS/cuBLASLt/NCCL/cuDNN APIs of one (``extra-12.json``). A part is built
from *units*: translation units parsed in up to three modes:

- ``default``: what a program sees; every function as declared, under its exported name (gcc has already
  applied ``#define cuMemAlloc cuMemAlloc_v2``).
- ``per_thread``: with ``CUDA_API_PER_THREAD_DEFAULT_STREAM``; the ``_ptds``/``_ptsz`` variants, which
  must have their base function's signature.
- ``legacy``: the declarations a library still exports for old binaries (``__CUDA_API_VERSION_INTERNAL``
  for the runtime/driver, ``cublas.h`` for cuBLAS): ``cuMemAlloc`` with ``unsigned int bytesize``.

Used by ``scripts/gen_catalogue.py`` and the tests; not at run time.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ingero.catalogue import cparse as C

FORMAT = 1


@dataclass(frozen=True)
class Unit:
    """One translation unit: what to include, which headers' functions to record (header -> family)."""

    includes: tuple[str, ...]
    families: dict[str, str]
    per_thread: bool = False
    legacy_defines: tuple[str, ...] | None = None  # parse again with these defines for legacy symbols
    legacy_includes: tuple[str, ...] | None = None  # ... or with these includes instead
    defines: tuple[str, ...] = ()


@dataclass
class PartSpec:
    part: str  # "runtime" | "extra"
    cuda_major: int
    include_dirs: list[Path]  # search order
    own_dirs: list[Path]  # headers recorded (enums, constants, hashes) come from these
    units: list[Unit]
    wheels: dict[Path, tuple[str, str]] = field(default_factory=dict)  # own dir -> (dist name, version)
    gcc: str = "gcc"


PER_THREAD_SUFFIXES = ("_ptds", "_ptsz")

# the runtime wheels the project installs (pyproject's test extras): CUDA major -> (module, distribution)
RUNTIME_WHEELS = {
    12: ("nvidia.cuda_runtime", "nvidia-cuda-runtime-cu12"),
    13: ("nvidia.cu13", "nvidia-cuda-runtime"),
}

RUNTIME_UNIT = Unit(
    includes=("cuda_runtime_api.h", "library_types.h", "cuda.h"),
    families={"cuda_runtime_api.h": "cudart", "cuda.h": "cuda"},
    per_thread=True,
    legacy_defines=("__CUDA_API_VERSION_INTERNAL",),
)


def runtime_include_dir(major: int) -> tuple[Path, str, str]:
    """(include dir, distribution, version) of the installed runtime wheel for ``major``."""
    mod, dist = RUNTIME_WHEELS[major]
    try:
        spec = importlib.util.find_spec(mod)
    except ModuleNotFoundError:
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise C.HeaderParseError(f"{dist} is not installed", f"pip install {dist}")
    inc = Path(list(spec.submodule_search_locations)[0]) / "include"
    return inc, dist, importlib.metadata.version(dist)


def runtime_spec(major: int, gcc: str = "gcc") -> PartSpec:
    """The runtime + driver part of CUDA ``major`` from its installed runtime wheel."""
    inc, dist, version = runtime_include_dir(major)
    return PartSpec(
        part="runtime",
        cuda_major=major,
        include_dirs=[inc],
        own_dirs=[inc],
        units=[RUNTIME_UNIT],
        wheels={inc: (dist, version)},
        gcc=gcc,
    )


def _header_of(path: str, dirs: Sequence[Path]) -> str | None:
    p = Path(path)
    if not p.is_absolute():
        return None
    rp = p.resolve()
    for d in dirs:
        try:
            return str(rp.relative_to(d.resolve()))
        except ValueError:
            continue
    return None


def _source(includes: Sequence[str]) -> str:
    return "".join(f'#include "{h}"\n' for h in includes)


def parse_unit(includes: Sequence[str], spec: PartSpec, defines: Sequence[str]) -> tuple[C.Program, list[str]]:
    """Preprocess and parse; returns the program and the paths gcc opened."""
    text = C.gcc_preprocess(_source(includes), spec.include_dirs, defines, gcc=spec.gcc)
    pp = C.split_preprocessed(text)
    prog = C.parse_translation_unit(pp, lambda p: _header_of(p, spec.include_dirs))
    if prog.errors:
        raise C.HeaderParseError(
            f"{len(prog.errors)} declaration(s) could not be parsed:\n  " + "\n  ".join(prog.errors[:20])
        )
    return prog, pp.files


class _TypeTable:
    """The part's ``types``: every type a signature mentions, and what those mention, by spelling."""

    def __init__(self) -> None:
        self.types: dict[str, dict] = {}

    def add(self, t: C.CTypeNode) -> str:
        key = C.render(t)
        if key in self.types:
            return key
        rec: dict = {}
        self.types[key] = rec  # placeholder first: recursive structs refer to themselves
        kind = C.kind_of(t)
        size, align = C.layout(t)
        rec["k"] = kind
        rec["s"] = size
        rec["a"] = align
        if isinstance(t, C.TNamed) and not t.quals:
            target = self.add(t.typedef.target)
            if target != key:  # typedef struct {...} X: the struct is spelled X too
                rec["td"] = target
        elif t.quals:
            bare = _without_quals(t)
            rec["uq"] = self.add(bare)
        s = C.strip_typedefs(t)
        if isinstance(s, C.TPtr):
            rec["p"] = self.add(s.to) if not isinstance(C.strip_typedefs(s.to), C.TFunc) else C.render(s.to)
        elif isinstance(s, C.TArr):
            rec["el"] = self.add(s.of)
            rec["n"] = s.n
        elif isinstance(s, C.TEnum):
            rec["e"] = s.enum.canonical
        elif isinstance(s, C.TAgg):
            rec["tag"] = s.agg.spelled()
            if s.agg.members is None:
                rec["opaque"] = True
            else:
                fields = []
                for m in s.agg.members:
                    ftype = self.add(m.type)
                    f: list = [m.name or "", ftype, m.offset]
                    if m.bits is not None:
                        f += [m.bit_offset, m.bits]
                    fields.append(f)
                rec["f"] = fields
        elif isinstance(s, C.TBuiltin) and s.canon != C.render(s):
            rec["c"] = s.canon
        return key


def _without_quals(t: C.CTypeNode) -> C.CTypeNode:
    import copy

    u = copy.copy(t)
    u.quals = ()
    return u


def _param_records(fn: C.Function, table: _TypeTable) -> dict:
    params = []
    for i, (name, pt) in enumerate(fn.type.params):
        written = C.render(pt)
        passed = C.decay(pt)
        key = table.add(passed)
        rec = [name or f"arg{i}", written]
        if key != written:
            rec.append(key)
        params.append(rec)
    table.add(fn.type.ret)
    out: dict = {"ret": C.render(fn.type.ret), "params": params}
    if fn.type.variadic:
        out["variadic"] = True
    if fn.deprecated:
        out["deprecated"] = True
    return out


def _signature_key(fn: C.Function) -> str:
    return C.render(C._unnamed(fn.type))


def build_part(spec: PartSpec) -> dict:
    """Parse every unit of ``spec`` and return the part's JSON-ready dict."""
    table = _TypeTable()
    functions: dict[str, dict] = {}
    legacy: dict[str, dict] = {}
    variants: dict[str, str] = {}
    aliases: dict[str, str] = {}
    enums: dict[str, dict] = {}
    constants: dict[str, int] = {}
    opened: set[str] = set()
    problems: list[str] = []

    for unit in spec.units:
        prog, files = parse_unit(unit.includes, spec, unit.defines)
        opened.update(files)

        def fam(fn: C.Function, unit: Unit = unit) -> str | None:
            return unit.families.get(fn.header) if fn.header else None

        base_fns = {f.name: f for f in prog.functions.values() if fam(f)}
        for name, fn in base_fns.items():
            rec = {"lib": fam(fn), "h": fn.header, **_param_records(fn, table)}
            if name in functions and functions[name] != rec:
                problems.append(f"{name} declared differently by two units")
            functions[name] = rec

        pt_prog = None
        if unit.per_thread:
            pt_defines = (*unit.defines, "CUDA_API_PER_THREAD_DEFAULT_STREAM")
            pt_prog, files = parse_unit(unit.includes, spec, pt_defines)
            opened.update(files)
            for name, fn in pt_prog.functions.items():
                if not fam(fn) or name in base_fns:
                    continue
                base = next((name[: -len(s)] for s in PER_THREAD_SUFFIXES if name.endswith(s)), None)
                if base is None or base not in base_fns:
                    problems.append(f"{name}: declared only with per-thread default stream, not a variant")
                    continue
                if _signature_key(fn) != _signature_key(base_fns[base]):
                    problems.append(f"{name}: signature differs from {base}")
                    continue
                variants[name] = base

        if unit.legacy_defines is not None or unit.legacy_includes is not None:
            lg_prog, files = parse_unit(
                unit.legacy_includes or unit.includes, spec, (*unit.defines, *(unit.legacy_defines or ()))
            )
            opened.update(files)
            for name, fn in lg_prog.functions.items():
                if not fam(fn):
                    continue
                if name in base_fns or name in variants:
                    ref = base_fns.get(name) or base_fns.get(variants.get(name, ""))
                    if ref is not None and _signature_key(fn) != _signature_key(ref):
                        problems.append(f"{name}: the legacy declaration differs from the current one")
                    continue
                base = next((name[: -len(s)] for s in PER_THREAD_SUFFIXES if name.endswith(s)), None)
                rec = {"lib": fam(fn), "h": fn.header, **_param_records(fn, table)}
                if base is not None and base in legacy:
                    if _signature_key(fn) == _signature_key(lg_prog.functions[base]):
                        variants[name] = base
                        continue
                legacy[name] = rec

        # aliases: object-like macros of the recorded headers that expand to one function name
        macro_names = [
            m.name
            for m in prog.macros.values()
            if m.params is None and m.header and unit.families.get(m.header) and m.body.strip()
        ]
        own_macros = [
            m.name
            for m in prog.macros.values()
            if m.params is None and m.header and _is_own(m.header, spec) and m.body.strip()
        ]
        names = sorted(set(macro_names) | set(own_macros))
        prelude = _source(unit.includes)
        exp = C.expand_macros(names, prelude, spec.include_dirs, unit.defines, gcc=spec.gcc)
        for name, toks in exp.items():
            if len(toks) == 1 and toks[0] in base_fns and toks[0] != name:
                aliases[name] = toks[0]
        if pt_prog is not None:
            pt_exp = C.expand_macros(
                names,
                prelude,
                spec.include_dirs,
                (*unit.defines, "CUDA_API_PER_THREAD_DEFAULT_STREAM"),
                gcc=spec.gcc,
            )
            for name, toks in pt_exp.items():
                if len(toks) != 1 or toks[0] == name or toks[0] not in pt_prog.functions:
                    continue
                target = toks[0]
                expected = aliases.get(name, name)
                if target != expected and variants.get(target) != expected:
                    problems.append(f"{name} expands to {target} per-thread, not a variant of {expected}")
        # constants: object-like macros of the part's own headers with an integer value
        evaluator = C.DeclParser(prog, [], None)
        for name in own_macros:
            toks = exp.get(name)
            if not toks or name in aliases or name in base_fns:
                continue
            try:
                ftoks, _ = C.fold_attributes(toks, [0] * len(toks))
                constants[name] = evaluator.eval_tokens(ftoks)
            except (C._Fail, C.HeaderParseError, KeyError, IndexError, TypeError, ValueError):
                continue
        # enums of the part's own headers
        for en in prog.enums:
            if not en.complete or not en.header or not _is_own(en.header, spec):
                continue
            rec = {"h": en.header, "values": en.values, "size": en.size}
            if en.typedefs:
                rec["typedefs"] = en.typedefs
            old = enums.get(en.canonical)
            if old is not None and old["values"] != en.values:
                problems.append(f"enum {en.canonical} defined differently by two units")
            enums[en.canonical] = rec

    if problems:
        raise C.HeaderParseError("the headers are not consistent:\n  " + "\n  ".join(problems[:30]))

    return {
        "format": FORMAT,
        "part": spec.part,
        "cuda_major": spec.cuda_major,
        "sources": _sources(spec, opened),
        "functions": dict(sorted(functions.items())),
        "variants": dict(sorted(variants.items())),
        "aliases": dict(sorted(aliases.items())),
        "legacy": dict(sorted(legacy.items())),
        "types": dict(sorted(table.types.items())),
        "enums": dict(sorted(enums.items())),
        "constants": dict(sorted(constants.items())),
    }


def _is_own(header: str, spec: PartSpec) -> bool:
    return any((d / header).is_file() for d in spec.own_dirs)


def _sources(spec: PartSpec, opened: set[str]) -> dict:
    headers: dict[str, dict] = {}
    for path in sorted(opened):
        p = Path(path)
        if not p.is_absolute() or not p.is_file():
            continue
        rp = p.resolve()
        for d in spec.own_dirs:
            try:
                rel = str(rp.relative_to(d.resolve()))
            except ValueError:
                continue
            rec = {"sha256": hashlib.sha256(rp.read_bytes()).hexdigest()}
            if d in spec.wheels:
                rec["wheel"] = spec.wheels[d][0]
            headers[rel] = rec
            break
    wheels = [{"name": n, "version": v} for n, v in sorted(set(spec.wheels.values()))]
    return {"wheels": wheels, "headers": headers, "gcc": gcc_version(spec.gcc)}


def gcc_version(gcc: str = "gcc") -> str:
    import subprocess

    out = subprocess.run([gcc, "--version"], capture_output=True, text=True, check=False).stdout
    first = out.splitlines()[0] if out else "unknown"
    return re.sub(r"\s+", " ", first).strip()
