"""Running a member on a subset of the leaves: the :class:`~functrain.tree.TreeInfo` of a
subset (:func:`subset_info`), one value per leaf from a pytree prefix or a callable over leaf
paths (:func:`leaf_values`), and :func:`run_on_subset`. Used by ``masked`` / ``partition`` /
``freeze`` (:mod:`functrain.transforms.combinators`)."""

from __future__ import annotations

import contextvars
import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import optree
from torch import Tensor

from functrain.transforms.base import FlatTransform
from functrain.tree import NAMESPACE, TreeInfo

__all__ = ["RESOLUTION_HOOK", "is_bool", "leaf_values", "run_on_subset", "subset_info"]

#: ``hook(info, resolve) -> values`` around every :func:`leaf_values` resolution, or ``None``.
#: :func:`functrain.compiled` records the per-leaf masks and labels of a chain's ``init`` on
#: the real tree and replays them on its packed buffers (whose paths and shapes are not the
#: leaves' own) through it.
RESOLUTION_HOOK: contextvars.ContextVar[
    Callable[[TreeInfo, Callable[[], tuple[Any, ...]]], tuple[Any, ...]] | None
] = contextvars.ContextVar("functrain_resolution_hook", default=None)

State = Any


@functools.lru_cache(maxsize=256)
def _subset_layout(
    treespec: optree.PyTreeSpec,
    groups: tuple[tuple[int, ...], ...],
    multipliers: tuple[Any, ...] | None,
    indices: tuple[int, ...],
) -> tuple[optree.PyTreeSpec, tuple[tuple[int, ...], ...], tuple[Any, ...] | None]:
    keep = set(indices)
    # The original structure with every dropped leaf replaced by None (an empty subtree in
    # optree): the kept leaves keep their order and their dotted paths, and a tree-level
    # inner transform sees the nested tree with None where a leaf was masked out (optax's
    # MaskedNode).
    skeleton = optree.tree_unflatten(
        treespec, [0 if i in keep else None for i in range(treespec.num_leaves)]
    )
    sub_spec = optree.tree_structure(skeleton, namespace=NAMESPACE)
    position = {old: new for new, old in enumerate(indices)}
    sub_groups: list[tuple[int, ...]] = []
    sub_mults: list[Any] = []
    for g, idx in enumerate(groups):
        sub = tuple(position[i] for i in idx if i in keep)
        if sub:
            sub_groups.append(sub)
            if multipliers is not None:
                sub_mults.append(multipliers[g])
    return sub_spec, tuple(sub_groups), None if multipliers is None else tuple(sub_mults)


def subset_info(info: TreeInfo, indices: Sequence[int]) -> TreeInfo:
    """A :class:`TreeInfo` for the leaves ``indices`` (increasing) of ``info``'s tree.

    Its paths are those leaves' dotted paths, its groups are ``info``'s groups restricted to
    the subset (renumbered, empty ones dropped; any per-group multipliers follow their
    group), and ``donate`` is ``info``'s. Cached per (structure, subset).

    Example:
        >>> leaves, info = flatten({"a": torch.ones(2), "b": torch.ones(3), "c": torch.ones(1)})
        >>> subset_info(info, (0, 2)).paths
        ('a', 'c')
    """
    indices = tuple(indices)
    if len(indices) == info.num_leaves:
        return info
    multipliers = info.multipliers
    spec, groups, mults = _subset_layout(info.treespec, info.groups, multipliers, indices)
    changes: dict[str, Any] = {"treespec": spec, "groups": groups}
    if multipliers is not None:
        changes["multipliers"] = mults
    return attrs.evolve(info, **changes)


def leaf_values(
    spec: Any,
    params: list[Tensor],
    info: TreeInfo,
    argname: str,
    check: Callable[[Any], bool],
    expected: str,
) -> tuple[Any, ...]:
    """One value per leaf from a pytree prefix or a callable over ``(path[, leaf])``; under
    :func:`functrain.ensemble` the callable's ``leaf`` is member 0's slice of the leaf."""
    hook = RESOLUTION_HOOK.get()
    if hook is not None:
        return hook(info, lambda: _resolve(spec, params, info, argname, check, expected))
    return _resolve(spec, params, info, argname, check, expected)


def _resolve(
    spec: Any,
    params: list[Tensor],
    info: TreeInfo,
    argname: str,
    check: Callable[[Any], bool],
    expected: str,
) -> tuple[Any, ...]:
    paths = info.paths
    if callable(spec) and not isinstance(spec, Tensor):
        takes_leaf = _arity(spec) >= 2
        if takes_leaf and info.members is not None:
            # Stacked ensemble members (functrain.ensemble): the callable sees one member's
            # slice, so ``p.ndim > 1`` / Muon's "is a matrix" mean what they mean for one model.
            params = [leaf[0] for leaf in params]
        values = tuple(
            spec(path, leaf) if takes_leaf else spec(path)
            for path, leaf in zip(paths, params, strict=True)
        )
    else:
        try:
            values = tuple(
                optree.broadcast_prefix(spec, info.unflatten(params), namespace=NAMESPACE)
            )
        except ValueError as err:
            raise ValueError(
                f"{argname} must be a pytree prefix of the parameters or a callable over leaf "
                f"paths: {err}"
            ) from None
    for path, value in zip(paths, values, strict=True):
        if not check(value):
            raise ValueError(
                f"{argname} gives {value!r} ({type(value).__name__}) for leaf {path!r}; "
                f"expected {expected}"
            )
    return values


def _arity(fn: Callable[..., Any]) -> int:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 1
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return 2
    return sum(
        p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        for p in params
    )


def is_bool(value: Any) -> bool:
    """A ``bool`` mask value (not merely truthy)."""
    return isinstance(value, bool)


def run_on_subset(
    inner: FlatTransform,
    indices: tuple[int, ...],
    updates: list[Tensor],
    inner_state: State,
    params: list[Tensor] | None,
    info: TreeInfo,
    out: list[Tensor],
    extra: dict[str, Any],
) -> State:
    """Run ``inner`` on the leaves ``indices``, writing its updates into ``out``."""
    if not indices:
        # No leaf: nothing to update (foreach ops reject empty lists); the state stays.
        return inner_state
    sub = subset_info(info, indices)
    if sub is info:
        new, inner_state = inner.update(updates, inner_state, params, info, **extra)
        out[:] = new
        return inner_state
    sub_params = None if params is None else [params[i] for i in indices]
    new, inner_state = inner.update(
        [updates[i] for i in indices], inner_state, sub_params, sub, **extra
    )
    for i, u in zip(indices, new, strict=True):
        out[i] = u
    return inner_state
