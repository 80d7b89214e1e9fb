"""The labels that say which node a metric comes from: node, rank, local_rank, job and ``--label k=v``.

They are the same on every series of a node (constant labels), so they cost no cardinality inside a node;
across a fleet they are what tells the nodes apart. Nothing per process, thread, stream or pointer is ever
a label (see docs/fleet.md for the series count).
"""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ingero.errors import IngeroError

#: label names a metric of ingero uses itself: a --label may not take them
RESERVED = ("source", "op", "error", "probe", "ring", "severity", "le", "mcp", "version", "quantile",
            "instance", "__name__")
#: the node labels, in the order they are shown
NODE_LABELS = ("node", "rank", "local_rank", "job")
_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
#: at most this many extra labels: each one multiplies nothing inside a node, but a fleet's index grows
MAX_EXTRA_LABELS = 8
MAX_LABEL_VALUE = 128


@dataclass(frozen=True)
class NodeLabels:
    """The constant labels of one node's metrics, in a stable order (empty values are left out)."""

    pairs: tuple[tuple[str, str], ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(k for k, _ in self.pairs)

    @property
    def values(self) -> tuple[str, ...]:
        return tuple(v for _, v in self.pairs)

    def get(self, name: str) -> str:
        return dict(self.pairs).get(name, "")

    def as_dict(self) -> dict[str, str]:
        return dict(self.pairs)


def parse_label(text: str) -> tuple[str, str]:
    """``k=v`` -> (k, v), with a clear error for anything else."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise IngeroError(f"--label {text!r}: expected NAME=VALUE", hint="e.g. --label job=llama-70b")
    if not _NAME.match(key) or key.startswith("__"):
        raise IngeroError(f"--label {text!r}: {key!r} is not a Prometheus label name",
                          hint="letters, digits and _, not starting with a digit or __")
    if key in RESERVED:
        raise IngeroError(f"--label {text!r}: {key!r} is a label ingero's metrics use themselves",
                          hint="choose another name; reserved: " + ", ".join(RESERVED))
    if len(value) > MAX_LABEL_VALUE:
        raise IngeroError(f"--label {key}: the value is {len(value)} characters long (max {MAX_LABEL_VALUE})")
    return key, value


def node_labels(env: Mapping[str, str], labels: Sequence[str] = (), hostname: str | None = None) -> NodeLabels:
    """The node's labels: node (the hostname), rank and local_rank (``RANK``/``LOCAL_RANK``, as torchrun
    sets them), job (``INGERO_JOB``, else ``SLURM_JOB_ID``), then each ``--label k=v``, which overrides."""
    base = {
        "node": hostname if hostname is not None else socket.gethostname(),
        "rank": env.get("RANK", ""),
        "local_rank": env.get("LOCAL_RANK", ""),
        "job": env.get("INGERO_JOB") or env.get("SLURM_JOB_ID", ""),
    }
    extra: dict[str, str] = {}
    for text in labels:
        key, value = parse_label(text)
        if key in base:
            base[key] = value
        else:
            extra[key] = value
    if len(extra) > MAX_EXTRA_LABELS:
        raise IngeroError(f"{len(extra)} extra labels (max {MAX_EXTRA_LABELS}): every series of the node "
                          "carries them all")
    for key in ("rank", "local_rank"):
        if base[key] and not base[key].isdigit():
            raise IngeroError(f"{key} {base[key]!r} is not a number",
                              hint=f"set {key.upper()} or --label {key}=N to a rank number")
    pairs = tuple((k, v) for k, v in (*base.items(), *sorted(extra.items())) if v)
    return NodeLabels(pairs)

