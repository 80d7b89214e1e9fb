"""Bad specs: each error's line, column, message and hint (the table), and a few rendered in full.

The library is the cu12 runtime wheel's ``libcudart.so.12`` (a test dependency), named by soname so the
checks do not depend on which copy a bare name picks.
"""

from __future__ import annotations

import pytest

from ingero.dsl import SpecError, check, parse, render

L = "libcudart.so.12"

# (spec, line, column, start of the message, start of the hint or None)
BAD = [
    ("probe x libcudart:cudaMalloc", 1, 9, "expected '=' after the probe n", "probe NAME = LIBRARY:SYM"),
    ("probe = libcudart:cudaMalloc", 1, 7, "expected a probe name, found '", "probe NAME = LIBRARY:SYM"),
    ("probe x = libcudart : cudaMalloc", 1, 11, "expected a target LIBRARY:SYMB", "write the library, a col"),
    (f"probe x = {L}:cudaMalloc\n  wher size > 1", 2, 3, "unexpected 'wher': expected a ", "did you mean 'where'?"),
    (f"probe x = {L}:cudaMalloc\n  where size >", 2, 15, "the spec ends too early: expec", "compare with a number (1"),
    (f"probe x = {L}:cudaMalloc\n  where size 1", 2, 14, "expected a comparison (==, !=,", "a condition compares a f"),
    (f"probe x = {L}:cudaMalloc\n  where size == 'a'", 2, 17, "strings are written in double ", 'write "text"'),
    (f"probe x = {L}:cudaMalloc\n  record", 2, 9, "the spec ends too early: expec", "a field name such as cou"),
    (f"probe x = {L}:cudaMalloc\n  limit ttl", 2, 12, "the spec ends too early: expec", "budgets are written: lim"),
    (
        f"probe x = {L}:cudaMalloc\n  aggregate hist(",
        2,
        18,
        "the spec ends too early: expec",
        "a field name such as cou",
    ),
    ("probe x = libcudaart:cudaMalloc", 1, 11, "no library 'libcudaart' found ", "did you mean 'libcudart'"),
    (f"probe x = {L}:cudaMaloc", 1, 27, "libcudart.so.12 has no functio", "did you mean 'cudaMalloc"),
    (f"probe x = {L}:cudaMemcpyAsinc*", 1, 27, "the glob 'cudaMemcpyAsinc*' ma", "did you mean 'cudaMemcpy"),
    (f"probe x = {L}:*\n  limit symbols 100", 1, 27, "'*' matches 435 functions of l", "narrow the glob, or rais"),
    (
        f"probe x = {L}:cudaMemcpyAsync\n  where cont >= 1MiB",
        2,
        9,
        "cudaMemcpyAsync has no argumen",
        "did you mean 'count'?",
    ),
    (
        f"probe x = {L}:cudaMemcpyAsync\n  record count, strem",
        2,
        17,
        "cudaMemcpyAsync has no argumen",
        "did you mean 'stream'?",
    ),
    (
        f"probe x = {L}:cudaMemcpyAsync\n  where kind == cudaMemcpyDeviceToHots",
        2,
        17,
        "'cudaMemcpyDeviceToHots' is ne",
        "did you mean 'cudaMemcpy",
    ),
    (
        f"probe x = {L}:cudaMemcpyAsync\n  where kind == cudaErrorInvalidValue",
        2,
        17,
        "cudaErrorInvalidValue is a val",
        "values of cudaMemcpyKind",
    ),
    (
        f"probe x = {L}:cudaMemcpyAsync\n  where stream >= 1MiB",
        2,
        19,
        "stream is a pointer; 1MiB is a",
        "a pointer compares with ",
    ),
    (
        f"probe x = {L}:cudaMemcpyAsync\n  where count > 5ms",
        2,
        17,
        "5ms is a time but count is not",
        "sizes are written 4KiB, ",
    ),
    (
        f"probe x = {L}:cudaMemcpyAsync\n  where latency > 1MiB",
        2,
        19,
        "latency is a time; 1MiB is a s",
        "write a time: latency > ",
    ),
    (
        f"probe x = {L}:cudaMemcpyAsync\n  where count > 1MB",
        2,
        17,
        "unknown unit 'MB' in '1MB'",
        "did you mean 'MiB' or 'B",
    ),
    (
        f"probe x = {L}:cudaMemcpyAsync\n  where count > -1",
        2,
        17,
        "count is unsigned: it is never",
        "compare with 0 or a posi",
    ),
    (f"probe x = {L}:cudaMemcpyAsync\n  where 1 == 2", 2, 9, "this compares two constants", "compare a field with a v"),
    (
        f'probe x = {L}:cudaMemcpyAsync\n  where count == "big"',
        2,
        18,
        "count is an unsigned integer, ",
        "only char * arguments, c",
    ),
    (
        f'probe x = {L}:cudaMemcpyAsync\n  where symbol == "cudaMemcpy"',
        2,
        19,
        "'cudaMemcpy' is not one of the",
        "did you mean 'cudaMemcpy",
    ),
    (
        f"probe x = {L}:cudaMemcpyAsync\n  where stack == 1",
        2,
        9,
        "stack cannot be compared",
        "record it, or aggregate ",
    ),
    (
        f'probe x = {L}:cudaMemcpyAsync\n  where comm > "python"',
        2,
        9,
        "strings compare only with == a",
        'comm == "..."',
    ),
    (
        f'probe x = {L}:cudaMemcpyAsync\n  where comm == "a-very-long-process-name"',
        2,
        17,
        "the string is 24 bytes; comm h",
        "compare with a string of",
    ),
    (
        f"probe x = {L}:cudaLaunchKernel\n  record gridDim",
        2,
        10,
        "gridDim is a struct (dim3) pas",
        "for example gridDim.x, g",
    ),
    (
        f"probe x = {L}:cudaLaunchKernel\n  record gridDim.w",
        2,
        10,
        "gridDim (dim3) has no member '",
        "its members: x, y, z",
    ),
    (
        f"probe x = {L}:cudaLaunchKernel\n  record stream.x",
        2,
        10,
        "stream is cudaStream_t, not a ",
        "only struct arguments pa",
    ),
    (f"probe x = {L}:cudaMalloc\n  record arg7", 2, 10, "cudaMalloc has only 2 argument", "arg0..arg1"),
    (
        f"probe x = {L}:cudaMalloc\n  aggregate avgg(size)",
        2,
        13,
        "unknown aggregation 'avgg'",
        "did you mean 'avg'",
    ),
    (f"probe x = {L}:cudaMalloc\n  aggregate hist", 2, 13, "hist needs a field", "for example hist(latency"),
    (f"probe x = {L}:cudaMalloc\n  aggregate count(size)", 2, 19, "count takes no field", "count counts calls: aggr"),
    (
        f"probe x = {L}:cudaMalloc\n  aggregate sum(devPtr)",
        2,
        17,
        "sum() needs a number such as a",
        "aggregate by it instead:",
    ),
    (
        f"probe x = {L}:cudaMalloc\n  aggregate count by latency",
        2,
        22,
        "aggregating by latency would m",
        "use hist(latency) to see",
    ),
    (f"probe x = {L}:cudaMalloc\n  limit tll 10s", 2, 9, "unknown budget 'tll'", "did you mean 'ttl'?"),
    (f"probe x = {L}:cudaMalloc\n  limit ttl 10", 2, 13, "ttl needs a time unit, not '10", "write it like ttl 120s ("),
    (f"probe x = {L}:cudaMalloc\n  limit events 10s", 2, 16, "events is a count: write it wi", "events 10"),
    (
        f"probe x = {L}:cudaMalloc\n  limit rate 10/ms",
        2,
        17,
        "rate is per second, not per 'm",
        "write it like rate 1000/",
    ),
    (f"probe x = {L}:cudaMalloc\n  limit ttl 10s, ttl 20s", 2, 18, "budget 'ttl' given twice", "keep one of them"),
    (
        f"probe x = {L}:cudaMalloc\n  where size > 1\n  where size < 9",
        3,
        3,
        "a second where clause in probe",
        "join the conditions with",
    ),
    (f"probe x = {L}:cudaMalloc\nprobe x = {L}:cudaFree", 2, 7, "a second probe named 'x'", "the first is on line 1; "),
    (f"probe x = {L}:cudaMalloc\n  record size, size", 2, 16, "'size' is recorded twice", "list each field once"),
    (f"probe x = {L}:cudaMalloc(u64 a, q32 b)", 1, 45, "unknown type 'q32'", "did you mean 'u32' or 'i"),
    (f"probe x = {L}:cudaMalloc(u64 a, u64 a)", 1, 49, "argument 'a' declared twice", "give each argument its o"),
    (f"probe x = {L}:cudaMalloc(u64 latency)", 1, 42, "'latency' is a built-in field ", "call the argument someth"),
    (f"probe x = {L}:cudaMalloc({{u32 x, str s}} p)", 1, 46, "unknown member type 'str'", "did you mean 'ptr'?"),
    ("probe x = /no/such/lib.so:foo", 1, 11, "no such file: /no/such/lib.so", "give an existing path, a"),
    (
        "probe x = libz.so.1:compress2\n  record level",
        2,
        10,
        "compress2 has no known signatu",
        "use arg0..arg5, or decla",
    ),
    (
        f"probe x = {L}:cudaDeviceReset\n  record retval\n  where retval == cudaMemcpyHostToDevice",
        3,
        19,
        "cudaMemcpyHostToDevice is a va",
        "did you mean 'cudaErrorN",
    ),
    (f"probe x = {L}:cudaMemcpy*\n  record count", 2, 10, "'count' is not an argument of ", "narrow the glob so that "),
    (f"probe x = {L}:cudaMalloc\n  where size > 1.5", 2, 16, "'1.5' is not a whole number", "fields hold whole number"),
    (
        f"probe x = {L}:cudaMalloc\n  where size > 0x10KiB",
        2,
        20,
        "expected a comparison (==, !=,",
        "a condition compares a f",
    ),
    ("", 1, 1, "the spec has no probe", "start one with: probe NA"),
    (
        f"probe x = {L}:cudaMalloc\n  where size > 99999999999999999999999",
        2,
        16,
        "'99999999999999999999999' does",
        "the largest value is 184",
    ),
    (
        f"probe x = {L}:cudaGetDeviceProperties\n  record prop.name",
        2,
        10,
        "prop is struct cudaDeviceProp ",
        "members of a struct pass",
    ),
]


@pytest.mark.parametrize("spec,line,column,message,hint", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_spec(spec, line, column, message, hint):
    r = check(spec, "t.probe")
    assert not r.ok and r.spec is None
    d = r.errors[0]
    assert (d.line, d.column) == (line, column), render(r.errors, r.source)
    assert d.message.startswith(message), d.message
    if hint is None:
        assert d.hint is None
    else:
        assert d.hint and d.hint.startswith(hint), d.hint
    with pytest.raises(SpecError):
        r.resolved()


def test_the_table_is_large_enough():
    assert len(BAD) >= 40


def test_rendered_like_a_compiler():
    r = check(f"# copies\nprobe x = {L}:cudaMemcpyAsync\n\twhere cont >= 1MiB\n", "big.probe")
    assert render(r.errors, r.source) == (
        "big.probe:3:8-11: error: cudaMemcpyAsync has no argument 'cont'\n"
        "        where cont >= 1MiB\n"
        "              ~~~~\n"
        "hint: did you mean 'count'?"
    )


def test_syntax_error_rendered():
    with pytest.raises(SpecError) as e:
        parse("probe x = libcudart:cudaMalloc\n  wher size > 1", "s.probe")
    assert str(e.value) == (
        "s.probe:2:3-6: error: unexpected 'wher': expected a clause (where, record, aggregate, limit) or a new probe\n"
        "      wher size > 1\n"
        "      ~~~~\n"
        "hint: did you mean 'where'?"
    )


def test_every_error_of_a_stage_is_reported():
    r = check(f"probe x = {L}:cudaMemcpyAsync\n  record cont, strem, kinf\n", "t")
    assert [(d.line, d.column) for d in r.errors] == [(2, 10), (2, 16), (2, 23)]
    assert [d.hint for d in r.errors] == ["did you mean 'count'?", "did you mean 'stream'?", "did you mean 'kind'?"]


def test_errors_of_several_probes_are_all_reported_and_sorted():
    r = check(f"probe a = {L}:cudaMaloc\nprobe b = {L}:cudaFree\n  limit tll 1s\n", "t")
    assert [(d.line, d.message.split()[0]) for d in r.errors] == [(1, "libcudart.so.12"), (3, "unknown")]
