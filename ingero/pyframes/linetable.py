"""The line being executed, from a code object's line table and an instruction offset (CPython's own rules).

- 3.10 (PEP 626, ``Objects/lnotab_notes.txt``): ``co_linetable`` is a sequence of byte pairs
  ``(bytecode delta, signed line delta)``; a line delta of -128 means "no line" for that range.
- 3.11 and later (``Objects/locations.md``): ``co_linetable`` is the location table, entries of one to
  eight code units each: a first byte ``1cccclll`` (code ``cccc``, length ``lll + 1``) followed by
  varints; codes 0-9 (short form) and 10-12 (one-line form) move the line by 0, 1 or 2, 13 (no columns)
  and 14 (long form) by a signed varint, 15 means no location.

``offset`` is in bytes of bytecode (``2 * f_lasti``, or the instruction pointer minus the start of the
bytecode). A line of ``None`` means CPython itself reports none for that instruction.
"""

from __future__ import annotations


def line_310(table: bytes, firstlineno: int, offset: int) -> int | None:
    if offset < 0:
        return firstlineno
    start = 0
    line = firstlineno
    for i in range(0, len(table) - 1, 2):
        end = start + table[i]
        ldelta = table[i + 1]
        if ldelta >= 128:
            ldelta -= 256
        current: int | None
        if ldelta == -128:
            current = None
        else:
            line += ldelta
            current = line
        if start <= offset < end:
            return current
        start = end
    return None


def _varint(table: bytes, pos: int) -> tuple[int, int]:
    b = table[pos]
    pos += 1
    val = b & 63
    shift = 0
    while b & 64:
        b = table[pos]
        pos += 1
        shift += 6
        val |= (b & 63) << shift
    return val, pos


def _svarint(table: bytes, pos: int) -> tuple[int, int]:
    uval, pos = _varint(table, pos)
    return (-(uval >> 1) if uval & 1 else uval >> 1), pos


def line_311(table: bytes, firstlineno: int, offset: int) -> int | None:
    """3.11+ location table; ``offset`` in bytes."""
    if offset < 0:
        return firstlineno
    target = offset // 2  # code units
    addr = 0
    line = firstlineno
    pos = 0
    n = len(table)
    while pos < n:
        first = table[pos]
        pos += 1
        code = (first >> 3) & 15
        length = (first & 7) + 1
        current: int | None
        if code == 15:
            current = None
        elif code == 14:
            delta, pos = _svarint(table, pos)
            line += delta
            current = line
            for _ in range(3):  # end line delta, column + 1, end column + 1
                _, pos = _varint(table, pos)
        elif code == 13:
            delta, pos = _svarint(table, pos)
            line += delta
            current = line
        elif code >= 10:
            line += code - 10
            current = line
            pos += 2
        else:
            current = line
            pos += 1
        if addr <= target < addr + length:
            return current
        addr += length
    return None


def line_for(version: tuple[int, int], table: bytes, firstlineno: int, offset: int) -> int | None:
    return (line_310 if version < (3, 11) else line_311)(table, firstlineno, offset)
