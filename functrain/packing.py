"""Packing a parameter tree into one flat buffer per (device, dtype).

A tree of a thousand small tensors costs a thousand kernel launches per foreach op; the same
parameters packed into one contiguous buffer per ``(device, dtype)`` cost one. The model
still sees its usual tensors: :meth:`PackLayout.unpack` returns *views* into the buffers, so
``torch.func.functional_call(model, layout.unpack(packed), x)`` differentiates straight into
one flat gradient per buffer, and an optimizer stepping the packed tree in place (donating)
updates every view at once.

Packed and unpacked steps agree to rounding, not bitwise: the kernels vectorise one long
buffer differently from many short tensors, and a global-norm clip sums in a different order
(the norm of one long vector rather than the norm of per-tensor norms).

Example:
    >>> packed, layout = pack(dict(model.named_parameters()))  # doctest: +SKIP
    >>> tx = chain(clip(1.0), adamw(lr=1e-3)); state = tx.init(packed)  # doctest: +SKIP
    >>> def loss_fn(packed, x, y):  # doctest: +SKIP
    ...     return loss(torch.func.functional_call(model, layout.unpack(packed), (x,)), y)
    >>> grads = torch.func.grad(loss_fn)(packed, x, y)  # doctest: +SKIP
    >>> packed, state = apply_gradients(tx, packed, grads, state, donate=True)  # doctest: +SKIP
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import optree
import torch
from torch import Tensor

from functrain.tree import PyTree, TreeInfo, flatten, flatten_like

__all__ = ["PackLayout", "pack"]


def _group_key(leaf: Tensor) -> str:
    return f"{str(leaf.dtype).removeprefix('torch.')}@{leaf.device}"


@attrs.frozen
class PackLayout:
    """Where each leaf of a tree lives in the packed buffers.

    Attributes:
        treespec: structure of the original tree.
        keys: one name per buffer, ``"<dtype>@<device>"`` (``"float32@cpu"``).
        groups: leaf indices packed into each buffer, in order.
        shapes: the shape of every leaf, in flattening order.
    """

    treespec: optree.PyTreeSpec
    keys: tuple[str, ...]
    groups: tuple[tuple[int, ...], ...]
    shapes: tuple[torch.Size, ...]

    def _sizes(self, idx: tuple[int, ...]) -> list[int]:
        return [math.prod(self.shapes[i]) for i in idx]

    def pack(self, tree: PyTree) -> dict[str, Tensor]:
        """Copy the leaves of ``tree`` (structured like the packed tree) into new buffers.

        This is how per-leaf gradients computed elsewhere join a packed optimizer: one
        ``torch.cat`` per buffer.
        """
        leaves, info = flatten(tree)
        if info.treespec != self.treespec:
            flatten_like(tree, TreeInfo(self.treespec, self.groups), "given", "packed")  # raises
        return {
            key: torch.cat([leaves[i].reshape(-1) for i in idx])
            for key, idx in zip(self.keys, self.groups, strict=True)
        }

    def unpack(self, packed: dict[str, Tensor]) -> PyTree:
        """The original tree, each leaf a view into ``packed`` (no copy)."""
        if set(packed) != set(self.keys):
            raise ValueError(
                f"packed buffers {sorted(packed)} do not match this layout's {list(self.keys)}"
            )
        leaves: list[Any] = [None] * len(self.shapes)
        for key, idx in zip(self.keys, self.groups, strict=True):
            buffer = packed[key]
            for i, piece in zip(idx, buffer.split(self._sizes(idx)), strict=True):
                leaves[i] = piece.view(self.shapes[i])
        return optree.tree_unflatten(self.treespec, leaves)


def pack(tree: PyTree) -> tuple[dict[str, Tensor], PackLayout]:
    """Pack ``tree`` into one contiguous buffer per ``(device, dtype)``.

    Args:
        tree: a pytree of tensors (typically ``dict(model.named_parameters())``, detached).

    Returns:
        ``(packed, layout)``: ``packed`` maps ``"<dtype>@<device>"`` to a 1-d buffer (itself a
        pytree of a few leaves, which any transform steps); ``layout.unpack(packed)`` gives
        the original tree as views.

    Example:
        >>> packed, layout = pack({"w": torch.ones(2, 3), "b": torch.zeros(3)})
        >>> packed["float32@cpu"].shape
        torch.Size([9])
    """
    leaves, info = flatten(tree)
    keys = tuple(_group_key(leaves[idx[0]]) for idx in info.groups)
    layout = PackLayout(info.treespec, keys, info.groups, tuple(t.shape for t in leaves))
    packed = {
        key: torch.cat([leaves[i].detach().reshape(-1) for i in idx])
        for key, idx in zip(keys, info.groups, strict=True)
    }
    return packed, layout
