"""The exceptions a user can act on.

Every error ingero raises for bad input derives from :class:`IngeroError`; its message says what went
wrong and, where possible, what to do (``hint``). The CLI and MCP shells print ``str(err)`` and never a
traceback for these. Errors caused by permissions derive from :class:`PermissionProblem` so that a
caller can tell "wrong library/symbol/pid" apart from "not allowed".
"""

from __future__ import annotations


class IngeroError(Exception):
    """Base of all user-facing errors. ``hint`` is an optional next step (did-you-mean, a command)."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class NotFound(IngeroError):
    """Something named by the user does not exist (library, symbol, process, file)."""


class LibraryNotFound(NotFound):
    pass


class SymbolNotFound(NotFound):
    pass


class NoSuchProcess(NotFound):
    pass


class NotAnElf(IngeroError):
    pass


class NoSymbols(IngeroError):
    """The file is an ELF object but exports no function symbols (stripped of .dynsym/.symtab)."""


class PermissionProblem(IngeroError):
    """The input is fine but this user may not do it (read another process's maps, load BPF...)."""


class BpfUnavailable(IngeroError):
    """The kernel cannot do what is needed (no BPF, no uprobe_multi, kernel too old, no headers)."""


def did_you_mean(word: str, candidates, n: int = 3) -> list[str]:
    """Closest matches of ``word`` among ``candidates`` (case-insensitive first, then difflib)."""
    import difflib

    cands = list(dict.fromkeys(candidates))
    lower = {c.lower(): c for c in cands}
    out: list[str] = []
    if word.lower() in lower and lower[word.lower()] != word:
        out.append(lower[word.lower()])
    for m in difflib.get_close_matches(word.lower(), list(lower), n=n, cutoff=0.6):
        if lower[m] not in out:
            out.append(lower[m])
    # prefix matches help for stems such as "libcud" -> "libcudart"
    for c in cands:
        if len(out) >= n:
            break
        if c.lower().startswith(word.lower()) and c not in out:
            out.append(c)
    return out[:n]


def suggestion(word: str, candidates, what: str = "") -> str | None:
    """A ready-made hint string: ``did you mean 'x' or 'y'?`` or None."""
    m = did_you_mean(word, candidates)
    if not m:
        return None
    quoted = " or ".join(f"'{x}'" for x in m)
    return f"did you mean {quoted}?" if not what else f"did you mean {what} {quoted}?"
