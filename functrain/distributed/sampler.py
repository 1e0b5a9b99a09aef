"""Samplers that split a dataset between ranks: mmengine 0.10.7's ``DefaultSampler`` and
``InfiniteSampler``, index for index.

Each rank builds the same sampler and iterates its own share: rank ``r`` of ``W`` takes
positions ``r, r + W, r + 2W, ...`` of one shared order, which is a permutation seeded with
``seed + epoch`` (:class:`DefaultSampler`) or an endless run of permutations from one seeded
generator (:class:`InfiniteSampler`). With ``seed=None`` rank 0 draws a seed and broadcasts
it (:func:`functrain.distributed.comm.sync_random_seed`), so the ranks agree.

::

    sampler = DefaultSampler(train_set, shuffle=True, seed=0)      # rank and world size
    loader = DataLoader(train_set, batch_size=16, sampler=sampler)  # from the process group
    runner = Runner(..., train_loop=EpochBasedTrainLoop(loader, max_epochs=12))
    # the SamplerSeed callback calls sampler.set_epoch(epoch) before each epoch

    sampler = InfiniteSampler(train_set, shuffle=True, seed=0)      # for IterBasedTrainLoop
    loader = DataLoader(train_set, batch_size=16, sampler=sampler)  # never runs out

Both save their seed in a checkpoint (``state_dict``): the runner stores it with the data
position and restores it on resume, so a run with ``seed=None`` resumes with the same order.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sized
from typing import Any

import torch
from torch.utils.data import Sampler

from functrain.ranks import get_rank, get_world_size, sync_random_seed

__all__ = ["DefaultSampler", "InfiniteSampler"]


def _place(rank: int | None, world_size: int | None) -> tuple[int, int]:
    rank = get_rank() if rank is None else rank
    world_size = get_world_size() if world_size is None else world_size
    for name, value, low in (("rank", rank, 0), ("world_size", world_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if rank >= world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
    return rank, world_size


def _seed(seed: int | None) -> int:
    if seed is None:
        return sync_random_seed()
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int or None, got {seed!r}")
    return seed


class _RankShareSampler(Sampler[int]):
    """What both samplers hold: the dataset, the shuffling seed (the same on every rank) and
    this rank's place. Like mmengine's samplers, it does not call ``Sampler.__init__``."""

    def __init__(
        self,
        dataset: Sized,
        shuffle: bool,
        seed: int | None,
        rank: int | None,
        world_size: int | None,
    ) -> None:
        self.rank, self.world_size = _place(rank, world_size)
        self.dataset = dataset
        self.shuffle = shuffle
        self.seed = _seed(seed)


class DefaultSampler(_RankShareSampler):
    """mmengine's ``DefaultSampler``: this rank's share of a (per-epoch shuffled) dataset.

    The order of an epoch is ``torch.randperm(len(dataset))`` from a generator seeded with
    ``seed + epoch`` (or ``0 .. len - 1`` without shuffling); with ``round_up`` it is
    repeated until its length is a multiple of the world size (every rank then gets
    ``ceil(len / world_size)`` indices, as ``DistributedSampler(drop_last=False)``), without
    it the ranks get ``ceil((len - rank) / world_size)`` each and nothing is added.

    Args:
        dataset: anything with ``len``.
        shuffle: shuffle each epoch.
        seed: the shuffling seed, the same on every rank; ``None`` draws one on rank 0 and
            broadcasts it (a collective: every rank must build the sampler).
        round_up: pad with indices from the start so the ranks get equal shares.
        rank, world_size: override the process group's (default: from
            ``torch.distributed``, or 0 and 1 without a process group).

    Example:
        >>> s = DefaultSampler(range(5), shuffle=False, rank=1, world_size=2)
        >>> list(s), len(s)
        ([1, 3, 0], 3)
        >>> list(DefaultSampler(range(5), shuffle=False, round_up=False, rank=1, world_size=2))
        [1, 3]
    """

    def __init__(
        self,
        dataset: Sized,
        shuffle: bool = True,
        seed: int | None = None,
        round_up: bool = True,
        *,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        super().__init__(dataset, shuffle, seed, rank, world_size)
        self.epoch = 0
        self.round_up = round_up
        n = len(dataset)
        if round_up:
            self.num_samples = math.ceil(n / self.world_size)
            self.total_size = self.num_samples * self.world_size
        else:
            self.num_samples = math.ceil((n - self.rank) / self.world_size)
            self.total_size = n

    def __iter__(self) -> Iterator[int]:
        n = len(self.dataset)
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            indices = torch.randperm(n, generator=g).tolist()
        else:
            indices = list(range(n))
        if self.round_up and indices:
            indices = (indices * (self.total_size // len(indices) + 1))[: self.total_size]
        return iter(indices[self.rank : self.total_size : self.world_size])

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        """Use the order of epoch ``epoch`` (seed ``seed + epoch``) from the next iteration
        on; the :class:`~functrain.callbacks.SamplerSeed` callback calls it every epoch."""
        self.epoch = epoch

    def state_dict(self) -> dict[str, Any]:
        """``{"seed": ..., "epoch": ...}``: what a checkpoint needs to replay the order."""
        return {"seed": self.seed, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (the seed, so that ``seed=None`` resumes exactly)."""
        self.seed = int(state["seed"])
        self.epoch = int(state.get("epoch", self.epoch))

    def __repr__(self) -> str:
        return (
            f"DefaultSampler(len={len(self.dataset)}, shuffle={self.shuffle}, seed={self.seed}, "
            f"round_up={self.round_up}, rank={self.rank}, world_size={self.world_size})"
        )


class InfiniteSampler(_RankShareSampler):
    """mmengine's ``InfiniteSampler``: this rank's share of an endless run of permutations,
    for iteration-based training (a ``DataLoader`` over it never runs out).

    One generator seeded with ``seed`` draws ``torch.randperm(len(dataset))`` after
    ``torch.randperm(len(dataset))`` (or repeats ``0 .. len - 1`` without shuffling); rank
    ``r`` takes every ``world_size``-th index of that stream starting at ``r``. As in
    mmengine, the stream is created once: a second ``iter()`` continues where the previous
    one stopped, ``len()`` is the dataset's length and ``set_epoch`` does nothing.

    Resuming replays the consumed batches from a fresh sampler (what mmengine's
    ``IterBasedTrainLoop`` does), so a resumed run sees exactly the indices it would have.

    Args:
        dataset: anything with ``len``.
        shuffle: shuffle each pass.
        seed: the seed, the same on every rank; ``None`` draws one on rank 0 and broadcasts
            it (a collective).
        rank, world_size: override the process group's.

    Example:
        >>> s = InfiniteSampler(range(3), shuffle=False, rank=0, world_size=2)
        >>> import itertools
        >>> list(itertools.islice(iter(s), 5))
        [0, 2, 1, 0, 2]
    """

    def __init__(
        self,
        dataset: Sized,
        shuffle: bool = True,
        seed: int | None = None,
        *,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        super().__init__(dataset, shuffle, seed, rank, world_size)
        self.size = len(dataset)
        self.indices = self._indices_of_rank()

    def _infinite_indices(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self.seed)
        if self.size == 0:
            return
        while True:
            if self.shuffle:
                yield from torch.randperm(self.size, generator=g).tolist()
            else:
                yield from range(self.size)

    def _indices_of_rank(self) -> Iterator[int]:
        yield from itertools.islice(self._infinite_indices(), self.rank, None, self.world_size)

    def __iter__(self) -> Iterator[int]:
        yield from self.indices

    def __len__(self) -> int:
        return self.size

    def set_epoch(self, epoch: int) -> None:
        """Does nothing (as mmengine): the stream has no epochs."""

    def state_dict(self) -> dict[str, Any]:
        """``{"seed": ...}`` (the position is replayed by the loop, not stored here)."""
        return {"seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the seed and restart the stream from its beginning."""
        self.seed = int(state["seed"])
        self.indices = self._indices_of_rank()

    def __repr__(self) -> str:
        return (
            f"InfiniteSampler(len={self.size}, shuffle={self.shuffle}, seed={self.seed}, "
            f"rank={self.rank}, world_size={self.world_size})"
        )
