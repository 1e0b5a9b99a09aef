"""DTensor parameters (``torch.distributed.tensor``, FSDP2's ``fully_shard``) in the transforms.

functrain's transforms are written with ``torch._foreach_*`` ops and a few reductions, all of
which DTensor implements by sharding propagation: on a tree of DTensor params and gradients,
``update`` + ``apply_updates`` and :func:`functrain.apply_gradients` work on each rank's
local shards, and a global-norm clip gets the norm of the whole (global) gradient, reduced
across the mesh by DTensor exactly where ``torch.nn.utils.clip_grad_norm_`` gets it for FSDP2
(the same ``_foreach_norm`` + ``vector_norm`` code). ``ClipState.norm`` is then a replicated
DTensor (``.full_tensor()`` for a plain one).

What needs a hand:

- torch ships DTensor sharding rules for its fused Adam/AdamW kernels but not for
  ``_fused_sgd_``, ``_fused_adagrad_`` and ``_foreach_copy_`` (which ``apply_gradients`` uses
  for SGD, Adagrad, RAdam, Rprop and ASGD). :func:`enable_dtensor_kernels` registers the
  pointwise rule torch uses for its other fused optimizer kernels; call it once (the train
  step and :func:`functrain.distributed.zero.shard_optimizer` do). Without it, pass
  ``fused=False`` to ``apply_gradients`` for those optimizers.
- :func:`check_dtensor_support` names the transforms that do not run on DTensor leaves:
  ``adafactor`` (its factored statistics mix plain tensors with DTensors) and ``lbfgs``
  (line search over a closure of flat vectors). ``muon`` runs (DTensor redistributes the
  Newton-Schulz matmuls) but sums the bfloat16 products in another order than on one device.
- :func:`functrain.apply_if_finite` needs every rank's local shard to be non-empty
  (``_foreach_norm(inf)`` has no value for an empty tensor).

Example (a gloo world of 2)::

    from torch.distributed.tensor import DeviceMesh, Shard, distribute_tensor
    mesh = DeviceMesh("cpu", [0, 1])
    params = {k: distribute_tensor(v, mesh, [Shard(0)]) for k, v in params.items()}
    tx = ft.chain(ft.clip(1.0), ft.sgd(0.1, momentum=0.9))
    check_dtensor_support(tx)
    enable_dtensor_kernels()
    state = tx.init(params)
    params, state = ft.apply_gradients(tx, params, grads, state)  # grads: DTensors too
"""

from __future__ import annotations

import re
from typing import Any

import optree
import torch
from torch import Tensor

from functrain.transforms.base import GradientTransformation
from functrain.tree import NAMESPACE

__all__ = [
    "DTENSOR_UNSUPPORTED",
    "check_dtensor_support",
    "dtensor_types",
    "enable_dtensor_kernels",
    "full_tensor",
    "has_dtensors",
    "is_dtensor",
    "local_tensor",
]

#: Transforms that do not run on DTensor leaves: building-block name -> (alias, why).
DTENSOR_UNSUPPORTED: dict[str, tuple[str, str]] = {
    "scale_by_factored_rms": (
        "adafactor",
        "its factored row/column statistics mix plain tensors with DTensors",
    ),
    "lbfgs": ("lbfgs", "its line search works on one flat vector of all parameters"),
}

# torch's fused optimizer kernels and foreach ops the fused path calls that torch gives no
# DTensor sharding rule (torch 2.13); they are pointwise over lists, like _fused_adam_.
_MISSING_KERNELS = (
    "_fused_sgd_.default",
    "_fused_sgd_.tensor_lr",
    "_fused_adagrad_.default",
    "_fused_adagrad_.tensor_lr",
    "_foreach_copy_.default",
)
_enabled: list[str] | None = None


def _dtensor_class() -> type | None:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch < 2.5
        try:
            from torch.distributed._tensor import DTensor
        except ImportError:
            return None
    return DTensor


def dtensor_types() -> tuple[Any, Any, Any, Any]:
    """``(DTensor, DeviceMesh, Shard, Replicate)`` from ``torch.distributed.tensor`` (from
    ``torch.distributed._tensor`` on torch < 2.5, where they lived before).

    Raises:
        ImportError: this torch has no DTensor.

    Example:
        >>> DTensor, DeviceMesh, Shard, Replicate = dtensor_types()
        >>> Shard(0).dim
        0
    """
    try:
        from torch.distributed.tensor import DeviceMesh, DTensor, Replicate, Shard
    except ImportError:  # pragma: no cover - torch < 2.5
        from torch.distributed._tensor import DeviceMesh, DTensor, Replicate, Shard
    return DTensor, DeviceMesh, Shard, Replicate


def is_dtensor(x: Any) -> bool:
    """Whether ``x`` is a ``torch.distributed.tensor.DTensor``.

    Example:
        >>> is_dtensor(torch.ones(2))
        False
    """
    cls = _dtensor_class()
    return cls is not None and isinstance(x, cls)


def has_dtensors(tree: Any) -> bool:
    """Whether any leaf of ``tree`` (params, gradients, an optimizer state) is a DTensor.

    Example:
        >>> has_dtensors({"w": torch.ones(2)})
        False
    """
    return any(is_dtensor(leaf) for leaf in optree.tree_leaves(tree, namespace=NAMESPACE))


def full_tensor(x: Any) -> Any:
    """``x.full_tensor()`` for a DTensor (a collective: every rank of its mesh must call it),
    ``x`` itself otherwise. For logging a DTensor norm or saving a full copy.

    Example:
        >>> full_tensor(torch.tensor(2.0))
        tensor(2.)
    """
    return x.full_tensor() if is_dtensor(x) else x


def check_dtensor_support(tx: GradientTransformation) -> None:
    """Raise ``ValueError`` naming the first member of ``tx`` that cannot run on DTensor
    leaves (see :data:`DTENSOR_UNSUPPORTED`); return ``None`` when every built-in member can.

    A user-defined tree-level transform is not inspected (it works when its ops do).

    Example:
        >>> import functrain as ft
        >>> check_dtensor_support(ft.chain(ft.clip(1.0), ft.adamw(1e-3)))
        >>> check_dtensor_support(ft.adafactor())
        Traceback (most recent call last):
        ...
        ValueError: adafactor (scale_by_factored_rms) does not support DTensor parameters: its factored row/column statistics mix plain tensors with DTensors
    """
    flat = getattr(tx, "flat", None)
    name = flat.name if flat is not None else ""
    for block, (alias, why) in DTENSOR_UNSUPPORTED.items():
        if re.search(rf"\b{block}\(", name):
            raise ValueError(f"{alias} ({block}) does not support DTensor parameters: {why}")


def _registered(propagator: Any, op: Any) -> bool:
    tables = ("op_strategy_funcs", "op_single_dim_strategy_funcs", "op_to_rules")
    return any(op in getattr(propagator, t, {}) for t in tables)


def enable_dtensor_kernels() -> tuple[str, ...]:
    """Give torch's fused SGD / Adagrad kernels and ``_foreach_copy_`` a DTensor sharding rule.

    torch implements its fused Adam/AdamW kernels for DTensor with a pointwise rule over the
    tensor lists (each rank steps its local shard); this registers the same rule, with the
    same torch function, for the kernels torch left out, so that
    :func:`functrain.apply_gradients` can run SGD, Adagrad, RAdam, Rprop and ASGD on DTensor
    parameters. Idempotent; a kernel torch already has a rule for is left alone. It uses a
    private torch helper: on a torch without it, nothing is registered and the empty tuple
    comes back (use ``apply_gradients(..., fused=False)`` for those optimizers then).

    Returns:
        The ops that have a rule registered by this module (``"aten._fused_sgd_.default"``...).

    Example:
        >>> enable_dtensor_kernels()  # doctest: +SKIP
        ('aten._fused_sgd_.default', ...)
    """
    global _enabled
    if _enabled is not None:
        return tuple(_enabled)
    done: list[str] = []
    try:
        from torch.distributed.tensor import DTensor
        from torch.distributed.tensor._ops._pointwise_ops import _register_single_dim_pointwise
    except ImportError:
        _enabled = done
        return ()
    propagator = DTensor._op_dispatcher.sharding_propagator
    for qualified in _MISSING_KERNELS:
        packet, overload = qualified.split(".")
        op = getattr(getattr(torch.ops.aten, packet, None), overload, None)
        if op is None:
            continue
        if not _registered(propagator, op):
            _register_single_dim_pointwise(op)
        done.append(f"aten.{qualified}")
    _enabled = done
    return tuple(done)


def local_tensor(x: Tensor) -> Tensor:
    """This rank's local shard of a DTensor, or the tensor itself."""
    return x.to_local() if is_dtensor(x) else x
