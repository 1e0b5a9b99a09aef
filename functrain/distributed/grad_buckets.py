"""Overlapping the gradient all-reduce with backward: DDP's buckets, for
``make_train_step(..., grad="autograd", bucket_cap_mb=...)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from functrain.ranks import get_world_size, is_distributed

__all__ = ["GradientBuckets"]


class GradientBuckets:
    """Bucketed, asynchronous gradient all-reduce launched from autograd hooks during backward.

    DDP's overlap of communication with computation, for ``make_train_step(...,
    grad="autograd", bucket_cap_mb=...)``: the leaves are assigned to buckets in reverse
    order (the order backward usually produces their gradients, as DDP assumes) within each
    ``(device, dtype)``, each bucket at most ``bucket_cap_mb``. A tensor hook copies each
    gradient, times ``1 / world_size``, into its bucket as soon as autograd computes it; a
    full bucket is all-reduced asynchronously while backward goes on. Buckets are launched in
    bucket order on every rank (a later full bucket waits for the earlier ones), so the
    collectives match across ranks whatever the hook order. :meth:`finish` fills the leaves
    autograd never reached with zeros, launches what is left and waits.

    The values are those of :func:`all_reduce_mean` (same scaling and sum, bucketed).

    Args:
        bucket_cap_mb: largest bucket, in MiB (DDP's default is 25).
        group: the process group.

    Example:
        >>> buckets = GradientBuckets(25.0)  # doctest: +SKIP
        >>> leaves = [p.detach().requires_grad_() for p in params]  # doctest: +SKIP
        >>> buckets.attach(leaves)  # doctest: +SKIP
        >>> grads = torch.autograd.grad(loss_of(leaves), leaves, allow_unused=True)  # doctest: +SKIP
        >>> grads = buckets.finish(grads)  # averaged across ranks  # doctest: +SKIP
    """

    def __init__(self, bucket_cap_mb: float, group: dist.ProcessGroup | None = None) -> None:
        if not isinstance(bucket_cap_mb, int | float) or isinstance(bucket_cap_mb, bool):
            raise ValueError(f"bucket_cap_mb must be a number > 0, got {bucket_cap_mb!r}")
        if not bucket_cap_mb > 0 or math.isinf(bucket_cap_mb):
            raise ValueError(f"bucket_cap_mb must be a finite number > 0, got {bucket_cap_mb!r}")
        self.cap_bytes = int(bucket_cap_mb * 1024 * 1024)
        self.group = group
        self._layout_key: Any = None
        self._buckets: list[list[int]] = []
        self._where: list[tuple[int, int]] = []  # leaf -> (bucket, offset)
        self._active: _BucketRun | None = None

    def _plan(self, leaves: Sequence[Tensor]) -> None:
        key = tuple((t.shape, t.dtype, t.device) for t in leaves)
        if key == self._layout_key:
            return
        buckets: list[list[int]] = []
        open_bucket: dict[tuple[torch.device, torch.dtype], tuple[int, int]] = {}
        for i in reversed(range(len(leaves))):
            t = leaves[i]
            k = (t.device, t.dtype)
            nbytes = t.numel() * t.element_size()
            if k in open_bucket and open_bucket[k][1] + nbytes <= self.cap_bytes:
                b, used = open_bucket[k]
                buckets[b].append(i)
                open_bucket[k] = (b, used + nbytes)
            else:
                buckets.append([i])
                open_bucket[k] = (len(buckets) - 1, nbytes)
        where: list[tuple[int, int]] = [(0, 0)] * len(leaves)
        for b, idx in enumerate(buckets):
            offset = 0
            for i in idx:
                where[i] = (b, offset)
                offset += leaves[i].numel()
        self._layout_key, self._buckets, self._where = key, buckets, where

    def attach(self, leaves: Sequence[Tensor]) -> None:
        """Register the hooks on ``leaves`` (tensors that require grad) for one backward."""
        leaves = list(leaves)
        self._plan(leaves)
        run = _BucketRun(self, leaves)
        self._active = run
        for i, leaf in enumerate(leaves):
            leaf.register_hook(run.hook(i))

    def finish(self, grads: Sequence[Tensor | None]) -> list[Tensor]:
        """The averaged gradients, one per leaf (views into the reduced buckets)."""
        run = self._active
        if run is None:
            raise RuntimeError("GradientBuckets.finish called without attach")
        self._active = None
        return run.finish(grads)


class _BucketRun:
    """The buffers and progress of one backward pass."""

    def __init__(self, owner: GradientBuckets, leaves: list[Tensor]) -> None:
        self.owner = owner
        self.leaves = leaves
        self.world = get_world_size(owner.group)
        self.buffers = [
            torch.empty(
                sum(leaves[i].numel() for i in idx),
                dtype=leaves[idx[0]].dtype,
                device=leaves[idx[0]].device,
            )
            for idx in owner._buckets
        ]
        self.pending = [len(idx) for idx in owner._buckets]
        self.seen = [False] * len(leaves)
        self.launched = 0
        self.works: list[Any] = []

    def _view(self, i: int) -> Tensor:
        b, offset = self.owner._where[i]
        return self.buffers[b].narrow(0, offset, self.leaves[i].numel())

    def hook(self, i: int) -> Any:
        def on_grad(grad: Tensor) -> None:
            self._store(i, grad)

        return on_grad

    def _store(self, i: int, grad: Tensor | None) -> None:
        if self.seen[i]:  # a second gradient for the same leaf: add it (torch sums them)
            view = self._view(i)
            b = self.owner._where[i][0]
            if b < self.launched:
                raise RuntimeError(
                    "GradientBuckets: a gradient arrived after its bucket was all-reduced; "
                    "use bucket_cap_mb=None for this model"
                )
            view.add_(grad.reshape(-1), alpha=1.0 / self.world)
            return
        self.seen[i] = True
        view = self._view(i)
        if grad is None:
            view.zero_()
        elif self.world > 1:
            torch.mul(grad.detach().reshape(-1), 1.0 / self.world, out=view)
        else:
            view.copy_(grad.detach().reshape(-1))
        b = self.owner._where[i][0]
        self.pending[b] -= 1
        self._launch_ready()

    def _launch_ready(self) -> None:
        while self.launched < len(self.buffers) and self.pending[self.launched] == 0:
            buf = self.buffers[self.launched]
            if is_distributed():
                self.works.append(
                    dist.all_reduce(
                        buf, op=dist.ReduceOp.SUM, group=self.owner.group, async_op=True
                    )
                )
            self.launched += 1

    def finish(self, grads: Sequence[Tensor | None]) -> list[Tensor]:
        for i, seen in enumerate(self.seen):
            if not seen:
                self._store(i, grads[i])
        for work in self.works:
            work.wait()
        return [self._view(i).view(leaf.shape) for i, leaf in enumerate(self.leaves)]
