"""What a transform tells the fused fast path about itself.

:func:`functrain.apply_gradients` looks at a chain's members and, when they form the pattern
``[global-norm clip] [constant scales] [coupled decay] KERNEL [decoupled decay] [scales]``,
runs the whole step as one of torch's fused optimizer kernels (``torch._fused_adam_``,
``torch._fused_adamw_``, ``torch._fused_sgd_``): the clip coefficient becomes the kernel's
``grad_scale``, the trailing scales its ``lr``, the decay its ``weight_decay``. Each transform
that can take part carries one of these descriptors in ``FlatTransform.fusion``; the simple
path and the fused path share the descriptor's functions, so they compute the same scalars.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

import attrs
import torch
from torch import Tensor

from functrain.tree import TreeInfo

__all__ = [
    "Decay",
    "GradScale",
    "Kernel",
    "MultiplierSpec",
    "Scalar",
    "for_members",
    "group_value",
]


@attrs.frozen
class GradScale:
    """Multiplies every update by one scalar computed from the incoming updates (a clip).

    ``compute(updates, state, info) -> (multiplier, new_state)``.
    """

    compute: Callable[[list[Tensor], Any, TreeInfo], tuple[Tensor, Any]]


@attrs.frozen
class Scalar:
    """Multiplies every update by a value that does not depend on the updates.

    ``compute(state, info) -> (value, new_state)``; ``value`` is a float or a 0-d tensor, or a
    list with one such value per group of ``info`` (per-parameter multipliers).
    """

    compute: Callable[[Any, TreeInfo], tuple[float | Tensor, Any]]


@attrs.frozen
class Decay:
    """Adds ``weight_decay * param`` to every update."""

    weight_decay: float


@attrs.frozen
class Kernel:
    """An optimizer core with a torch fused kernel.

    ``lr`` and ``weight_decay`` are shared scalars or lists with one value per group.

    ``apply(params, grads, state, info, *, lr, weight_decay, decoupled, grad_scale)
    -> (new_params, new_state)`` performs ``params <- params - lr * direction(grads /
    grad_scale)`` for one step (the kernel may write the unscaled gradients into ``grads``),
    writing in place into ``params`` and the state buffers when ``info.donate`` and into
    fresh copies otherwise.
    """

    apply: Callable[..., tuple[list[Tensor], Any]]
    coupled_decay: bool = True
    decoupled_decay: bool = True
    maximize: bool = False
    #: ``apply`` takes a 1-d ``lr`` with one value per stacked ensember member (it calls the
    #: kernel once per member on that member's slices, see :func:`for_members`).
    per_member_lr: bool = False


def for_members(call: Callable[..., Any], lr: Any, *lists: list[Tensor]) -> None:
    """``call(*lists, lr)``, or, for a 1-d ``lr`` (one value per stacked ensemble member),
    ``call(*member_lists, lr[i])`` for each member ``i`` on its slices of every leaf.

    torch's fused kernels take one learning rate; a kernel call per member keeps a
    per-member learning rate on the fused path (each member's step is then the kernel's,
    as in a run of that member alone), instead of the foreach chain's dozen passes.
    """
    if not (isinstance(lr, Tensor) and lr.ndim == 1):
        call(*lists, lr)
        return
    # unbind: every member's view of a leaf in one call (indexing member by member costs
    # as much Python time as the kernels themselves at 64 members).
    per_list = [list(zip(*(x.unbind(0) for x in xs), strict=True)) if xs else None for xs in lists]
    for i, value in enumerate(lr.unbind(0)):
        call(*(list(m[i]) if m is not None else [] for m in per_list), value)


@attrs.frozen(eq=False)
class MultiplierSpec:
    """Marks :func:`functrain.mask_multipliers`: a chain containing it refines its groups.

    ``lookup(path)`` gives a leaf's multipliers (an attrs record ``(lr_mult, decay_mult)``);
    ``known`` lists the paths a mapping named, all of which must be leaves.
    """

    lookup: Callable[[str], Any]
    known: tuple[str, ...] | None = None
    _cache: dict[Any, TreeInfo] = attrs.field(factory=dict, repr=False)

    def apply(self, info: TreeInfo) -> TreeInfo:
        """``info`` with its groups refined by multiplier and ``info.multipliers`` set."""
        # members too: the refined info keeps it, and a stacked tree may share a treespec.
        key = (info.treespec, info.groups, info.donate, info.members)
        cached = self._cache.get(key)
        if cached is None:
            paths = info.paths
            if self.known is not None:
                missing = sorted(set(self.known) - set(paths))
                if missing:
                    close = difflib.get_close_matches(missing[0], paths, n=1)
                    hint = f"; did you mean {close[0]!r}?" if close else ""
                    raise ValueError(
                        f"mask_multipliers: {missing[0]!r} is not a leaf of the parameter tree{hint}"
                    )
            per_leaf = [attrs.astuple(self.lookup(p)) for p in paths]
            cached = info.with_multipliers(per_leaf)
            if len(self._cache) > 16:
                self._cache.clear()
            self._cache[key] = cached
        return cached


def group_value(value: Any, group: int, device: Any) -> Any:
    """The value for one group of a per-group list (or the shared scalar), on ``device``.

    A float64 tensor (a schedule's value) going to a CUDA kernel becomes float32: torch's
    fused CUDA kernels read ``lr`` tensors as float, and with a Python float they compute in
    float as well, so this is the value they would use either way. The CPU kernels take the
    float64 tensor as it is.
    """
    if isinstance(value, list):
        value = value[group]
    if device is not None and isinstance(value, Tensor):
        device = torch.device(device)
        if device.type != "cpu" and value.dtype == torch.float64:
            return value.to(device=device, dtype=torch.float32)
        return value.to(device)
    return value
