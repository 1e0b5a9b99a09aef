"""Stacked ensemble members: ``ensemble(tx, n)`` and per-member hyperparameters.

A tree whose every leaf carries a leading *member axis* of size ``n`` (what
``torch.func.stack_module_state`` returns for ``n`` copies of a model) holds ``n`` models at
once. ``ensemble(tx, n)`` runs ``tx`` on such a tree with per-member semantics and one kernel
per op for all members:

- element-wise rules (Adam's moments, momentum, weight decay, the learning rate) run as they
  are on the stacked leaves, and :func:`functrain.apply_gradients` still uses torch's fused
  kernels when every hyperparameter is shared;
- rules that reduce read :attr:`functrain.tree.TreeInfo.members` and reduce per member: the
  global-norm clip takes each member's own norm, trust ratios and finiteness checks are per
  member;
- a hyperparameter given as a sequence or 1-d tensor of ``n`` values (``lr=[1e-3, 3e-3]``,
  ``betas=([0.9, 0.95], 0.999)``, ``clip(max_norm=[1.0, 5.0])``) is a :class:`PerMember`
  value: member ``i`` uses value ``i``, broadcast over its slice of every leaf. The values in
  force are recorded per member (``values_in_force`` returns length-``n`` tensors).

Member ``i`` of an ensemble equals an independent run of ``tx`` (built with member ``i``'s
hyperparameters) on member ``i``'s slice, up to rounding where a per-member value replaces a
Python number in a kernel (an ulp per op).

What reduces per member: the global-norm clip (each member's own norm, per-member
``max_norm``); LAMB's and LARS's trust ratios; Muon's Newton-Schulz (one member matrix at a
time; its 2-d rule and lr ratio read the per-member shape); Adafactor's factored statistics
and RMS (a stacked ``[N, d]`` bias is a vector); :func:`~functrain.apply_if_finite` and
:func:`~functrain.loss_scaling` (finiteness, skipped steps, counters, scale, growth tracker
and ``found_inf`` per member); the mask / label callables of ``masked`` / ``partition`` see
one member's slice. Element-wise, so unchanged: the Adam family's moments, Adagrad,
Adadelta, RMSprop, Rprop, ASGD, Lion, schedule-free, ``accumulate`` / ``multi_steps``,
``clip_by_value``, weight decay and learning rates. ``lbfgs`` and ``sparse_adam`` refuse
ensembles.

One difference from separate runs: a step counter an optimizer keeps as one number (Adam's
``count``, for its bias corrections) is shared by the members, and under ``apply_if_finite``
or ``loss_scaling`` it advances when any member steps; a member whose step was skipped then
continues with the others' count, not with the count a run of its own would have.

Shared hyperparameters keep torch's fused kernels (:func:`functrain.apply_gradients`); a
per-member learning rate keeps Adam's, AdamW's and SGD's fused kernels by calling them once per
member on its slices; other per-member values run the foreach chain.

Example:
    >>> params = {"w": torch.zeros(4, 3)}  # 4 members of a 3-vector
    >>> tx = ensemble(chain(clip(1.0), adamw(lr=[1e-3, 2e-3, 5e-3, 1e-2])), 4)
    >>> state = tx.init(params)
    >>> updates, state = tx.update({"w": torch.ones(4, 3)}, state, params)
    >>> updates["w"].shape
    torch.Size([4, 3])
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from typing import Any

import attrs
import torch
from torch import Tensor

from functrain.transforms import foreach as fe
from functrain.transforms.base import (
    FlatTransform,
    GradientTransformation,
    as_flat,
    from_flat,
    state_record,
    static_field,
)
from functrain.tree import TreeInfo

__all__ = [
    "PerMember",
    "StackedState",
    "ensemble",
    "ensemble_of",
    "member_global_norm",
    "members_of",
    "per_member",
]

# The member count of the ensemble whose init/update is running (None outside one): a
# PerMember value checks its length against it when it is evaluated.
_ACTIVE: ContextVar[int | None] = ContextVar("functrain_active_members", default=None)


@contextlib.contextmanager
def active_members(n: int | None) -> Iterator[None]:
    """Evaluate :class:`PerMember` values for an ensemble of ``n`` members inside the block."""
    token = _ACTIVE.set(n)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


class PerMember:
    """A hyperparameter with one value per ensemble member.

    It behaves as a schedule that does not depend on the step (transforms evaluate it where
    they evaluate schedules, on the device, without a host sync) and returns the 1-d float64
    tensor of values. Built by :func:`per_member` from a sequence or a 1-d tensor.

    Attributes:
        name: the argument it was given for (``"lr"``, ``"betas[0]"``), for error messages.
        values: the values, a 1-d float64 CPU tensor.
    """

    def __init__(self, name: str, values: Tensor) -> None:
        self.name = name
        self.values = values
        self._on: dict[torch.device, Tensor] = {}

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def __repr__(self) -> str:
        return f"per_member({', '.join(f'{v:g}' for v in self.values.tolist())})"

    def on(self, device: torch.device) -> Tensor:
        """The values on ``device`` (copied there once), after checking the member count."""
        n = _ACTIVE.get()
        if n is None:
            raise ValueError(
                f"{self.name} has {len(self)} per-member values, but the transform is not "
                f"running on stacked members: wrap it in functrain.ensemble(tx, {len(self)}) "
                "and give it trees with a leading member axis"
            )
        if n != len(self):
            raise ValueError(
                f"{self.name} has {len(self)} per-member values but the ensemble has {n} "
                "members; give one value per member"
            )
        device = torch.device(device)
        if device not in self._on:
            self._on[device] = self.values.to(device)
        return self._on[device]

    def __call__(self, step: Any) -> Tensor:
        device = step.device if isinstance(step, Tensor) else torch.device("cpu")
        values = self.on(device)
        if isinstance(step, Tensor) and step.ndim == 1:  # a curve: [steps, members]
            return values.expand(step.shape[0], len(self))
        return values


def per_member(name: str, value: Any) -> Any:
    """``value`` as a :class:`PerMember` when it is a sequence or 1-d tensor of numbers,
    else ``value`` unchanged (a number or a schedule).

    Each element must be a finite-or-infinite number (not NaN, not a bool); range checks are
    the caller's (:mod:`functrain.transforms.validation` checks every element).

    Example:
        >>> per_member("lr", [1e-3, 1e-2])
        per_member(0.001, 0.01)
    """
    if isinstance(value, PerMember):
        return value
    if isinstance(value, Tensor):
        if value.ndim == 0:
            return value
        if value.ndim != 1 or value.numel() == 0:
            raise ValueError(
                f"{name} given as a tensor must be 0-d or a 1-d tensor of one value per "
                f"member, got shape {tuple(value.shape)}"
            )
        if value.dtype == torch.bool or value.is_complex():
            raise ValueError(f"{name} must hold real numbers, got a {value.dtype} tensor")
        # A build-time check: the values are read to the host once, never per step.
        values = value.detach().to("cpu", torch.float64)
        if bool(torch.isnan(values).any()):
            raise ValueError(f"Invalid {name}: {value.tolist()!r} holds NaN")
        return PerMember(name, values)
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) == 0:
            raise ValueError(f"{name} is an empty sequence; give one value per member")
        for i, v in enumerate(value):
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise ValueError(f"{name}[{i}] must be a number, got {v!r} ({type(v).__name__})")
            if math.isnan(v):
                raise ValueError(f"Invalid {name}[{i}]: {v!r} (NaN)")
        return PerMember(name, torch.tensor([float(v) for v in value], dtype=torch.float64))
    return value


def members_of(value: Any) -> int | None:
    """How many members a hyperparameter has values for: ``len`` of a :class:`PerMember`, the
    member count of a per-member schedule (``value.members``), else ``None``."""
    if isinstance(value, PerMember):
        return len(value)
    members = getattr(value, "members", None)
    return members if isinstance(members, int) else None


@state_record
class StackedState:
    """State of :func:`ensemble`: the wrapped transform's state over the stacked tree.

    Attributes:
        inner: the state of the wrapped transform; its buffers carry the member axis.
        members: the member count (static).
    """

    inner: Any
    members: int = static_field()


@attrs.frozen(repr=False)
class Ensemble(GradientTransformation):
    """What :func:`ensemble` returns: a :class:`GradientTransformation` that also knows the
    transform it wraps, so :func:`functrain.apply_gradients` can plan a fused step for it.

    Attributes:
        inner: the wrapped transform.
        members: the member count.
    """

    inner: GradientTransformation = attrs.field(kw_only=True)
    members: int = attrs.field(kw_only=True)

    def __repr__(self) -> str:
        return f"ensemble({self.inner!r}, {self.members})"


def check_stacked(leaves: Sequence[Tensor], info: TreeInfo, members: int) -> None:
    """``ValueError`` naming the first leaf without a leading member axis of size ``members``."""
    for i, leaf in enumerate(leaves):
        if leaf.ndim == 0 or leaf.shape[0] != members:
            raise ValueError(
                f"leaf {info.paths[i]!r} has shape {tuple(leaf.shape)}, but ensemble(tx, "
                f"{members}) needs a leading member axis of size {members} on every leaf "
                "(stack the members' trees, e.g. with torch.func.stack_module_state)"
            )


def unwrap(state: Any, members: int) -> Any:
    """The inner state of an ensemble's :class:`StackedState`, or an error saying what
    ``state`` is instead."""
    if not isinstance(state, StackedState):
        raise ValueError(
            f"ensemble(tx, {members}) got a {type(state).__name__} state that was not built "
            "for stacked members: build it with ensemble(tx, n).init(stacked_params)"
        )
    if state.members != members:
        raise ValueError(
            f"the state was built for {state.members} members but this ensemble has {members}"
        )
    return state.inner


def ensemble_of(tx: Any) -> tuple[GradientTransformation, int] | None:
    """``(inner transform, members)`` of an :func:`ensemble`, else ``None``."""
    if isinstance(tx, Ensemble):
        return tx.inner, tx.members
    return None


def member_global_norm(
    tensors: Sequence[Tensor], norm_type: float, info: TreeInfo, members: int
) -> Tensor:
    """Each member's global norm of ``tensors`` (leaves with a leading member axis), a 1-d
    tensor of ``members`` values.

    Member ``i``'s norm is the norm of its per-leaf norms in group order, each from
    :func:`functrain.transforms.foreach.member_norms` (one foreach norm over every member's
    slice of every leaf, the kernel ``clip_grad_norm_`` runs on member ``i`` alone).
    """
    first_device = tensors[0].device
    per_group = [
        fe.member_norms(part, members, norm_type).to(first_device) for part in info.split(tensors)
    ]
    # [members, leaves]: each row holds one member's per-leaf norms in torch's order.
    table = torch.cat(per_group).t().contiguous()
    return torch.linalg.vector_norm(table, norm_type, dim=1)


def _check_recorded(state: Any, members: int) -> None:
    """Every per-member value recorded in a fresh state has ``members`` entries."""
    from functrain.transforms.state_values import recorded_vectors

    for name, value in recorded_vectors(state):
        if value.shape[0] != members:
            raise ValueError(
                f"{name} has {value.shape[0]} per-member values but the ensemble has "
                f"{members} members; give one value per member"
            )


def ensemble(tx: GradientTransformation, members: int) -> GradientTransformation:
    """Run ``tx`` on stacked ensemble members: trees whose every leaf has a leading axis of
    size ``members``.

    Element-wise rules run once for all members; reductions (global-norm clip, trust ratios,
    finiteness checks) are per member; hyperparameters given per member (a sequence or 1-d
    tensor of ``members`` values) apply to their member. The state is a
    :class:`StackedState` around ``tx``'s state.

    Args:
        tx: the transform for one member (any chain of built-in transforms).
        members: the member count, >= 1.

    Raises:
        ValueError: at ``init``/``update``, a leaf without the member axis (naming its path),
            a per-member hyperparameter with another count (naming it and both sizes), or a
            state not built by this ensemble.

    Example:
        >>> tx = ensemble(chain(clip(1.0), sgd(lr=[0.1, 0.01], momentum=0.9)), 2)
        >>> state = tx.init({"w": torch.zeros(2, 5)})
    """
    if isinstance(members, bool) or not isinstance(members, int) or members < 1:
        raise ValueError(f"members must be an int >= 1, got {members!r}")
    if isinstance(tx, Ensemble):
        raise ValueError("ensemble(ensemble(...)): the transform is already stacked")
    inner = as_flat(tx)

    def init(params: list[Tensor], info: TreeInfo) -> StackedState:
        check_stacked(params, info, members)
        with active_members(members):
            state = inner.init(params, attrs.evolve(info, members=members))
        _check_recorded(state, members)
        return StackedState(state, members)

    def update(
        updates: list[Tensor],
        state: StackedState,
        params: list[Tensor] | None,
        info: TreeInfo,
        **extra: Any,
    ) -> tuple[list[Tensor], StackedState]:
        inner_state = unwrap(state, members)
        check_stacked(updates, info, members)
        with active_members(members):
            out, new = inner.update(
                updates, inner_state, params, attrs.evolve(info, members=members), **extra
            )
        return out, StackedState(new, members)

    flat = FlatTransform(init, update, name=f"ensemble({inner.name}, {members})")
    wrapped = from_flat(flat)
    return Ensemble(wrapped.init, wrapped.update, flat, inner=tx, members=members)
