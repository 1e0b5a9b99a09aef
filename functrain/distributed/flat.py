"""One flat buffer per ``(device, dtype)``: how the collectives of this package batch many
tensors into one message.

A collective per tensor costs one launch (and on NCCL one kernel) each; concatenating the
tensors of one device and dtype into a single buffer turns a thousand all-reduces into one,
which is what DDP's buckets do. These helpers do the grouping and the splitting back.

Example:
    >>> import torch
    >>> ts = [torch.ones(2), torch.zeros(3, dtype=torch.int64), torch.ones(1)]
    >>> device_dtype_groups(ts)
    [[0, 2], [1]]
    >>> [t.shape for t in split_flat(concat_flat([ts[0], ts[2]]), [ts[0], ts[2]])]
    [torch.Size([2]), torch.Size([1])]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["concat_flat", "device_dtype_groups", "split_flat"]


def device_dtype_groups(tensors: Sequence[Tensor]) -> list[list[int]]:
    """The indices of ``tensors`` grouped by ``(device, dtype)``, groups in order of first
    appearance and indices ascending within each (so every rank groups alike).

    Example:
        >>> device_dtype_groups([torch.ones(1), torch.ones(1, dtype=torch.int64)])
        [[0], [1]]
    """
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault((t.device, t.dtype), []).append(i)
    return list(groups.values())


def concat_flat(tensors: Sequence[Tensor]) -> Tensor:
    """One new 1-d buffer holding ``tensors`` (same device and dtype) one after the other.

    Example:
        >>> concat_flat([torch.ones(2, 1), torch.zeros(1)])
        tensor([1., 1., 0.])
    """
    return torch.cat([t.reshape(-1) for t in tensors])


def split_flat(flat: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    """Views of the 1-d ``flat`` with the shapes of ``like`` (the inverse of
    :func:`concat_flat`).

    Example:
        >>> split_flat(torch.arange(3.0), [torch.ones(1, 2), torch.ones(1)])
        [tensor([[0., 1.]]), tensor([2.])]
    """
    sizes = [t.numel() for t in like]
    return [p.view(t.shape) for p, t in zip(flat.split(sizes), like, strict=True)]
