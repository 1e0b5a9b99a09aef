"""``SamplerSeed``: ``set_epoch`` on the training sampler each epoch (DistSamplerSeedHook)."""

from __future__ import annotations

from typing import Any

from functrain.callbacks.base import Callback
from functrain.data_position import set_sampler_epoch

__all__ = ["SamplerSeed"]


class SamplerSeed(Callback):
    """Calls ``set_epoch(runner.epoch)`` on the train dataloader's sampler (or its batch
    sampler's sampler) before each training epoch, so that a seeded shuffling sampler
    (``DistributedSampler``, :class:`functrain.distributed.sampler.DefaultSampler`, mmengine's
    ``DefaultSampler``) draws a new order each epoch. ``InfiniteSampler.set_epoch`` does
    nothing (as mmengine): its endless stream has no epochs."""

    priority = "NORMAL"

    def before_train_epoch(self, runner: Any, state: Any) -> None:
        """``set_epoch(runner.epoch)`` on the training sampler."""
        set_sampler_epoch(runner.train_dataloader, runner.epoch)
