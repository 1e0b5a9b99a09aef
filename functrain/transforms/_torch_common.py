"""Private helpers shared by the torch.optim ports (Adamax, Adagrad, Adadelta, RMSprop, Rprop,
ASGD, NAdam, RAdam): state initialisation, in-place-or-not foreach ops that ``foreach.py`` does
not have, and the pieces of their fused-path ``Kernel`` implementations.

The fused paths here (except Adagrad's, which is torch's kernel) are not torch kernels: they
are the whole optimizer step written with ``torch._foreach_*`` ops, in place, ending in one
``addcdiv_`` / ``addcmul_`` / ``add_`` into the parameters (where the ``update`` path needs
a learning-rate multiply and an ``apply_updates`` pass more). Adamax, Adadelta, RMSprop
(without momentum), Rprop, ASGD and NAdam follow torch's single-tensor order of operations,
so they give bitwise torch.optim's (foreach=False) result; RAdam does in its unrectified steps.
That final op takes the step size as a host number, which is a plain memory read for a CPU
tensor; for tensors on an accelerator the step size stays on the device and the op is split
in two (one more pass, no sync).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from functrain.transforms import foreach as fe
from functrain.transforms.hyperparams import Schedule, value_at
from functrain.transforms.validation import is_schedule
from functrain.tree import TreeInfo, foreach_clone

Scalar = float | Tensor


def device_of(params: Sequence[Tensor]) -> torch.device:
    return params[0].device if params else torch.device("cpu")


def step_counter(device: torch.device) -> Tensor:
    """torch.optim's ``step``: a 0-d float32 tensor (exact for integers up to 2**24)."""
    return torch.zeros((), dtype=torch.float32, device=device)


def zeros(params: Sequence[Tensor]) -> tuple[Tensor, ...]:
    return tuple(torch.zeros_like(p, memory_format=torch.preserve_format) for p in params)


def full(params: Sequence[Tensor], value: float) -> tuple[Tensor, ...]:
    return tuple(torch.full_like(p, value, memory_format=torch.preserve_format) for p in params)


def increment(count: Tensor, donate: bool) -> Tensor:
    return count.add_(1) if donate else count + 1


def addcmul_scalar(xs: list[Tensor], a: list[Tensor], b: Tensor, inplace: bool) -> list[Tensor]:
    """``xs + a * b`` for a 0-d tensor ``b`` (a list of it: torch has no TensorList x Tensor
    addcmul, and autograd needs the list form anyway)."""
    b = b.to(device=xs[0].device, dtype=xs[0].dtype)
    bs = [b] * len(xs)
    if inplace:
        torch._foreach_addcmul_(xs, a, bs)
        return xs
    return list(torch._foreach_addcmul(xs, a, bs))


def add_scalar(xs: list[Tensor], y: Tensor, inplace: bool) -> list[Tensor]:
    """``xs + y`` for a 0-d tensor ``y``, cast to the leaves' dtype (as ``foreach.mul`` does,
    so that both paths round alike) and passed as a list where autograd may watch."""
    y = y.to(device=xs[0].device, dtype=xs[0].dtype)
    arg: Tensor | list[Tensor] = [y] * len(xs) if y.requires_grad or fe.tracing_grad() else y
    if inplace:
        torch._foreach_add_(xs, arg)
        return xs
    return list(torch._foreach_add(xs, arg))


def float64(value: Scalar, device: torch.device) -> Tensor:
    return torch.as_tensor(value, dtype=torch.float64, device=device)


def evaluate(value: float | Schedule, count: Tensor) -> Tensor:
    """A constant or scheduled hyperparameter at ``count``, as a 0-d float64 tensor."""
    return float64(value_at(value, count), count.device)


def name_of(value: Any) -> str:
    return repr(value) if is_schedule(value) else f"{float(value):g}"


# ---------------------------------------------------------------------------------------------
# Fused-path (``Kernel``) helpers.


def host_scalar(x: Scalar) -> float | None:
    """``x`` as a Python float when that costs no device sync (a number, or a CPU tensor whose
    value is already in host memory); ``None`` for a tensor on an accelerator."""
    if not isinstance(x, Tensor):
        return float(x)
    if x.device.type == "cpu":
        return float(x)
    return None


def kernel_inputs(
    params: list[Tensor],
    grads: list[Tensor],
    buffers: Sequence[Sequence[Tensor]],
    info: TreeInfo,
) -> tuple[list[Tensor], list[Tensor], list[list[Tensor]]]:
    """The tensors a fused step may write into: the inputs themselves when donating, else
    copies (so that both paths run the very same in-place ops and agree bitwise)."""
    if info.donate:
        return params, grads, [list(b) for b in buffers]
    return foreach_clone(params), foreach_clone(grads), [foreach_clone(b) for b in buffers]


def prepare_grads(
    p: list[Tensor],
    g: list[Tensor],
    *,
    grad_scale: Tensor | None,
    maximize: bool,
    weight_decay: float,
    decoupled: bool,
    lr: Scalar,
) -> None:
    """In place, in torch's order: unscale (a folded clip), negate (``maximize``), then L2
    decay into the gradient, or decoupled decay ``p *= 1 - lr * weight_decay`` of the
    parameters."""
    if grad_scale is not None:
        torch._foreach_div_(g, grad_scale.to(g[0].device))
    if maximize:
        torch._foreach_neg_(g)
    if weight_decay:
        if decoupled:
            factor = 1 - lr * weight_decay
            host = host_scalar(factor)
            torch._foreach_mul_(p, host if host is not None else factor.to(p[0].dtype))
        else:
            torch._foreach_add_(g, p, alpha=weight_decay)


def add_scaled_(p: list[Tensor], x: list[Tensor], scalar: Scalar) -> None:
    """``p += scalar * x`` in place."""
    host = host_scalar(scalar)
    if host is not None:
        torch._foreach_add_(p, x, alpha=host)
    else:
        torch._foreach_add_(p, fe.mul(x, scalar, False))


def addcdiv_scaled_(p: list[Tensor], a: list[Tensor], b: list[Tensor], scalar: Scalar) -> None:
    """``p += scalar * a / b`` in place."""
    host = host_scalar(scalar)
    if host is not None:
        torch._foreach_addcdiv_(p, a, b, value=host)
    else:
        torch._foreach_add_(p, fe.mul(fe.div(a, b, False), scalar, False))


def addcmul_scaled_(p: list[Tensor], a: list[Tensor], b: list[Tensor], scalar: Scalar) -> None:
    """``p += scalar * a * b`` in place."""
    host = host_scalar(scalar)
    if host is not None:
        torch._foreach_addcmul_(p, a, b, value=host)
    else:
        torch._foreach_add_(p, fe.mul(list(torch._foreach_mul(a, b)), scalar, False))


def per_group(info: TreeInfo, fn: Callable[..., Any], *lists: Sequence[Tensor]) -> None:
    """Run ``fn`` (which works in place and returns nothing) once per (device, dtype) group."""

    def wrapped(*parts: list[Tensor]) -> list[Tensor]:
        fn(*parts)
        return parts[0]

    info.foreach(wrapped, *lists)
