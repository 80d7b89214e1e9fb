"""A command started held just before its ``exec``, so that probes can attach to its pid before the
program's first instruction runs (``ingero trace -- CMD``, ``ingero probe run -- CMD``, the benchmarks).

The child is a small Python that waits on a pipe, then ``exec``\\ s the command (the pid survives the
exec); :meth:`HeldCommand.release` lets it go, :meth:`HeldCommand.cancel` ends it without ever running
the command. ``subprocess.Popen`` alone cannot hold a child: it returns after the exec.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence

from ingero.errors import IngeroError

#: exit status of a held child that was cancelled (as a shell's "command not run")
CANCELLED = 127

_GATE = (
    "import os, sys\n"
    "r = int(sys.argv[1])\n"
    "go = os.read(r, 1)\n"
    "os.close(r)\n"
    f"os.execv(sys.argv[2], sys.argv[3:]) if go else os._exit({CANCELLED})\n"
)


class HeldCommand:
    """``detached``: in a session of its own, so a signal to ingero's process group (an MCP client ending
    its server) does not reach it."""

    def __init__(self, command: Sequence[str], stdout=None, *, detached: bool = False) -> None:
        if not command:
            raise IngeroError("no command to run", hint="give it after --: ingero trace -- python train.py")
        exe = shutil.which(command[0])
        if exe is None:
            raise IngeroError(f"cannot run {command[0]}: command not found")
        r, self._w = os.pipe()
        try:
            self.proc = subprocess.Popen([sys.executable, "-c", _GATE, str(r), exe, *command], pass_fds=(r,),
                                         stdout=stdout, start_new_session=detached)
        except OSError as e:
            os.close(self._w)
            raise IngeroError(f"cannot start {command[0]}: {e.strerror}") from e
        finally:
            os.close(r)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def release(self) -> None:
        """Let the command run (once; later calls do nothing)."""
        self._close(b"x")

    def cancel(self) -> None:
        """End the held child without running the command (exit status :data:`CANCELLED`)."""
        self._close(b"")

    def _close(self, byte: bytes) -> None:
        if self._w < 0:
            return
        try:
            if byte:
                os.write(self._w, byte)
        finally:
            os.close(self._w)
            self._w = -1


def spawn_gated(command: Sequence[str], stdout=None, *, detached: bool = False) -> HeldCommand:
    """Start ``command`` held before its exec (see :class:`HeldCommand`)."""
    return HeldCommand(command, stdout=stdout, detached=detached)
