"""User space of the in-kernel Python frame walker (``bpf/ingero_py.h``) for one loaded BPF object.

:class:`PyStacks` tells the kernel about a traced Python process (:meth:`configure`: its runtime's
address and layout into ``ingero_py_procs``) and turns what the kernel captured at a call -- a hash
naming an ``ingero_py_stacks`` entry of (code object, instruction) pairs -- into :class:`PyFrame` values:
qualified name, file name and the line being executed, computed from the code object's line table
(:mod:`ingero.pyframes.linetable`). Each code object is read once per process (``/proc/PID/mem``) and
cached; each distinct stack once. :func:`merge` puts the Python frames among the native ones.
"""

from __future__ import annotations

import logging
import os
import re
import struct
from dataclasses import dataclass

from ingero.pyframes.linetable import line_for
from ingero.pyframes.offsets import NONE
from ingero.pyframes.process import ProcessMemory, PyRuntime, find_runtime
from ingero.runtime.shared import SharedNames

log = logging.getLogger(__name__)

MAX_FRAMES = 32
MAX_LINETABLE = 1 << 20
_INTERPRETER_FILE = re.compile(r"^(?:lib)?python3\.\d+")


@dataclass(frozen=True)
class PyFrame:
    qualname: str
    filename: str
    line: int  # 0: CPython has no line for this instruction


@dataclass(frozen=True)
class PyStack:
    frames: tuple[PyFrame, ...]  # innermost first
    truncated: bool = False  # more than MAX_FRAMES frames (shim frames of the interpreter included)
    missing: str = ""  # why the frames could not be read, when they could not


@dataclass(frozen=True)
class _Code:
    qualname: str
    filename: str
    firstlineno: int
    linetable: bytes


def frame_bytes(version: tuple[int, int]) -> int:
    """Bytes of a frame the kernel reads (bpf/ingero_py.h): every field it uses must be inside."""
    return 104 if version < (3, 11) else 72


def _task_fsbase_offset() -> int:
    """``offsetof(struct task_struct, thread.fsbase)`` of the running kernel, from its BTF (bpftool)."""
    import subprocess

    out = subprocess.run(["bpftool", "btf", "dump", "file", "/sys/kernel/btf/vmlinux", "format", "raw"],
                         capture_output=True, text=True, check=True).stdout
    thread = fsbase = None
    struct_name = ""
    for line in out.splitlines():
        if line.startswith("["):
            m = re.match(r"\[\d+\] STRUCT '(\w+)'", line)
            struct_name = m.group(1) if m else ""
            continue
        if struct_name == "task_struct" and thread is None and line.strip().startswith("'thread' "):
            thread = int(line.rsplit("bits_offset=", 1)[1]) // 8
        elif struct_name == "thread_struct" and fsbase is None and line.strip().startswith("'fsbase' "):
            fsbase = int(line.rsplit("bits_offset=", 1)[1]) // 8
    if thread is None or fsbase is None:
        raise OSError("task_struct.thread.fsbase not found in the kernel's BTF")
    return thread + fsbase


_FSBASE: list[int] = []


def task_fsbase_offset() -> int:
    if not _FSBASE:
        _FSBASE.append(_task_fsbase_offset())
    return _FSBASE[0]


class PyStacks:
    """Configure traced processes in, and resolve Python stacks out of, one BPF object with ingero_py.h."""

    def __init__(self, bpf, names: SharedNames, runtimes: dict[int, PyRuntime | None] | None = None) -> None:
        self._bpf = bpf
        self._procs = names.name("ingero_py_procs")  # renamed at load (ingero.runtime.shared)
        #: pid -> its runtime (None: looked at, not Python); shared with the PyStacks that configures the
        #: processes when this one only resolves (a DSL probe in a live trace)
        self.runtimes: dict[int, PyRuntime | None] = {} if runtimes is None else runtimes
        self._mem: dict[int, ProcessMemory] = {}
        self._codes: dict[tuple[int, int], _Code | None] = {}
        self._raw: dict[int, tuple[int, int, tuple[tuple[int, int], ...]]] = {}
        self._stacks: dict[tuple[int, int], PyStack] = {}

    # -- processes --------------------------------------------------------------------------------------
    def configure(self, pid: int) -> PyRuntime | None:
        """Look at process ``pid``; if it runs CPython 3.10+, let the kernel walk its frames."""
        rt = find_runtime(pid)
        self.runtimes[pid] = rt
        if rt is None:
            return None
        o = rt.offsets
        t = self._bpf[self._procs]
        leaf = t.Leaf()
        leaf.runtime = rt.runtime
        leaf.rt_interp_head = o.runtime_interpreters_head
        leaf.interp_threads = o.interp_threads_head
        leaf.ts_next = o.tstate_next
        if o.tstate_native_thread_id == NONE:
            try:
                leaf.fsbase_off = task_fsbase_offset()
            except (OSError, ValueError) as e:
                log.warning("no Python frames for process %d (CPython %d.%d): %s", pid, *rt.version, e)
                return None
            leaf.ts_id = o.tstate_thread_id
            leaf.id_is_fsbase = 1
        else:
            leaf.ts_id = o.tstate_native_thread_id
        leaf.ts_frame = o.tstate_frame
        leaf.cframe_frame = o.cframe_current_frame
        leaf.fr_previous = o.frame_previous
        leaf.fr_code = o.frame_code
        leaf.fr_instr = o.frame_instr
        leaf.fr_owner = o.frame_owner
        if o.frame_read > frame_bytes(o.version):
            log.warning("no Python frames for process %d: CPython %d.%d's frames are larger than expected",
                        pid, *rt.version)
            return None
        leaf.instr_is_int = 1 if o.version < (3, 11) else 0
        leaf.cstack_owner = o.cstack_owner
        t[t.Key(pid)] = leaf
        return rt

    def inherit(self, parent: int, child: int) -> None:
        """A forked child: the kernel copied the parent's entry; remember the runtime for resolving."""
        if self.runtimes.get(parent) is not None and child not in self.runtimes:
            p = self.runtimes[parent]
            self.runtimes[child] = PyRuntime(child, p.path, p.version, p.runtime, p.offsets, p.static)

    def forget(self, pid: int) -> None:
        self.runtimes.pop(pid, None)
        mem = self._mem.pop(pid, None)
        if mem is not None:
            mem.close()

    def is_python(self, pid: int) -> bool:
        return self.runtimes.get(pid) is not None

    # -- stacks -----------------------------------------------------------------------------------------
    def _raw_stack(self, py_id: int) -> tuple[int, int, tuple[tuple[int, int], ...]] | None:
        """(tgid, truncated, ((code, instr), ...)) of a captured stack, shim frames dropped."""
        raw = self._raw.get(py_id)
        if raw is None:
            t = self._bpf["ingero_py_stacks"]
            try:
                v = t[t.Key(py_id)]
            except KeyError:
                return None
            depth, shims = min(int(v.depth), MAX_FRAMES), int(v.shims)
            raw = (int(v.tgid), int(v.truncated),
                   tuple((int(v.code[i]), int(v.instr[i])) for i in range(depth) if not shims >> i & 1))
            self._raw[py_id] = raw
        return raw

    def stack(self, pid: int | None, py_id: int) -> PyStack:
        """The Python frames (innermost first) the kernel captured as ``py_id`` in process ``pid`` (None: the
        process that captured it first, e.g. for an aggregation key, which has no pid)."""
        key = (pid, py_id)
        hit = self._stacks.get(key)
        if hit is not None:
            return hit
        raw = self._raw_stack(py_id)
        if pid is None and raw is not None:
            pid = raw[0]
        rt = self.runtimes.get(pid) if pid is not None else None
        if raw is None:
            out = PyStack((), missing="evicted from the kernel's table before it was read")
        elif rt is None:
            out = PyStack((), missing="the process is not a known CPython")
        else:
            _, truncated, pairs = raw
            frames = []
            missing = ""
            for code, instr in pairs:
                c = self._code(rt, code)
                if c is None:
                    missing = "the process exited (or freed the code) before its frames were read"
                    break
                o = rt.offsets
                if o.version < (3, 11):
                    lasti = instr - (1 << 64) if instr >= 1 << 63 else instr
                    offset = 2 * lasti if lasti >= 0 else -1
                else:
                    offset = instr - (code + o.code_adaptive)
                line = line_for(o.version, c.linetable, c.firstlineno, offset)
                frames.append(PyFrame(c.qualname, c.filename, line or 0))
            out = PyStack(tuple(frames), bool(truncated), missing)
        if not out.missing:
            self._stacks[key] = out
        return out

    def _memory(self, pid: int) -> ProcessMemory | None:
        mem = self._mem.get(pid)
        if mem is None:
            try:
                mem = self._mem[pid] = ProcessMemory(pid)
            except OSError:
                return None
        return mem

    def _code(self, rt: PyRuntime, addr: int) -> _Code | None:
        key = (rt.pid, addr)
        if key in self._codes:
            return self._codes[key]
        mem = self._memory(rt.pid)
        if mem is None:
            return None
        o = rt.offsets
        try:
            tp = mem.u64(addr + o.object_type)
            tp_name = _cstring(mem, mem.u64(tp + o.type_name), 16)
            if tp_name != "code":
                code = _Code(f"<{tp_name or 'unknown'} object>", "", 0, b"")
            else:
                name_off = o.code_qualname if o.code_qualname != NONE else o.code_name
                table_obj = mem.u64(addr + o.code_linetable)
                size = struct.unpack("<q", mem.read(table_obj + o.bytes_size, 8))[0]
                table = mem.read(table_obj + o.bytes_data, min(max(size, 0), MAX_LINETABLE)) if size > 0 else b""
                code = _Code(
                    _unicode(mem, o, mem.u64(addr + name_off)),
                    _unicode(mem, o, mem.u64(addr + o.code_filename)),
                    struct.unpack("<i", mem.read(addr + o.code_firstlineno, 4))[0],
                    table)
        except (OSError, ValueError, struct.error) as e:
            log.debug("code object %#x of process %d: %s", addr, rt.pid, e)
            self._mem.pop(rt.pid, None)
            return None
        if len(self._codes) > 200_000:
            self._codes.clear()
        self._codes[key] = code
        return code


def _cstring(mem: ProcessMemory, addr: int, limit: int) -> str:
    raw = mem.read(addr, limit)
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def _unicode(mem: ProcessMemory, o, addr: int) -> str:
    state = struct.unpack("<I", mem.read(addr + o.unicode_state, 4))[0]
    length = struct.unpack("<q", mem.read(addr + o.unicode_length, 8))[0]
    if length < 0 or length > 4096:
        raise ValueError("implausible string length")
    kind, compact, ascii_ = (state >> 2) & 7, (state >> 5) & 1, (state >> 6) & 1
    if not compact:
        return "?"
    if ascii_:
        return mem.read(addr + o.ascii_data, length).decode("ascii", errors="replace")
    width = {1: 1, 2: 2, 4: 4}.get(kind)
    if width is None:
        raise ValueError("unknown string kind")
    data = mem.read(addr + o.compact_data, length * width)
    return data.decode({1: "latin-1", 2: "utf-16-le", 4: "utf-32-le"}[width], errors="replace")


def render_python(py: PyStack) -> tuple[str, ...]:
    """A Python stack as text lines ``qualname (file:line)``, innermost first, labelled when cut short."""
    out = [f"{f.qualname} ({f.filename}:{f.line})" if f.line else f"{f.qualname} ({f.filename})"
           for f in py.frames]
    if py.truncated:
        out.append(f"[more than {MAX_FRAMES} Python frames: outer ones not captured]")
    if py.missing:
        out.append(f"[Python frames not available: {py.missing}]")
    return tuple(out)


def is_interpreter_file(path: str) -> bool:
    """A native frame of the interpreter itself (``libpython3.X.so``, ``python3.X``)."""
    return bool(_INTERPRETER_FILE.match(os.path.basename(path)))


def merge(native: list, py: PyStack, frame_type) -> list:
    """Native frames with the Python ones placed where the interpreter runs them: before the first native
    frame of libpython / python3.X (upstream Ingero's rule); when the native unwinding stopped short of the
    interpreter (no frame pointers), after the last native frame (they are outer to it). ``frame_type``
    builds a stored frame (``ingero.store.Frame``)."""
    pyf = [frame_type(py_file=f.filename, py_func=f.qualname, py_line=f.line) for f in py.frames]
    if py.truncated:
        pyf.append(frame_type(py_func=f"[more than {MAX_FRAMES} Python frames: outer ones not captured]"))
    if py.missing:
        pyf.append(frame_type(py_func=f"[Python frames not available: {py.missing}]"))
    if not pyf:
        return list(native)
    for i, f in enumerate(native):
        if f.file and is_interpreter_file(f.file):
            return list(native[:i]) + pyf + list(native[i:])
    return list(native) + pyf
