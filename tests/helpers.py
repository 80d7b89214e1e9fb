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


def python_for(uid: int) -> str | None:
    """An interpreter of this Python version that ``uid`` can run (the venv's may live under /root)."""
    ver = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for cand in (sys.executable, f"/usr/bin/{ver}", f"/usr/local/bin/{ver}"):
        try:
            r = subprocess.run([cand, "-c", "print(1)"], capture_output=True, user=uid, group=uid, timeout=30)
        except OSError:
            continue
        if r.returncode == 0:
            return cand
    return None


def wait_for_port(proc: subprocess.Popen, port: int, timeout: float) -> subprocess.Popen:
    """Return ``proc`` once something listens on 127.0.0.1:``port``; fail with its stderr if it exits."""
    import socket
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            if proc.poll() is not None:
                raise AssertionError(proc.stderr.read()) from None
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("the HTTP server did not start")


TORCH_FIXTURE_DEFAULT = "/var/cache/ingero-fixtures/torch-2.14.1-py3.11"


def torch_python():
    """The PyTorch fixture's interpreter (``make torch-fixture``, also run by ``make test``).

    Skips when the fixture is missing, except under CI=true, where it fails with the reason.
    """
    from pathlib import Path

    from tests.conftest import skip_or_fail

    root = Path(os.environ.get("TORCH_FIXTURE", TORCH_FIXTURE_DEFAULT))
    if not (root / ".ready").exists():
        skip_or_fail(f"the PyTorch fixture is not built at {root} (run: make torch-fixture)")
    return root / "bin" / "python"
