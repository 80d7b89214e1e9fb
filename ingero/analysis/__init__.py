"""Analysis over a :class:`~ingero.store.TraceReader`: stats, causal chains, stacks, system check, demos.

Pure functions returning frozen dataclasses; formatting belongs to the MCP and CLI shells.
"""

from ingero.analysis.chains import CausalChain, ChainsResult, causal_chains
from ingero.analysis.stacks import StackSummary, top_stacks
from ingero.analysis.stats import OpStats, TraceStats, trace_stats
from ingero.analysis.window import TimeWindow, make_window

__all__ = ["CausalChain", "ChainsResult", "OpStats", "StackSummary", "TimeWindow", "TraceStats",
           "causal_chains", "make_window", "top_stacks", "trace_stats"]
