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

from collections.abc import Callable
from typing import Any

import attrs
from torch import Tensor

from functrain.tree import TreeInfo

__all__ = ["Decay", "GradScale", "Kernel", "Scalar"]


@attrs.frozen
class GradScale:
    """Multiplies every update by one scalar computed from the incoming updates (a clip).

    ``compute(updates, state, info) -> (multiplier, new_state)``.
    """

    compute: Callable[[list[Tensor], Any, TreeInfo], tuple[Tensor, Any]]


@attrs.frozen
class Scalar:
    """Multiplies every update by a value that does not depend on the updates.

    ``compute(state, info) -> (value, new_state)``; ``value`` is a float or a 0-d tensor.
    """

    compute: Callable[[Any, TreeInfo], tuple[float | Tensor, Any]]


@attrs.frozen
class Decay:
    """Adds ``weight_decay * param`` to every update."""

    weight_decay: float


@attrs.frozen
class Kernel:
    """An optimizer core with a torch fused kernel.

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
