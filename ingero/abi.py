"""Where the x86-64 System V calling convention puts each C argument, from its type.

This sits below both the checker (:mod:`ingero.dsl`, which places every argument a spec reads) and the
code generator (:mod:`ingero.compiler`, which reads each :class:`Piece` from ``struct pt_regs``).

Integer-class eightbytes take the next of rdi, rsi, rdx, rcx, r8, r9; float-class ones the next XMM
register; an aggregate of up to 16 bytes is classified per eightbyte and goes in registers only if all
of its eightbytes fit, otherwise (and for anything larger, or ``long double``) it is passed in memory, on
the stack. A function returning a struct larger than 16 bytes takes a hidden pointer in rdi first.
At entry ``rsp`` points at the return address, so the first stack argument is at ``rsp + 8``.

``dim3`` (12 bytes: x, y in one eightbyte, z in the next) takes two integer registers, which is why
``cudaLaunchKernel``'s sixth parameter, ``stream``, is on the stack.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ingero.catalogue import CType

INT_REGS = ("di", "si", "dx", "cx", "r8", "r9")
FLOAT_KINDS = ("float", "double")


@dataclass(frozen=True)
class Place:
    """Where one argument is at function entry.

    ``where``: ``regs`` (``regs`` holds one entry per eightbyte: an integer register name, or
    ``xmmN`` for a float eightbyte), or ``stack`` (``offset`` from ``rsp + 8``)."""

    where: str
    regs: tuple[str, ...] = ()
    offset: int = 0


@dataclass(frozen=True)
class Piece:
    """Where a scalar value (an argument, or one member of a struct argument) can be read.

    ``where``: ``reg`` (``reg`` holds it; shift right by ``shift`` bits), ``stack`` (``size`` bytes at
    ``rsp + 8 + offset``) or ``xmm`` (not readable by a uprobe)."""

    where: str
    reg: str = ""
    shift: int = 0
    offset: int = 0
    size: int = 8


def _eightbyte_classes(t: CType) -> list[str] | None:
    """INTEGER/SSE per eightbyte for a type of up to 16 bytes passed in registers, or None for memory."""
    size = t.size or 0
    if t.kind == "long_double" or size > 16 or size == 0:
        return None
    n = (size + 7) // 8
    classes = ["NONE"] * n
    for off, leaf in t.scalars():
        if leaf.kind == "long_double":
            return None
        if leaf.align and off % leaf.align:
            return None  # unaligned member: memory
        e = off // 8
        if e >= n:
            continue
        cls = "SSE" if leaf.kind in FLOAT_KINDS else "INTEGER"
        if classes[e] != "INTEGER":
            classes[e] = cls
    return [c if c != "NONE" else "SSE" for c in classes]


def place_arguments(params: Sequence[CType], ret: CType | None = None) -> list[Place]:
    """The place of each parameter, in order."""
    next_int = 0
    next_sse = 0
    stack = 0
    if ret is not None and ret.kind in ("struct", "union") and (ret.size or 0) > 16:
        next_int = 1  # hidden pointer to the returned struct in rdi
    out: list[Place] = []
    for t in params:
        classes = _eightbyte_classes(t)
        if classes is not None:
            ni = classes.count("INTEGER")
            ns = classes.count("SSE")
            if next_int + ni <= len(INT_REGS) and next_sse + ns <= 8:
                regs = []
                for c in classes:
                    if c == "INTEGER":
                        regs.append(INT_REGS[next_int])
                        next_int += 1
                    else:
                        regs.append(f"xmm{next_sse}")
                        next_sse += 1
                out.append(Place("regs", tuple(regs)))
                continue
        align = max(8, t.align or 8)
        stack = (stack + align - 1) // align * align
        out.append(Place("stack", offset=stack))
        stack += ((t.size or 8) + 7) // 8 * 8
    return out


def untyped_piece(index: int) -> Piece:
    """Where integer argument ``index`` of a function without a known signature is (every argument
    taken as one integer eightbyte)."""
    if index < len(INT_REGS):
        return Piece("reg", reg=INT_REGS[index])
    return Piece("stack", offset=(index - len(INT_REGS)) * 8)


def piece(place: Place, offset: int, size: int) -> Piece:
    """Where ``size`` bytes at byte ``offset`` of an argument placed at ``place`` are."""
    if place.where == "stack":
        return Piece("stack", offset=place.offset + offset, size=size)
    reg = place.regs[offset // 8]
    if reg.startswith("xmm"):
        return Piece("xmm", reg=reg, size=size)
    return Piece("reg", reg=reg, shift=(offset % 8) * 8, size=size)
