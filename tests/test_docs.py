"""Every command shown in README.md and docs/*.md runs, and its output is what the docs show.

A ```console block holds ``$ command`` lines, each followed by its expected output. The command runs
from the project root with the venv's ``bin`` first on PATH. Expected output matches line by line;
``...`` on a line of its own matches any number of lines, and ``...`` inside a line matches any text
(paths, timings). Commands that are not run (long ones such as ``make test``, or ones that need an outside
service) must sit in a ```sh block whose first line is a ``# not run by the docs test: <why>`` comment; any
other fenced block that shows an ``ingero`` or ``make`` command fails this test, so nothing slips through.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```", re.S | re.M)
NOT_RUN = "# not run by the docs test:"


def console_examples() -> list[tuple[str, int, str, list[str]]]:
    out = []
    for doc in DOCS:
        text = doc.read_text()
        for m in FENCE.finditer(text):
            lang, body = m.group(1).strip(), m.group(2)
            line0 = text[: m.start()].count("\n") + 2
            if lang != "console":
                continue
            cmd, expected, start = None, [], line0
            for i, line in enumerate(body.splitlines()):
                if line.startswith("$ "):
                    if cmd is not None:
                        out.append((f"{doc.relative_to(ROOT)}:{start}", start, cmd, expected))
                    cmd, expected, start = line[2:], [], line0 + i
                elif cmd is not None:
                    expected.append(line)
            if cmd is not None:
                out.append((f"{doc.relative_to(ROOT)}:{start}", start, cmd, expected))
    return out


def line_matches(pattern: str, line: str) -> bool:
    if "..." not in pattern:
        return pattern.rstrip() == line.rstrip()
    rx = ".*".join(re.escape(part) for part in pattern.rstrip().split("..."))
    return re.fullmatch(rx, line.rstrip()) is not None


def output_matches(expected: list[str], actual: list[str]) -> bool:
    """Match with ``...`` lines as 'any number of lines' (simple backtracking)."""
    if not expected:
        return all(not a.strip() for a in actual)
    head, rest = expected[0], expected[1:]
    if head.strip() == "...":
        return any(output_matches(rest, actual[i:]) for i in range(len(actual) + 1))
    return bool(actual) and line_matches(head, actual[0]) and output_matches(rest, actual[1:])


EXAMPLES = console_examples()


@pytest.mark.parametrize("where,line,cmd,expected", EXAMPLES, ids=[e[0] for e in EXAMPLES])
def test_doc_command(where, line, cmd, expected):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", COLUMNS="120")
    r = subprocess.run(cmd, shell=True, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    actual = (r.stdout + r.stderr).rstrip("\n").splitlines()
    assert output_matches(expected, actual), (
        f"{where}: `{cmd}` printed:\n" + "\n".join(actual) + "\n\nthe docs show:\n" + "\n".join(expected)
    )


def test_docs_have_examples_and_mark_every_unrun_command():
    assert len(EXAMPLES) >= 3, "the README and docs show runnable examples"
    for doc in DOCS:
        text = doc.read_text()
        for m in FENCE.finditer(text):
            lang, body = m.group(1).strip(), m.group(2)
            if lang == "console":
                continue
            shows_cmd = re.search(r"^\s*(\$ )?(sudo )?(ingero|make)( |$)", body, re.M)
            if shows_cmd:
                assert body.lstrip().startswith(NOT_RUN), (
                    f"{doc.relative_to(ROOT)}: a ```{lang} block shows `{shows_cmd.group(0).strip()}` "
                    f"but is neither a ```console example nor marked '{NOT_RUN} <why>'"
                )


def test_matcher_can_fail():
    assert output_matches(["a", "...", "d"], ["a", "b", "c", "d"])
    assert output_matches(["size ... bytes"], ["size 1048576 bytes"])
    assert not output_matches(["a", "b"], ["a", "c"])
    assert not output_matches(["a"], ["a", "extra"])
