"""Kernel functions (kfuncs) in programs bcc compiled: uprobe *session* links.

A uprobe_multi link of attach type ``BPF_TRACE_UPROBE_SESSION`` (Linux 6.13+) runs ONE program at entry
and at return of each call; ``bpf_session_is_return()`` says which, and ``bpf_session_cookie()`` points
at 8 bytes the kernel keeps for this one call, from its entry to its return. Pairing a return with its
own entry is then by construction, recursion and threads included; an entry that returns 1 skips the
return (a filter that said no costs no return probe).

Those two are kfuncs, which bcc 0.26 cannot call (it refuses extern functions, and its loader does not
resolve kfunc BTF ids). The generated C calls made-up helper numbers instead (:data:`KFUNC_IDS`, the
``INGERO_KF_*`` macros of ``bpf/ingero_probe.h``); :func:`patch_kfunc_calls` rewrites those call
instructions in bcc's compiled program, before it is loaded, into kfunc calls (``src_reg =
BPF_PSEUDO_KFUNC_CALL``, ``imm`` = the function's BTF id in this kernel's ``/sys/kernel/btf/vmlinux``).
The verifier checks the result as it checks any kfunc call.
"""

from __future__ import annotations

import ctypes as ct
import struct
from functools import lru_cache

from ingero.errors import BpfUnavailable
from ingero.runtime.links import BPF_TRACE_UPROBE_SESSION  # noqa: F401 - one definition

VMLINUX_BTF = "/sys/kernel/btf/vmlinux"
#: made-up helper number in the generated C -> the kfunc it stands for (bpf/ingero_probe.h has the same)
KFUNC_IDS = {0x7FF00001: "bpf_session_cookie", 0x7FF00002: "bpf_session_is_return"}

_BPF_CALL = 0x85
_BPF_PSEUDO_KFUNC_CALL = 2
_BTF_FUNC = 12
# bytes after struct btf_type, per kind: fixed, and per vlen entry
_EXTRA = {1: (4, 0), 3: (12, 0), 4: (0, 12), 5: (0, 12), 6: (0, 8), 13: (0, 8), 14: (4, 0), 15: (0, 12),
          17: (4, 0), 19: (0, 12)}


@lru_cache(maxsize=1)
def kfunc_btf_ids(path: str = VMLINUX_BTF) -> dict[str, int]:
    """BTF ids of the kfuncs in :data:`KFUNC_IDS` in this kernel (missing ones are left out)."""
    wanted = set(KFUNC_IDS.values())
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return {}
    magic, _ver, _flags, hdr_len, type_off, type_len, str_off, _str_len = struct.unpack_from("<HBBIIIII", data)
    if magic != 0xEB9F:
        return {}
    types = hdr_len + type_off
    strs = hdr_len + str_off
    out: dict[str, int] = {}
    off, end, tid = types, types + type_len, 1
    while off < end and len(out) < len(wanted):
        name_off, info, _ = struct.unpack_from("<III", data, off)
        kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
        if kind == _BTF_FUNC:
            stop = data.index(b"\0", strs + name_off)
            name = data[strs + name_off:stop].decode()
            if name in wanted:
                out[name] = tid
        fixed, per = _EXTRA.get(kind, (0, 0))
        off += 12 + fixed + per * vlen
        tid += 1
    return out


def session_problem() -> str | None:
    """Why this kernel cannot run session programs, or None."""
    ids = kfunc_btf_ids()
    missing = [n for n in KFUNC_IDS.values() if n not in ids]
    if missing:
        return (f"this kernel has no {', '.join(missing)} (uprobe session links, Linux 6.13+): return values and "
                "latency need them")
    return None


def patch_kfunc_calls(module, func_name: bytes) -> int:
    """Rewrite the made-up helper calls of one compiled function of a bcc module into kfunc calls, in
    place (before ``load_func``). Returns how many calls were patched."""
    from bcc import lib

    start = lib.bpf_function_start(module, func_name)
    size = lib.bpf_function_size(module, func_name)
    if not start:
        raise ValueError(f"no compiled function {func_name!r}")
    ids = kfunc_btf_ids()
    insns = (ct.c_uint8 * size).from_address(start)
    n = 0
    for off in range(0, size, 8):
        if insns[off] != _BPF_CALL:
            continue
        imm = int.from_bytes(bytes(insns[off + 4:off + 8]), "little")
        name = KFUNC_IDS.get(imm)
        if name is None:
            continue
        if name not in ids:
            raise BpfUnavailable(session_problem() or f"no kfunc {name}")
        insns[off + 1] = (insns[off + 1] & 0x0F) | (_BPF_PSEUDO_KFUNC_CALL << 4)
        insns[off + 2:off + 4] = [0, 0]
        insns[off + 4:off + 8] = list(ids[name].to_bytes(4, "little"))
        n += 1
    return n
