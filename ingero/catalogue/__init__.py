"""The typed signature catalogue of the CUDA APIs: argument names, C types, enums, aliases.

Generated from the real headers by ``scripts/gen_catalogue.py`` (``make catalogue`` for the runtime and
driver APIs of CUDA 12 and 13, ``make catalogue-extra`` for cuBLAS/cuBLASLt, NCCL and cuDNN) and shipped
as JSON in ``data/``: one file per part and CUDA major version. Loading reads those files once per
process and builds typed values on demand::

    cat = load_catalogue()
    sig = cat.lookup("cudaMemcpyAsync")            # newest CUDA major that declares it
    sig.params[2].name, sig.params[2].ctype.kind   # ("count", "uint")
    cat.lookup("cuMemAlloc").called_as             # "cuMemAlloc_v2"
    cat.enum_value("cudaMemcpyDeviceToHost")       # ("cudaMemcpyKind", 2)

Names, as the lookups use them:

- a *function* is declared by a header under its exported name (``cuMemAlloc_v2``);
- a *per-thread variant* (``cudaMemcpyAsync_ptsz``, ``cuMemcpyHtoD_v2_ptds``) is exported too and has its
  base function's signature; a program built with per-thread default streams calls it instead;
- an *alias* is a macro a program writes (``cuMemAlloc``, ``cublasSgemm``, ``cudaGetDeviceProperties``)
  that the header turns into a function name;
- a *legacy* symbol is exported for old binaries under a name that is now an alias, with its old
  signature (the ``cuMemAlloc`` symbol takes ``unsigned int bytesize``). ``lookup`` resolves a name as a
  program writes it (aliases first); ``lookup_symbol`` resolves an ELF symbol exactly (legacy first).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

from ingero.errors import NotFound, SymbolNotFound, suggestion

DATA_DIR = Path(__file__).resolve().parent / "data"
FORMAT = 1

#: Library stems whose signatures the catalogue holds, and the family name the catalogue uses.
FAMILIES = {
    "libcudart": "cudart",
    "libcuda": "cuda",
    "libcublas": "cublas",
    "libcublasLt": "cublasLt",
    "libnccl": "nccl",
    "libcudnn": "cudnn",
}


def family_of(stem: str) -> str | None:
    """The catalogue family that types a library's functions (``libcudnn_ops`` -> cudnn), or None."""
    return FAMILIES.get(stem) or ("cudnn" if stem.startswith("libcudnn") else None)

__all__ = [
    "CType",
    "Catalogue",
    "CatalogueError",
    "Field",
    "Param",
    "Signature",
    "Source",
    "load_catalogue",
]


class CatalogueError(NotFound):
    """A type, enum or value the catalogue does not know."""


class Field(NamedTuple):
    """A struct/union member: ``name, ctype, offset = field``. ``name`` is "" for an anonymous
    struct/union member (C11). For a bit-field ``offset`` is its storage unit's; see ``CType.bits``."""

    name: str
    ctype: CType
    offset: int


@dataclass(frozen=True)
class CType:
    """What the x86-64 SysV classifier and the decoders need about one C type, by its spelling.

    ``kind``: int, uint, bool, float, double, long_double, pointer, char_pointer (a ``char *`` of any
    signedness/constness), enum, struct, union, array, function, void. ``size``/``align`` are None for
    incomplete types (opaque handles' structs) and functions. Typedefs are resolved: ``cudaStream_t`` is
    a pointer, ``typedef_of`` says what it names.
    """

    name: str
    kind: str
    size: int | None
    align: int | None
    fields: tuple[Field, ...] = ()
    enum: str | None = None
    pointee: str | None = None  # pointers: the pointed-to type's spelling
    element: CType | None = None  # arrays
    length: int | None = None  # arrays
    typedef_of: str | None = None
    opaque: bool = False  # a struct declared but not defined
    bits: tuple[tuple[str, int, int], ...] = ()  # bit-fields: (name, bit offset in the struct, width)

    @property
    def is_integer(self) -> bool:
        return self.kind in ("int", "uint", "bool", "enum")

    @property
    def signed(self) -> bool:
        return self.kind == "int"

    def scalars(self, base: int = 0) -> list[tuple[int, CType]]:
        """The scalar leaves of this type with their byte offsets (struct fields and array elements
        flattened), in memory order: what an ABI classifier walks."""
        if self.kind in ("struct", "union"):
            out: list[tuple[int, CType]] = []
            for f in self.fields:
                out.extend(f.ctype.scalars(base + f.offset))
            return sorted(out, key=lambda x: x[0]) if self.kind == "union" else out
        if self.kind == "array" and self.element is not None and self.length:
            step = self.element.size or 0
            out = []
            for i in range(self.length):
                out.extend(self.element.scalars(base + i * step))
            return out
        return [(base, self)]


@dataclass(frozen=True)
class Param:
    name: str
    type: str  # as written in the header: "const void *", "enum cudaMemcpyKind", "dim3"
    ctype: CType  # as passed (an array parameter is a pointer)
    index: int = 0

    def declaration(self) -> str:
        return _declarator(self.type, self.name)


@dataclass(frozen=True)
class Signature:
    """One callable symbol. ``name`` is what was looked up, ``base`` the declared function whose
    signature this is, ``called_as`` the exported symbol a call lands on."""

    name: str
    base: str
    called_as: str
    library: str  # cudart, cuda (driver), cublas, cublasLt, nccl, cudnn
    cuda_major: int
    return_type: str
    return_ctype: CType
    params: tuple[Param, ...]
    header: str
    variadic: bool = False
    deprecated: bool = False
    legacy: bool = False

    def declaration(self) -> str:
        ps = ", ".join(p.declaration() for p in self.params)
        if self.variadic:
            ps = f"{ps}, ..." if ps else "..."
        return f"{self.return_type} {self.called_as}({ps or 'void'})"

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise CatalogueError(
            f"{self.called_as} has no argument named {name!r}",
            suggestion(name, [p.name for p in self.params]) or f"its arguments: {self.arg_names()}",
        )

    def arg_names(self) -> str:
        return ", ".join(p.name for p in self.params) or "(none)"


@dataclass(frozen=True)
class Source:
    """Where one part of the catalogue came from."""

    part: str  # "runtime" | "extra"
    cuda_major: int
    wheels: tuple[tuple[str, str], ...]  # (distribution, version)
    headers: dict[str, str] = field(hash=False)  # header -> sha256
    header_wheels: dict[str, str] = field(hash=False, default_factory=dict)  # header -> distribution


def _declarator(type_: str, name: str) -> str:
    if "(*)" in type_:
        return type_.replace("(*)", f"(*{name})", 1)
    if type_.endswith("]"):
        i = type_.index("[")
        return f"{type_[:i]} {name}{type_[i:]}"
    if type_.endswith("*"):
        return type_ + name
    return f"{type_} {name}"


def _unspaced(spelling: str) -> str:
    """Spacing only matters between two words: "unsigned int" stays, "void * *" becomes "void**"."""
    return re.sub(r"\s*([*\[\](),])\s*", r"\1", spelling)


class _Major:
    """The merged parts of one CUDA major version."""

    def __init__(self, major: int) -> None:
        self.major = major
        self.functions: dict[str, dict] = {}
        self.variants: dict[str, str] = {}
        self.aliases: dict[str, str] = {}
        self.legacy: dict[str, dict] = {}
        self.types: dict[str, dict] = {}
        self.enums: dict[str, dict] = {}
        self.constants: dict[str, int] = {}
        self._ctypes: dict[str, CType] = {}
        self._sigs: dict[tuple[str, bool], Signature | None] = {}

    def add(self, part: dict) -> None:
        self.functions.update(part["functions"])
        self.variants.update(part["variants"])
        self.aliases.update(part["aliases"])
        self.legacy.update(part["legacy"])
        self.types.update(part["types"])
        self.enums.update(part["enums"])
        self.constants.update(part["constants"])

    @cached_property
    def variants_of(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for v, b in sorted(self.variants.items()):
            out.setdefault(b, []).append(v)
        return out

    @cached_property
    def unspaced_types(self) -> dict[str, str]:
        return {_unspaced(k): k for k in self.types}

    @cached_property
    def enum_index(self) -> dict[str, str]:
        """Every name an enum answers to (tag and typedefs) -> its canonical name."""
        out: dict[str, str] = {}
        for name, rec in self.enums.items():
            out[name] = name
            for td in rec.get("typedefs", ()):
                out.setdefault(td, name)
        return out

    @cached_property
    def enumerators(self) -> dict[str, tuple[str, int]]:
        out: dict[str, tuple[str, int]] = {}
        for name, rec in self.enums.items():
            for k, v in rec["values"].items():
                out.setdefault(k, (name, v))
        return out

    def ctype(self, name: str) -> CType | None:
        ct = self._ctypes.get(name)
        if ct is not None:
            return ct
        rec = self.types.get(name)
        if rec is None:
            return None
        fields: tuple[Field, ...] = ()
        bits: list[tuple[str, int, int]] = []
        if "f" in rec:
            fl = []
            for f in rec["f"]:
                fct = self.ctype(f[1])
                assert fct is not None, f"catalogue type {f[1]!r} missing"
                fl.append(Field(f[0], fct, f[2]))
                if len(f) > 3:
                    bits.append((f[0], f[3], f[4]))
            fields = tuple(fl)
        element = self.ctype(rec["el"]) if "el" in rec else None
        ct = CType(
            name=name,
            kind=rec["k"],
            size=rec["s"],
            align=rec["a"],
            fields=fields,
            enum=rec.get("e"),
            pointee=rec.get("p"),
            element=element,
            length=rec.get("n"),
            typedef_of=rec.get("td") or rec.get("uq"),  # "const T" names T
            opaque=bool(rec.get("opaque")),
            bits=tuple(bits),
        )
        self._ctypes[name] = ct
        return ct

    def signature(self, name: str, base: str, called_as: str, rec: dict, legacy: bool = False) -> Signature:
        params = []
        for i, p in enumerate(rec["params"]):
            ct = self.ctype(p[2] if len(p) > 2 else p[1])
            assert ct is not None, f"catalogue type {p[1]!r} missing"
            params.append(Param(p[0], p[1], ct, i))
        ret = self.ctype(rec["ret"])
        assert ret is not None
        return Signature(
            name=name,
            base=base,
            called_as=called_as,
            library=rec["lib"],
            cuda_major=self.major,
            return_type=rec["ret"],
            return_ctype=ret,
            params=tuple(params),
            header=rec["h"],
            variadic=bool(rec.get("variadic")),
            deprecated=bool(rec.get("deprecated")),
            legacy=legacy,
        )

    def lookup(self, name: str, prefer_legacy: bool) -> Signature | None:
        key = (name, prefer_legacy)
        if key not in self._sigs:
            self._sigs[key] = self._lookup(name, prefer_legacy)
        return self._sigs[key]

    def _lookup(self, name: str, prefer_legacy: bool) -> Signature | None:
        if prefer_legacy:
            rec = self.legacy.get(name)
            if rec is not None:
                return self.signature(name, name, name, rec, legacy=True)
        rec = self.functions.get(name)
        if rec is not None:
            return self.signature(name, name, name, rec)
        base = self.variants.get(name)
        if base is not None:
            if base in self.functions:
                return self.signature(name, base, name, self.functions[base])
            if base in self.legacy:
                return self.signature(name, base, name, self.legacy[base], legacy=True)
        target = self.aliases.get(name)
        if target is not None and target in self.functions:
            return self.signature(name, target, target, self.functions[target])
        rec = self.legacy.get(name)
        if rec is not None:
            return self.signature(name, name, name, rec, legacy=True)
        return None

    def all_names(self) -> set[str]:
        return set(self.functions) | set(self.variants) | set(self.aliases) | set(self.legacy)

    def library_of(self, name: str) -> str | None:
        rec = self.functions.get(name) or self.legacy.get(name)
        if rec is None and name in self.variants:
            b = self.variants[name]
            rec = self.functions.get(b) or self.legacy.get(b)
        if rec is None and name in self.aliases:
            rec = self.functions.get(self.aliases[name])
        return rec["lib"] if rec else None


class Catalogue:
    """The loaded catalogue. Get it with :func:`load_catalogue`; all methods are read-only.

    Parts are read lazily per CUDA major: a lookup that the newest major answers never reads the
    older one's files."""

    def __init__(self, parts: Iterable[dict] = (), *, files: dict[int, list[Path]] | None = None) -> None:
        self._majors: dict[int, _Major] = {}
        self._pending: dict[int, list[Path]] = {k: list(v) for k, v in (files or {}).items()}
        self._sources: list[Source] = []
        self._lock = threading.Lock()
        for part in parts:
            self._add(part)

    def _add(self, part: dict) -> None:
        if part.get("format") != FORMAT:
            raise CatalogueError(
                f"catalogue part {part.get('part')}-{part.get('cuda_major')} has format "
                f"{part.get('format')}, expected {FORMAT}",
                "regenerate it with `make catalogue`",
            )
        major = part["cuda_major"]
        self._majors.setdefault(major, _Major(major)).add(part)
        src = part.get("sources", {})
        hdrs = src.get("headers", {})
        self._sources.append(
            Source(
                part=part["part"],
                cuda_major=major,
                wheels=tuple((w["name"], w["version"]) for w in src.get("wheels", ())),
                headers={h: r["sha256"] for h, r in hdrs.items()},
                header_wheels={h: r["wheel"] for h, r in hdrs.items() if "wheel" in r},
            )
        )

    def _major(self, major: int) -> _Major | None:
        if major in self._pending:
            with self._lock:  # a second thread waits for the first to finish reading
                for path in self._pending.get(major, ()):
                    with path.open("rb") as fh:
                        part = json.load(fh)
                    if part.get("cuda_major") != major:
                        raise CatalogueError(f"{path.name} holds CUDA {part.get('cuda_major')}, not {major}")
                    self._add(part)
                self._pending.pop(major, None)
        return self._majors.get(major)

    # -- what is there
    @property
    def cuda_majors(self) -> tuple[int, ...]:
        """The CUDA major versions the catalogue covers, newest first."""
        return tuple(sorted(set(self._majors) | set(self._pending), reverse=True))

    def major_of(self, version: str | None, soname: str | None = None) -> int | None:
        """The CUDA major whose signatures fit a library file: the first number of its version, else the
        one in its soname (``libcudart.so.12``), if the catalogue covers it; else None (use any)."""
        for text, rx in ((version or "", r"(\d+)"), (soname or "", r".*\.so\.(\d+)")):
            m = re.match(rx, text)
            if m and int(m.group(1)) in self.cuda_majors:
                return int(m.group(1))
        return None

    @property
    def sources(self) -> tuple[Source, ...]:
        """Per part and CUDA major: the wheels and the headers (sha256) it was generated from."""
        for m in self.cuda_majors:
            self._major(m)
        return tuple(sorted(self._sources, key=lambda s: (s.cuda_major, s.part)))

    def _order(self, cuda_major: int | None) -> Iterator[_Major]:
        """The majors to search, newest first, loading each only when the search reaches it."""
        if cuda_major is not None and cuda_major not in self.cuda_majors:
            raise CatalogueError(
                f"the catalogue has no CUDA {cuda_major}",
                f"it covers CUDA {', '.join(map(str, self.cuda_majors))}",
            )
        for m in [cuda_major] if cuda_major is not None else self.cuda_majors:
            loaded = self._major(m)
            if loaded is not None:
                yield loaded

    # -- functions
    def lookup(self, name: str, cuda_major: int | None = None) -> Signature | None:
        """The signature a call to ``name`` (as a program writes it) has, or None. With
        ``cuda_major=None`` the newest CUDA major that knows ``name``."""
        for m in self._order(cuda_major):
            sig = m.lookup(name, prefer_legacy=False)
            if sig is not None:
                return sig
        return None

    def lookup_symbol(self, symbol: str, cuda_major: int | None = None) -> Signature | None:
        """The signature of the exported symbol ``symbol`` exactly: ``cuMemAlloc`` is the legacy entry
        point (``unsigned int bytesize``), not the ``cuMemAlloc_v2`` a program calls today. None for a
        name that is only an alias."""
        for m in self._order(cuda_major):
            if symbol in m.legacy or symbol in m.functions or symbol in m.variants:
                return m.lookup(symbol, prefer_legacy=True)
        return None

    def require(self, name: str, cuda_major: int | None = None) -> Signature:
        """Like :meth:`lookup` but raises :class:`ingero.errors.SymbolNotFound` with a did-you-mean."""
        sig = self.lookup(name, cuda_major)
        if sig is None:
            names = set().union(*(m.all_names() for m in self._order(cuda_major)))
            raise SymbolNotFound(
                f"{name!r} is not in the signature catalogue"
                + (f" for CUDA {cuda_major}" if cuda_major is not None else ""),
                suggestion(name, sorted(names)) or "declare its arguments in the probe: sym(u64 a, ptr b)",
            )
        return sig

    def called_names(self, name: str, cuda_major: int | None = None) -> list[str]:
        """The exported symbols a call to ``name`` may land on: the alias's target (or ``name``) and its
        per-thread variants. ``cuMemAlloc`` -> ``[cuMemAlloc_v2]``; ``cudaMemcpy`` ->
        ``[cudaMemcpy, cudaMemcpy_ptds]``. Empty if the catalogue does not know ``name``."""
        for m in self._order(cuda_major):
            target = m.aliases.get(name, name)
            if target in m.functions:
                return [target, *m.variants_of.get(target, [])]
            if target in m.variants or target in m.legacy:
                return [target]
        return []

    def names(self, library: str | None = None, cuda_major: int | None = None) -> list[str]:
        """Sorted exported symbols with a current signature (functions and their per-thread variants),
        of one library family (``cudart``, ``cuda``, ``cublas``, ``cublasLt``, ``nccl``, ``cudnn``)."""
        out: set[str] = set()
        for m in self._order(cuda_major):
            for n, rec in m.functions.items():
                if library is None or rec["lib"] == library:
                    out.add(n)
            for v, b in m.variants.items():
                rec = m.functions.get(b)
                if rec is not None and (library is None or rec["lib"] == library):
                    out.add(v)
        return sorted(out)

    def aliases(self, cuda_major: int | None = None) -> dict[str, str]:
        """Macro name -> the function it stands for (``cuMemAlloc`` -> ``cuMemAlloc_v2``)."""
        out: dict[str, str] = {}
        for m in reversed(list(self._order(cuda_major))):
            out.update(m.aliases)
        return out

    def legacy_names(self, cuda_major: int | None = None) -> list[str]:
        out: set[str] = set()
        for m in self._order(cuda_major):
            out |= set(m.legacy)
        return sorted(out)

    def libraries(self, cuda_major: int | None = None) -> list[str]:
        out: set[str] = set()
        for m in self._order(cuda_major):
            out |= {rec["lib"] for rec in m.functions.values()}
        return sorted(out)

    # -- types and values
    def type_info(self, name: str, cuda_major: int | None = None) -> CType:
        """A type by its spelling (``cudaStream_t``, ``dim3``, ``const void *``, ``enum cudaMemcpyKind``).
        Raises :class:`CatalogueError` if no signature of that CUDA major uses it."""
        key = " ".join(name.split())
        for m in self._order(cuda_major):
            ct = m.ctype(key)
            if ct is None:  # spelled with other spacing: "const char*", "void * *"
                alt = m.unspaced_types.get(_unspaced(key))
                ct = m.ctype(alt) if alt else None
            if ct is not None:
                return ct
        known = set().union(*(m.types for m in self._order(cuda_major)))
        raise CatalogueError(f"no type {name!r} in the catalogue", suggestion(name, sorted(known)))

    def enum(self, name: str, cuda_major: int | None = None) -> dict[str, int]:
        """An enum's values by name; the enum may be named by its tag or a typedef (``cudaError`` or
        ``cudaError_t``; ``enum cudaMemcpyKind`` works too)."""
        key = name[5:].strip() if name.startswith("enum ") else name
        for m in self._order(cuda_major):
            canon = m.enum_index.get(key)
            if canon is not None:
                return dict(m.enums[canon]["values"])
        known = set().union(*(m.enum_index for m in self._order(cuda_major)))
        raise CatalogueError(f"no enum {name!r} in the catalogue", suggestion(key, sorted(known)))

    def enum_name(self, name: str, cuda_major: int | None = None) -> str:
        """The canonical (tag) name of an enum known by ``name``: ``CUresult`` -> ``cudaError_enum``."""
        key = name[5:].strip() if name.startswith("enum ") else name
        for m in self._order(cuda_major):
            canon = m.enum_index.get(key)
            if canon is not None:
                return canon
        raise CatalogueError(f"no enum {name!r} in the catalogue")

    def enum_value(self, name: str, cuda_major: int | None = None) -> tuple[str, int]:
        """``cudaMemcpyDeviceToHost`` -> ``("cudaMemcpyKind", 2)``. Raises :class:`CatalogueError` (a
        :class:`ingero.errors.NotFound`) with a did-you-mean."""
        for m in self._order(cuda_major):
            hit = m.enumerators.get(name)
            if hit is not None:
                return hit
        known = set().union(*(m.enumerators for m in self._order(cuda_major)))
        raise CatalogueError(f"no enum value named {name!r}", suggestion(name, sorted(known)))

    def constant(self, name: str, cuda_major: int | None = None) -> int:
        """An integer macro of the headers (``cudaStreamNonBlocking`` -> 1, ``CUDART_VERSION``) or an
        enum value. Raises :class:`CatalogueError` with a did-you-mean."""
        for m in self._order(cuda_major):
            if name in m.constants:
                return m.constants[name]
            hit = m.enumerators.get(name)
            if hit is not None:
                return hit[1]
        known = set().union(*(set(m.constants) | set(m.enumerators) for m in self._order(cuda_major)))
        raise CatalogueError(f"no constant named {name!r}", suggestion(name, sorted(known)))


_CACHE: dict[Path, Catalogue] = {}
_PART_FILE = re.compile(r"^(?P<part>[a-z]+)-(?P<major>\d+)\.json$")


def load_catalogue(data_dir: Path | None = None) -> Catalogue:
    """The catalogue from ``data_dir`` (default: the packaged ``data/``), once per process. Files are
    named ``PART-MAJOR.json`` and read when a lookup first needs that CUDA major."""
    d = Path(data_dir) if data_dir is not None else DATA_DIR
    cat = _CACHE.get(d)
    if cat is None:
        files: dict[int, list[Path]] = {}
        for p in sorted(d.glob("*.json")):
            m = _PART_FILE.match(p.name)
            if m is None:
                raise CatalogueError(f"unexpected file {p} in the catalogue data", "name it PART-MAJOR.json")
            files.setdefault(int(m.group("major")), []).append(p)
        if not files:
            raise CatalogueError(f"no catalogue data in {d}", "run `make catalogue`")
        cat = Catalogue(files=files)
        _CACHE[d] = cat
    return cat
