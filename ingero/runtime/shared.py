"""Maps shared by name between the BPF objects one ingero process loads (bcc's ``BPF_TABLE_SHARED`` and
``BPF_TABLE("extern", ...)``): the traced tree (``ingero_targets``) and the Python processes
(``ingero_py_procs``) that the standard probe set fills and a live trace's DSL probes read.

bcc registers a shared table process-wide, under its name, the first time a program declares it, and
never replaces or drops that entry (its table storage refuses a second insert and keeps the first map
open). So a second trace session in the same process that declared ``ingero_targets`` again got a map of
its own, while every ``extern`` reference -- its DSL probes -- still found the first session's map and
counted nothing. Each load that declares these maps therefore gets names of its own
(``ingero_targets_3``), and the loads that refer to them use the same names.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

#: the identifiers shared between BPF objects (bpf/host.bpf.c, bpf/ingero_py.h, probe_templates/)
SHARED_MAPS = ("ingero_targets", "ingero_py_procs")
_WORD = re.compile(r"\b(" + "|".join(SHARED_MAPS) + r")\b")
_loads = itertools.count(1)


@dataclass(frozen=True)
class SharedNames:
    """The names of the shared maps in one family of BPF objects (a standard set and its DSL probes)."""

    suffix: int

    @classmethod
    def fresh(cls) -> SharedNames:
        return cls(next(_loads))

    def name(self, base: str) -> str:
        if base not in SHARED_MAPS:
            raise ValueError(f"{base} is not a shared map")
        return f"{base}_{self.suffix}"

    def apply(self, c_text: str) -> str:
        """``c_text`` with every shared map's identifier renamed."""
        return _WORD.sub(lambda m: self.name(m.group(1)), c_text)
