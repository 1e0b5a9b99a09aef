"""``torch._foreach_*`` arithmetic on lists of tensors, in place or not, autograd-safe.

Each helper takes ``inplace``: in place (the donating path) it writes into its first
argument and returns it; otherwise it returns new tensors and never touches its inputs. Both
forms evaluate the same formula with the same kernels, so they give bitwise the same values.

A 0-d tensor scalar is cast to the leaves' dtype first (see ``_scalar_arg``). Two details make the pure form differentiable (``torch.func.grad`` through several steps):
it never writes into a tensor autograd has saved (``sqrt``'s output, say), and a 0-d tensor
scalar that may carry a gradient is passed as a list (torch's ``TensorList x Tensor``
overloads have no working backward).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

Scalar = float | Tensor


def tracing_grad() -> bool:
    """Whether autograd may need to see these ops (grad mode with a functorch transform)."""
    return torch._C._functorch.peek_interpreter_stack() is not None


def _scalar_arg(xs: Sequence[Tensor], y: Scalar) -> Scalar | list[Tensor]:
    if isinstance(y, Tensor):
        # In the leaves' dtype: for 0-d leaves torch's in-place and out-of-place kernels
        # round a wider scalar differently, and the two paths must agree bitwise.
        y = y.to(device=xs[0].device, dtype=xs[0].dtype)
        if y.requires_grad or tracing_grad():
            return [y] * len(xs)
    return y


def _op(name: str, xs: list[Tensor], *args: Any, inplace: bool, **kwargs: Any) -> list[Tensor]:
    """``torch._foreach_<name>_`` on ``xs`` (returned) when in place, else the new tensors of
    ``torch._foreach_<name>``: the same kernel either way."""
    if inplace:
        getattr(torch, f"_foreach_{name}_")(xs, *args, **kwargs)
        return xs
    return list(getattr(torch, f"_foreach_{name}")(xs, *args, **kwargs))


def mul(xs: list[Tensor], y: Scalar | list[Tensor], inplace: bool) -> list[Tensor]:
    """``xs * y`` for a float, 0-d tensor or list ``y`` (one tensor per leaf)."""
    if not isinstance(y, list):
        y = _scalar_arg(xs, y)
    return _op("mul", xs, y, inplace=inplace)


def div(xs: list[Tensor], y: Scalar | list[Tensor], inplace: bool) -> list[Tensor]:
    """``xs / y`` for a float, 0-d tensor or list ``y``."""
    if not isinstance(y, list):
        y = _scalar_arg(xs, y)
    return _op("div", xs, y, inplace=inplace)


def add(
    xs: list[Tensor], ys: list[Tensor] | float, inplace: bool, alpha: float = 1.0
) -> list[Tensor]:
    """``xs + alpha * ys`` (``ys`` a list), or ``xs + ys`` for a float ``ys``."""
    if isinstance(ys, list):
        return _op("add", xs, ys, alpha=alpha, inplace=inplace)
    return _op("add", xs, ys, inplace=inplace)


def lerp(xs: list[Tensor], ys: list[Tensor], weight: float | Tensor, inplace: bool) -> list[Tensor]:
    """``xs + weight * (ys - xs)``. A 0-d tensor weight is cast to the leaves' dtype (so it
    rounds as torch's Python-float weight does) and passed as a list."""
    arg: float | list[Tensor] = weight
    if isinstance(weight, Tensor):
        arg = [weight.to(xs[0].dtype)] * len(xs)
    return _op("lerp", xs, ys, arg, inplace=inplace)


def addcmul(
    xs: list[Tensor], a: list[Tensor], b: list[Tensor], value: float, inplace: bool
) -> list[Tensor]:
    """``xs + value * a * b``."""
    return _op("addcmul", xs, a, b, value, inplace=inplace)


def maximum(xs: list[Tensor], ys: list[Tensor], inplace: bool) -> list[Tensor]:
    """Elementwise ``max(xs, ys)``."""
    return _op("maximum", xs, ys, inplace=inplace)


def sqrt(xs: list[Tensor], inplace: bool = False) -> list[Tensor]:
    """In place only on a buffer autograd has not saved (the donating path)."""
    return _op("sqrt", xs, inplace=inplace)


def neg(xs: list[Tensor], inplace: bool = False) -> list[Tensor]:
    """Elementwise ``-xs``."""
    return _op("neg", xs, inplace=inplace)


def abs(xs: list[Tensor], inplace: bool = False) -> list[Tensor]:  # noqa: A001 - foreach's name
    """Elementwise ``|xs|``."""
    return _op("abs", xs, inplace=inplace)


def rsqrt(xs: list[Tensor], inplace: bool = False) -> list[Tensor]:
    """Elementwise ``1 / sqrt(xs)``."""
    return _op("rsqrt", xs, inplace=inplace)


def clamp_min(xs: list[Tensor], value: float, inplace: bool = False) -> list[Tensor]:
    """Elementwise ``max(xs, value)``."""
    return _op("clamp_min", xs, value, inplace=inplace)


def sub(xs: list[Tensor], ys: list[Tensor], inplace: bool = False) -> list[Tensor]:
    """Elementwise ``xs - ys``."""
    return _op("sub", xs, ys, inplace=inplace)


def sign(xs: list[Tensor], inplace: bool = False) -> list[Tensor]:
    """Elementwise sign (-1, 0 or 1)."""
    return _op("sign", xs, inplace=inplace)


def add_scalar(xs: list[Tensor], y: Tensor, inplace: bool) -> list[Tensor]:
    """``xs + y`` for a 0-d tensor ``y``, cast to the leaves' dtype (as :func:`mul` does, so
    that both paths round alike) and passed as a list where autograd may watch."""
    return _op("add", xs, _scalar_arg(xs, y), inplace=inplace)


def addcmul_scalar(xs: list[Tensor], a: list[Tensor], b: Tensor, inplace: bool) -> list[Tensor]:
    """``xs + a * b`` for a 0-d tensor ``b`` (a list of it: torch has no TensorList x Tensor
    addcmul, and autograd needs the list form anyway)."""
    b = b.to(device=xs[0].device, dtype=xs[0].dtype)
    bs = [b] * len(xs)
    return _op("addcmul", xs, a, bs, inplace=inplace)


# ---------------------------------------------------------------------------------------------
# The last op of a one-pass optimizer step (``apply_gradients``'s path): ``p += scalar * ...``
# with the step size as an ``alpha=`` / ``value=`` host number, as torch.optim's single-tensor
# code passes it. A CPU tensor's value is already in host memory, so reading it is no sync; a
# step size on an accelerator stays there and the op is split in two (one more pass).


def host_scalar(x: Scalar) -> float | None:
    """``x`` as a Python float when that costs no device sync (a number, or a CPU tensor whose
    value is already in host memory); ``None`` for a tensor on an accelerator."""
    if not isinstance(x, Tensor):
        return float(x)
    if x.device.type == "cpu":
        return float(x)
    return None


def add_scaled(p: list[Tensor], x: list[Tensor], scalar: Scalar, inplace: bool) -> list[Tensor]:
    """``p + scalar * x``."""
    host = host_scalar(scalar)
    if host is not None:
        return add(p, x, inplace, alpha=host)
    return add(p, mul(x, scalar, False), inplace)


def addcdiv_scaled(
    p: list[Tensor], a: list[Tensor], b: list[Tensor], scalar: Scalar, inplace: bool
) -> list[Tensor]:
    """``p + scalar * a / b``."""
    host = host_scalar(scalar)
    if host is None:
        return add(p, mul(div(a, b, False), scalar, False), inplace)
    return _op("addcdiv", p, a, b, value=host, inplace=inplace)


def addcmul_scaled(
    p: list[Tensor], a: list[Tensor], b: list[Tensor], scalar: Scalar, inplace: bool
) -> list[Tensor]:
    """``p + scalar * a * b``."""
    host = host_scalar(scalar)
    if host is None:
        return add(p, mul(mul(a, b, False), scalar, False), inplace)
    return addcmul(p, a, b, host, inplace)


def leaf_norms(xs: list[Tensor]) -> Tensor:
    """The 2-norm of every tensor of one (device, dtype) group, stacked in float64."""
    return torch.stack(list(torch._foreach_norm(xs))).to(torch.float64)


def per_leaf(values: Tensor, like: list[Tensor]) -> list[Tensor]:
    """A 1-d float64 tensor of per-leaf scalars as 0-d tensors in the leaves' dtype.

    ``mul(xs, per_leaf(...), inplace)`` then scales each leaf by its own scalar, as torch's
    ``alpha=`` per parameter does, without reading the values on the host.
    """
    return list(values.to(like[0].dtype).unbind()) if like else []
