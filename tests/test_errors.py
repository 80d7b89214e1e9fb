"""One error tree, shown one way: a user error exits 1 with ``error:``/``hint:`` once and no traceback;
an internal error (the kernel refusing a program ingero generated) exits 2, with the traceback under
``--debug`` or ``INGERO_DEBUG=1``; the CLI and the MCP server show the same error the same way; the
compiler's guards hold under ``python -O``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from ingero.errors import IngeroError, InternalError, exit_code, render
from tests.replay_helpers import DATALOADER, stdio_session, text_of

INGERO = str(Path(sys.executable).parent / "ingero")


def _run(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k != "INGERO_DEBUG"} | (env or {})
    return subprocess.run(args, capture_output=True, text=True, env=full, timeout=timeout)


def test_a_user_error_exits_1_with_error_and_hint_once():
    out = _run(INGERO, "symbols", "libcudartt")
    assert out.returncode == 1
    lines = out.stderr.splitlines()
    assert lines[0] == "error: no library 'libcudartt' found on this machine's search paths"
    assert [x for x in lines if x.startswith("hint: ")] == [lines[1]] and "libcudart" in lines[1]
    assert "Traceback" not in out.stderr and len(lines) == 2


def test_a_spec_error_through_the_cli_says_error_once_per_diagnostic(need_bpf, tmp_path):
    spec = tmp_path / "bad.probe"
    spec.write_text("probe a = libcudart:cudaMalloc\n  where sise > 1\n")
    out = _run(INGERO, "trace", "--db", str(tmp_path / "t.db"), "--probe", str(spec), "--", "true")
    assert out.returncode == 1, out.stderr
    assert f"{spec}:2:9-12: error: cudaMalloc has no argument 'sise'" in out.stderr
    assert "error: " + str(spec) not in out.stderr  # not "error: bad.probe:2:9-12: error: ..."
    assert out.stderr.count("error:") == 1 and out.stderr.count("hint:") == 1
    assert "Traceback" not in out.stderr


#: ``ingero`` whose compiler output has one read of address 0x10 added: the real verifier refuses it, which
#: is what a bug in the code generator looks like to the user.
BROKEN_COMPILER = """
import dataclasses, sys
import ingero.compiler as compiler
real = compiler.compile_spec
def broken(spec, **kw):
    out = real(spec, **kw)
    head = "int p0_entry(struct pt_regs *ctx) {"
    assert head in out.c_text
    return dataclasses.replace(out, c_text=out.c_text.replace(head, head + " if (*(volatile u64 *)0x10) return 1;", 1))
compiler.compile_spec = broken
from ingero.cli import main
main(sys.argv[1:])
"""


@pytest.mark.parametrize("debug", ["", "--debug", "INGERO_DEBUG=1"])
def test_an_internal_error_exits_2_and_shows_the_traceback_only_when_asked(need_bpf, tmp_path, debug):
    spec = tmp_path / "s.probe"
    spec.write_text("probe a = libcudart:cudaMalloc\n  aggregate count\n")
    args = ["probe", "run", str(spec), "--", "true"]
    env = {"INGERO_DEBUG": "1"} if debug.startswith("INGERO_DEBUG") else {}
    out = _run(sys.executable, "-c", BROKEN_COMPILER, *(["--debug"] if debug == "--debug" else []), *args, env=env)
    assert out.returncode == 2, out.stderr
    assert "internal error: the kernel refused the generated BPF program" in out.stderr
    assert "hint: this is a bug in ingero" in out.stderr
    if debug:
        assert "Traceback (most recent call last)" in out.stderr and "InternalError" in out.stderr
    else:
        assert "Traceback" not in out.stderr and "run again with --debug or INGERO_DEBUG=1" in out.stderr


@pytest.mark.parametrize(("args", "error", "hint"), [
    (("trace", "--stak", "--", "true"), "No such option '--stak'.", "did you mean '--stacks' or '--no-stacks'?"),
    (("symbols",), "Missing argument 'LIBRARY'.", "see `ingero symbols --help`"),
    (("stacks", "--db", "x.db", "--limit", "many"), "Invalid value for '--limit': 'many' is not a valid integer.",
     "see `ingero stacks --help`"),
    (("probe", "chek"), "No such command 'chek'.", "did you mean 'check'?"),
])
def test_a_mistake_on_the_command_line_is_a_user_error(args, error, hint):
    """click's usage errors exit 1 like every user error (2 is an internal error's), shown the same way."""
    out = _run(INGERO, *args)
    assert (out.returncode, out.stdout, out.stderr) == (1, "", f"error: {error}\nhint: {hint}\n")


#: ``ingero stats`` with a bug planted where it opens the database (a KeyError, as a bug would raise)
PLANTED_BUG = """
import sys
import ingero.store.reader as reader
def broken(cls, path, **kw):
    raise KeyError("planted")
reader.TraceReader.open = classmethod(broken)
from ingero.cli import main
main(sys.argv[1:])
"""


@pytest.mark.parametrize("debug", ["", "--debug", "INGERO_DEBUG=1"])
def test_a_bug_exits_2_and_shows_its_traceback_only_when_asked(debug):
    env = {"INGERO_DEBUG": "1"} if debug.startswith("INGERO_DEBUG") else {}
    out = _run(sys.executable, "-c", PLANTED_BUG, *(["--debug"] if debug == "--debug" else []),
               "stats", "--db", str(DATALOADER), env=env)
    assert out.returncode == 2, out.stderr
    assert "internal error: KeyError: 'planted'\nhint: this is a bug in ingero: please report it" in out.stderr
    if debug:
        assert "Traceback (most recent call last)" in out.stderr and "in broken\nKeyError: 'planted'" in out.stderr
    else:
        assert "Traceback" not in out.stderr and "run again with --debug or INGERO_DEBUG=1" in out.stderr


def test_exit_codes_and_rendering_of_the_tree():
    assert exit_code(IngeroError("x")) == 1 and exit_code(InternalError("x")) == 2 and exit_code(KeyError(1)) == 2
    assert render(IngeroError("no such thing", hint="try that")) == "error: no such thing\nhint: try that"
    assert render(KeyError("k")).startswith("internal error: KeyError: 'k'\nhint: this is a bug in ingero")


def test_the_same_error_renders_the_same_in_the_cli_and_over_mcp(tmp_path):
    query = "DELETE FROM events"
    cli = _run(INGERO, "query", "--db", str(DATALOADER), query)
    assert cli.returncode == 1

    async def main():
        async with stdio_session(DATALOADER, tmp_path / "audit.db") as s:
            return await s.call_tool("run_sql", {"query": query})

    res = anyio.run(main)
    assert res.is_error
    # the MCP SDK puts its own envelope around every tool error; inside it, the CLI's very text
    assert text_of(res) == "Error executing tool run_sql: " + cli.stderr.rstrip("\n")
    assert cli.stderr.startswith("error: DELETE on events is not allowed")


#: Compiles a checked probe whose comparison was tampered with after the checker (an operator that is
#: no C operator, an aggregation that does not exist), under ``python -O`` (asserts removed).
TAMPERED = """
import dataclasses, sys
from ingero.compiler import compile_spec
from ingero.dsl import check
from ingero.dsl.resolved import RAgg
from ingero.errors import InternalError
spec = check("probe a = libcudart:cudaMalloc\\n  where size > 1\\n  aggregate count\\n", "t").resolved()
p = spec.probes[0]
bad = {
    "op": dataclasses.replace(p, filter=dataclasses.replace(p.filter, op="); evil(")),
    "agg": dataclasses.replace(p, aggregates=(RAgg("system", "size"),)),
}[sys.argv[1]]
try:
    compile_spec(dataclasses.replace(spec, probes=(bad,)))
except InternalError as e:
    print("refused:", e.message)
    sys.exit(0)
print("compiled")
sys.exit(1)
"""


@pytest.mark.parametrize("what", ["op", "agg"])
def test_codegen_guards_hold_under_python_O(what):
    out = _run(sys.executable, "-O", "-c", TAMPERED, what)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith("refused: the compiler was given a probe it cannot compile") or (
        out.stdout.startswith("refused: aggregation 'system' is not one the compiler knows")
    )


def test_the_compiler_knows_every_aggregation_the_checker_accepts():
    from ingero.compiler.codegen import AGGS
    from ingero.dsl.outputs import AGG_FUNCS

    assert set(AGGS) == set(AGG_FUNCS)
