"""Parts the optimizer modules share: state as torch.optim creates it, hyperparameter values,
argument checks (``number`` is :func:`functrain.transforms.validation.number`, re-exported),
the alias re-export, and the gradient prologue of the torch ports' one-pass step.

The torch.optim ports (:mod:`~functrain.transforms.adamax`,
:mod:`~functrain.transforms.adadelta`, :mod:`~functrain.transforms.rmsprop`,
:mod:`~functrain.transforms.rprop`, :mod:`~functrain.transforms.asgd`,
:mod:`~functrain.transforms.nadam`, :mod:`~functrain.transforms.radam`) each write their
algorithm once, over lists, with :mod:`functrain.transforms.foreach`'s ``inplace`` flag, and
run it two ways:

- ``update`` (any chain): the algorithm returns a direction; ``scale_by_learning_rate`` and
  ``apply_updates`` follow.
- the one-pass step :func:`functrain.apply_gradients` runs (a
  :class:`~functrain.transforms.kernel_specs.Kernel` descriptor, see :func:`one_pass`):
  :func:`prepare_grads` folds the clip, ``maximize`` and the weight decay in torch's order,
  the same algorithm runs, and one ``addcdiv`` / ``addcmul`` / ``add`` with the step size
  writes into the parameters as torch.optim's single-tensor code does, so that path is
  bitwise torch's ``foreach=False`` result. (Adagrad's is torch's own fused kernel.)

Both ways write into their inputs when ``info.donate`` and allocate otherwise; the in-place
and out-of-place forms of each op give bitwise the same values.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from functrain.transforms import foreach as fe
from functrain.transforms.hyperparams import Schedule, value_at
from functrain.transforms.members import PerMember, per_member
from functrain.transforms.validation import is_schedule, number
from functrain.tree import TreeInfo, describe_mismatch

__all__ = [
    "any_members",
    "check_members",
    "check_state_paths",
    "constant",
    "device_of",
    "evaluate",
    "full",
    "increment",
    "name_of",
    "number",
    "on",
    "refuse_members",
    "one_pass",
    "reexport_alias",
    "require_params",
    "prepare_grads",
    "step_counter",
    "zeros",
]

Scalar = float | Tensor


def reexport_alias(module: str, *names: str) -> Callable[[str], Any]:
    """A module ``__getattr__`` serving ``names`` from :mod:`functrain.transforms.alias`.

    The named compositions (``adamax = chain(...)``) live in the ``aliases_*`` modules (all
    re-exported by ``alias.py``), which import the modules holding their update rules; each
    such module re-exports its alias through this, at first access, so that ``from
    functrain.transforms.adamax import adamax`` keeps working without an import cycle.
    """

    def __getattr__(name: str) -> Any:
        if name in names:
            from functrain.transforms import alias

            return getattr(alias, name)
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__


def require_params(name: str, params: list[Tensor] | None) -> list[Tensor]:
    """``params``, or a ``ValueError`` saying that transform ``name`` needs them."""
    if params is None:
        raise ValueError(f"{name} needs the parameters: call update(updates, state, params)")
    return params


def check_state_paths(name: str, state_paths: tuple[str, ...], info: TreeInfo) -> None:
    """Raise ``ValueError`` when the updates' leaves are not the ones ``state`` was built for."""
    paths = info.paths
    if state_paths is not paths and state_paths != paths:
        raise ValueError(
            f"{name}: the update tree does not match the optimizer state: "
            + describe_mismatch(paths, state_paths)
        )


def device_of(params: Sequence[Tensor]) -> torch.device:
    """The device of the first leaf (the CPU for an empty tree): where scalar state lives."""
    return params[0].device if params else torch.device("cpu")


def step_counter(device: torch.device) -> Tensor:
    """torch.optim's ``step``: a 0-d float32 tensor (exact for integers up to 2**24)."""
    return torch.zeros((), dtype=torch.float32, device=device)


def zeros(params: Sequence[Tensor]) -> tuple[Tensor, ...]:
    """One zero buffer per leaf, in the leaf's memory format (torch's ``zeros_like``)."""
    return tuple(torch.zeros_like(p, memory_format=torch.preserve_format) for p in params)


def full(params: Sequence[Tensor], value: float) -> tuple[Tensor, ...]:
    """One buffer per leaf filled with ``value`` (torch's ``full_like``)."""
    return tuple(torch.full_like(p, value, memory_format=torch.preserve_format) for p in params)


def increment(count: Tensor, inplace: bool) -> Tensor:
    """``count + 1``, written into ``count`` when donating."""
    return count.add_(1) if inplace else count + 1


def evaluate(value: float | Schedule, count: Tensor) -> Tensor:
    """A constant or scheduled hyperparameter at ``count``, as a 0-d float64 tensor."""
    return torch.as_tensor(value_at(value, count), dtype=torch.float64, device=count.device)


def constant(name: str, value: Any) -> float | PerMember:
    """A checked constant hyperparameter as a Python float, or as a :class:`PerMember` when
    it is given per ensemble member (a sequence or 1-d tensor, see :func:`functrain.ensemble`).
    """
    value = per_member(name, value)
    return value if isinstance(value, PerMember) else float(value)


def on(value: Any, device: torch.device) -> Any:
    """A :class:`PerMember` value as its 1-d float64 tensor on ``device`` (checking the member
    count); anything else as it is."""
    return value.on(device) if isinstance(value, PerMember) else value


def any_members(*values: Any) -> bool:
    """Whether any of ``values`` is per member (then torch's kernels, which take numbers,
    cannot run the transform: it has no fused form)."""
    return any(isinstance(v, PerMember) for v in values)


def refuse_members(optimizer: str, reason: str, **values: Any) -> None:
    """``ValueError`` naming ``optimizer`` and the argument when any of ``values`` (or an
    entry of a pair such as ``betas``) is given per ensemble member (a sequence or 1-d tensor
    of numbers), for a transform that has no per-member form (``reason`` says why)."""

    def vector(value: Any) -> bool:
        if isinstance(value, PerMember):
            return True
        if isinstance(value, Tensor):
            return value.ndim == 1
        return isinstance(value, Sequence) and not isinstance(value, str)

    for name, value in values.items():
        pair = isinstance(value, tuple | list) and any(vector(v) for v in value)
        if vector(value) and (pair or name != "betas"):
            raise ValueError(f"{optimizer} takes no per-member {name} ({value!r}): {reason}")


def check_members(params: Sequence[Tensor], *values: Any) -> None:
    """Check the member count of every per-member value among ``values`` (at ``init``, so a
    wrong count fails before the first step)."""
    device = device_of(params)
    for value in values:
        on(value, device)


def name_of(value: Any) -> str:
    """A hyperparameter as a transform's name shows it: ``repr`` of a schedule, else ``%g``."""
    return repr(value) if is_schedule(value) else f"{float(value):g}"


def prepare_grads(
    p: list[Tensor],
    g: list[Tensor],
    *,
    grad_scale: Tensor | None,
    maximize: bool,
    weight_decay: float,
    decoupled: bool,
    lr: Scalar,
    inplace: bool,
) -> tuple[list[Tensor], list[Tensor]]:
    """``(params, grads)`` after torch's prologue, in its order: unscale (a folded clip),
    negate (``maximize``), then L2 decay into the gradient, or decoupled decay
    ``p *= 1 - lr * weight_decay`` of the parameters."""
    if grad_scale is not None:
        # The raw op, not fe.div: the float32 scale divides as torch's kernels divide by it.
        g = fe.div_raw(g, grad_scale.to(g[0].device), inplace)
    if maximize:
        g = fe.neg(g, inplace)
    if weight_decay:
        if decoupled:
            factor = 1 - lr * weight_decay
            host = fe.host_scalar(factor)
            p = fe.mul(p, host if host is not None else factor.to(p[0].dtype), inplace)
        else:
            g = fe.add(g, p, inplace, alpha=weight_decay)
    return p, g


def one_pass(
    info: TreeInfo,
    body: Callable[..., tuple[list[Tensor], ...]],
    params: list[Tensor],
    grads: list[Tensor],
    *buffers: Sequence[Tensor],
    maximize: bool,
    lr: Scalar,
    weight_decay: float,
    decoupled: bool,
    grad_scale: Tensor | None = None,
) -> tuple[list[Tensor], ...]:
    """A port's one-pass step, per (device, dtype) group: :func:`prepare_grads`, then
    ``body(params, grads, *buffers) -> (new_params, *new_buffers)``, in place when
    ``info.donate``. Returns ``(new_params, *new_buffers)`` as whole-tree lists."""
    inplace = info.donate

    def group(p: list[Tensor], g: list[Tensor], *bufs: list[Tensor]) -> tuple[list[Tensor], ...]:
        p, g = prepare_grads(
            p,
            g,
            grad_scale=grad_scale,
            maximize=maximize,
            weight_decay=weight_decay,
            decoupled=decoupled,
            lr=lr,
            inplace=inplace,
        )
        return body(p, g, *bufs)

    return info.foreach(group, params, grads, *(list(b) for b in buffers))
