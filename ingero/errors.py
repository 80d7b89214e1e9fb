"""The one error tree of ingero, and the one way an error is shown.

::

    IngeroError                    message + hint; exit code 1; shown as "error: ..." / "hint: ..." once
    |-- NotFound                   something the user named does not exist
    |   |-- LibraryNotFound, SymbolNotFound, NoSuchProcess
    |   `-- CatalogueError         (ingero.catalogue) no such signature, type or enum
    |-- NotAnElf, NoSymbols        the file named is no library to probe
    |-- PermissionProblem          the input is fine but this user may not do it
    |-- BpfUnavailable             this kernel cannot do it (no BPF, no uprobe_multi, no bcc)
    |-- SpecError                  (ingero.dsl) every located error of a spec, rendered compiler style
    |-- ToolRefused                (ingero.mcp.live) a guard of the MCP server said no
    |-- SqlRefused, SqlFailed      (ingero.store.sqlguard) a query that may not or did not run
    |-- StoreError                 (ingero.store.records) a database that cannot be written
    |-- HeaderParseError           (ingero.catalogue.cparse) a header the catalogue build cannot read
    `-- InternalError              ingero's own fault, e.g. the kernel refusing a program ingero
                                   generated; exit code 2, traceback with --debug or INGERO_DEBUG=1

Everything below :class:`IngeroError` except :class:`InternalError` is a **user error**: the message says
what is wrong and the hint what to do; no traceback is ever shown. A mistake on the command line (click's
usage errors: an unknown option or command, a missing argument, a bad value) is one too: the CLI turns it
into an :class:`IngeroError` (click's message; its did-you-mean, or where the help is, as the hint). Any
other exception reaching a shell is an internal error too (a bug). :func:`render` is the one text both
shells show: the CLI prints it and exits with :func:`exit_code`; the MCP server raises it as a
``ToolError``.
"""

from __future__ import annotations

import os

#: Set to 1 (or pass ``--debug`` to the CLI) to see the traceback of an internal error.
DEBUG_ENV = "INGERO_DEBUG"


class IngeroError(Exception):
    """Base of every error ingero raises on purpose. ``hint`` is an optional next step (did-you-mean, a
    command)."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message

    def render(self) -> str:
        """The text a user sees: ``error: MESSAGE`` and ``hint: HINT``, each once."""
        return f"error: {self.message}" + (f"\nhint: {self.hint}" if self.hint else "")


class InternalError(IngeroError):
    """ingero's own fault, not the user's: the kernel refused a program ingero generated, an invariant of
    a generated layout broke. Exit code 2."""

    exit_code = 2

    def render(self) -> str:
        return (f"internal error: {self.message}" + (f"\nhint: {self.hint}" if self.hint else "")
                + ("" if debugging() else f"\n(run again with --debug or {DEBUG_ENV}=1 for the traceback)"))


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


def debugging() -> bool:
    """Whether internal errors show their traceback (``--debug`` sets the variable too)."""
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def render(err: BaseException) -> str:
    """The one text an error is shown as, by the CLI and by the MCP server alike."""
    if isinstance(err, IngeroError):
        return err.render()
    return InternalError(f"{type(err).__name__}: {err}", hint="this is a bug in ingero: please report it").render()


def exit_code(err: BaseException) -> int:
    """1 for a user error, 2 for an internal one."""
    return err.exit_code if isinstance(err, IngeroError) else 2


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
