"""Diagnostics: what is wrong with a spec, where, and what to do about it; rendered in one place.

A :class:`Diagnostic` is data (span, message, hint); :func:`render` turns a list of them into the text a
user sees, compiler style::

    big.probe:2:11-15: error: cudaMemcpyAsync has no argument 'cont'
        where cont >= 1MiB
              ~~~~
    hint: did you mean 'count'?

The CLI and the MCP tools show exactly this text (``SpecError.__str__``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ingero.dsl.source import Source, Span
from ingero.errors import IngeroError


@dataclass(frozen=True)
class Diagnostic:
    span: Span
    message: str
    hint: str | None = None
    severity: str = "error"  # "error" | "note"

    @property
    def line(self) -> int:
        return self.span.line

    @property
    def column(self) -> int:
        return self.span.column

    def as_dict(self) -> dict:
        return {
            "severity": self.severity,
            "line": self.span.line,
            "column": self.span.column,
            "end_line": self.span.end_line,
            "end_column": self.span.end_column,
            "message": self.message,
            "hint": self.hint,
        }


def render_one(d: Diagnostic, source: Source) -> str:
    s = d.span
    if s.line <= 0:
        head = f"{source.name}: {d.severity}: {d.message}"
        return head + (f"\nhint: {d.hint}" if d.hint else "")
    cols = f"{s.column}" if s.end_line != s.line or s.end_column <= s.column + 1 else f"{s.column}-{s.end_column - 1}"
    out = [f"{source.name}:{s.line}:{cols}: {d.severity}: {d.message}"]
    raw = source.line(s.line)
    text = raw.expandtabs(4)
    if text.strip():
        out.append("    " + text)
        end = s.end_column if s.end_line == s.line else len(raw) + 1
        start_col = len(raw[: s.column - 1].expandtabs(4))
        end_col = len(raw[: max(s.column, min(end, len(raw) + 1)) - 1].expandtabs(4))
        out.append("    " + " " * start_col + "~" * max(1, end_col - start_col))
    if d.hint:
        out.append(f"hint: {d.hint}")
    return "\n".join(out)


def render(diags: Sequence[Diagnostic], source: Source) -> str:
    return "\n".join(render_one(d, source) for d in diags)


class SpecError(IngeroError):
    """A spec that does not parse or check. ``diagnostics`` holds every error of the stage that failed;
    ``str()`` is the rendered text."""

    def __init__(self, diagnostics: Sequence[Diagnostic], source: Source) -> None:
        self.diagnostics = tuple(diagnostics)
        self.source = source
        first = self.diagnostics[0] if self.diagnostics else None
        super().__init__(render(self.diagnostics, source), hint=None)
        self.first = first

    def __str__(self) -> str:
        return self.message

    def render(self) -> str:
        """The diagnostics themselves (each already says ``error:`` and its ``hint:``)."""
        return self.message
