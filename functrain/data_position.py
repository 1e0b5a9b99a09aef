"""Where the training data stands, so that a resumed run continues from the exact batch.

A data *pass* is one iteration over the training dataloader (an epoch; the iteration-based
loop restarts its loader, one pass per restart). :class:`DataFeed` opens the passes for the
train loops and remembers, for each, the random generator states its order was drawn from and
how many batches it has given; :meth:`DataFeed.position` turns that into a
:class:`DataPosition` for a checkpoint. Resuming hands the position back
(:meth:`DataFeed.resume_at`): the next pass with that index restores the generators, replays
the pass's order and skips the batches already consumed.

:class:`RngGuard` runs validation and test without changing the training's random stream, and
knows which generator state training continues with while it is inside such a block.

Samplers with ``set_epoch`` and a ``seed`` (mmengine's ``DefaultSampler`` /
``InfiniteSampler``, torch's ``DistributedSampler``) are found where mmengine's
``DistSamplerSeedHook`` looks: ``loader.sampler`` or ``loader.batch_sampler.sampler``.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import attrs
import torch

from functrain.state import RngState, capture_rng, restore_rng

__all__ = ["DataFeed", "DataPass", "DataPosition", "RngGuard", "epoch_sampler", "set_sampler_epoch"]


@attrs.frozen
class DataPosition:
    """Where the training data stood: pass number, batches consumed in the pass, and the
    generator states needed to replay the pass's order."""

    pass_index: int
    consumed: int
    pass_rng: RngState | None = None
    pass_generators: tuple[bytes, ...] | None = None
    rng: RngState | None = None
    generators: tuple[bytes, ...] | None = None
    phase: str = ""
    sampler_seed: int | None = None


class DataPass:
    """One pass over the training loader: its index, the batches it has given, and the
    generator states its order was drawn from."""

    __slots__ = ("consumed", "finished", "generators", "index", "rng")

    def __init__(
        self, index: int, consumed: int, rng: RngState | None, generators: tuple[bytes, ...] | None
    ) -> None:
        self.index = index
        self.consumed = consumed
        self.rng = rng
        self.generators = generators
        self.finished = False


def _loader_generators(loader: Any) -> list[torch.Generator]:
    found: list[torch.Generator] = []
    candidates = [
        getattr(loader, "generator", None),
        getattr(getattr(loader, "sampler", None), "generator", None),
        getattr(
            getattr(getattr(loader, "batch_sampler", None), "sampler", None), "generator", None
        ),
    ]
    for g in candidates:
        if isinstance(g, torch.Generator) and all(g is not f for f in found):
            found.append(g)
    return found


def _generator_states(loader: Any) -> tuple[bytes, ...]:
    return tuple(bytes(g.get_state().numpy().tobytes()) for g in _loader_generators(loader))


def _set_generator_states(loader: Any, states: tuple[bytes, ...] | None) -> None:
    if not states:
        return
    gens = _loader_generators(loader)
    if len(gens) != len(states):
        warnings.warn(
            "resume: the training dataloader's generators differ from the checkpoint's; the "
            "data order after resuming may differ from the interrupted run",
            stacklevel=3,
        )
        return
    for g, s in zip(gens, states, strict=True):
        g.set_state(torch.frombuffer(bytearray(s), dtype=torch.uint8).clone())


def epoch_sampler(loader: Any) -> Any:
    """The loader's sampler that has ``set_epoch`` (its ``sampler`` or its batch sampler's
    ``sampler``, where mmengine's ``DistSamplerSeedHook`` looks), or ``None``."""
    sampler = getattr(loader, "sampler", None)
    if sampler is not None and hasattr(sampler, "set_epoch"):
        return sampler
    inner = getattr(getattr(loader, "batch_sampler", None), "sampler", None)
    if inner is not None and hasattr(inner, "set_epoch"):
        return inner
    return None


def set_sampler_epoch(loader: Any, epoch: int) -> None:
    """``set_epoch`` on the loader's sampler, as mmengine's samplers and seed hook do."""
    sampler = epoch_sampler(loader)
    if sampler is not None:
        sampler.set_epoch(epoch)


def sampler_seed(loader: Any) -> int | None:
    """The integer ``seed`` of the loader's seeded sampler (functrain's and mmengine's
    ``DefaultSampler`` / ``InfiniteSampler``, torch's ``DistributedSampler``): with
    ``seed=None`` it was drawn at random, so a checkpoint keeps it to replay the order."""
    seed = getattr(epoch_sampler(loader), "seed", None)
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None


class RngGuard:
    """Runs blocks (validation, test) without changing the training's random stream."""

    def __init__(self) -> None:
        self._outer: RngState | None = None

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        """Restore the global generators to their state at entry when the block exits."""
        snapshot = capture_rng()
        outer, self._outer = self._outer, self._outer or snapshot
        try:
            yield
        finally:
            self._outer = outer
            restore_rng(snapshot)

    def training_rng(self) -> RngState:
        """The generator state training continues with (outside any guarded block)."""
        return self._outer if self._outer is not None else capture_rng()


class DataFeed:
    """Opens the train loops' data passes and knows where the data stands.

    Attributes:
        current: the pass being consumed (``None`` before the first one).
        pending: a checkpoint's position, replayed by the next :meth:`open_pass`.
    """

    def __init__(self) -> None:
        self.current: DataPass | None = None
        self.pending: DataPosition | None = None
        self._resume_phase = ""

    def resume_at(self, position: DataPosition | None) -> None:
        """Continue from ``position`` (read from a checkpoint) at the next pass."""
        self.pending = position
        self._resume_phase = position.phase if position is not None else ""
        self.current = None

    def take_resume_phase(self) -> str:
        """The event the resumed checkpoint was taken in (once; ``""`` afterwards)."""
        phase, self._resume_phase = self._resume_phase, ""
        return phase

    def first_pass_index(self) -> int:
        """The pass a loop starts with: the checkpoint's, else 0."""
        return self.pending.pass_index if self.pending is not None else 0

    def open_pass(self, loader: Iterable[Any], index: int) -> tuple[Iterator[Any], DataPass]:
        """Start pass ``index`` over ``loader``; on resume, replay it to the saved position.

        Returns the iterator and the pass, whose ``consumed`` is the number of batches
        already skipped (the batch index the iterator's first batch has)."""
        pending, self.pending = self.pending, None
        if pending is not None and pending.consumed > 0 and pending.pass_index == index:
            return self._replay(loader, pending)
        if pending is not None:
            if pending.consumed > 0:
                warnings.warn(
                    f"resume: the checkpoint stopped in data pass {pending.pass_index} but the "
                    f"loop starts pass {index}; starting the pass from its first batch",
                    stacklevel=3,
                )
            if pending.rng is not None:
                restore_rng(pending.rng)
            _set_generator_states(loader, pending.generators)
        self.current = DataPass(index, 0, capture_rng(), _generator_states(loader))
        return iter(loader), self.current

    def _replay(
        self, loader: Iterable[Any], pending: DataPosition
    ) -> tuple[Iterator[Any], DataPass]:
        # The pass's order is drawn when its iterator is created: restore the generators it
        # was drawn from, skip the consumed batches, then put back the state training had.
        if pending.pass_rng is not None:
            restore_rng(pending.pass_rng)
        _set_generator_states(loader, pending.pass_generators)
        iterator = iter(loader)
        if iterator is loader:
            warnings.warn(
                "resume: the training data is a one-shot iterator, so the batches already "
                f"used in this pass cannot be replayed; skipping {pending.consumed} "
                "batches of whatever it yields now",
                stacklevel=4,
            )
        skipped = 0
        for _ in range(pending.consumed):
            try:
                next(iterator)
            except StopIteration:
                break
            skipped += 1
        if pending.rng is not None:
            restore_rng(pending.rng)
        _set_generator_states(loader, pending.generators)
        self.current = DataPass(
            pending.pass_index, skipped, pending.pass_rng, pending.pass_generators
        )
        return iterator, self.current

    def position(self, loader: Any, rng: RngState, phase: str) -> DataPosition | None:
        """Where the data stands now, for a checkpoint taken in ``phase`` with the training
        generators at ``rng``."""
        p = self.current
        if p is None:
            return self.pending
        gens, seed = _generator_states(loader), sampler_seed(loader)
        if p.finished:
            return DataPosition(p.index + 1, 0, None, None, rng, gens, phase, seed)
        return DataPosition(p.index, p.consumed, p.rng, p.generators, rng, gens, phase, seed)
