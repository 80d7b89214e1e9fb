"""Facts about this host, in one place: what a trace session records about the machine
(:func:`session_facts`), and the system diagnostics of ``ingero check`` / ``get_check`` in upstream's
order (:func:`run_all_checks`: kernel, BTF, NVIDIA driver, GPU, CUDA runtime and driver libraries, CUDA
processes, privileges, ptrace_scope). Reads /proc, /sys and /etc only; never needs root."""

from __future__ import annotations

import glob
import os
import platform
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    value: str = ""
    detail: str = ""
    optional: bool = False
    recommendation: str = ""

    @property
    def status(self) -> str:
        if self.passed:
            return "PASS"
        return "INFO" if self.optional else "FAIL"


def _kernel() -> Check:
    rel = platform.release()
    m = re.match(r"(\d+)\.(\d+)", rel)
    ok = bool(m) and (int(m.group(1)), int(m.group(2))) >= (5, 15)
    return Check("Kernel version", ok, rel, "" if ok else "needs 5.15+", recommendation="" if ok else
                 "upgrade to a kernel >= 5.15 (uprobe_multi needs 6.6+)")


def _btf() -> Check:
    ok = Path("/sys/kernel/btf/vmlinux").exists()
    return Check("BTF support", ok, "/sys/kernel/btf/vmlinux" if ok else "",
                 "" if ok else "/sys/kernel/btf/vmlinux not found")


def _driver() -> Check:
    p = Path("/proc/driver/nvidia/version")
    try:
        text = p.read_text()
    except OSError:
        return Check("NVIDIA driver", False, "", "no /proc/driver/nvidia/version (no NVIDIA driver loaded)")
    m = re.search(r"Kernel Module\s+(?:for \S+\s+)?([\d.]+)", text)
    return Check("NVIDIA driver", True, m.group(1) if m else text.splitlines()[0][:80])


def _gpu() -> Check:
    models = []
    for info in sorted(glob.glob("/proc/driver/nvidia/gpus/*/information")):
        try:
            m = re.search(r"Model:\s*(.+)", Path(info).read_text())
        except OSError:
            continue
        if m:
            models.append(m.group(1).strip())
    if models:
        return Check("GPU model", True, ", ".join(models))
    return Check("GPU model", False, "", "no NVIDIA GPU found")


def _ldconfig(name: str) -> list[str]:
    try:
        out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return sorted({line.split("=>")[-1].strip() for line in out.splitlines() if name in line})


def _cudart() -> Check:
    found = _ldconfig("libcudart.so")
    import sysconfig

    site = sysconfig.get_paths().get("purelib", "")
    found += sorted(glob.glob(os.path.join(site, "nvidia", "cu*", "lib", "libcudart.so*")))
    found += sorted(glob.glob(os.path.join(site, "nvidia", "cuda_runtime", "lib", "libcudart.so*")))
    found += sorted(glob.glob("/usr/local/cuda*/lib64/libcudart.so*"))
    found = list(dict.fromkeys(found))
    if found:
        return Check("CUDA runtime", True, found[0], f"{len(found)} copies found" if len(found) > 1 else "")
    return Check("CUDA runtime", False, "", "libcudart.so not found")


def _libcuda() -> Check:
    found = _ldconfig("libcuda.so") + sorted(glob.glob("/usr/lib/*-linux-gnu/libcuda.so*"))
    found = list(dict.fromkeys(found))
    if found:
        return Check("CUDA driver (libcuda.so)", True, found[0])
    return Check("CUDA driver (libcuda.so)", False, "",
                 "libcuda.so not found (installed with the NVIDIA driver)")


def _processes() -> Check:
    pids = []
    for maps in glob.glob("/proc/[0-9]*/maps"):
        try:
            with open(maps) as f:
                if "libcudart.so" in f.read():
                    pids.append(maps.split("/")[2])
        except OSError:
            continue
    if pids:
        listed = " ".join(sorted(pids, key=int)[:10])
        return Check("CUDA processes", True, f"{len(pids)} running", f"pids {listed}")
    return Check("CUDA processes", True, "none running")


def _privileges() -> Check:
    if os.geteuid() == 0:
        return Check("Privileges", True, "root", optional=True)
    return Check("Privileges", False, f"uid {os.geteuid()}", "tracing needs root (or CAP_BPF+CAP_PERFMON)",
                 optional=True)


def _ptrace() -> Check:
    try:
        v = Path("/proc/sys/kernel/yama/ptrace_scope").read_text().strip()
    except OSError:
        return Check("ptrace_scope", True, "not set (no Yama)", optional=True)
    return Check("ptrace_scope", v in ("0", "1"), v, "" if v in ("0", "1") else
                 "ptrace restricted: Python frame walking needs ptrace_scope <= 1", optional=True)


def run_all_checks() -> tuple[Check, ...]:
    return tuple(f() for f in (_kernel, _btf, _driver, _gpu, _cudart, _libcuda, _processes, _privileges,
                               _ptrace))


def format_checks(checks: tuple[Check, ...]) -> str:
    """Upstream's MCP text: ``[PASS|FAIL|INFO] Name: value-or-detail``, one line each."""
    return "".join(f"[{c.status}] {c.name}: {c.value or c.detail}\n" for c in checks)


# -- what a trace session records about the host ----------------------------------------------------------
def session_facts() -> dict[str, object]:
    """CPU, memory, kernel, OS, Python and ingero version, as the ``sessions`` row's fields."""
    mem = proc_value("/proc/meminfo", "MemTotal").split()
    return {
        "cpu_cores": os.cpu_count() or 0,
        "cpu_model": proc_value("/proc/cpuinfo", "model name"),
        "mem_total_mb": int(mem[0]) // 1024 if mem and mem[0].isdigit() else 0,
        "kernel": platform.release(),
        "os_release": os_release(),
        "python_ver": platform.python_version(),
        "ingero_ver": ingero_version(),
    }


def proc_value(path: str, key: str) -> str:
    """The value of ``key: value`` in a /proc file, or ''."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k.strip() == key:
                    return v.strip()
    except OSError:
        pass
    return ""


def os_release() -> str:
    for path in ("/etc/os-release", "/usr/lib/os-release"):
        try:
            with open(path, encoding="utf-8") as f:
                for line in f:
                    if line.startswith("PRETTY_NAME="):
                        return line.split("=", 1)[1].strip().strip('"')
        except OSError:
            continue
    return ""


def ingero_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ingero")
    except PackageNotFoundError:  # a source checkout without metadata
        return "dev"
