"""Several live traces in one process: each trace's DSL probes follow that trace's process tree.

bcc keeps the first registration of a shared map (``ingero_targets``) for the life of the process, so
before each load got names of its own (ingero.runtime.shared), the DSL probes of every trace after the
first filtered on the first trace's (ended) tree and recorded nothing, silently. Ground truth: the
workload's own plan of calls.
"""

from __future__ import annotations

import os
import sqlite3
import sys

import pytest

from ingero import workload
from ingero.runtime.shared import SharedNames
from ingero.tracer.session import TraceOptions, TraceSession

pytestmark = pytest.mark.bpf

SPEC = "probe allocs = libcudart.so.12:cudaMalloc\n    record size\n"


def _trace_with_probe(db) -> tuple[int, int]:
    """(DSL probe events, standard-set cudaMalloc events) of one live trace of the workload."""
    session = TraceSession(TraceOptions(db=db, chains_every_s=3600, stacks=False, probe_specs=(("allocs", SPEC),)),
                           command=[sys.executable, "-m", "ingero.workload", "--repeat", "2"]).start()
    session.run()
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        probe = conn.execute("SELECT COUNT(*) FROM events WHERE source = 100").fetchone()[0]
        std = conn.execute("SELECT COUNT(*) FROM events WHERE source = 1 AND op = 1").fetchone()[0]
    finally:
        conn.close()
    return probe, std


def test_every_trace_of_a_process_has_its_probes_follow_its_own_tree(need_bpf, tmp_path):
    """bcc's first registration kept the number of a file descriptor that its trace closed; which object a
    later trace's probes then used depended on what reused that number. Holding other files open between
    traces makes the numbers differ from one trace to the next, as they do in a long-lived server."""
    calls = workload.expected_counts(2)["cudaMalloc"]
    held: list[int] = []
    try:
        for i in range(3):
            assert _trace_with_probe(tmp_path / f"t{i}.db") == (calls, calls), f"trace {i + 1} of 3"
            held += [os.open("/dev/null", os.O_RDONLY) for _ in range(40)]
    finally:
        for fd in held:
            os.close(fd)


def test_shared_names_rename_only_the_shared_maps():
    names = SharedNames(7)
    text = "BPF_TABLE_SHARED(\"hash\", u32, u8, ingero_targets, 4096);\nx = ingero_targets.lookup(&k);\n" \
           "ingero_targets_other; my_ingero_py_procs; ingero_py_procs.update(&a, &b);"
    assert names.apply(text) == ("BPF_TABLE_SHARED(\"hash\", u32, u8, ingero_targets_7, 4096);\n"
                                 "x = ingero_targets_7.lookup(&k);\n"
                                 "ingero_targets_other; my_ingero_py_procs; ingero_py_procs_7.update(&a, &b);")
    assert SharedNames.fresh() != SharedNames.fresh()
    with pytest.raises(ValueError):
        names.name("stacks")
