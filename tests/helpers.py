"""Test helpers: drive the bundled CUDA workload as a child process, step by step."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys


class Workload:
    """``python -m ingero.workload`` as a child; ``go()`` releases it past its next wait point."""

    def __init__(self, *args: str, wait_load: bool = False, wait_calls: bool = True, env=None):
        cmd = [sys.executable, "-m", "ingero.workload", *args]
        if wait_load:
            cmd.append("--wait-load")
        if wait_calls:
            cmd.append("--wait-calls")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
        self.pid = self.proc.pid
        self.lines: list[str] = []

    def expect(self, prefix: str) -> str:
        """Read status lines until one starts with ``prefix``; return it."""
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"workload exited before '{prefix}': {self.lines}")
            line = line.rstrip("\n")
            self.lines.append(line)
            if line.startswith(prefix):
                return line

    def go(self) -> None:
        os.kill(self.pid, signal.SIGUSR1)

    def finish(self, timeout: float = 30) -> dict:
        line = self.expect("done ")
        self.proc.wait(timeout=timeout)
        return json.loads(line[len("done "):])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> Workload:
        return self

    def __exit__(self, *exc) -> None:
        self.kill()
