"""Parse C headers (preprocessed by ``gcc -E``) into the catalogue's records.

Used by ``scripts/gen_catalogue.py`` and by the tests that check the committed catalogue against the
installed headers; never at run time (the loader only reads JSON).

The route: ``gcc -E -dD`` with stand-in system headers (``-nostdinc`` plus the small ``SHIMS`` below, so
the result does not depend on the host's libc headers) and a stand-in ``crt/host_defines.h`` (the runtime
wheels do not ship it) that turns the CUDA decorations (``__host__``, ``CUDARTAPI``, ...) into nothing and
``__align__(n)`` into ``__attribute__((aligned(n)))``. The preprocessed text is tokenised and every
top-level declaration parsed by a small C declaration parser (typedefs, struct/union/enum definitions,
function prototypes; function bodies are skipped). Struct layouts follow the x86-64 System V rules
(gcc's), enum values are evaluated as C constant expressions, and object-like macros are expanded by gcc
itself (``"NAME" NAME`` after the includes) to find aliases (``cuMemAlloc`` -> ``cuMemAlloc_v2``) and
integer constants.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ingero.errors import IngeroError


class HeaderParseError(IngeroError):
    """A header could not be preprocessed or a declaration in it could not be parsed."""


# --------------------------------------------------------------------------------------------------
# stand-in headers

_HOST_DEFINES = """
#ifndef __INGERO_HOST_DEFINES_H__
#define __INGERO_HOST_DEFINES_H__
#define __host__
#define __device__
#define __global__
#define __shared__
#define __constant__
#define __managed__
#define __grid_constant__
#define __nv_pure__
#define __device_builtin__
#define __device_builtin_texture_type__
#define __device_builtin_surface_type__
#define __cudart_builtin__
#define __tile__
#define __tile_global__
#define __tile_builtin__
#define CUDARTAPI
#define CUDARTAPI_CDECL
#define __align__(n) __attribute__((aligned(n)))
#define __builtin_align__(a) __align__(a)
#define __location__(a)
#define __annotate__(a)
#define __forceinline__ __inline
#define __inline_hint__
#define __no_return__
#define __noinline__
#define __thread__
#define __import__
#define __export__
#define __cdecl
#define __specialization_static
#define __launch_bounds__(...)
#define __cluster_dims__(...)
#define __block_size__(...)
#define __maxnreg__(a)
#define __local_maxnreg__(a)
#define __CUDA_ARCH_HAS_FEATURE__(_FEAT) 0
#define __CUDA_HAS_ARCH_FAMILY_SPECIFIC(N) 0
#define __CUDA_HAS_ARCH_SPECIFIC(N) 0
#endif
"""

_STDINT = """
#ifndef __INGERO_STDINT_H
#define __INGERO_STDINT_H
typedef signed char int8_t;
typedef short int int16_t;
typedef int int32_t;
typedef long int int64_t;
typedef unsigned char uint8_t;
typedef unsigned short int uint16_t;
typedef unsigned int uint32_t;
typedef unsigned long int uint64_t;
typedef signed char int_least8_t;
typedef short int int_least16_t;
typedef int int_least32_t;
typedef long int int_least64_t;
typedef unsigned char uint_least8_t;
typedef unsigned short int uint_least16_t;
typedef unsigned int uint_least32_t;
typedef unsigned long int uint_least64_t;
typedef signed char int_fast8_t;
typedef long int int_fast16_t;
typedef long int int_fast32_t;
typedef long int int_fast64_t;
typedef unsigned char uint_fast8_t;
typedef unsigned long int uint_fast16_t;
typedef unsigned long int uint_fast32_t;
typedef unsigned long int uint_fast64_t;
typedef long int intptr_t;
typedef unsigned long int uintptr_t;
typedef long int intmax_t;
typedef unsigned long int uintmax_t;
#define INT8_MIN (-128)
#define INT16_MIN (-32767-1)
#define INT32_MIN (-2147483647-1)
#define INT64_MIN (-9223372036854775807L-1)
#define INT8_MAX (127)
#define INT16_MAX (32767)
#define INT32_MAX (2147483647)
#define INT64_MAX (9223372036854775807L)
#define UINT8_MAX (255)
#define UINT16_MAX (65535)
#define UINT32_MAX (4294967295U)
#define UINT64_MAX (18446744073709551615UL)
#define SIZE_MAX (18446744073709551615UL)
#define INTPTR_MAX (9223372036854775807L)
#define UINTPTR_MAX (18446744073709551615UL)
#define INT8_C(c) c
#define INT16_C(c) c
#define INT32_C(c) c
#define INT64_C(c) c ## L
#define UINT8_C(c) c
#define UINT16_C(c) c
#define UINT32_C(c) c ## U
#define UINT64_C(c) c ## UL
#endif
"""

_STDDEF = """
#ifndef __INGERO_STDDEF_H
#define __INGERO_STDDEF_H
typedef unsigned long size_t;
typedef long ptrdiff_t;
typedef int wchar_t;
typedef struct { long long __max_align_ll __attribute__((__aligned__(8)));
  long double __max_align_ld __attribute__((__aligned__(16))); } max_align_t;
#define NULL ((void *)0)
#define offsetof(TYPE, MEMBER) __builtin_offsetof (TYPE, MEMBER)
#endif
"""

_LIMITS = """
#ifndef __INGERO_LIMITS_H
#define __INGERO_LIMITS_H
#define CHAR_BIT 8
#define SCHAR_MIN (-128)
#define SCHAR_MAX 127
#define UCHAR_MAX 255
#define CHAR_MIN SCHAR_MIN
#define CHAR_MAX SCHAR_MAX
#define SHRT_MIN (-32768)
#define SHRT_MAX 32767
#define USHRT_MAX 65535
#define INT_MIN (-INT_MAX - 1)
#define INT_MAX 2147483647
#define UINT_MAX 4294967295U
#define LONG_MAX 9223372036854775807L
#define LONG_MIN (-LONG_MAX - 1L)
#define ULONG_MAX 18446744073709551615UL
#define LLONG_MAX 9223372036854775807LL
#define LLONG_MIN (-LLONG_MAX - 1LL)
#define ULLONG_MAX 18446744073709551615ULL
#endif
"""

SHIMS: dict[str, str] = {
    "crt/host_defines.h": _HOST_DEFINES,
    "crt/host_config.h": "",
    "stdint.h": _STDINT,
    "inttypes.h": '#include "stdint.h"\n',
    "stddef.h": _STDDEF,
    "stdlib.h": '#include "stddef.h"\n',
    "string.h": '#include "stddef.h"\n',
    "stdio.h": '#include "stddef.h"\ntypedef struct _IO_FILE FILE;\n',
    "limits.h": _LIMITS,
    "math.h": "",
    "float.h": "",
    "stdarg.h": "typedef __builtin_va_list va_list;\n",
    "stdbool.h": "#define bool _Bool\n#define true 1\n#define false 0\n",
    "assert.h": "",
    "nv/target": "",  # CCCL (C++ only; cuda_fp16.h includes it unconditionally)
}


# --------------------------------------------------------------------------------------------------
# the type model


BUILTINS: dict[str, tuple[str, int, int]] = {
    # canonical name: (kind, size, align) on x86-64 System V (LP64)
    "void": ("void", 0, 1),
    "_Bool": ("bool", 1, 1),
    "char": ("int", 1, 1),
    "signed char": ("int", 1, 1),
    "unsigned char": ("uint", 1, 1),
    "short": ("int", 2, 2),
    "unsigned short": ("uint", 2, 2),
    "int": ("int", 4, 4),
    "unsigned int": ("uint", 4, 4),
    "long": ("int", 8, 8),
    "unsigned long": ("uint", 8, 8),
    "long long": ("int", 8, 8),
    "unsigned long long": ("uint", 8, 8),
    "__int128": ("int", 16, 16),
    "unsigned __int128": ("uint", 16, 16),
    "float": ("float", 4, 4),
    "double": ("double", 8, 8),
    "long double": ("long_double", 16, 16),
    "_Float16": ("float", 2, 2),
    "__bf16": ("float", 2, 2),
    "_Float128": ("long_double", 16, 16),
    "__builtin_va_list": ("pointer", 24, 8),
}

_TYPE_WORDS = frozenset(
    "void char short int long float double signed unsigned _Bool __int128 _Float16 __bf16 _Float128 "
    "_Complex __signed__ __signed __unsigned__".split()
)
_QUALIFIERS = {"const": "const", "volatile": "volatile", "__const": "const", "__volatile__": "volatile"}
_DROPPED_QUALIFIERS = frozenset({"restrict", "__restrict", "__restrict__", "_Atomic"})
_STORAGE = frozenset({"typedef", "extern", "static", "auto", "register", "_Thread_local", "__thread"})
_FUNC_SPECS = frozenset({"inline", "__inline", "__inline__", "_Noreturn", "__extension__"})
_ATTR_WORDS = frozenset(
    {"__attribute__", "__attribute", "__declspec", "_Alignas", "alignas", "__asm__", "__asm", "asm"}
)


def canonical_builtin(words: Sequence[str]) -> str:
    """``long unsigned int`` -> ``unsigned long``; ``signed`` -> ``int``."""
    ws = [{"__signed__": "signed", "__signed": "signed", "__unsigned__": "unsigned"}.get(w, w) for w in words]
    unsigned = "unsigned" in ws
    signed = "signed" in ws
    longs = ws.count("long")
    core = [w for w in ws if w not in ("unsigned", "signed", "long", "int")]
    if "_Complex" in core:
        raise HeaderParseError(f"complex types are not supported: {' '.join(words)}")
    if core:
        if len(core) != 1:
            raise HeaderParseError(f"bad type specifier: {' '.join(words)}")
        base = core[0]
        if base == "char":
            return "unsigned char" if unsigned else ("signed char" if signed else "char")
        if base == "short":
            return "unsigned short" if unsigned else "short"
        if base == "double" and longs:
            return "long double"
        if base == "__int128":
            return "unsigned __int128" if unsigned else "__int128"
        return base
    if longs == 0:
        return "unsigned int" if unsigned else "int"
    name = "long" if longs == 1 else "long long"
    return f"unsigned {name}" if unsigned else name


class CTypeNode:
    """Base of the parser's type nodes. ``quals`` are the qualifiers on this level (const, volatile)."""

    quals: tuple[str, ...] = ()


@dataclass(eq=False)
class TBuiltin(CTypeNode):
    canon: str
    spelled: str
    quals: tuple[str, ...] = ()


@dataclass(eq=False)
class TNamed(CTypeNode):
    """A use of a typedef name."""

    name: str
    typedef: Typedef
    quals: tuple[str, ...] = ()


@dataclass(eq=False)
class TAgg(CTypeNode):
    agg: Aggregate
    quals: tuple[str, ...] = ()


@dataclass(eq=False)
class TEnum(CTypeNode):
    enum: Enum
    quals: tuple[str, ...] = ()


@dataclass(eq=False)
class TPtr(CTypeNode):
    to: CTypeNode
    quals: tuple[str, ...] = ()


@dataclass(eq=False)
class TArr(CTypeNode):
    of: CTypeNode
    n: int | None
    quals: tuple[str, ...] = ()


@dataclass(eq=False)
class TFunc(CTypeNode):
    ret: CTypeNode
    params: list[tuple[str | None, CTypeNode]]
    variadic: bool
    quals: tuple[str, ...] = ()


@dataclass(eq=False)
class Typedef:
    name: str
    target: CTypeNode
    align: int = 0  # aligned(N) on the typedef itself
    header: str | None = None


@dataclass(eq=False)
class Member:
    name: str | None  # None: an anonymous struct/union member (C11) or an unnamed bit-field
    type: CTypeNode
    bits: int | None = None
    align: int = 0  # _Alignas / aligned(N) on the member
    offset: int = 0
    bit_offset: int | None = None  # for bit-fields: bit position within the struct


@dataclass(eq=False)
class Aggregate:
    kind: str  # "struct" | "union"
    tag: str | None
    header: str | None
    members: list[Member] | None = None  # None while incomplete
    align_attr: int = 0
    packed: bool = False
    name: str | None = None  # set for anonymous ones (typedef name or synthesised)
    _layout: tuple[int, int] | None = None

    def spelled(self) -> str:
        if self.tag:
            return f"{self.kind} {self.tag}"
        return self.name or f"{self.kind} <anonymous>"


@dataclass(eq=False)
class Enum:
    tag: str | None
    header: str | None
    values: dict[str, int] = field(default_factory=dict)
    complete: bool = False
    name: str | None = None
    typedefs: list[str] = field(default_factory=list)

    def spelled(self) -> str:
        if self.tag:
            return f"enum {self.tag}"
        return self.name or "enum <anonymous>"

    @property
    def canonical(self) -> str:
        return self.tag or self.name or "<anonymous>"

    @property
    def size(self) -> int:
        if not self.values:
            return 4
        lo, hi = min(self.values.values()), max(self.values.values())
        if lo >= -(2**31) and hi < 2**31 or lo >= 0 and hi < 2**32:
            return 4
        return 8


@dataclass(eq=False)
class Function:
    name: str
    type: TFunc
    header: str | None
    deprecated: bool = False
    storage: tuple[str, ...] = ()


@dataclass(eq=False)
class Macro:
    name: str
    params: str | None  # None for object-like
    body: str
    header: str | None


# --------------------------------------------------------------------------------------------------
# rendering


def render(t: CTypeNode, inner: str = "") -> str:
    """C declarator syntax: ``render(ptr-to-const-void, "src")`` -> ``const void *src``."""
    while True:
        if isinstance(t, TPtr):
            q = " ".join(t.quals)
            star = "*" + (q + (" " if inner else "") if q else "")
            inner = star + inner
            if isinstance(t.to, (TArr, TFunc)):
                inner = f"({inner})"
            t = t.to
        elif isinstance(t, TArr):
            inner = f"{inner}[{'' if t.n is None else t.n}]"
            t = t.of
        elif isinstance(t, TFunc):
            ps = ", ".join(render(pt, pn or "") for pn, pt in t.params)
            if t.variadic:
                ps = f"{ps}, ..." if ps else "..."
            inner = f"{inner}({ps or 'void'})"
            t = t.ret
        else:
            base = _base_spelling(t)
            if t.quals:
                base = " ".join(t.quals) + " " + base
            if not inner:
                return base
            if inner.startswith("["):
                return base + inner
            return f"{base} {inner}"


def _base_spelling(t: CTypeNode) -> str:
    if isinstance(t, TBuiltin):
        return t.spelled
    if isinstance(t, TNamed):
        return t.name
    if isinstance(t, TAgg):
        return t.agg.spelled()
    if isinstance(t, TEnum):
        return t.enum.spelled()
    raise TypeError(t)


def strip_typedefs(t: CTypeNode) -> CTypeNode:
    while isinstance(t, TNamed):
        t = t.typedef.target
    return t


def decay(t: CTypeNode) -> CTypeNode:
    """A parameter's type as passed: arrays and functions become pointers."""
    s = strip_typedefs(t)
    if isinstance(s, TArr):
        return TPtr(s.of, t.quals)
    if isinstance(s, TFunc):
        return TPtr(t)
    return t


# --------------------------------------------------------------------------------------------------
# layout (x86-64 System V, as gcc does it)


def layout(t: CTypeNode) -> tuple[int | None, int | None]:
    """(size, align) in bytes; (None, None) for incomplete and function types."""
    if isinstance(t, TBuiltin):
        _, size, align = BUILTINS[t.canon]
        return size, align
    if isinstance(t, TNamed):
        size, align = layout(t.typedef.target)
        if t.typedef.align and align is not None:
            align = max(align, t.typedef.align)
        return size, align
    if isinstance(t, TPtr):
        return 8, 8
    if isinstance(t, TEnum):
        s = t.enum.size
        return s, s
    if isinstance(t, TArr):
        size, align = layout(t.of)
        if size is None or t.n is None:
            return None, align
        return size * t.n, align
    if isinstance(t, TFunc):
        return None, None
    if isinstance(t, TAgg):
        return aggregate_layout(t.agg)
    raise TypeError(t)


def _roundup(x: int, a: int) -> int:
    return (x + a - 1) // a * a


def aggregate_layout(agg: Aggregate) -> tuple[int | None, int | None]:
    if agg.members is None:
        return None, None
    if agg._layout is not None:
        return agg._layout
    bitpos = 0  # next free bit
    size_bits = 0
    max_align = 1
    for m in agg.members:
        msize, malign = layout(m.type)
        if msize is None and not isinstance(strip_typedefs(m.type), TArr):
            raise HeaderParseError(f"member {m.name} of {agg.spelled()} has an incomplete type")
        assert malign is not None
        if agg.kind == "union":
            bitpos = 0
        if m.bits is not None:
            unit = malign * 8
            if m.bits == 0:
                bitpos = _roundup(bitpos, unit)
                m.offset, m.bit_offset = bitpos // 8, bitpos
                continue
            if not agg.packed and bitpos // unit != (bitpos + m.bits - 1) // unit:
                bitpos = _roundup(bitpos, unit)
            m.bit_offset = bitpos
            m.offset = (bitpos // unit) * malign  # start of the storage unit holding the field
            if m.name is not None and not agg.packed:
                max_align = max(max_align, malign)
            bitpos += m.bits
        else:
            align = malign if not agg.packed else 1
            if m.align:
                align = max(align, m.align)
            off = _roundup(_roundup(bitpos, 8) // 8, align)
            m.offset = off
            bitpos = (off + (msize or 0)) * 8
            max_align = max(max_align, align)
        size_bits = max(size_bits, bitpos)
    if agg.align_attr:
        max_align = max(max_align, agg.align_attr)
    size = _roundup(_roundup(size_bits, 8) // 8, max_align)
    agg._layout = (size, max_align)
    return agg._layout


def kind_of(t: CTypeNode) -> str:
    s = strip_typedefs(t)
    if isinstance(s, TBuiltin):
        return BUILTINS[s.canon][0]
    if isinstance(s, TPtr):
        p = strip_typedefs(s.to)
        if isinstance(p, TBuiltin) and p.canon in ("char", "signed char", "unsigned char"):
            return "char_pointer"
        return "pointer"
    if isinstance(s, TEnum):
        return "enum"
    if isinstance(s, TArr):
        return "array"
    if isinstance(s, TFunc):
        return "function"
    if isinstance(s, TAgg):
        return s.agg.kind
    raise TypeError(t)


# --------------------------------------------------------------------------------------------------
# tokens


_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<id>[A-Za-z_$][\w$]*)
  | (?P<num>(?:0[xX][0-9a-fA-F]+|[0-9]+\.?[0-9]*(?:[eE][+-]?[0-9]+)?|\.[0-9]+(?:[eE][+-]?[0-9]+)?)[uUlLfF]*)
  | (?P<str>(?:L|u8|u|U)?"(?:\\.|[^"\\])*")
  | (?P<chr>(?:L|u|U)?'(?:\\.|[^'\\])*')
  | (?P<op>\.\.\.|<<=|>>=|->|\+\+|--|<<|>>|<=|>=|==|!=|&&|\|\||\#\#|[-+*/%&|^!~<>=?:;,.(){}\[\]\#@\\])
    """,
    re.X,
)


def tokenize(text: str) -> list[str]:
    out: list[str] = []
    pos = 0
    n = len(text)
    for m in _TOKEN_RE.finditer(text):
        if m.start() != pos:
            raise HeaderParseError(f"cannot tokenise {text[pos : pos + 40]!r}")
        pos = m.end()
        if m.lastgroup != "ws":
            out.append(m.group())
    if pos != n:
        raise HeaderParseError(f"cannot tokenise {text[pos : pos + 40]!r}")
    return out


@dataclass(eq=False)
class Attr:
    """``__attribute__((...))``, ``_Alignas(...)``, ``__asm__(...)`` folded into one token."""

    word: str
    toks: list[str]


Tok = str | Attr


def fold_attributes(toks: list[str], files: list[int]) -> tuple[list[Tok], list[int]]:
    out: list[Tok] = []
    ofiles: list[int] = []
    i, n = 0, len(toks)
    while i < n:
        t = toks[i]
        if t == "__extension__":
            i += 1
            continue
        if t in _ATTR_WORDS and i + 1 < n and toks[i + 1] == "(":
            depth, j = 0, i + 1
            while j < n:
                if toks[j] == "(":
                    depth += 1
                elif toks[j] == ")":
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            out.append(Attr(t, toks[i + 2 : j]))
            ofiles.append(files[i])
            i = j + 1
            continue
        out.append(t)
        ofiles.append(files[i])
        i += 1
    return out, ofiles


def attr_alignment(attrs: Iterable[Attr], evaluate: Callable[[list[Tok]], int]) -> tuple[int, bool, bool]:
    """(aligned value or 0, packed, deprecated) from a run of attribute tokens."""
    align, packed, deprecated = 0, False, False
    for a in attrs:
        if a.word in ("_Alignas", "alignas"):
            align = max(align, evaluate(list(a.toks)))
            continue
        if a.word not in ("__attribute__", "__attribute"):
            continue
        toks = a.toks
        # __attribute__((x, y(z))) -> toks = ["(", "x", ",", "y", "(", "z", ")", ")"]
        i = 0
        while i < len(toks):
            w = toks[i]
            if w in ("aligned", "__aligned__"):
                if i + 1 < len(toks) and toks[i + 1] == "(":
                    depth, j = 0, i + 1
                    while True:
                        if toks[j] == "(":
                            depth += 1
                        elif toks[j] == ")":
                            depth -= 1
                            if depth == 0:
                                break
                        j += 1
                    align = max(align, evaluate(list(toks[i + 2 : j])))
                    i = j
                else:
                    align = max(align, 16)
            elif w in ("packed", "__packed__"):
                packed = True
            elif w in ("deprecated", "__deprecated__"):
                deprecated = True
            i += 1
    return align, packed, deprecated


# --------------------------------------------------------------------------------------------------
# the parser


def _is_ident(t: object) -> bool:
    return isinstance(t, str) and bool(t) and (t[0].isalpha() or t[0] in "_$")


class _Fail(Exception):
    pass


@dataclass
class Specs:
    type: CTypeNode
    storage: tuple[str, ...]
    attrs: list[Attr]


class Program:
    """Everything declared by one preprocessed translation unit."""

    def __init__(self) -> None:
        self.typedefs: dict[str, Typedef] = {}
        self.tags: dict[str, Aggregate | Enum] = {}
        self.enumerators: dict[str, tuple[int, Enum]] = {}
        self.functions: dict[str, Function] = {}
        self.aggregates: list[Aggregate] = []
        self.enums: list[Enum] = []
        self.macros: dict[str, Macro] = {}
        self.headers: list[str | None] = []  # file index -> header name (None: shim/builtin)
        self.errors: list[str] = []


class DeclParser:
    def __init__(self, prog: Program, toks: list[Tok], header: str | None) -> None:
        self.p = prog
        self.toks = toks
        self.i = 0
        self.header = header

    # -- token helpers
    def peek(self, k: int = 0) -> Tok | None:
        j = self.i + k
        return self.toks[j] if j < len(self.toks) else None

    def next(self) -> Tok:
        if self.i >= len(self.toks):
            raise _Fail("unexpected end of declaration")
        t = self.toks[self.i]
        self.i += 1
        return t

    def expect(self, s: str) -> None:
        t = self.next()
        if t != s:
            raise _Fail(f"expected {s!r}, got {t!r}")

    def attrs(self) -> list[Attr]:
        out = []
        while isinstance(self.peek(), Attr):
            out.append(self.next())  # type: ignore[arg-type]
        return out

    def is_typename_start(self, t: Tok | None) -> bool:
        if not isinstance(t, str):
            return isinstance(t, Attr)
        return (
            t in _TYPE_WORDS
            or t in _QUALIFIERS
            or t in _DROPPED_QUALIFIERS
            or t in ("struct", "union", "enum")
            or t in self.p.typedefs
        )

    # -- declarations
    def statement(self) -> None:
        specs = self.decl_specs()
        if self.peek() is None:
            return  # "struct X {...};" or "enum {...};"
        while True:
            name, wrap = self.declarator()
            attrs = self.attrs()
            if self.peek() == "=":
                self.skip_initializer()
            t = wrap(specs.type)
            self.declare(name, t, specs, specs.attrs + attrs)
            nxt = self.peek()
            if nxt is None:
                return
            if nxt == ",":
                self.next()
                continue
            raise _Fail(f"unexpected {nxt!r}")

    def skip_initializer(self) -> None:
        depth = 0
        while self.peek() is not None:
            t = self.peek()
            if t in ("(", "{", "["):
                depth += 1
            elif t in (")", "}", "]"):
                depth -= 1
            elif t == "," and depth == 0:
                return
            self.next()

    def declare(self, name: str | None, t: CTypeNode, specs: Specs, attrs: list[Attr]) -> None:
        if name is None:
            raise _Fail("declaration without a name")
        align, _packed, deprecated = attr_alignment(attrs, self.eval_tokens)
        if "typedef" in specs.storage:
            old = self.p.typedefs.get(name)
            td = Typedef(name, t, align, self.header)
            if old is not None and render(old.target) != render(t):
                raise _Fail(f"typedef {name} redefined differently")
            if old is None:
                self.p.typedefs[name] = td
            base = t
            if isinstance(base, TAgg) and base.agg.tag is None and base.agg.name is None:
                base.agg.name = name
            if isinstance(base, TEnum):
                if base.enum.tag is None and base.enum.name is None:
                    base.enum.name = name
                if name not in base.enum.typedefs and name not in (base.enum.tag, base.enum.name):
                    base.enum.typedefs.append(name)
            return
        if isinstance(t, TFunc):
            if "static" in specs.storage:
                return
            fn = Function(name, t, self.header, deprecated, specs.storage)
            old_fn = self.p.functions.get(name)
            if old_fn is not None:
                if render(old_fn.type, name) != render(t, name):
                    # Same function declared twice with different parameter names is fine; types must agree
                    if render(_unnamed(old_fn.type)) != render(_unnamed(t)):
                        raise _Fail(f"function {name} redeclared with a different type")
                old_fn.deprecated = old_fn.deprecated or deprecated
                return
            self.p.functions[name] = fn

    def decl_specs(self, allow_storage: bool = True) -> Specs:
        storage: list[str] = []
        quals: list[str] = []
        words: list[str] = []
        base: CTypeNode | None = None
        attrs: list[Attr] = []
        while True:
            t = self.peek()
            if t is None:
                break
            if isinstance(t, Attr):
                attrs.append(self.next())  # type: ignore[arg-type]
            elif t in _STORAGE:
                storage.append(self.next())  # type: ignore[arg-type]
            elif t in _FUNC_SPECS:
                self.next()
            elif t in _QUALIFIERS:
                q = _QUALIFIERS[self.next()]  # type: ignore[index]
                if q not in quals:
                    quals.append(q)
            elif t in _DROPPED_QUALIFIERS:
                self.next()
            elif t in _TYPE_WORDS:
                if base is not None:
                    raise _Fail(f"type word {t!r} after a type name")
                words.append(self.next())  # type: ignore[arg-type]
            elif t in ("struct", "union"):
                if base is not None or words:
                    raise _Fail("two types in one declaration")
                base = self.aggregate_spec()
            elif t == "enum":
                if base is not None or words:
                    raise _Fail("two types in one declaration")
                base = self.enum_spec()
            elif isinstance(t, str) and base is None and not words and t in self.p.typedefs:
                self.next()
                base = TNamed(t, self.p.typedefs[t])
            else:
                break
        if base is None:
            if not words:
                nt = self.peek()
                raise _Fail(f"unknown type name {nt!r}" if isinstance(nt, str) else "missing type")
            base = TBuiltin(canonical_builtin(words), " ".join(words))
        base.quals = tuple(quals)
        if storage and not allow_storage:
            raise _Fail("storage class in a type name")
        return Specs(base, tuple(storage), attrs)

    def aggregate_spec(self) -> TAgg:
        kind = self.next()
        attrs = self.attrs()
        tag = None
        if isinstance(self.peek(), str) and re.match(r"[A-Za-z_]", self.peek()):  # type: ignore[arg-type]
            tag = self.next()
        attrs += self.attrs()
        if self.peek() != "{":
            if tag is None:
                raise _Fail(f"anonymous {kind} without a body")
            key = f"{kind} {tag}"
            agg = self.p.tags.get(key)
            if agg is None:
                agg = Aggregate(kind, tag, self.header)  # type: ignore[arg-type]
                self.p.tags[key] = agg
                self.p.aggregates.append(agg)
            return TAgg(agg)  # type: ignore[arg-type]
        self.next()  # {
        members: list[Member] = []
        while self.peek() != "}":
            self.member_decl(members)
        self.next()  # }
        attrs += self.attrs()
        align, packed, _ = attr_alignment(attrs, self.eval_tokens)
        if tag is not None:
            key = f"{kind} {tag}"
            agg = self.p.tags.get(key)  # type: ignore[assignment]
            if agg is None:
                agg = Aggregate(kind, tag, self.header)  # type: ignore[arg-type]
                self.p.tags[key] = agg
                self.p.aggregates.append(agg)
            elif agg.members is not None:
                raise _Fail(f"{key} defined twice")
        else:
            agg = Aggregate(kind, None, self.header)  # type: ignore[arg-type]
            self.p.aggregates.append(agg)
        agg.members = members
        agg.align_attr = align
        agg.packed = packed
        agg.header = self.header
        return TAgg(agg)

    def member_decl(self, members: list[Member]) -> None:
        specs = self.decl_specs(allow_storage=False)
        if self.peek() == ";":
            self.next()
            members.append(Member(None, specs.type, None, attr_alignment(specs.attrs, self.eval_tokens)[0]))
            return
        while True:
            if self.peek() == ":":
                name, t = None, specs.type
            else:
                name, wrap = self.declarator()
                t = wrap(specs.type)
            attrs = specs.attrs + self.attrs()
            bits = None
            if self.peek() == ":":
                self.next()
                expr = []
                while self.peek() not in (",", ";") and self.peek() is not None:
                    expr.append(self.next())
                bits = self.eval_tokens(expr)
                attrs += self.attrs()
            align = attr_alignment(attrs, self.eval_tokens)[0]
            members.append(Member(name, t, bits, align))
            nxt = self.next()
            if nxt == ";":
                return
            if nxt != ",":
                raise _Fail(f"unexpected {nxt!r} in a member declaration")

    def enum_spec(self) -> TEnum:
        self.next()  # enum
        self.attrs()
        tag = None
        if isinstance(self.peek(), str) and re.match(r"[A-Za-z_]", self.peek()):  # type: ignore[arg-type]
            tag = self.next()
        self.attrs()
        if self.peek() == ":":
            raise _Fail("enums with a fixed underlying type are not supported")
        if self.peek() != "{":
            if tag is None:
                raise _Fail("anonymous enum without a body")
            key = f"enum {tag}"
            en = self.p.tags.get(key)
            if en is None:
                en = Enum(tag, self.header)
                self.p.tags[key] = en
                self.p.enums.append(en)
            return TEnum(en)  # type: ignore[arg-type]
        self.next()  # {
        if tag is not None:
            key = f"enum {tag}"
            en = self.p.tags.get(key)  # type: ignore[assignment]
            if en is None:
                en = Enum(tag, self.header)
                self.p.tags[key] = en
                self.p.enums.append(en)
            elif en.complete:
                raise _Fail(f"{key} defined twice")
        else:
            en = Enum(None, self.header)
            self.p.enums.append(en)
        value = -1
        while self.peek() != "}":
            name = self.next()
            if not isinstance(name, str) or not re.match(r"[A-Za-z_]", name):
                raise _Fail(f"bad enumerator {name!r}")
            self.attrs()
            if self.peek() == "=":
                self.next()
                expr: list[Tok] = []
                depth = 0
                while True:
                    t = self.peek()
                    if t is None:
                        raise _Fail("unterminated enum")
                    if depth == 0 and t in (",", "}"):
                        break
                    if t == "(":
                        depth += 1
                    elif t == ")":
                        depth -= 1
                    expr.append(self.next())
                value = self.eval_tokens(expr)
            else:
                value += 1
            en.values[name] = value
            self.p.enumerators[name] = (value, en)
            if self.peek() == ",":
                self.next()
        self.next()  # }
        en.complete = True
        en.header = self.header
        return TEnum(en)

    def declarator(self, abstract: bool = False) -> tuple[str | None, Callable[[CTypeNode], CTypeNode]]:
        ptr_quals: list[tuple[str, ...]] = []
        self.attrs()
        while self.peek() == "*":
            self.next()
            qs: list[str] = []
            while True:
                t = self.peek()
                if t in _QUALIFIERS:
                    q = _QUALIFIERS[self.next()]  # type: ignore[index]
                    if q not in qs:
                        qs.append(q)
                elif t in _DROPPED_QUALIFIERS or isinstance(t, Attr):
                    self.next()
                else:
                    break
            ptr_quals.append(tuple(qs))
        name: str | None = None
        inner: Callable[[CTypeNode], CTypeNode] = lambda t: t  # noqa: E731
        t = self.peek()
        if t == "(" and self._nested_declarator_follows():
            self.next()
            name, inner = self.declarator(abstract)
            self.expect(")")
        elif _is_ident(t) and t not in _TYPE_WORDS and t not in _QUALIFIERS:
            name = self.next()  # type: ignore[assignment]
        suffixes: list[tuple[str, object]] = []
        while True:
            self.attrs()
            t = self.peek()
            if t == "[":
                self.next()
                expr: list[Tok] = []
                depth = 0
                while not (self.peek() == "]" and depth == 0):
                    tok = self.next()
                    if tok == "[":
                        depth += 1
                    elif tok == "]":
                        depth -= 1
                    expr.append(tok)
                self.next()
                expr = [x for x in expr if x not in ("static", "const", "restrict", "__restrict")]
                suffixes.append(("arr", self.eval_tokens(expr) if expr else None))
            elif t == "(":
                self.next()
                suffixes.append(("fn", self.param_list()))
            else:
                break

        def wrap(base: CTypeNode) -> CTypeNode:
            ty = base
            for qs in ptr_quals:
                ty = TPtr(ty, qs)
            for kind, val in reversed(suffixes):
                if kind == "arr":
                    ty = TArr(ty, val)  # type: ignore[arg-type]
                else:
                    params, variadic = val  # type: ignore[misc]
                    ty = TFunc(ty, params, variadic)
            return inner(ty)

        return name, wrap

    def _nested_declarator_follows(self) -> bool:
        j = self.i + 1
        while j < len(self.toks) and isinstance(self.toks[j], Attr):
            j += 1
        t = self.toks[j] if j < len(self.toks) else None
        if t in ("*", "(", "^"):
            return True
        if isinstance(t, str) and re.match(r"[A-Za-z_]", t):
            return not self.is_typename_start(t)
        return False

    def param_list(self) -> tuple[list[tuple[str | None, CTypeNode]], bool]:
        params: list[tuple[str | None, CTypeNode]] = []
        variadic = False
        if self.peek() == ")":
            self.next()
            return params, False
        while True:
            if self.peek() == "...":
                self.next()
                variadic = True
            else:
                specs = self.decl_specs(allow_storage=True)
                name, wrap = self.declarator(abstract=True)
                self.attrs()
                t = wrap(specs.type)
                params.append((name, t))
            nxt = self.next()
            if nxt == ")":
                break
            if nxt != ",":
                raise _Fail(f"unexpected {nxt!r} in a parameter list")
        if len(params) == 1 and params[0][0] is None:
            t0 = params[0][1]
            if isinstance(t0, TBuiltin) and t0.canon == "void" and not t0.quals:
                params = []
        return params, variadic

    def type_name(self) -> CTypeNode:
        specs = self.decl_specs(allow_storage=False)
        _, wrap = self.declarator(abstract=True)
        return wrap(specs.type)

    # -- constant expressions (C integer semantics on LP64: values carry (bits, unsigned))
    def eval_tokens(self, toks: list[Tok]) -> int:
        sub = DeclParser(self.p, list(toks), self.header)
        v = sub.cond_expr()
        if sub.peek() is not None:
            raise _Fail(f"trailing tokens in constant expression: {sub.toks[sub.i :]}")
        return v[0]

    def cond_expr(self) -> IVal:
        c = self.binary(1)
        if self.peek() == "?":
            self.next()
            a = self.cond_expr()
            self.expect(":")
            b = self.cond_expr()
            ty = _common(a[1], b[1])
            return _wrap(a[0] if c[0] else b[0], ty)
        return c

    _BINOPS: dict[str, int] = {
        "||": 1, "&&": 2, "|": 3, "^": 4, "&": 5, "==": 6, "!=": 6, "<": 7, ">": 7, "<=": 7, ">=": 7,
        "<<": 8, ">>": 8, "+": 9, "-": 9, "*": 10, "/": 10, "%": 10,
    }  # fmt: skip

    def binary(self, min_prec: int) -> IVal:
        lhs = self.unary()
        while True:
            op = self.peek()
            prec = self._BINOPS.get(op) if isinstance(op, str) else None
            if prec is None or prec < min_prec:
                return lhs
            self.next()
            rhs = self.binary(prec + 1)
            lhs = _apply(op, lhs, rhs)  # type: ignore[arg-type]

    def unary(self) -> IVal:
        t = self.peek()
        if t in ("-", "+", "~", "!"):
            self.next()
            v, ty = self.unary()
            if t == "!":
                return (int(not v), INT)
            return _wrap({"-": -v, "+": v, "~": ~v}[t], ty)
        if t in ("sizeof", "_Alignof", "__alignof__", "__alignof"):
            self.next()
            if self.peek() == "(" and self.is_typename_start(self.peek(1)):
                self.next()
                ty = self.type_name()
                self.expect(")")
                size, align = layout(ty)
                v = size if t == "sizeof" else align
                if v is None:
                    raise _Fail("sizeof an incomplete type")
                return (v, ULONG)
            raise _Fail("sizeof an expression is not supported")
        if t == "(":
            if self.is_typename_start(self.peek(1)):
                self.next()
                ty = self.type_name()
                self.expect(")")
                return _cast(ty, self.unary())
            self.next()
            v = self.cond_expr()
            self.expect(")")
            return v
        return self.primary()

    def primary(self) -> IVal:
        t = self.next()
        if not isinstance(t, str):
            raise _Fail("attribute in an expression")
        if t[0].isdigit() or (t[0] == "." and len(t) > 1):
            return _int_literal(t)
        if t[0] == "'" or (t[0] in "LuU" and len(t) > 1 and t[1] == "'"):
            return (_char_literal(t), INT)
        if t in self.p.enumerators:
            v = self.p.enumerators[t][0]
            return (v, INT if -(2**31) <= v < 2**31 else (UINT if 0 <= v < 2**32 else LONG))
        raise _Fail(f"unknown identifier {t!r} in a constant expression")


IType = tuple[int, bool]  # (bits, unsigned)
IVal = tuple[int, IType]
INT: IType = (32, False)
UINT: IType = (32, True)
LONG: IType = (64, False)
ULONG: IType = (64, True)


def _wrap(v: int, ty: IType) -> IVal:
    bits, unsigned = ty
    v &= (1 << bits) - 1
    if not unsigned and v >= 1 << (bits - 1):
        v -= 1 << bits
    return (v, ty)


def _common(a: IType, b: IType) -> IType:
    """The usual arithmetic conversions (both operands already at least int)."""
    if a == b:
        return a
    if a[1] == b[1]:
        return a if a[0] >= b[0] else b
    u, s = (a, b) if a[1] else (b, a)
    if u[0] >= s[0]:
        return u
    return s  # the signed type is wider and holds every value of the unsigned one


def _unnamed(t: TFunc) -> TFunc:
    return TFunc(t.ret, [(None, pt) for _, pt in t.params], t.variadic)


def _int_literal(t: str) -> IVal:
    s = t.rstrip("uUlL")
    suffix = t[len(s) :].lower()
    if any(c in s for c in ".eE") and not s.lower().startswith("0x"):
        raise _Fail(f"floating literal {t!r} in an integer constant expression")
    if s.lower().startswith("0x"):
        v, decimal = int(s, 16), False
    elif len(s) > 1 and s.startswith("0"):
        v, decimal = int(s, 8), False
    else:
        v, decimal = int(s), True
    if "u" in suffix:
        cands = [UINT, ULONG] if "l" not in suffix else [ULONG]
    elif "l" in suffix:
        cands = [LONG] if decimal else [LONG, ULONG]
    else:
        cands = [INT, LONG] if decimal else [INT, UINT, LONG, ULONG]
    for ty in cands:
        bits, unsigned = ty
        if (0 <= v < 2**bits) if unsigned else (v < 2 ** (bits - 1)):
            return (v, ty)
    return (v, ULONG)


def _char_literal(t: str) -> int:
    body = t[t.index("'") + 1 : -1]
    if body.startswith("\\"):
        esc = {"n": 10, "t": 9, "r": 13, "0": 0, "\\": 92, "'": 39, '"': 34, "a": 7, "b": 8, "f": 12, "v": 11}
        if body[1] == "x":
            return int(body[2:], 16)
        if body[1].isdigit():
            return int(body[1:], 8)
        return esc[body[1]]
    return ord(body)


def _apply(op: str, a: IVal, b: IVal) -> IVal:
    (x, tx), (y, ty) = a, b
    if op in ("&&", "||"):
        return (int(bool(x) and bool(y)) if op == "&&" else int(bool(x) or bool(y)), INT)
    if op in ("<<", ">>"):
        return _wrap(x << y if op == "<<" else x >> y, tx)
    ct = _common(tx, ty)
    x, y = _wrap(x, ct)[0], _wrap(y, ct)[0]
    if op in ("==", "!=", "<", ">", "<=", ">="):
        r = {"==": x == y, "!=": x != y, "<": x < y, ">": x > y, "<=": x <= y, ">=": x >= y}[op]
        return (int(r), INT)
    if op in ("/", "%"):
        if y == 0:
            raise _Fail("division by zero in a constant expression")
        q = abs(x) // abs(y)
        q = q if (x >= 0) == (y >= 0) else -q
        return _wrap(q if op == "/" else x - y * q, ct)
    r = {"+": x + y, "-": x - y, "*": x * y, "&": x & y, "|": x | y, "^": x ^ y}[op]
    return _wrap(r, ct)


def _cast(t: CTypeNode, v: IVal) -> IVal:
    s = strip_typedefs(t)
    kind = kind_of(t)
    size = layout(t)[0]
    if kind == "bool":
        return (int(bool(v[0])), INT)
    if kind in ("int", "uint", "pointer", "char_pointer") or isinstance(s, TEnum):
        bits = 8 * (size or 4)
        unsigned = kind in ("uint", "pointer", "char_pointer")
        if isinstance(s, TEnum):
            unsigned = min(s.enum.values.values(), default=0) >= 0
        val, _ = _wrap(v[0], (bits, unsigned))
        # integer promotion: anything narrower than int becomes int
        return (val, (bits, unsigned)) if bits >= 32 else (val, INT)
    raise _Fail(f"cast to {render(t)} in a constant expression")


# --------------------------------------------------------------------------------------------------
# preprocessing


_LINEMARKER = re.compile(r'^# (\d+) "((?:\\.|[^"\\])*)"')


@dataclass
class Preprocessed:
    segments: list[tuple[int, str]]  # (file index, code text)
    files: list[str]  # file index -> path as gcc printed it
    macros: list[tuple[int, str]]  # (file index, text after "#define ")


def gcc_preprocess(
    source: str,
    include_dirs: Sequence[Path],
    defines: Sequence[str] = (),
    *,
    gcc: str = "gcc",
    keep_defines: bool = True,
) -> str:
    """``gcc -E`` of ``source`` with the stand-in headers; -dD keeps the #define lines."""
    with tempfile.TemporaryDirectory(prefix="ingero-shims-") as tmp:
        first, last = Path(tmp) / "first", Path(tmp) / "last"
        for rel, text in SHIMS.items():
            p = (first if rel.startswith("crt/") else last) / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
        cmd = [gcc, "-E", "-std=gnu11", "-m64", "-nostdinc", "-x", "c"]
        if keep_defines:
            cmd.append("-dD")
        # crt/host_defines.h always from the stand-in; the system headers only after the CUDA dirs
        cmd += ["-I", str(first)]
        for d in include_dirs:
            cmd += ["-I", str(d)]
        cmd += ["-idirafter", str(last)]
        cmd += [f"-D{d}" for d in defines]
        cmd.append("-")
        try:
            proc = subprocess.run(cmd, input=source, capture_output=True, text=True, check=False)
        except FileNotFoundError as e:
            raise HeaderParseError(f"{gcc} not found", "install gcc (apt-get install -y gcc)") from e
        if proc.returncode != 0:
            raise HeaderParseError(f"gcc -E failed: {proc.stderr.strip()[:2000]}")
        return proc.stdout


def split_preprocessed(text: str) -> Preprocessed:
    files: list[str] = []
    index: dict[str, int] = {}
    segments: list[tuple[int, str]] = []
    macros: list[tuple[int, str]] = []
    cur = -1
    buf: list[str] = []

    def flush() -> None:
        if buf:
            segments.append((cur, "\n".join(buf)))
            buf.clear()

    for line in text.split("\n"):
        if line.startswith("#"):
            m = _LINEMARKER.match(line)
            if m:
                flush()
                path = m.group(2)
                if path not in index:
                    index[path] = len(files)
                    files.append(path)
                cur = index[path]
            elif line.startswith("#define "):
                macros.append((cur, line[8:]))
            # #undef, #pragma, #ident: nothing to keep
            continue
        buf.append(line)
    flush()
    return Preprocessed(segments, files, macros)


def parse_translation_unit(pp: Preprocessed, header_of: Callable[[str], str | None]) -> Program:
    """Parse every top-level declaration. ``header_of`` maps a gcc path to a header name or None."""
    prog = Program()
    prog.headers = [header_of(f) for f in pp.files]
    toks: list[str] = []
    files: list[int] = []
    for fi, text in pp.segments:
        if fi < 0:
            continue
        ts = tokenize(text)
        toks.extend(ts)
        files.extend([fi] * len(ts))
    ftoks, ffiles = fold_attributes(toks, files)
    for fi, body in pp.macros:
        m = re.match(r"([A-Za-z_]\w*)(\([^)]*\))?\s?(.*)", body)
        if m:
            header = prog.headers[fi] if fi >= 0 else None
            prog.macros[m.group(1)] = Macro(m.group(1), m.group(2), m.group(3), header)
    # split into statements
    start = 0
    depth = 0
    i, n = 0, len(ftoks)
    stmts: list[tuple[int, int, bool]] = []  # (start, end, is_definition)
    while i < n:
        t = ftoks[i]
        if t == "{":
            if depth == 0:
                j = i - 1
                while j >= start and isinstance(ftoks[j], Attr):
                    j -= 1
                if j >= start and ftoks[j] == ")":
                    # a function definition: skip its body
                    d = 0
                    k = i
                    while k < n:
                        if ftoks[k] == "{":
                            d += 1
                        elif ftoks[k] == "}":
                            d -= 1
                            if d == 0:
                                break
                        k += 1
                    stmts.append((start, i, True))
                    i = k + 1
                    start = i
                    continue
            depth += 1
        elif t == "}":
            depth -= 1
        elif t == ";" and depth == 0:
            stmts.append((start, i, False))
            start = i + 1
        i += 1
    if start < n:
        prog.errors.append(f"unterminated declaration at the end: {ftoks[start : start + 20]}")
    for s, e, is_def in stmts:
        if s == e or is_def:
            continue
        header = prog.headers[ffiles[s]]
        parser = DeclParser(prog, ftoks[s:e], header)
        try:
            parser.statement()
        except (_Fail, HeaderParseError, KeyError, IndexError, ZeroDivisionError) as err:
            text = " ".join(x if isinstance(x, str) else f"{x.word}(...)" for x in ftoks[s:e])
            prog.errors.append(f"{header or pp.files[ffiles[s]]}: {err}: {text[:300]}")
    _name_anonymous(prog)
    return prog


def _name_anonymous(prog: Program) -> None:
    counters: dict[str, int] = {}
    for agg in prog.aggregates:
        if agg.tag is None and agg.name is None:
            h = agg.header or "?"
            counters[h] = counters.get(h, 0) + 1
            agg.name = f"{agg.kind} <anonymous {h}#{counters[h]}>"
    for en in prog.enums:
        if en.tag is None and en.name is None:
            h = en.header or "?"
            counters["enum " + h] = counters.get("enum " + h, 0) + 1
            en.name = f"<anonymous enum {h}#{counters['enum ' + h]}>"


def expand_macros(
    names: Sequence[str],
    prelude: str,
    include_dirs: Sequence[Path],
    defines: Sequence[str] = (),
    gcc: str = "gcc",
) -> dict[str, list[str]]:
    """What each object-like macro expands to after ``prelude`` (gcc does the expansion)."""
    if not names:
        return {}
    lines = [prelude, "#define INGERO_Q(x) #x"]
    for nm in names:
        lines.append(f"@@INGERO@@ INGERO_Q({nm}) {nm} @@END@@")
    text = gcc_preprocess("\n".join(lines) + "\n", include_dirs, defines, gcc=gcc, keep_defines=False)
    out: dict[str, list[str]] = {}
    for m in re.finditer(r'@@INGERO@@\s*"([^"]+)"\s*(.*?)\s*@@END@@', text, re.S):
        out[m.group(1)] = tokenize(m.group(2))
    return out


def gcc_available(gcc: str = "gcc") -> bool:
    return shutil.which(gcc) is not None
