"""optax's combinators over functrain's flat protocol: ``masked``, ``partition``, ``freeze``,
``set_to_zero``, ``named_chain`` and ``apply_if_finite``.

Each combinator composes its members on the flat list of leaves the outermost ``update``
flattened, as :func:`~functrain.transforms.base.chain` does: a member that sees only some
leaves gets a sub-list and a :class:`~functrain.tree.TreeInfo` for that subset
(:func:`subset_info`), never a re-flattened tree.

Example:
    >>> tx = chain(
    ...     clip(1.0),
    ...     partition({"backbone": adamw(lr=1e-4), "head": adamw(lr=1e-3)},
    ...               lambda path: "backbone" if path.startswith("backbone.") else "head"),
    ... )
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import optree
import torch
from torch import Tensor

from functrain.transforms import foreach as fe
from functrain.transforms.base import (
    EmptyState,
    FlatTransform,
    GradientTransformation,
    as_flat,
    chain_multipliers,
    from_flat,
    state_record,
    static_field,
)
from functrain.transforms.leaf_subsets import is_bool, leaf_values, run_on_subset, subset_info
from functrain.transforms.optim_parts import check_state_paths
from functrain.tree import NAMESPACE, PyTree, TreeInfo

__all__ = [
    "ApplyIfFiniteState",
    "MaskedState",
    "PartitionState",
    "all_finite",
    "apply_if_finite",
    "freeze",
    "masked",
    "named_chain",
    "partition",
    "select_state",
    "set_to_zero",
    "subset_info",
]

State = Any
Mask = PyTree | Callable[..., bool]


# --------------------------------------------------------------------------- masked


@state_record
class MaskedState:
    """State of :func:`masked`.

    Attributes:
        inner_state: the inner transform's state, built for the masked-in leaves only.
        indices: positions of the masked-in leaves in the full flat list (static).
        paths: dotted paths of the full tree the state was built for (static).
    """

    inner_state: Any
    indices: tuple[int, ...] = static_field()
    paths: tuple[str, ...] = static_field()


def masked(inner: GradientTransformation, mask: Mask) -> GradientTransformation:
    """Apply ``inner`` to the masked-in leaves only (optax's ``masked``).

    Masked-out leaves' updates pass through unchanged, and ``inner`` keeps no state for them:
    it is initialised and run on the sub-list of masked-in leaves, with a
    :class:`~functrain.tree.TreeInfo` for that subset (their dotted paths; a tree-level
    ``inner`` sees the parameter tree with ``None`` in place of masked-out leaves).

    Args:
        inner: the transform to apply to the masked-in leaves.
        mask: a pytree prefix of the parameter tree with ``bool`` leaves (``True`` = apply
            ``inner``; e.g. ``{"backbone": False, "head": True}``), or a callable
            ``mask(path) -> bool`` or ``mask(path, leaf) -> bool`` over each leaf's dotted
            path (and tensor). The mask is resolved once, in ``init`` (from the parameters),
            and recorded in the state.

    Example:
        >>> no_decay_on_1d = masked(add_decayed_weights(1e-4), lambda path, p: p.ndim > 1)
    """
    flat = as_flat(inner)
    _check_mask(mask, "mask")

    def init(params: list[Tensor], info: TreeInfo) -> MaskedState:
        values = leaf_values(mask, params, info, "mask", is_bool, "a bool")
        indices = tuple(i for i, v in enumerate(values) if v)
        sub = subset_info(info, indices)
        inner_state = flat.init([params[i] for i in indices], sub)
        return MaskedState(inner_state, indices, info.paths)

    def update(
        updates: list[Tensor],
        state: MaskedState,
        params: list[Tensor] | None,
        info: TreeInfo,
        **extra: Any,
    ) -> tuple[list[Tensor], MaskedState]:
        _check_record("masked", state, MaskedState)
        check_state_paths("masked", state.paths, info)
        out = list(updates)
        inner_state = run_on_subset(
            flat, state.indices, updates, state.inner_state, params, info, out, extra
        )
        return out, MaskedState(inner_state, state.indices, state.paths)

    return from_flat(FlatTransform(init, update, name=f"masked({flat.name})"))


def _check_mask(mask: Any, argname: str) -> None:
    if mask is None:
        raise ValueError(f"{argname} must be a pytree prefix of bools or a callable, got None")


def _check_record(name: str, state: Any, cls: type) -> None:
    if not isinstance(state, cls):
        raise ValueError(
            f"{name} got a state of type {type(state).__name__}, expected {cls.__name__}; "
            "pass the state returned by this transform's init/update"
        )


# --------------------------------------------------------------------------- partition


@state_record
class PartitionState:
    """State of :func:`partition`.

    Attributes:
        inner_states: one state per label, each built for that label's leaves only.
        labels: each leaf's label, in leaf order (static).
        paths: dotted paths of the full tree the state was built for (static).
    """

    inner_states: dict[Any, Any]
    labels: tuple[Any, ...] = static_field()
    paths: tuple[str, ...] = static_field()


def partition(
    transforms_by_label: Mapping[Any, GradientTransformation],
    labels: PyTree | Callable[..., Any],
) -> GradientTransformation:
    """Apply a different transform to each labelled subset of leaves (optax's ``partition``).

    Each label's transform is initialised and run on its own leaves only (with a
    :class:`~functrain.tree.TreeInfo` for that subset), so each keeps state for its leaves
    alone; the state holds one inner state per label.

    Args:
        transforms_by_label: label -> transform. Every label a leaf carries must be a key.
        labels: a pytree prefix of the parameter tree whose leaves are labels (e.g.
            ``{"backbone": "slow", "head": "fast"}``), or a callable ``labels(path)`` or
            ``labels(path, leaf)`` returning a leaf's label. Resolved once, in ``init``.

    Example:
        >>> tx = partition(
        ...     {"decay": adamw(lr=1e-3, weight_decay=0.05), "no_decay": adam(lr=1e-3)},
        ...     lambda path, p: "decay" if p.ndim > 1 else "no_decay",
        ... )
    """
    if not isinstance(transforms_by_label, Mapping) or not transforms_by_label:
        raise ValueError(
            f"transforms_by_label must be a non-empty mapping label -> transform, "
            f"got {transforms_by_label!r}"
        )
    _check_mask(labels, "labels")
    flats = {label: as_flat(tx) for label, tx in transforms_by_label.items()}

    def _is_label(value: Any) -> bool:
        try:
            return value in flats
        except TypeError:  # unhashable
            return False

    def init(params: list[Tensor], info: TreeInfo) -> PartitionState:
        leaf_labels = leaf_values(
            labels, params, info, "labels", _is_label, f"one of {list(flats)!r}"
        )
        states = {}
        for label, flat in flats.items():
            indices = tuple(i for i, v in enumerate(leaf_labels) if v == label)
            states[label] = flat.init([params[i] for i in indices], subset_info(info, indices))
        return PartitionState(states, leaf_labels, info.paths)

    def update(
        updates: list[Tensor],
        state: PartitionState,
        params: list[Tensor] | None,
        info: TreeInfo,
        **extra: Any,
    ) -> tuple[list[Tensor], PartitionState]:
        _check_record("partition", state, PartitionState)
        check_state_paths("partition", state.paths, info)
        out = list(updates)
        states = {}
        for label, flat in flats.items():
            indices = _label_indices(state.labels, label)
            states[label] = run_on_subset(
                flat, indices, updates, state.inner_states[label], params, info, out, extra
            )
        return out, PartitionState(states, state.labels, state.paths)

    name = "partition(" + ", ".join(f"{k!r}: {f.name}" for k, f in flats.items()) + ")"
    return from_flat(FlatTransform(init, update, name=name))


@functools.lru_cache(maxsize=256)
def _label_indices(labels: tuple[Any, ...], label: Any) -> tuple[int, ...]:
    return tuple(i for i, v in enumerate(labels) if v == label)


# --------------------------------------------------------------------------- freeze


def set_to_zero() -> GradientTransformation:
    """Replace every update by zeros (optax's ``set_to_zero``); stateless.

    Example:
        >>> labels = lambda path: "frozen" if path.startswith("backbone") else "train"
        >>> tx = partition({"train": adam(1e-3), "frozen": set_to_zero()}, labels)
    """

    def init(params: list[Tensor], info: TreeInfo) -> EmptyState:
        return EmptyState()

    def update(
        updates: list[Tensor],
        state: EmptyState,
        params: list[Tensor] | None,
        info: TreeInfo,
        **extra: Any,
    ) -> tuple[list[Tensor], EmptyState]:
        if not updates:
            return updates, state
        return info.foreach(lambda us: fe.zero(us, info.donate), updates), state

    return from_flat(FlatTransform(init, update, name="set_to_zero"))


def freeze(mask: Mask) -> GradientTransformation:
    """Zero the updates of the masked-in leaves and keep no state for them (optax's ``freeze``).

    ``masked(set_to_zero(), mask)``. Put it *after* the optimizer in a chain
    (``chain(adamw(...), freeze(mask))``): an optimizer before it would still decay and
    keep moments for the frozen leaves.

    Args:
        mask: as in :func:`masked` (``True`` = frozen).

    Example:
        >>> tx = chain(sgd(lr=0.1), freeze(lambda path: path.startswith("backbone.")))
    """
    return masked(set_to_zero(), mask)


# --------------------------------------------------------------------------- named_chain


def named_chain(*transforms: tuple[str, GradientTransformation]) -> GradientTransformation:
    """Like :func:`~functrain.transforms.base.chain`, with the state a dict keyed by name.

    A :func:`~functrain.mask_multipliers` member applies to the whole chain, as in ``chain``.
    Unlike ``chain``, a named chain has no fused form (:func:`~functrain.apply_gradients`
    runs it on the foreach path).

    Args:
        *transforms: ``(name, transform)`` pairs, applied left to right; names are unique
            strings.

    Example:
        >>> tx = named_chain(("clip", clip(1.0)), ("adamw", adamw(lr=1e-3)))
        >>> state = tx.init(params)  # doctest: +SKIP
        >>> state["adamw"]  # doctest: +SKIP
    """
    names: list[str] = []
    parts: list[FlatTransform] = []
    for i, item in enumerate(transforms):
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
            raise ValueError(
                f"named_chain: argument {i} must be a (name, transform) pair, got {item!r}"
            )
        if item[0] in names:
            raise ValueError(f"named_chain: duplicate name {item[0]!r}")
        names.append(item[0])
        parts.append(as_flat(item[1]))
    # A mask_multipliers member applies to the whole named chain, as in chain.
    multipliers = chain_multipliers(parts)

    def init(params: list[Tensor], info: TreeInfo) -> dict[str, State]:
        if multipliers is not None:
            info = multipliers.apply(info)
        return {n: p.init(params, info) for n, p in zip(names, parts, strict=True)}

    def update(
        updates: list[Tensor],
        state: dict[str, State],
        params: list[Tensor] | None,
        info: TreeInfo,
        **extra: Any,
    ) -> tuple[list[Tensor], dict[str, State]]:
        if not isinstance(state, dict) or set(state) != set(names):
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(
                f"named_chain of {names!r} got a state with {got!r}; pass the state returned "
                "by this chain's init/update"
            )
        if multipliers is not None:
            info = multipliers.apply(info)
        new_states = {}
        for n, p in zip(names, parts, strict=True):
            updates, new_states[n] = p.update(updates, state[n], params, info, **extra)
        return updates, new_states

    name = (
        "named_chain(" + ", ".join(f"{n}={p.name}" for n, p in zip(names, parts, strict=True)) + ")"
    )
    return from_flat(FlatTransform(init, update, name=name))


# --------------------------------------------------------------------------- apply_if_finite


def all_finite(tensors: Sequence[Tensor], info: TreeInfo) -> Tensor:
    """Whether every element of ``tensors`` is finite: a 0-d bool tensor, no host sync.

    One ``torch._foreach_norm(·, inf)`` per group (a max of absolute values, which cannot
    overflow and propagates nan), then one reduction on the first tensor's device.

    Under :func:`functrain.ensemble` (``info.members`` set): one bool per member, a 1-d
    tensor (each member's slices are checked on their own).
    """
    if info.members is not None:
        return _members_finite(tensors, info.members)
    if not tensors:
        return torch.ones((), dtype=torch.bool)
    device = tensors[0].device
    norms: list[Tensor] = []
    for part in info.split(tensors):
        # The inf-norm of an empty tensor is undefined; empty leaves are trivially finite.
        part = [t.detach() for t in part if t.numel()]
        if part:
            norms.extend(n.to(device) for n in fe.norms(part, math.inf))
    if not norms:
        return torch.ones((), dtype=torch.bool, device=device)
    return torch.isfinite(torch.stack(norms)).all()


def _members_finite(tensors: Sequence[Tensor], members: int) -> Tensor:
    """:func:`all_finite` per ensemble member: ``[members]`` bools (the inf-norm of every
    member slice, one foreach launch per group)."""
    device = tensors[0].device if tensors else torch.device("cpu")
    finite = torch.ones(members, dtype=torch.bool, device=device)
    groups: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
    for t in tensors:
        if t.numel():  # an empty leaf is trivially finite (and has no inf-norm)
            groups.setdefault((t.device, t.dtype), []).append(t.detach())
    for part in groups.values():
        slices = [s for t in part for s in t.unbind(0)]
        norms = torch.stack([n.to(device) for n in fe.norms(slices, math.inf)])
        finite &= torch.isfinite(norms.view(len(part), members)).all(dim=0)
    return finite


def _member_cond(ok: Tensor, like: Tensor, cache: dict[Any, Tensor]) -> Tensor:
    """``ok`` on ``like``'s device, shaped to broadcast against it: a 0-d ``ok`` as it is; a
    per-member ``ok`` (``[members]``) as ``[members, 1, ...]`` for a leaf with the member axis,
    and as ``ok.any()`` for a leaf without it (state shared by all members, such as a step
    count, advances when any member's step goes through)."""
    if ok.ndim == 0:
        key: Any = (like.device, 0)
    elif like.ndim >= 1 and like.shape[0] == ok.shape[0]:
        key = (like.device, like.ndim)
    else:
        key = (like.device, "shared")
    cond = cache.get(key)
    if cond is None:
        cond = ok.to(like.device, non_blocking=True)
        if ok.ndim and key[1] == "shared":
            cond = cond.any()
        elif ok.ndim:
            cond = cond.view((ok.shape[0],) + (1,) * (like.ndim - 1))
        cache[key] = cond
    return cond


def select_state(ok: Tensor, new: State, old: State, what: str = "apply_if_finite") -> State:
    """``new`` where the 0-d bool ``ok`` holds, else ``old``, leaf by leaf with ``torch.where``.

    No host sync when both states have the same structure (the usual case). A state whose
    structure changes with its first update (torch-style SGD momentum creates its buffer from
    the first gradient) cannot be merged that way; then ``ok`` is read on the host (one sync,
    on that step only). Under ``torch.func.vmap`` ``ok`` has one value per member and no
    host value: that case raises a ``ValueError`` naming ``what`` (the caller).

    Under :func:`functrain.ensemble` ``ok`` is 1-d, one bool per member: a state leaf with
    the member axis is selected member by member, a leaf shared by all members (a step
    count) takes ``new`` when any member's step goes through. A first-step structure change
    is read on the host then too, and raises a ``ValueError`` naming ``what`` when only some
    members' steps go through (a buffer cannot exist for some members only).
    """
    new_leaves, new_spec = optree.tree_flatten(new, namespace=NAMESPACE)
    old_leaves, old_spec = optree.tree_flatten(old, namespace=NAMESPACE)
    same = new_spec == old_spec and all(
        n is o
        or (
            isinstance(n, Tensor)
            and isinstance(o, Tensor)
            and n.shape == o.shape
            and n.dtype == o.dtype
        )
        for n, o in zip(new_leaves, old_leaves, strict=True)
    )
    if not same:
        if fe.vmapping():
            raise ValueError(
                f"{what} cannot run under torch.func.vmap on this step: the wrapped "
                "transform's state changes structure on its first update (torch-style SGD "
                "momentum creates its buffer from the first gradient), so a skipped step "
                "cannot be chosen per member without reading it on the host. Run the first "
                "step outside vmap, or use functrain.ensemble(tx, n) for stacked members"
            )
        if ok.ndim and bool(ok.any()) and not bool(ok.all()):
            raise ValueError(
                f"{what} on stacked members: member {int(torch.nonzero(~ok)[0, 0])}'s update "
                "is not finite on the first step of a transform whose state is created by "
                "that step (torch-style SGD momentum creates its buffer from the first "
                "gradient), so it cannot be skipped for that member alone; give the first "
                "step finite gradients"
            )
        return new if bool(ok.all()) else old
    conds: dict[Any, Tensor] = {}

    def pick(n: Any, o: Any) -> Any:
        if n is o:
            return n
        return torch.where(_member_cond(ok, n, conds), n, o)

    return optree.tree_unflatten(
        new_spec, [pick(n, o) for n, o in zip(new_leaves, old_leaves, strict=True)]
    )


def zero_where_not(ok: Tensor, updates: list[Tensor]) -> list[Tensor]:
    """``updates`` where ``ok``, else zeros (new tensors; nan and inf become 0 too). A 1-d
    ``ok`` (stacked ensemble members) selects member by member."""
    conds: dict[Any, Tensor] = {}
    out = []
    for u in updates:
        cond = _member_cond(ok, u, conds)
        out.append(torch.where(cond, u, torch.zeros((), dtype=u.dtype, device=u.device)))
    return out


@state_record
class ApplyIfFiniteState:
    """State of :func:`apply_if_finite` (optax's names).

    Attributes:
        notfinite_count: consecutive non-finite updates so far (0-d int32; one per member,
            ``[members]``, under :func:`functrain.ensemble`, as the other two).
        last_finite: whether the last incoming update was finite (0-d bool).
        total_notfinite: non-finite updates seen in total (0-d int32).
        inner_state: the inner transform's state.
    """

    notfinite_count: Tensor
    last_finite: Tensor
    total_notfinite: Tensor
    inner_state: Any


def apply_if_finite(
    inner: GradientTransformation, max_consecutive_errors: int
) -> GradientTransformation:
    """Skip ``inner``'s step when the incoming updates hold a nan or inf (optax semantics).

    When any element of the incoming updates is non-finite, the output update is zero and
    ``inner``'s state is left as it was; the failure is counted. After more than
    ``max_consecutive_errors`` consecutive failures the update goes through anyway (so a
    run that keeps diverging shows it). No host sync: ``inner`` always runs and the results
    are selected with ``torch.where`` (see :func:`select_state` for the one exception, an
    inner state that changes structure on its first update, like SGD's momentum buffer).

    ``inner`` runs on its pure path even when the caller donates (the old state must
    survive a rejected step), so donation saves no memory inside this wrapper; the values
    are the same either way.

    Under :func:`functrain.ensemble` finiteness, the skip and the counters are per member:
    one member's non-finite update zeroes that member's update and keeps that member's
    slices of ``inner``'s state (state shared by all members, such as a step count, advances
    when any member's step goes through).

    Args:
        inner: the transform to protect.
        max_consecutive_errors: consecutive non-finite updates rejected before one is let
            through (an int >= 0).

    Example:
        >>> tx = apply_if_finite(chain(clip(1.0), adamw(lr=1e-3)), max_consecutive_errors=5)
    """
    if (
        isinstance(max_consecutive_errors, bool)
        or not isinstance(max_consecutive_errors, int)
        or max_consecutive_errors < 0
    ):
        raise ValueError(
            f"Invalid max_consecutive_errors: {max_consecutive_errors!r}; must be an int >= 0"
        )
    flat = as_flat(inner)

    def init(params: list[Tensor], info: TreeInfo) -> ApplyIfFiniteState:
        device = params[0].device if params else torch.device("cpu")
        shape = () if info.members is None else (info.members,)  # counters per member
        zero = torch.zeros(shape, dtype=torch.int32, device=device)
        return ApplyIfFiniteState(
            zero,
            torch.ones(shape, dtype=torch.bool, device=device),
            zero.clone(),
            flat.init(params, info),
        )

    def update(
        updates: list[Tensor],
        state: ApplyIfFiniteState,
        params: list[Tensor] | None,
        info: TreeInfo,
        **extra: Any,
    ) -> tuple[list[Tensor], ApplyIfFiniteState]:
        _check_record("apply_if_finite", state, ApplyIfFiniteState)
        finite = all_finite(updates, info).to(state.notfinite_count.device)
        pure = attrs.evolve(info, donate=False) if info.donate else info
        new_updates, new_inner = flat.update(updates, state.inner_state, params, pure, **extra)
        notfinite_count = torch.where(
            finite, torch.zeros_like(state.notfinite_count), state.notfinite_count + 1
        )
        ok = torch.logical_or(finite, notfinite_count > max_consecutive_errors)
        return zero_where_not(ok, new_updates), ApplyIfFiniteState(
            notfinite_count,
            finite,
            torch.where(finite, state.total_notfinite, state.total_notfinite + 1),
            select_state(ok, new_inner, state.inner_state),
        )

    name = f"apply_if_finite({flat.name}, max_consecutive_errors={max_consecutive_errors})"
    return from_flat(FlatTransform(init, update, name=name))
