"""What every holder of one loaded BCC object shares: whether it is loaded, unloading it once, and use as a
context manager (``with StandardTracer(...) as t``: :meth:`start` on entry, :meth:`close` on exit)."""

from __future__ import annotations

from typing import Any


class BpfObject:
    """Base of :class:`~ingero.runtime.calltrace.CallTracer`, :class:`~ingero.runtime.probes.ProbeSession`
    and :class:`~ingero.tracer.standard.StandardTracer`. Subclasses set ``self._bpf`` in ``start``/``load``
    and call :meth:`_unload` last in ``close``."""

    _bpf: Any = None

    @property
    def loaded(self) -> bool:
        """Whether the BPF object is loaded (from start until close)."""
        return self._bpf is not None

    def _unload(self) -> None:
        """Unload the BPF object (its programs, maps and any link bcc made); once."""
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None

    def start(self):  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
