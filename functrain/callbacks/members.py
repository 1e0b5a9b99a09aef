"""Per-member scalars of an ensemble run: the naming the runner and the callbacks share.

With ``Runner(members=N)`` (or an ``ensemble(...)`` optimizer state) every value that has
one entry per member is named ``"<name>/<i>"`` for member ``i``: train records ``loss/0``,
``lr/0``, ``grad_norm/0``; validation metrics ``acc/0``. A value shared by all members (a
scalar learning rate, ``time``) keeps its plain name.

Example:
    >>> import torch
    >>> expand_members({"loss": torch.tensor([0.5, 0.25]), "time": 0.1}, 2)
    {'loss/0': tensor(0.5000), 'loss/1': tensor(0.2500), 'time': 0.1}
    >>> member_values({"acc/0": 0.5, "acc/1": 0.75}, "acc", 2)
    [0.5, 0.75]
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from typing import Any

from torch import Tensor

__all__ = [
    "describe",
    "expand_members",
    "member_key",
    "member_values",
    "split_members",
    "summary",
]


def member_key(name: str, i: int) -> str:
    """The name of member ``i``'s value of ``name``: ``"<name>/<i>"``."""
    return f"{name}/{i}"


def expand_members(values: Mapping[str, Any], members: int) -> dict[str, Any]:
    """``values`` with each tensor of shape ``[members]`` split into ``"<name>/<i>"`` entries
    (views, no host transfer); other values unchanged."""
    out: dict[str, Any] = {}
    for k, v in values.items():
        if isinstance(v, Tensor) and v.dim() == 1 and v.shape[0] == members:
            for i in range(members):
                out[member_key(k, i)] = v[i]
        else:
            out[k] = v
    return out


def member_values(metrics: Mapping[str, Any], name: str, members: int) -> list[float] | None:
    """``[metrics["<name>/0"], ..., metrics["<name>/<N-1>"]]`` as floats, or ``None`` when
    any member's entry is missing."""
    keys = [member_key(name, i) for i in range(members)]
    if not all(k in metrics for k in keys):
        return None
    return [float(metrics[k]) for k in keys]


def split_members(
    scalars: Mapping[str, float], members: int
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """``(shared, per_member)``: the plain entries, and ``{name: [value of member 0, ...]}``
    for every name that has all ``members`` entries ``"<name>/<i>"``."""
    per: dict[str, dict[int, float]] = {}
    shared: dict[str, float] = {}
    for k, v in scalars.items():
        name, sep, index = k.rpartition("/")
        if sep and index.isdigit() and int(index) < members:
            per.setdefault(name, {})[int(index)] = v
        else:
            shared[k] = v
    out: dict[str, list[float]] = {}
    for name, entries in per.items():
        if len(entries) == members:
            out[name] = [entries[i] for i in range(members)]
        else:  # not a complete member vector: keep the entries as they are
            shared.update({member_key(name, i): v for i, v in entries.items()})
    return shared, out


def summary(values: list[float], digits: int, fmt: Any) -> str:
    """``"min/median/max"`` of one per-member value, formatted by ``fmt(value, digits)``."""
    return "/".join(fmt(x, digits) for x in (min(values), statistics.median(values), max(values)))


def describe(runner: Any, i: int) -> str:
    """How log lines name member ``i``: ``"#3 (lr=0.01 seed=1)"`` with a label from
    ``Runner(member_labels=...)``, ``"#3"`` without."""
    labels = getattr(runner, "member_labels", None) or []
    label = labels[i] if i < len(labels) else None
    return f"#{i} ({label})" if label and label != f"#{i}" else f"#{i}"
