"""Where things are in a spec: the text itself and spans into it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Source:
    """A spec's text and the name it is shown under (a file path, ``<stdin>``, ``<mcp>``)."""

    text: str
    name: str = "<spec>"

    def line(self, n: int) -> str:
        lines = self.text.splitlines()
        return lines[n - 1] if 0 < n <= len(lines) else ""

    def end_span(self) -> Span:
        lines = self.text.splitlines() or [""]
        n = len(lines)
        col = len(lines[-1]) + 1
        return Span(n, col, n, col + 1)


@dataclass(frozen=True, order=True)
class Span:
    """1-based line and column of the first character; ``end_column`` is one past the last character
    of ``end_line``."""

    line: int
    column: int
    end_line: int
    end_column: int

    @classmethod
    def of(cls, meta_or_token) -> Span:
        m = meta_or_token
        return cls(m.line, m.column, m.end_line or m.line, m.end_column or m.column + 1)

    def to(self, other: Span) -> Span:
        return Span(self.line, self.column, other.end_line, other.end_column)
