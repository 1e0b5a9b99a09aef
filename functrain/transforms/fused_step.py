"""``apply_gradients``: one optimizer step, through torch's fused kernels when the chain allows.

A chain such as ``chain(clip(35), add_decayed_weights(1e-4), trace(0.9),
scale_by_learning_rate(0.02))`` is, algebraically, one call of ``torch._fused_sgd_``.
:func:`apply_gradients` finds the last member with a fused kernel (see
:mod:`functrain.transforms.kernel_specs`), folds the weight decay next to it and the scalings after
it into the kernel's ``weight_decay`` and ``lr`` and a global-norm clip before it into the
kernel's ``grad_scale``, runs any other member before it as usual, and lets the kernel write
the new parameters. It is the kernel torch.optim's ``fused=True`` uses: without a clip the
result is bitwise torch's; with one, the kernel divides by ``1 / coefficient`` where
``clip_grad_norm_`` multiplies by ``coefficient``, which differs by at most an ulp in the
clipped gradient (and not at all when the clip does not engage). That saves a full read and
write of the gradients, about a fifth of a large model's step. The result equals ``update``
followed by ``apply_updates`` up to rounding.

It falls back to ``update`` + ``apply_updates`` when the chain has no such form, when autograd
must see the step (a tensor requires grad, or inside ``torch.func`` transforms), or when a
leaf's device or dtype has no fused kernel.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import attrs
import torch
from torch import Tensor

from functrain.transforms import state_path
from functrain.transforms.base import (
    FlatTransform,
    GradientTransformation,
    add_updates,
    as_flat,
    chain_multipliers,
)
from functrain.transforms.compiled import CompiledStep
from functrain.transforms.kernel_specs import Decay, GradScale, Kernel, MultiplierSpec, Scalar
from functrain.transforms.members import (
    StackedState,
    active_members,
    check_stacked,
    ensemble_of,
    unwrap,
)
from functrain.tree import PyTree, TreeInfo, flatten, flatten_like, foreach_clone

__all__ = ["apply_gradients", "fusion_plan"]

_FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_FUSED_DEVICES = ("cpu", "cuda")

Path = tuple[int, ...]
Member = tuple[Path, FlatTransform]


@attrs.frozen
class FusionPlan:
    """How a chain maps onto one fused kernel call.

    Attributes:
        prefix: members run as usual before the kernel (a maximize negation, ...).
        clip: a global-norm clip right before the kernel (and its coupled decay), folded
            into the kernel as ``grad_scale = 1 / coefficient``: the kernel reads each
            gradient once instead of the clip reading and writing it first. ``None`` when
            there is none.
        kernel: the member whose fused kernel does the step.
        decay: the weight-decay member folded into the kernel, if any.
        decoupled: whether that decay comes after the kernel's direction (AdamW) or before
            it (L2, as torch's SGD and Adam apply ``weight_decay``).
        scalars: members after the kernel whose product is ``-lr``.
    """

    prefix: tuple[Member, ...]
    clip: Member | None
    kernel: Member
    decay: Member | None
    decoupled: bool
    scalars: tuple[Member, ...]


def _members(flat: FlatTransform, path: Path = ()) -> Iterator[Member]:
    if flat.parts:
        if path and chain_multipliers(flat.parts) is not None:
            # Only the outermost chain's multipliers are applied by apply_gradients.
            raise _NestedMultipliers
        for i, part in enumerate(flat.parts):
            yield from _members(part, path + (i,))
    else:
        yield path, flat


def fusion_plan(tx: GradientTransformation) -> FusionPlan | None:
    """The :class:`FusionPlan` of ``tx``, or ``None`` when it has no fused form."""
    # mask_multipliers members are identities whose work is done through the TreeInfo.
    try:
        members = [m for m in _members(as_flat(tx)) if not isinstance(m[1].fusion, MultiplierSpec)]
    except _NestedMultipliers:
        return None
    kernels = [i for i, (_, m) in enumerate(members) if isinstance(m.fusion, Kernel)]
    if not kernels:
        return None
    k = kernels[-1]
    kernel: Kernel = members[k][1].fusion
    suffix = members[k + 1 :]
    decay: Member | None = None
    decoupled = False
    if suffix and isinstance(suffix[0][1].fusion, Decay):
        if not kernel.decoupled_decay:
            return None
        decay, decoupled, suffix = suffix[0], True, suffix[1:]
    if not all(isinstance(m.fusion, Scalar) for _, m in suffix):
        return None
    prefix = members[:k]
    if (
        decay is None
        and prefix
        and isinstance(prefix[-1][1].fusion, Decay)
        and kernel.coupled_decay
    ):
        decay, prefix = prefix[-1], prefix[:-1]
    clip = None
    if prefix and isinstance(prefix[-1][1].fusion, GradScale):
        clip, prefix = prefix[-1], prefix[:-1]
    return FusionPlan(tuple(prefix), clip, members[k], decay, decoupled, tuple(suffix))


def _get(state: Any, path: Path) -> Any:
    # A member's path is its index in each nested chain's state tuple.
    return state_path.get(state, tuple(("item", i) for i in path))


def _set(state: Any, path: Path, value: Any) -> Any:
    return state_path.replace(state, tuple(("item", i) for i in path), value)


class _NestedMultipliers(Exception):
    pass


def _times(a: Any, b: Any) -> Any:
    """``a * b`` for scalars, or elementwise when either is a per-group list."""
    if isinstance(a, list) or isinstance(b, list):
        n = len(a) if isinstance(a, list) else len(b)
        a_list = a if isinstance(a, list) else [a] * n
        b_list = b if isinstance(b, list) else [b] * n
        return [x * y for x, y in zip(a_list, b_list, strict=True)]
    return a * b


def _fusable(params: list[Tensor], grads: list[Tensor], info: TreeInfo) -> str | None:
    """Why the fused kernels cannot run on these tensors, or ``None`` when they can."""
    if torch._C._functorch.peek_interpreter_stack() is not None:
        return "inside a torch.func transform"
    if torch.is_grad_enabled() and any(t.requires_grad for t in params + grads):
        return "a tensor requires grad (autograd must see the step)"
    for idx in info.groups:
        leaf = params[idx[0]]
        if leaf.device.type not in _FUSED_DEVICES or leaf.dtype not in _FUSED_DTYPES:
            return f"no fused kernel for {leaf.dtype} on {leaf.device.type}"
    for p, g in zip(params, grads, strict=True):
        if g.dtype != p.dtype or g.device != p.device:
            return "a gradient's dtype or device differs from its parameter's"
    return None


def _in_layout_of(param: Tensor, grad: Tensor) -> Tensor:
    """``grad`` copied into a tensor with ``param``'s strides."""
    return torch.empty_like(param, dtype=grad.dtype).copy_(grad)


def _run_fused(
    plan: FusionPlan,
    params: list[Tensor],
    grads: list[Tensor],
    state: Any,
    info: TreeInfo,
    extra: dict[str, Any],
) -> tuple[list[Tensor], Any] | None:
    """The fused step, or ``None`` (nothing computed) when per-member values rule it out."""
    # torch's fused kernels walk a gradient's memory in its parameter's order: a gradient
    # laid out otherwise (a transposed one from torch.func or vmap) would be read wrongly,
    # so it is copied into the parameter's layout first (autograd's .grad already is).
    grads = [
        g if g.stride() == p.stride() else _in_layout_of(p, g)
        for p, g in zip(params, grads, strict=True)
    ]
    # The scalings after the kernel first (they only read their own states): per-member
    # values (an ensemble's 1-d learning rates) have no fused form, and nothing has run yet.
    product: Any = 1.0
    for path, member in plan.scalars:
        value, s = member.fusion.compute(_get(state, path), info)
        if (
            info.members is not None
            and not plan.kernel[1].fusion.per_member_lr
            and any(
                isinstance(v, Tensor) and v.ndim > 0
                for v in (value if isinstance(value, list) else [value])
            )
        ):
            return None
        state = _set(state, path, s)
        product = _times(product, value)
    for path, member in plan.prefix:
        grads, s = member.update(grads, _get(state, path), params, info, **extra)
        state = _set(state, path, s)
    grad_scale = None
    if plan.clip is not None:
        path, member = plan.clip
        # torch's kernels take grad_scale in float32 only; float64 trees clip exactly first.
        # Stacked members clip each member by its own factor: no single grad_scale.
        if info.members is not None or any(
            params[idx[0]].dtype == torch.float64 for idx in info.groups
        ):
            grads, s = member.update(grads, _get(state, path), params, info, **extra)
        else:
            coef, s = member.fusion.compute(grads, _get(state, path), info)
            grad_scale = torch.reciprocal(coef).to(torch.float32)
            if not info.donate:
                grads = foreach_clone(grads)  # the kernel writes the unscaled gradients back
        state = _set(state, path, s)
    lr = [-v for v in product] if isinstance(product, list) else -product
    weight_decay: Any = plan.decay[1].fusion.weight_decay if plan.decay else 0.0
    if info.multipliers is not None and weight_decay:
        weight_decay = [weight_decay * dm for _, dm in info.multipliers]
    path, member = plan.kernel
    params, s = member.fusion.apply(
        params,
        grads,
        _get(state, path),
        info,
        lr=lr,
        weight_decay=weight_decay,
        decoupled=plan.decoupled,
        grad_scale=grad_scale,
    )
    return params, _set(state, path, s)


def apply_gradients(
    tx: GradientTransformation,
    params: PyTree,
    grads: PyTree,
    state: Any,
    *,
    donate: bool = False,
    fused: bool | None = None,
    **extra: Any,
) -> tuple[PyTree, Any]:
    """One optimizer step: ``params + tx.update(grads, state, params)``.

    Args:
        tx: the transform (usually a chain ending in a learning rate).
        params: parameter tree.
        grads: gradient tree with the same structure.
        state: ``tx``'s state.
        donate: the caller gives up ``params``, ``grads`` and ``state``: the step may write
            into their buffers instead of allocating new ones (what a training loop wants).
            Results are bitwise identical either way.
        fused: ``None`` chooses automatically; ``True`` requires the fused kernels (a
            ``ValueError`` says why they cannot run); ``False`` forces ``update`` +
            ``apply_updates``.
        **extra: passed to every transform's ``update``.

    Returns:
        ``(new_params, new_state)``.

    Example:
        >>> tx = chain(clip(1.0), adamw(lr=1e-3))
        >>> state = tx.init(params)  # doctest: +SKIP
        >>> params, state = apply_gradients(tx, params, grads, state, donate=True)  # doctest: +SKIP
    """
    p_leaves, info = flatten(params, donate=donate)
    g_leaves = flatten_like(grads, info, what="grads", against="params")
    stacked = ensemble_of(tx)
    if stacked is None:
        new_params, state = _step(tx, p_leaves, g_leaves, state, info, fused, extra)
        return info.unflatten(new_params), state
    inner, members = stacked
    check_stacked(p_leaves, info, members)
    check_stacked(g_leaves, info, members)
    inner_state = unwrap(state, members)
    info = attrs.evolve(info, members=members)
    with active_members(members):
        new_params, inner_state = _step(inner, p_leaves, g_leaves, inner_state, info, fused, extra)
    return info.unflatten(new_params), StackedState(inner_state, members)


def _step(
    tx: GradientTransformation,
    p_leaves: list[Tensor],
    g_leaves: list[Tensor],
    state: Any,
    info: TreeInfo,
    fused: bool | None,
    extra: dict[str, Any],
) -> tuple[list[Tensor], Any]:
    flat = as_flat(tx)
    if isinstance(flat.fusion, CompiledStep) and fused is not False:
        # functrain.compiled: its program does the update and the parameter update at once.
        return flat.fusion.run(p_leaves, g_leaves, state, info, extra)
    plan = fusion_plan(tx) if fused is not False else None
    multipliers = chain_multipliers(flat.parts)
    if plan is not None and multipliers is not None:
        info = multipliers.apply(info)
    reason = "the chain has no fused form" if plan is None else _fusable(p_leaves, g_leaves, info)
    if fused and reason is not None:
        raise ValueError(f"apply_gradients(fused=True) cannot fuse this step: {reason}")
    if reason is None:
        result = _run_fused(plan, p_leaves, g_leaves, state, info, extra)
        if result is not None:
            return result
        if fused:
            raise ValueError(
                "apply_gradients(fused=True) cannot fuse this step: a per-member learning "
                "rate (torch's kernels take one number)"
            )
    updates, state = flat.update(g_leaves, state, p_leaves, info, **extra)
    return add_updates(p_leaves, updates, info), state
