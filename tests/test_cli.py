"""The command line as a whole: every registered command loads and documents itself."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from ingero.cli import COMMANDS, cli


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_loads_and_has_help_with_an_example(name):
    r = CliRunner().invoke(cli, [name, "--help"])
    assert r.exit_code == 0, r.output
    assert f"Usage: cli {name}" in r.output or f"Usage: ingero {name}" in r.output
    group = cli.get_command(None, name)  # a group's examples are in the help of its subcommands
    paths = [[name, sub] for sub in group.commands] if isinstance(group, click.Group) else [[name]]
    for path in paths:
        out = CliRunner().invoke(cli, [*path, "--help"]).output
        lines = [x.strip() for x in out.splitlines()]
        assert "Example:" in lines or "Examples:" in lines, f"ingero {' '.join(path)} --help has no example"
        examples = lines[lines.index("Example:" if "Example:" in lines else "Examples:") + 1:]
        assert any(x.removeprefix("sudo ").startswith("ingero " + " ".join(path)) for x in examples), out


def test_top_level_help_lists_every_command():
    out = subprocess.run([str(Path(sys.executable).parent / "ingero"), "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for name in COMMANDS:
        assert f"  {name}" in out.stdout


def test_unknown_command_is_a_clean_error():
    out = subprocess.run([str(Path(sys.executable).parent / "ingero"), "symbolz"], capture_output=True, text=True)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr == "error: No such command 'symbolz'.\nhint: see `ingero --help`\n"
