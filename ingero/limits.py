"""The limits a dynamic probe runs under, each written once.

The DSL checker judges a spec's own budgets against them (``limit symbols N`` may not pass
:data:`MAX_SYMBOLS`), the policy (:class:`ingero.tracer.policy.ProbeLimits`) judges a checked probe
against its settings, whose defaults are these, and ``ingero mcp`` shows them as the defaults of its
``--probe-*`` options. Nothing is imported here, so a shell's ``--help`` costs nothing.
"""

#: the symbols budget of a probe whose spec sets none: a glob matching more functions is an error until the
#: spec says ``limit symbols N`` (and the most symbols ``ingero mcp`` lets one probe match by default)
DEFAULT_SYMBOLS = 1000
#: the most functions one probe may attach to: no spec's ``limit symbols`` and no policy goes above it
MAX_SYMBOLS = 10_000
#: the policy's defaults: the longest ttl and the most events of one probe (a spec may ask for less, never
#: more) and the most probes live at once
PROBE_TTL_S = 300.0
PROBE_EVENTS = 1_000_000
MAX_PROBES = 8
