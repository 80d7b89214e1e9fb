"""What this kernel and machine can do for ingero, and a one-line reason when it cannot.

uprobe_multi links (``BPF_TRACE_UPROBE_MULTI``) arrived in Linux 6.6; batched unregistering (fast
detach) in 6.12. There is deliberately no fallback to classic perf-event uprobes: they cannot carry an
attach cookie and take ~0.1 s per probe to detach (see docs/architecture.md).
"""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

MIN_KERNEL = (6, 6)
TRACEFS = Path("/sys/kernel/tracing")


def kernel_version(release: str | None = None) -> tuple[int, int]:
    """(major, minor) of the running kernel, from ``uname -r`` such as ``6.18.44-fc-v669``."""
    m = re.match(r"(\d+)\.(\d+)", release or platform.release())
    if not m:
        return (0, 0)
    return (int(m.group(1)), int(m.group(2)))


def headers_dir(release: str | None = None) -> Path:
    return Path("/lib/modules") / (release or platform.release()) / "build"


def uprobe_multi_problem(release: str | None = None) -> str | None:
    """Why this kernel cannot attach uprobe_multi links, or None."""
    kv = kernel_version(release)
    if kv < MIN_KERNEL:
        return (
            f"kernel {'.'.join(map(str, kv))} is too old: ingero attaches uprobes as uprobe_multi links, "
            f"which need Linux {MIN_KERNEL[0]}.{MIN_KERNEL[1]} or newer"
        )
    return None


def bpf_problem() -> str | None:
    """One line saying why BPF tracing cannot run here, or None when it can (root, kernel, bcc, headers)."""
    if os.geteuid() != 0:
        return "BPF tracing needs root (CAP_SYS_ADMIN); run as root or with sudo"
    problem = uprobe_multi_problem()
    if problem:
        return problem
    if not Path("/sys/fs/bpf").exists() and not Path("/proc/sys/kernel/unprivileged_bpf_disabled").exists():
        return "this kernel has no BPF support (no /proc/sys/kernel/unprivileged_bpf_disabled)"
    try:
        import bcc  # noqa: F401
    except ImportError:
        return "the bcc Python package is missing (Debian: python3-bpfcc; `make setup` links it into the venv)"
    if not (headers_dir() / "include" / "generated" / "autoconf.h").exists():
        return f"no kernel header tree at {headers_dir()} (BCC needs one; `make setup` links Debian's)"
    return None
