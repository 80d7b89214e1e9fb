"""The probe DSL: ``grammar/probe.lark`` -> AST (:mod:`.ast`) -> checked, resolved spec (:mod:`.resolved`).

::

    result = check(text, "big.probe")          # never raises for a bad spec
    if not result.ok:
        print(render(result.errors, result.source))
    spec = result.resolved()                   # or raises SpecError with every error

The language is documented in docs/dsl.md.
"""

from ingero.dsl.check import CheckResult, check, check_file
from ingero.dsl.diagnostics import Diagnostic, SpecError, render
from ingero.dsl.parser import parse

__all__ = ["CheckResult", "Diagnostic", "SpecError", "check", "check_file", "parse", "render"]
