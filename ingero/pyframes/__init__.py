"""Python frames in stacks: the calling thread's CPython stack, read in the kernel at a traced call.

- :mod:`ingero.pyframes.offsets`: the CPython layouts (``_Py_DebugOffsets`` on 3.13+, a checked table before);
- :mod:`ingero.pyframes.process`: which processes are CPython, which version, where the runtime is;
- :mod:`ingero.pyframes.linetable`: the line being executed, from the code object's line table;
- :mod:`ingero.pyframes.resolver`: the user-space side of ``bpf/ingero_py.h`` (configure, resolve, merge).
"""

from ingero.pyframes.resolver import (
    MAX_FRAMES,
    PyFrame,
    PyStack,
    PyStacks,
    is_interpreter_file,
    merge,
    render_python,
)

__all__ = ["MAX_FRAMES", "PyFrame", "PyStack", "PyStacks", "is_interpreter_file", "merge", "render_python"]
