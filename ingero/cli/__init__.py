"""The ingero command line: a thin shell over the library.

Subcommands live in their own modules under ``ingero.cli`` and are imported only when invoked, so
``ingero symbols ...`` does not pay for the MCP SDK or bcc imports (start-up is measured in bench/).
To add a command, add one line to ``COMMANDS``: ``"name": ("ingero.cli.module", "attribute")``.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from ingero.errors import DEBUG_ENV, IngeroError, debugging, exit_code, render

COMMANDS: dict[str, tuple[str, str]] = {
    "libs": ("ingero.cli.symbols_cmd", "libs"),
    "symbols": ("ingero.cli.symbols_cmd", "symbols"),
    "describe": ("ingero.cli.symbols_cmd", "describe"),
    "mcp": ("ingero.cli.mcp_cmd", "mcp"),
    "stats": ("ingero.cli.replay_cmd", "stats"),
    "chains": ("ingero.cli.replay_cmd", "chains"),
    "stacks": ("ingero.cli.replay_cmd", "stacks"),
    "check": ("ingero.cli.replay_cmd", "check"),
    "explain": ("ingero.cli.replay_cmd", "explain"),
    "query": ("ingero.cli.replay_cmd", "query"),
    "audit": ("ingero.cli.replay_cmd", "audit"),
    "demo": ("ingero.cli.demo_cmd", "demo"),
    "probe": ("ingero.cli.probe_cmd", "probe"),
    "export": ("ingero.cli.export_cmd", "export"),
    "selftest": ("ingero.cli.selftest_cmd", "selftest"),
    "trace": ("ingero.cli.trace_cmd", "trace"),
    "fleet": ("ingero.cli.fleet_cmd", "fleet"),
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(COMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in COMMANDS:
            module, attr = COMMANDS[cmd_name]
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context):
        # click turns a closed output pipe into exit 1; a reader that stopped early (`| head`) is no error
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            _stdout_closed()
            return None


def _stdout_closed() -> None:
    """The reader of stdout went away (``ingero symbols ... | head -1``): what is still buffered, and
    anything written later, goes to /dev/null, so that the exit is quiet and 0 like a finished listing
    (Python would otherwise report the failed flush at exit and exit 120)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no file behind sys.stdout
        pass
    finally:
        os.close(devnull)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ingero")
@click.option("--debug", is_flag=True, help="Show the traceback of an internal error (also: INGERO_DEBUG=1).")
def cli(debug: bool) -> None:
    """Trace CUDA workloads with eBPF and widen the tracing mid-investigation."""
    if debug:
        os.environ[DEBUG_ENV] = "1"


def usage_error(e: click.ClickException) -> IngeroError:
    """A mistake on the command line (an unknown option or command, a missing argument, a bad value) as
    the user error it is: click's own message, its did-you-mean as the hint, else where the help is."""
    ctx = getattr(e, "ctx", None)
    where = f"see `{ctx.command_path} --help`" if ctx is not None else "see `ingero --help`"
    possible = getattr(e, "possibilities", None)  # an unknown option's close matches
    if possible:
        return IngeroError(e.message, "did you mean " + " or ".join(f"'{p}'" for p in possible) + "?")
    message, _, maybe = e.format_message().partition(" Did you mean ")  # an unknown command's
    return IngeroError(message, f"did you mean {maybe}" if maybe else where)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI. A user error (:class:`~ingero.errors.IngeroError`, and a mistake on the command line)
    prints ``error:``/``hint:`` and exits 1; an internal one exits 2, with its traceback under ``--debug``
    or ``INGERO_DEBUG=1``."""
    try:
        cli.main(args=argv, prog_name="ingero", standalone_mode=False)
        sys.stdout.flush()  # here, not at exit: a closed pipe is then one more BrokenPipeError below
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.exceptions.NoArgsIsHelpError as e:  # a group without its subcommand: its help, as a mistake
        click.echo(e.format_message(), err=True)
        sys.exit(1)
    except click.ClickException as e:
        click.echo(render(usage_error(e)), err=True)
        sys.exit(1)
    except BrokenPipeError:
        _stdout_closed()
        sys.exit(0)
    except Exception as e:  # noqa: BLE001 - the shell: every error is shown one way, bugs included
        code = exit_code(e)
        if code != 1 and debugging():
            import traceback

            traceback.print_exception(e)
        click.echo(render(e), err=True)
        sys.exit(code)
