"""Benchmarks never hang: every child has a deadline, one that ignores its signal is killed, and the
report says so.

``stop(proc, name)`` ends a child (its signal, then SIGKILL after a grace period) and ``run_group(cmd,
timeout)`` runs a whole benchmark in its own process group and kills the group at the deadline; every
``subprocess.run`` in bench/ passes ``timeout=``. Whatever had to be forced is kept in ``NOTES``; each
benchmark prints ``notes_markdown()`` at the end of its section.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass

GRACE_S = 5.0
NOTES: list[str] = []


def stop(proc: subprocess.Popen, name: str, sig: int = signal.SIGTERM, grace: float = GRACE_S) -> bool:
    """End ``proc`` with ``sig``; SIGKILL it if it is still there after ``grace`` s. True if it was killed."""
    if proc.poll() is not None:
        return False
    proc.send_signal(sig)
    try:
        proc.wait(timeout=grace)
        return False
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=grace)
        NOTES.append(f"{name} ignored {signal.Signals(sig).name} for {grace:g} s and was killed")
        return True


@dataclass(frozen=True)
class Finished:
    """How a benchmark process ended."""

    returncode: int | None  # None: it ran past its deadline and was killed
    stdout: str
    stderr: str
    seconds: float
    note: str = ""


def run_group(cmd: list[str], timeout: float, cwd=None) -> Finished:
    """Run ``cmd`` in a process group of its own; at ``timeout`` SIGTERM the group, SIGKILL it after the grace."""
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        return Finished(proc.returncode, out, err, time.monotonic() - t0)
    except subprocess.TimeoutExpired:
        pass
    note = f"timed out after {timeout:g} s: sent SIGTERM to its process group"
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=GRACE_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        note += f", which ignored it for {GRACE_S:g} s and was killed"
    return Finished(None, out, err, time.monotonic() - t0, note)


def notes_markdown() -> str:
    """The forced stops of this run, as a paragraph for the report ('' when there were none)."""
    return "".join(f"\n_Note: {n}._\n" for n in NOTES)
