"""Gradient clipping: by global norm (``clip_by_global_norm``, also spelled ``clip``) and by
value (``clip_by_value``).

``clip`` is kept as an alias of :func:`clip_by_global_norm` (functrain's first name for it,
after mmengine's ``clip_grad``); note that optax's ``clip`` is element-wise, which is
:func:`clip_by_value` here.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from torch import Tensor

from functrain.transforms import foreach as fe
from functrain.transforms.base import (
    FlatTransform,
    GradientTransformation,
    from_flat,
    state_record,
    stateless_foreach,
)
from functrain.transforms.kernel_specs import GradScale
from functrain.transforms.members import PerMember, member_global_norm, per_member
from functrain.transforms.validation import check_positive
from functrain.tree import TreeInfo, global_norm

__all__ = ["ClipState", "clip", "clip_by_global_norm", "clip_by_value"]


@state_record
class ClipState:
    """State of :func:`clip_by_global_norm`.

    Attributes:
        norm: the global norm of the last gradients *before* clipping, a 0-d tensor on the
            gradients' device (a logger reads it without forcing a sync each step).
    """

    norm: Tensor


def clip_by_global_norm(
    max_norm: float, norm_type: float = 2.0, error_if_nonfinite: bool = False
) -> GradientTransformation:
    """Scale the updates so that their global norm is at most ``max_norm``.

    The same computation as ``torch.nn.utils.clip_grad_norm_`` (and mmengine's
    ``clip_grad=dict(max_norm=..., norm_type=...)``): the norm of all leaves viewed as one
    vector, then ``updates * min(max_norm / (norm + 1e-6), 1)``. The pre-clip norm is kept in
    :class:`ClipState` as a tensor.

    Args:
        max_norm: largest allowed global norm, > 0.
        norm_type: ``p`` of the p-norm, > 0, or ``float("inf")``.
        error_if_nonfinite: raise ``RuntimeError`` when the norm is nan or inf. This reads
            the norm on the host, a sync per step, as torch's option does.

    Example:
        >>> tx = chain(clip_by_global_norm(35.0), sgd(lr=0.02, momentum=0.9))
    """
    check_positive("max_norm", max_norm, allow_members=True)
    norm_type = float(norm_type)
    if not (norm_type > 0 or math.isinf(norm_type)) or math.isnan(norm_type):
        raise ValueError(f"Invalid norm_type: {norm_type!r}; must be > 0 or inf")
    max_norm = per_member("max_norm", max_norm)
    vector = isinstance(max_norm, PerMember)
    if not vector:
        max_norm = float(max_norm)

    def init(params: list[Tensor], info: TreeInfo) -> ClipState:
        device = params[0].device if params else torch.device("cpu")
        if vector:
            max_norm.on(device)  # checks the member count
        shape = () if info.members is None else (info.members,)
        # In the dtype the norm will have (the leaves' promoted dtype), so that a state
        # before the first step and after it have the same layout (checkpoints restore into
        # a fresh state).
        dtype = (
            functools.reduce(torch.promote_types, [p.dtype for p in params])
            if params
            else torch.float32
        )
        return ClipState(torch.zeros(shape, dtype=dtype, device=device))

    def coefficient(
        updates: list[Tensor], state: ClipState, info: TreeInfo
    ) -> tuple[Tensor, ClipState]:
        if info.members is None:
            norm = global_norm(updates, norm_type, info)
        else:  # stacked ensemble members: each member's own norm, a 1-d tensor
            norm = member_global_norm(updates, norm_type, info, info.members)
        if error_if_nonfinite:
            fe.refuse_vmap(
                "clip(error_if_nonfinite=True)",
                "raising on a non-finite norm reads the norm on the host",
                "use clip(..., error_if_nonfinite=False), or apply_if_finite(tx, n) to skip "
                "non-finite steps per member",
            )
        if error_if_nonfinite and bool(torch.logical_or(norm.isnan(), norm.isinf()).any()):
            raise RuntimeError(
                f"The total norm of order {norm_type} for gradients is non-finite, so it cannot "
                "be clipped. To disable this error, use clip(..., error_if_nonfinite=False)"
            )
        limit = max_norm.on(norm.device).to(norm.dtype) if vector else max_norm
        coef = torch.clamp(limit / (norm + 1e-6), max=1.0)
        return coef, ClipState(norm)

    def update(
        updates: list[Tensor],
        state: ClipState,
        params: list[Tensor] | None,
        info: TreeInfo,
        **extra: Any,
    ) -> tuple[list[Tensor], ClipState]:
        if not updates:
            return updates, state
        coef, state = coefficient(updates, state, info)

        return info.foreach(lambda us: fe.mul(us, coef, info.donate), updates), state

    shown = repr(max_norm) if vector else f"{max_norm:g}"
    return from_flat(
        FlatTransform(
            init,
            update,
            # The name shown by repr / explain keeps the short spelling users wrote.
            name=f"clip({shown}, norm_type={norm_type:g})",
            fusion=GradScale(coefficient),
        )
    )


#: The same function as :func:`clip_by_global_norm` (functrain's original name; kept, not
#: deprecated). Not optax's element-wise ``clip``: that is :func:`clip_by_value`.
clip = clip_by_global_norm


def clip_by_value(clip_value: float) -> GradientTransformation:
    """Clamp every update element to ``[-clip_value, clip_value]``.

    The same computation as ``torch.nn.utils.clip_grad_value_`` (mmengine's
    ``clip_grad=dict(type='value', clip_value=...)``).

    Args:
        clip_value: bound, > 0.

    Example:
        >>> tx = chain(clip_by_value(1.0), adam(lr=1e-3))
    """
    check_positive("clip_value", clip_value)
    clip_value = float(clip_value)

    def fn(updates: list[Tensor], params: list[Tensor] | None) -> list[Tensor]:
        return fe.clamp(updates, -clip_value, clip_value)

    return stateless_foreach(fn, name=f"clip_by_value({clip_value:g})")
