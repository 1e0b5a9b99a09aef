"""Find and replace records inside an optimizer state (chains are tuples of records)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from torch import Tensor

from functrain.transforms.adam import ScaleByAdamState
from functrain.transforms.clipping import ClipState
from functrain.transforms.momentum import TraceState
from functrain.transforms.scaling import LearningRateState

Path = tuple[tuple[str, Any], ...]


def find_records(tree: Any, predicate: Callable[[Any], bool], path: Path = ()) -> list[Path]:
    """Paths (``("attr", name)`` / ``("item", key)`` steps) of the nodes matching
    ``predicate``, depth first in flattening order."""
    found: list[Path] = []
    if predicate(tree):
        return [path]
    if isinstance(tree, Tensor) or tree is None:
        return found
    if attrs.has(type(tree)):
        for f in attrs.fields(type(tree)):
            if not f.metadata.get("static", False):
                found += find_records(getattr(tree, f.name), predicate, path + (("attr", f.name),))
    elif isinstance(tree, dict):
        for k, v in tree.items():
            found += find_records(v, predicate, path + (("item", k),))
    elif isinstance(tree, tuple | list):
        for i, v in enumerate(tree):
            found += find_records(v, predicate, path + (("item", i),))
    return found


def get_at(tree: Any, path: Path) -> Any:
    for kind, key in path:
        tree = getattr(tree, key) if kind == "attr" else tree[key]
    return tree


def replace_at(tree: Any, path: Path, value: Any) -> Any:
    """``tree`` with the node at ``path`` replaced by ``value`` (rebuilt, not mutated)."""
    if not path:
        return value
    (kind, key), rest = path[0], path[1:]
    if kind == "attr":
        return attrs.evolve(tree, **{key: replace_at(getattr(tree, key), rest, value)})
    if isinstance(tree, dict):
        return {**tree, key: replace_at(tree[key], rest, value)}
    items = list(tree)
    items[key] = replace_at(items[key], rest, value)
    return type(tree)(items) if isinstance(tree, list) else tuple(items)


#: (log name, record class, field) read from the optimizer state, first match wins.
HYPERPARAMETERS: tuple[tuple[str, type, str], ...] = (
    ("lr", LearningRateState, "lr"),
    ("momentum", ScaleByAdamState, "b1"),
    ("momentum", TraceState, "momentum"),
    ("grad_norm", ClipState, "norm"),
)


def hyperparameter_paths(opt_state: Any) -> dict[str, Path]:
    """``{"lr": path, "momentum": path, "grad_norm": path}`` for the values present in
    ``opt_state`` (the first record of each kind)."""
    out: dict[str, Path] = {}
    for name, cls, field in HYPERPARAMETERS:
        if name in out:
            continue
        paths = find_records(opt_state, lambda x, cls=cls: isinstance(x, cls))
        if paths:
            out[name] = paths[0] + (("attr", field),)
    return out
