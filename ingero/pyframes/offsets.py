"""Where CPython keeps what the in-kernel frame walker and the user-space resolver read, per version.

CPython 3.13 and later describe their own layout in ``_PyRuntime.debug_offsets`` (``_Py_DebugOffsets``,
cookie ``xdebugpy``): :func:`from_debug_offsets` reads it from the process. 3.10, 3.11 and 3.12 do not,
so :data:`TABLE` holds their offsets (x86-64, default build, not free-threaded); tests/test_pyframes.py
compiles ``offsetof`` of every field against each installed interpreter's own headers and checks this
table (and the 3.13 debug offsets) against it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace

#: no such field in this version
NONE = 0xFFFF

DEBUG_COOKIE = b"xdebugpy"


@dataclass(frozen=True)
class PyOffsets:
    version: tuple[int, int]
    # runtime -> interpreter -> threads
    runtime_interpreters_head: int
    interp_threads_head: int
    tstate_next: int
    tstate_thread_id: int  # pthread_self() of the thread (== its fsbase on x86-64 glibc)
    tstate_native_thread_id: int  # the thread's tid (3.11+), NONE before
    tstate_frame: int  # 3.10: frame; 3.11/3.12: cframe; 3.13+: current_frame
    cframe_current_frame: int  # 3.11/3.12: _PyCFrame.current_frame; NONE otherwise
    # one frame (PyFrameObject in 3.10, _PyInterpreterFrame since)
    frame_code: int
    frame_previous: int
    frame_instr: int  # 3.10: int f_lasti (code units); 3.11/3.12: prev_instr; 3.13+: instr_ptr
    frame_owner: int  # NONE in 3.10
    # code objects, strings, bytes
    code_name: int
    code_qualname: int  # NONE in 3.10 (code objects have no qualname there)
    code_filename: int
    code_firstlineno: int
    code_linetable: int
    code_adaptive: int  # start of the bytecode inside the code object (3.11+)
    bytes_size: int = 16
    bytes_data: int = 32
    unicode_state: int = 32
    unicode_length: int = 16
    ascii_data: int = 48  # sizeof(PyASCIIObject): where a compact ASCII string's characters start
    compact_data: int = 72  # sizeof(PyCompactUnicodeObject)
    object_type: int = 8
    type_name: int = 24

    @property
    def frame_read(self) -> int:
        """Bytes of a frame the kernel reads at once (every field it needs)."""
        fields = [self.frame_code + 8, self.frame_previous + 8,
                  self.frame_instr + (4 if self.version == (3, 10) else 8)]
        if self.frame_owner != NONE:
            fields.append(self.frame_owner + 1)
        return (max(fields) + 7) // 8 * 8

    @property
    def cstack_owner(self) -> int:
        """The ``owner`` value of the interpreter's shim frames (``FRAME_OWNED_BY_CSTACK``), skipped."""
        return 3 if self.version >= (3, 12) else 0xFF


#: measured with ``offsetof`` against each version's headers (tests/test_pyframes.py re-checks them)
TABLE: dict[tuple[int, int], PyOffsets] = {
    (3, 10): PyOffsets(
        (3, 10), runtime_interpreters_head=32, interp_threads_head=8, tstate_next=8, tstate_thread_id=176,
        tstate_native_thread_id=NONE, tstate_frame=24, cframe_current_frame=NONE, frame_code=32,
        frame_previous=24, frame_instr=96, frame_owner=NONE, code_name=112, code_qualname=NONE,
        code_filename=104, code_firstlineno=40, code_linetable=120, code_adaptive=NONE),
    (3, 11): PyOffsets(
        (3, 11), runtime_interpreters_head=40, interp_threads_head=16, tstate_next=8, tstate_thread_id=152,
        tstate_native_thread_id=160, tstate_frame=56, cframe_current_frame=8, frame_code=32,
        frame_previous=48, frame_instr=56, frame_owner=69, code_name=120, code_qualname=128,
        code_filename=112, code_firstlineno=72, code_linetable=136, code_adaptive=184),
    (3, 12): PyOffsets(
        (3, 12), runtime_interpreters_head=40, interp_threads_head=72, tstate_next=8, tstate_thread_id=136,
        tstate_native_thread_id=144, tstate_frame=56, cframe_current_frame=0, frame_code=0,
        frame_previous=8, frame_instr=56, frame_owner=70, code_name=120, code_qualname=128,
        code_filename=112, code_firstlineno=68, code_linetable=136, code_adaptive=192,
        ascii_data=40, compact_data=56),
    (3, 13): PyOffsets(
        (3, 13), runtime_interpreters_head=632, interp_threads_head=7344, tstate_next=8, tstate_thread_id=152,
        tstate_native_thread_id=160, tstate_frame=72, cframe_current_frame=NONE, frame_code=0,
        frame_previous=8, frame_instr=56, frame_owner=70, code_name=120, code_qualname=128,
        code_filename=112, code_firstlineno=68, code_linetable=136, code_adaptive=200,
        ascii_data=40, compact_data=56),
}

SUPPORTED = tuple(sorted(TABLE))

# _Py_DebugOffsets (3.13): cookie, version, free_threaded, then groups of u64 each starting with a size
_DEBUG_FIELDS = (
    ("runtime_state", ("size", "finalizing", "interpreters_head")),
    ("interpreter_state", ("size", "id", "next", "threads_head", "gc", "imports_modules", "sysdict", "builtins",
                           "ceval_gil", "gil_runtime_state", "gil_runtime_state_enabled",
                           "gil_runtime_state_locked", "gil_runtime_state_holder")),
    ("thread_state", ("size", "prev", "next", "interp", "current_frame", "thread_id", "native_thread_id",
                      "datastack_chunk", "status")),
    ("interpreter_frame", ("size", "previous", "executable", "instr_ptr", "localsplus", "owner")),
    ("code_object", ("size", "filename", "name", "qualname", "linetable", "firstlineno", "argcount",
                     "localsplusnames", "localspluskinds", "co_code_adaptive")),
    ("pyobject", ("size", "ob_type")),
    ("type_object", ("size", "tp_name", "tp_repr", "tp_flags")),
    ("tuple_object", ("size", "ob_item", "ob_size")),
    ("list_object", ("size", "ob_item", "ob_size")),
    ("dict_object", ("size", "ma_keys", "ma_values")),
    ("float_object", ("size", "ob_fval")),
    ("long_object", ("size", "lv_tag", "ob_digit")),
    ("bytes_object", ("size", "ob_size", "ob_sval")),
    ("unicode_object", ("size", "state", "length", "asciiobject_size")),
)
#: bytes of _Py_DebugOffsets up to the fields read
DEBUG_OFFSETS_SIZE = 24 + 8 * sum(len(f) for _, f in _DEBUG_FIELDS)


def parse_debug_offsets(raw: bytes) -> dict[str, int]:
    """``_Py_DebugOffsets`` as ``{"group.field": value}`` plus ``version`` (PY_VERSION_HEX) and
    ``free_threaded``; raises ValueError without the cookie."""
    if raw[:8] != DEBUG_COOKIE:
        raise ValueError("no _Py_DebugOffsets cookie")
    version, free = struct.unpack_from("<QQ", raw, 8)
    out = {"version": version, "free_threaded": free}
    pos = 24
    for group, fields in _DEBUG_FIELDS:
        for name in fields:
            out[f"{group}.{name}"] = struct.unpack_from("<Q", raw, pos)[0]
            pos += 8
    return out


def from_debug_offsets(raw: bytes) -> PyOffsets:
    """The offsets a 3.13+ runtime publishes about itself (the fields it does not publish -- the compact
    unicode header after PyASCIIObject -- follow the 3.13 table)."""
    d = parse_debug_offsets(raw)
    if d["free_threaded"]:
        raise ValueError("free-threaded CPython builds are not supported")
    version = ((d["version"] >> 24) & 0xFF, (d["version"] >> 16) & 0xFF)
    base = TABLE.get(version) or TABLE[max(TABLE)]
    ascii_size = d["unicode_object.asciiobject_size"]
    return replace(
        base, version=version,
        runtime_interpreters_head=d["runtime_state.interpreters_head"],
        interp_threads_head=d["interpreter_state.threads_head"],
        tstate_next=d["thread_state.next"], tstate_thread_id=d["thread_state.thread_id"],
        tstate_native_thread_id=d["thread_state.native_thread_id"], tstate_frame=d["thread_state.current_frame"],
        cframe_current_frame=NONE,
        frame_code=d["interpreter_frame.executable"], frame_previous=d["interpreter_frame.previous"],
        frame_instr=d["interpreter_frame.instr_ptr"], frame_owner=d["interpreter_frame.owner"],
        code_name=d["code_object.name"], code_qualname=d["code_object.qualname"],
        code_filename=d["code_object.filename"], code_firstlineno=d["code_object.firstlineno"],
        code_linetable=d["code_object.linetable"], code_adaptive=d["code_object.co_code_adaptive"],
        bytes_size=d["bytes_object.ob_size"], bytes_data=d["bytes_object.ob_sval"],
        unicode_state=d["unicode_object.state"], unicode_length=d["unicode_object.length"],
        ascii_data=ascii_size, compact_data=ascii_size + 16,
        object_type=d["pyobject.ob_type"], type_name=d["type_object.tp_name"])
