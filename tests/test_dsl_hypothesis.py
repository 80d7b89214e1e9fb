"""Specs generated across the whole grammar (targets with declarations and pids, every clause, nested
where expressions, arithmetic, reads through pointers, units, strings, aggregations, budgets, comments,
deep nesting, long clauses, big literals, random edits of all of it, and random bytes):

* the checker never raises: every outcome is a resolved spec or located errors (thousands of examples);
* every spec that passes ``check()`` compiles and loads in the kernel, up to the nesting and size limits
  (a bounded number: each compile takes a few tenths of a second).
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ingero.dsl import check

LIBS = [
    "libcudart.so.12",
    "libcudart",
    "libz.so.1",
    "libcublas",
    "libnccl",
    "libcuda",
    "libnope",
    "/no/such.so",
    "libcudart.so.99",
]
SYMBOLS = [
    "cudaMalloc",
    "cudaMemcpyAsync",
    "cudaLaunchKernel",
    "cuda*Synchronize",
    "cudaGetErrorString",
    "cudaMemcpy",
    "crc32",
    "compress2",
    "zlibVersion",
    "cublasSgemm_v2",
    "ncclAllReduce",
    "cuMemAlloc",
    "*",
    "zzz*",
    "cudaFree",
    "cudaMalloc[H3]*",
    "cudaMaloc",
]
FIELDS = [
    "count",
    "kind",
    "stream",
    "size",
    "devPtr",
    "func",
    "gridDim.x",
    "blockDim.z",
    "gridDim.w",
    "sharedMem",
    "error",
    "arg0",
    "arg1",
    "arg5",
    "arg9",
    "retval",
    "latency",
    "pid",
    "tid",
    "comm",
    "symbol",
    "stack",
    "ts",
    "m",
    "transa",
    "datatype",
    "bytesize",
    "a",
    "p.x",
    "p.z",
    "s",
    "nope",
]
ENUMS = [
    "cudaMemcpyDeviceToHost",
    "cudaSuccess",
    "cudaErrorInsufficientDriver",
    "CUBLAS_OP_T",
    "ncclFloat32",
    "cudaMemcpyDeviceToHots",
]
UNITS = ["", "", "KiB", "MiB", "GiB", "B", "us", "ms", "s", "ns", "min", "MB", "x"]
TYPES = [
    "u8",
    "u16",
    "u32",
    "u64",
    "i8",
    "i16",
    "i32",
    "i64",
    "ptr",
    "str",
    "bool",
    "f32",
    "f64",
    "dim3",
    "cudaStream_t",
    "q32",
]
CMPS = ["==", "!=", "<", "<=", ">", ">="]
AGGS = ["count", "sum", "min", "max", "hist", "avg", "lhist", "avgg"]
BUDGETS = ["ttl", "events", "rate", "symbols", "tll"]
NAMES = st.sampled_from(["a", "b", "copies", "x1", "where", "probe_2", "latency"])


@st.composite
def numbers(draw) -> str:
    kind = draw(st.sampled_from(["int", "hex", "float", "big"]))
    if kind == "hex":
        return hex(draw(st.integers(0, 2**40)))
    if kind == "float":
        return f"{draw(st.integers(0, 99))}.{draw(st.integers(0, 9))}" + draw(st.sampled_from(UNITS))
    if kind == "big":
        big = draw(st.integers(2**63 - 2, 2**70))
        return hex(big) if draw(st.booleans()) else str(big)
    return (
        ("-" if draw(st.booleans()) and draw(st.booleans()) else "")
        + str(draw(st.integers(0, 5000)))
        + draw(st.sampled_from(UNITS))
    )


strings = st.text(st.characters(codec="ascii", exclude_characters='"\\\n'), max_size=20).map(lambda s: f'"{s}"')
POINTER_READS = ["*devPtr", "*count", "*p", "p->x", "stream->x", "*size", "*s", "devPtr->y", "*arg0"]
OPS = ["+", "-", "*", "/", "<<", ">>"]
values = st.recursive(
    st.one_of(st.sampled_from(FIELDS + POINTER_READS), numbers()),
    lambda inner: st.one_of(
        st.builds(lambda a, op, b: f"{a} {op} {b}", inner, st.sampled_from(OPS), inner),
        st.builds(lambda a: f"({a})", inner),
    ),
    max_leaves=4,
)
operands = st.one_of(values, st.sampled_from(ENUMS), numbers(), strings)


def exprs():
    cmp = st.builds(lambda a, op, b: f"{a} {op} {b}", values, st.sampled_from(CMPS), operands)
    return st.recursive(
        cmp,
        lambda inner: st.one_of(
            st.builds(lambda a, b: f"{a} and {b}", inner, inner),
            st.builds(lambda a, b: f"{a} or {b}", inner, inner),
            st.builds(lambda a: f"not {a}", inner),
            st.builds(lambda a: f"({a})", inner),
            # deep nesting and long clauses, around and far beyond the limits
            st.builds(lambda a, n: "not " * n + a, inner, st.integers(20, 1500)),
            st.builds(lambda a, n: "(" * n + a + ")" * n, inner, st.integers(20, 1500)),
            st.builds(lambda a, n: " and ".join([a] * n), inner, st.integers(20, 400)),
        ),
        max_leaves=5,
    )


@st.composite
def params(draw) -> str:
    n = draw(st.integers(0, 9))
    out = []
    for i in range(n):
        if draw(st.integers(0, 5)) == 0:
            members = ", ".join(f"{draw(st.sampled_from(TYPES[:8]))} m{j}" for j in range(draw(st.integers(1, 3))))
            out.append(f"{{{members}}} {draw(st.sampled_from(['p', 's', 'a' + str(i)]))}")
        else:
            out.append(f"{draw(st.sampled_from(TYPES))} {draw(st.sampled_from(['a', 'b', 'n', 'name', 'p' + str(i)]))}")
    ret = f" -> {draw(st.sampled_from(TYPES))}" if draw(st.booleans()) else ""
    return f"({', '.join(out)}){ret}"


@st.composite
def clauses(draw) -> list[str]:
    out = []
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["where", "record", "aggregate", "limit", "comment"]))
        if kind == "where":
            out.append("where " + draw(exprs()))
        elif kind == "record":
            out.append("record " + ", ".join(draw(st.lists(values, min_size=1, max_size=8))))
        elif kind == "aggregate":
            aggs = []
            for _ in range(draw(st.integers(1, 3))):
                f = draw(st.sampled_from(AGGS))
                arg = draw(st.sampled_from(["", "()", "(size)", "(latency)", "(count)", "(pid)", "(stream)",
                                            "(size / 1MiB)", "(latency, 0, 1ms, 100us)", "(size, 10, 1, 1)",
                                            "(size, 0, 100000000, 1)", "(*devPtr)", "(latency, 0, 1ms)"]))
                aggs.append(f + arg)
            by = draw(st.lists(values, max_size=3))
            out.append("aggregate " + ", ".join(aggs) + (" by " + ", ".join(by) if by else ""))
        elif kind == "limit":
            bs = []
            for _ in range(draw(st.integers(1, 3))):
                per = "/s" if draw(st.integers(0, 3)) == 0 else ""
                bs.append(f"{draw(st.sampled_from(BUDGETS))} {draw(numbers()).lstrip('-')}{per}")
            out.append("limit " + ", ".join(bs))
        else:
            out.append("# " + draw(st.text(st.characters(codec="ascii", exclude_characters="\n"), max_size=10)))
    return out


@st.composite
def specs(draw) -> str:
    probes = []
    for _ in range(draw(st.integers(1, 3))):
        target = f"{draw(st.sampled_from(LIBS))}:{draw(st.sampled_from(SYMBOLS))}"
        if draw(st.integers(0, 3)) == 0:
            target += draw(params())
        if draw(st.integers(0, 8)) == 0:
            target += f" pid {draw(st.sampled_from([1, os.getpid(), 999999]))}"
        sep = draw(st.sampled_from(["\n    ", " ", "\n\t"]))
        probes.append(f"probe {draw(NAMES)} = {target}" + "".join(sep + c for c in draw(clauses())))
    text = "\n".join(probes) + "\n"
    # random edits reach every corner of the parser's error handling
    for _ in range(draw(st.integers(0, 2)) if draw(st.integers(0, 3)) == 0 else 0):
        i = draw(st.integers(0, len(text)))
        edit = draw(st.sampled_from(["delete", "insert"]))
        if edit == "delete":
            text = text[:i] + text[i + 1 :]
        else:
            text = text[:i] + draw(st.sampled_from(list("(){},:=-/.\"'#*x1 \n"))) + text[i:]
    return text


def _located(r) -> None:
    if r.ok:
        assert r.errors == () and r.spec.probes
    else:
        assert r.spec is None and r.errors
        for d in r.errors:
            assert d.line >= 1 and d.column >= 1 and d.message


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs())
def test_checker_never_raises_anything_but_its_own_errors(text):
    _located(check(text, "h.probe"))


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300), st.booleans())
def test_any_bytes_give_a_result_or_located_errors(data, prefixed):
    # binary junk, alone or after a valid probe line
    if prefixed:
        data = b"probe x = libcudart.so.12:cudaMalloc\n  record " + data
    _located(check(data, "b.probe"))


# -- specs that pass check() compile and load --------------------------------------------------------

VALID = {
    # target: (fields that resolve, numeric fields with their unit kind)
    "libcudart.so.12:cudaMemcpyAsync": (["count", "kind", "stream", "arg0", "arg4"], {"count": "size"}),
    "libcudart.so.12:cudaLaunchKernel": (
        ["func", "gridDim.x", "blockDim.y", "sharedMem", "stream"],
        {"gridDim.x": "", "sharedMem": "size"},
    ),
    "libcudart.so.12:cudaGetErrorString": (["error", "retval"], {}),
    "libcudart.so.12:cuda*Synchronize": ([], {}),
    "libz.so.1:compress2(ptr d, ptr dl, str src, u64 n, i32 level) -> i32": (
        ["d", "src", "n", "level"],
        {"n": "size", "level": ""},
    ),
    "libcublas:cublasSgemm_v2": (["m", "n", "k", "transa", "lda"], {"m": "", "k": ""}),
}
BUILTIN = ["pid", "tid", "comm", "symbol", "ts", "latency", "retval", "stack"]


@st.composite
def valid_specs(draw) -> str:
    probes = []
    for i in range(draw(st.integers(1, 3))):
        target = draw(st.sampled_from(sorted(VALID)))
        fields, numeric = VALID[target]
        lines = [f"probe p{i} = {target}"]
        conds = []
        for _ in range(draw(st.integers(0, 3)) if draw(st.integers(0, 3)) else draw(st.integers(20, 120))):
            choice = draw(st.sampled_from(["num", "lat", "sym", "comm", "arith", "big"]))
            if choice == "num" and numeric:
                f = draw(st.sampled_from(sorted(numeric)))
                unit = draw(st.sampled_from(["", "KiB", "MiB"])) if numeric[f] == "size" else ""
                conds.append(f"{f} {draw(st.sampled_from(CMPS))} {draw(st.integers(0, 4096))}{unit}")
            elif choice == "lat":
                conds.append(
                    f"latency {draw(st.sampled_from(CMPS))} {draw(st.integers(0, 100))}"
                    f"{draw(st.sampled_from(['us', 'ms', 'ns']))}"
                )
            elif choice == "comm":
                conds.append(f'comm {draw(st.sampled_from(["==", "!="]))} "python"')
            elif choice == "arith" and numeric:
                f = draw(st.sampled_from(sorted(numeric)))
                conds.append(f"{f} {draw(st.sampled_from(OPS))} {draw(st.integers(1, 63))} * ts "
                             f"{draw(st.sampled_from(CMPS))} {draw(st.integers(0, 2**40))}")
            elif choice == "big":
                big = draw(st.sampled_from(["0xffffffffffffffff", "18446744073709551615", "0x8000000000000000"]))
                conds.append(f"ts {draw(st.sampled_from(CMPS))} {big}")
            else:
                conds.append("pid != 0")
        if conds:
            joined = conds[0]
            for c in conds[1:]:
                if draw(st.integers(0, 3)):  # flat, as long as the size limit allows
                    joined = f"{joined} {draw(st.sampled_from(['and', 'or']))} {c}"
                else:  # nested, as deep as the nesting limit allows
                    neg, op = draw(st.sampled_from(["not ", ""])), draw(st.sampled_from(["and", "or"]))
                    joined = f"{neg}({joined}) {op} {c}"
            r = check(f"probe x = {target}\n  where {joined}\n", "probe")
            if not r.ok and any("deep" in d.message or "more than" in d.message for d in r.errors):
                joined = conds[0]  # over a limit: that is the other test's business
            lines.append("where " + joined)
        arith = [f"{f} * 3 + ts / 7" for f in sorted(numeric)] + ["(latency >> 3) - ts", "ts << 2"]
        rec = draw(st.lists(st.sampled_from(fields + BUILTIN + arith), unique=True, max_size=12))
        if "retval" in rec and target.endswith("Synchronize"):
            rec.remove("retval")
        if rec:
            lines.append("record " + ", ".join(rec))
        if draw(st.booleans()):
            aggs = ["count"] + [
                f"{f}(latency)"
                for f in draw(st.lists(st.sampled_from(["sum", "min", "max", "hist", "avg"]), unique=True, max_size=4))
            ]
            if draw(st.booleans()):
                aggs.append(f"lhist(latency, 0, {draw(st.integers(1, 999))}us, {draw(st.integers(1, 10))}us)")
            keys = ["pid", "tid", "symbol", "comm", "ts / 1000000000", "pid * 2 + tid"] + fields[:2]
            by = draw(st.lists(st.sampled_from(keys), unique=True, max_size=6))
            lines.append("aggregate " + ", ".join(aggs) + (" by " + ", ".join(by) if by else ""))
        budgets = []
        if draw(st.booleans()):
            budgets.append(f"events {draw(st.integers(1, 1000))}")
        if draw(st.booleans()):
            budgets.append(f"rate {draw(st.integers(1, 1000))}/s")
        if draw(st.booleans()):
            budgets.append(f"ttl {draw(st.integers(1, 100))}s")
        if budgets:
            lines.append("limit " + ", ".join(budgets))
        probes.append("\n    ".join(lines))
    return "\n".join(probes) + "\n"


@pytest.mark.bpf
@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture],
)
@given(valid_specs())
def test_every_spec_that_checks_compiles_and_loads(need_bpf, text):
    from ingero.compiler import compile_spec
    from ingero.runtime.probes import ProbeSession

    r = check(text, "v.probe")
    assume(r.ok)
    session = ProbeSession(compile_spec(r.resolved()))
    try:
        session.load()
    finally:
        session.close()


@settings(max_examples=300, deadline=None)
@given(valid_specs())
def test_the_valid_generator_mostly_checks(text):
    # keeps the load test above meaningful: its generator must produce specs that check
    r = check(text, "v.probe")
    assert r.ok, [(d.line, d.column, d.message) for d in r.errors]
