"""``torch._foreach_*`` arithmetic on lists of tensors, in place or not, autograd-safe.

Each helper takes ``inplace``: in place (the donating path) it writes into its first
argument and returns it; otherwise it returns new tensors and never touches its inputs. Both
forms evaluate the same formula with the same kernels, so they give bitwise the same values.

A 0-d tensor scalar is cast to the leaves' dtype first (see ``_scalar_arg``). Two details make the pure form differentiable (``torch.func.grad`` through several steps):
it never writes into a tensor autograd has saved (``sqrt``'s output, say), and a 0-d tensor
scalar that may carry a gradient is passed as a list (torch's ``TensorList x Tensor``
overloads have no working backward).

Under ``torch.func.vmap`` (which has no batching rule for ``torch._foreach_*`` ops), every
helper runs the plain torch op leaf by leaf instead (``torch.mul``, ``torch.lerp``,
``torch.addcmul``, ...): the same formula, out of place, with no host read of a batched
value (see :func:`vmapping`). Outside vmap this costs one interpreter-stack peek per op.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch._C import _functorch

Scalar = float | Tensor


def tracing_grad() -> bool:
    """Whether autograd may need to see these ops (grad mode with a functorch transform)."""
    return torch._C._functorch.peek_interpreter_stack() is not None


def vmapping() -> bool:
    """Whether a ``torch.func.vmap`` is on the functorch interpreter stack (at any level, also
    under a ``grad`` inside it): foreach and fused kernels have no batching rule there.

    Outside any torch.func transform this is one C call returning ``None`` (~60 ns). While
    torch.compile traces, ``False``: dynamo cannot trace the interpreter stack, and the
    foreach ops are what inductor fuses.
    """
    if _functorch.peek_interpreter_stack() is None or torch.compiler.is_compiling():
        return False
    return any(i.key() == _functorch.TransformType.Vmap for i in _functorch.get_interpreter_stack())


def refuse_vmap(name: str, reason: str, instead: str) -> None:
    """Raise a ``ValueError`` naming transform ``name`` when called under ``torch.func.vmap``
    (a transform that reads values on the host or steps a stateful object cannot be
    batched): ``reason`` says why, ``instead`` what to use."""
    if vmapping():
        raise ValueError(f"{name} cannot run under torch.func.vmap: {reason}; {instead}")


def member_views(y: Tensor, xs: Sequence[Tensor]) -> list[Tensor]:
    """A 1-d tensor of per-member values (one per ensemble member) as one view per leaf,
    shaped ``[N, 1, ..., 1]`` to broadcast over that leaf's leading member axis, in the
    leaves' dtype (see :func:`functrain.ensemble`)."""
    y = y.to(device=xs[0].device, dtype=xs[0].dtype)
    n = y.shape[0]
    for x in xs:
        if x.ndim == 0 or x.shape[0] != n:
            raise ValueError(
                f"a per-member hyperparameter has {n} values but a leaf of shape "
                f"{tuple(x.shape)} has {x.shape[0] if x.ndim else 'no'} members on its "
                "leading axis; give one value per member"
            )
    return [y.view((n,) + (1,) * (x.ndim - 1)) for x in xs]


def _scalar_arg(xs: Sequence[Tensor], y: Scalar) -> Scalar | list[Tensor]:
    if isinstance(y, Tensor) and y.ndim == 1:
        return member_views(y, xs)
    if isinstance(y, Tensor):
        # In the leaves' dtype: for 0-d leaves torch's in-place and out-of-place kernels
        # round a wider scalar differently, and the two paths must agree bitwise.
        y = y.to(device=xs[0].device, dtype=xs[0].dtype)
        if y.requires_grad or tracing_grad():
            return [y] * len(xs)
    return y


# The plain op a foreach op stands for, where its spelling differs from ``torch.<name>``
# (foreach's addcmul / addcdiv take ``value`` positionally, ``torch.addcmul`` by keyword).
_PLAIN: dict[str, Callable[..., Tensor]] = {
    "addcmul": lambda x, a, b, value=1: torch.addcmul(x, a, b, value=value),
    "addcdiv": lambda x, a, b, value=1: torch.addcdiv(x, a, b, value=value),
}


def leafwise(name: str, xs: Sequence[Tensor], *args: Any, **kwargs: Any) -> list[Tensor]:
    """``torch._foreach_<name>(xs, *args, **kwargs)`` computed leaf by leaf with the plain op
    (``torch.<name>``): a list argument gives one entry per leaf, anything else is shared.
    The vmap path of every helper here; always out of place."""
    fn = _PLAIN.get(name) or getattr(torch, name)
    per = [a if isinstance(a, list | tuple) else [a] * len(xs) for a in args]
    return [fn(x, *a, **kwargs) for x, *a in zip(xs, *per, strict=True)]


def _op(name: str, xs: list[Tensor], *args: Any, inplace: bool, **kwargs: Any) -> list[Tensor]:
    """``torch._foreach_<name>_`` on ``xs`` (returned) when in place, else the new tensors of
    ``torch._foreach_<name>``: the same kernel either way. Under vmap: :func:`leafwise`,
    out of place even when ``inplace`` (the caller uses the returned list either way, and a
    donated buffer need not be batched like the values written into it)."""
    # The peek inline: outside torch.func this is the whole cost of the vmap path (one C call).
    if _functorch.peek_interpreter_stack() is not None and vmapping():
        return leafwise(name, xs, *args, **kwargs)
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


def div_raw(xs: list[Tensor], y: Tensor, inplace: bool) -> list[Tensor]:
    """``xs / y`` for a 0-d tensor ``y`` kept in its own dtype (not cast to the leaves'):
    a float32 ``grad_scale`` divides as torch's fused kernels divide by it."""
    return _op("div", xs, y, inplace=inplace)


def add(
    xs: list[Tensor], ys: list[Tensor] | float, inplace: bool, alpha: float = 1.0
) -> list[Tensor]:
    """``xs + alpha * ys`` (``ys`` a list), or ``xs + ys`` for a float ``ys``."""
    if isinstance(ys, list):
        return _op("add", xs, ys, alpha=alpha, inplace=inplace)
    if isinstance(ys, Tensor):  # a 0-d or per-member (1-d) tensor scalar
        return _op("add", xs, _scalar_arg(xs, ys), inplace=inplace)
    return _op("add", xs, ys, inplace=inplace)


def lerp(xs: list[Tensor], ys: list[Tensor], weight: float | Tensor, inplace: bool) -> list[Tensor]:
    """``xs + weight * (ys - xs)``. A 0-d tensor weight is cast to the leaves' dtype (so it
    rounds as torch's Python-float weight does) and passed as a list."""
    arg: float | list[Tensor] = weight
    if isinstance(weight, Tensor) and weight.ndim == 1:
        arg = member_views(weight, xs)
    elif isinstance(weight, Tensor):
        arg = [weight.to(xs[0].dtype)] * len(xs)
    return _op("lerp", xs, ys, arg, inplace=inplace)


def addcmul(
    xs: list[Tensor], a: list[Tensor], b: list[Tensor], value: float | Tensor, inplace: bool
) -> list[Tensor]:
    """``xs + value * a * b``; a tensor ``value`` (per member, or a scheduled one) is applied
    as ``xs + (a * b) * value``, which may round differently by an ulp."""
    if isinstance(value, Tensor):
        return add(xs, mul(mul(a, b, False), value, False), inplace)
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
    if b.ndim == 1:
        bs = member_views(b, xs)
    else:
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
    value is already in host memory); ``None`` for a tensor on an accelerator, and for a
    tensor a ``torch.func`` transform has wrapped under vmap (a batched value has no single
    host number)."""
    if not isinstance(x, Tensor):
        return float(x)
    if x.ndim:  # per-member values (an ensemble's): the caller multiplies by the tensor
        return None
    if vmapping() and _functorch.is_functorch_wrapped_tensor(x):
        return None
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


def leaf_norms(xs: list[Tensor], members: int | None = None) -> Tensor:
    """The 2-norm of every tensor of one (device, dtype) group, stacked in float64.

    With ``members`` (stacked ensemble members, ``info.members``): the norm of each member's
    slice of each leaf, a ``[leaves, members]`` tensor. The slices go through the same foreach
    norm as a member's own leaves would, so each value is bitwise the member's own.
    """
    if members is None:
        return torch.stack(norms(xs)).to(torch.float64)
    return member_norms(xs, members).to(torch.float64)


def member_norms(xs: Sequence[Tensor], members: int, ord: float = 2.0) -> Tensor:  # noqa: A002
    """The ``ord``-norm of each member's slice of each leaf (leaves with a leading member axis
    of size ``members``), a ``[leaves, members]`` tensor in the leaves' dtype, on the first
    leaf's device. Every slice goes through the one foreach norm a member's own leaves would,
    so each value is bitwise the member's own."""
    slices = [s for x in xs for s in x.unbind(0)]
    device = xs[0].device
    return torch.stack([n.to(device) for n in norms(slices, ord)]).view(len(xs), members)


# ---------------------------------------------------------------------------------------------
# Other foreach ops the transforms call, each with its vmap path (never ``torch._foreach_*``
# directly in a transform: vmap has no batching rule for them).


def norms(xs: Sequence[Tensor], ord: float = 2.0) -> list[Tensor]:  # noqa: A002 - torch's name
    """The ``ord``-norm of each tensor (``torch._foreach_norm``; under vmap
    ``torch.linalg.vector_norm`` per leaf, whose reduction order may differ by an ulp)."""
    if vmapping():
        return [torch.linalg.vector_norm(x, ord) for x in xs]
    return list(torch._foreach_norm(list(xs), ord))


def clone(xs: Sequence[Tensor]) -> list[Tensor]:
    """Bitwise copies of ``xs`` (``x * 1`` is exact) in one foreach launch."""
    if not xs:
        return []
    if vmapping():
        return [x.clone() for x in xs]
    return list(torch._foreach_mul(list(xs), 1))


def copy(dsts: list[Tensor], srcs: Sequence[Tensor], inplace: bool) -> list[Tensor]:
    """``srcs`` in the dtypes of ``dsts``: written into ``dsts`` (returned) when in place,
    else new tensors."""
    if inplace and not vmapping():
        torch._foreach_copy_(dsts, list(srcs))
        return dsts
    return [
        s.to(dtype=d.dtype, device=d.device, copy=True) for d, s in zip(dsts, srcs, strict=True)
    ]


def zero(xs: list[Tensor], inplace: bool) -> list[Tensor]:
    """Zeros shaped like ``xs``, written into ``xs`` when in place."""
    if inplace and not vmapping():
        torch._foreach_zero_(xs)
        return xs
    return [torch.zeros_like(x) for x in xs]


def clamp(xs: list[Tensor], low: float, high: float, inplace: bool = False) -> list[Tensor]:
    """Elementwise ``min(max(xs, low), high)``, as ``clip_grad_value_`` computes it (two
    passes: ``clamp_min`` then ``clamp_max``)."""
    return _op("clamp_max", _op("clamp_min", xs, low, inplace=inplace), high, inplace=inplace)


def per_leaf(values: Tensor, like: list[Tensor]) -> list[Tensor]:
    """A 1-d float64 tensor of per-leaf scalars as 0-d tensors in the leaves' dtype.

    ``mul(xs, per_leaf(...), inplace)`` then scales each leaf by its own scalar, as torch's
    ``alpha=`` per parameter does, without reading the values on the host. A 2-d
    ``[leaves, members]`` tensor (per-member values, see :func:`leaf_norms`) gives each leaf a
    ``[members, 1, ..., 1]`` view that broadcasts over its member axis.
    """
    if values.ndim == 2:
        return [member_views(v, [x])[0] for v, x in zip(values.unbind(), like, strict=True)]
    return list(values.to(like[0].dtype).unbind()) if like else []
