"""``TrainState``: everything a training run carries from one step to the next, as one record.

A training loop in functrain passes the state explicitly: a step takes a :class:`TrainState`
and a batch and returns a new one, callbacks receive the state and may return a replacement,
and a checkpoint is the state written to disk (plus where the data iterator stood). The
record is frozen; "changing" it means building a new one with :meth:`TrainState.replace`.

What is inside:

- ``params``: the trainable parameters, ``{dotted name: tensor}`` as in
  ``model.named_parameters()`` (only those with ``requires_grad``).
- ``buffers``: everything else ``functional_call`` needs: the module's buffers (BatchNorm
  running statistics, which the train step updates) and its frozen parameters.
- ``opt_state``: the gradient transformation's state.
- ``callbacks``: persistent state of callbacks, ``{callback name: value}`` (best score so far,
  kept checkpoint ids, EMA weights...). Saved and restored with checkpoints.
- ``iteration`` and ``epoch``: the loop counters, with mmengine's meaning (``iteration`` is
  the index of the iteration being run; both count *finished* units between iterations).
- ``rng``: a snapshot of the global random number generators, taken when the state is
  written to a checkpoint (the live generators are torch's global ones, which ``dropout``
  and ``DataLoader`` shuffling use); restored on resume.

``iteration``, ``epoch`` and ``rng`` are static fields (part of the tree structure), so
``functrain.tree_map`` over a state reaches only tensors and callback values.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import torch
from torch import Tensor

from functrain.transforms.base import GradientTransformation, state_record, static_field
from functrain.transforms.multipliers import trainable_parameters
from functrain.tree import tree_map

__all__ = ["RngState", "TrainState", "capture_rng", "restore_rng"]

try:  # numpy is optional; its generator is part of the snapshot when it is installed
    import numpy as _np
except ImportError:  # pragma: no cover - numpy ships with torch's usual installs
    _np = None


@attrs.frozen
class RngState:
    """A snapshot of the global random number generators (hashable, plain bytes and ints).

    Attributes:
        torch_cpu: ``torch.get_rng_state()`` as bytes.
        cuda: one state per CUDA device, empty when CUDA was not initialised.
        python: ``random.getstate()``.
        numpy: ``numpy.random.get_state()`` with the key array as bytes, or ``None``.
    """

    torch_cpu: bytes
    cuda: tuple[bytes, ...] = ()
    python: tuple[Any, ...] | None = None
    numpy: tuple[Any, ...] | None = None


def _to_bytes(t: Tensor) -> bytes:
    return bytes(t.cpu().numpy().tobytes()) if _np is not None else bytes(t.tolist())


def _from_bytes(b: bytes) -> Tensor:
    return torch.frombuffer(bytearray(b), dtype=torch.uint8).clone()


def _freeze(x: Any) -> Any:
    return tuple(_freeze(v) for v in x) if isinstance(x, list | tuple) else x


def capture_rng() -> RngState:
    """Snapshot torch's CPU generator, every initialised CUDA generator, ``random`` and numpy.

    CUDA is not initialised by this call: a process that never touched CUDA has no CUDA state.

    Example:
        >>> snap = capture_rng(); a = torch.rand(2); restore_rng(snap)
        >>> bool((torch.rand(2) == a).all())
        True
    """
    cuda: tuple[bytes, ...] = ()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda = tuple(_to_bytes(s) for s in torch.cuda.get_rng_state_all())
    np_state = None
    if _np is not None:
        name, keys, pos, has_gauss, gauss = _np.random.get_state()
        np_state = (name, keys.tobytes(), int(pos), int(has_gauss), float(gauss))
    return RngState(
        torch_cpu=_to_bytes(torch.get_rng_state()),
        cuda=cuda,
        python=_freeze(random.getstate()),
        numpy=np_state,
    )


def restore_rng(rng: RngState) -> None:
    """Set the global generators to the snapshot ``rng`` (see :func:`capture_rng`)."""
    torch.set_rng_state(_from_bytes(rng.torch_cpu))
    if rng.cuda and torch.cuda.is_available():
        states = [_from_bytes(b) for b in rng.cuda]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
    if rng.python is not None:
        version, internal, gauss = rng.python
        random.setstate((version, tuple(internal), gauss))
    if rng.numpy is not None and _np is not None:
        name, keys, pos, has_gauss, gauss = rng.numpy
        _np.random.set_state((name, _np.frombuffer(keys, dtype=_np.uint32), pos, has_gauss, gauss))


@state_record
class TrainState:
    """The immutable state of a training run (see the module docstring for each field).

    Build one with :meth:`create`; replace fields with :meth:`replace`.

    Example:
        >>> model = torch.nn.Linear(3, 2)
        >>> state = TrainState.create(model, functrain.sgd(lr=0.1))  # doctest: +SKIP
        >>> state.iteration, sorted(state.params)  # doctest: +SKIP
        (0, ['bias', 'weight'])
    """

    params: dict[str, Tensor]
    buffers: dict[str, Tensor]
    opt_state: Any
    callbacks: dict[str, Any] = attrs.field(factory=dict)
    iteration: int = static_field(default=0)
    epoch: int = static_field(default=0)
    rng: RngState | None = static_field(default=None)

    @classmethod
    def create(
        cls,
        model: torch.nn.Module,
        tx: GradientTransformation,
        *,
        device: torch.device | str | None = None,
    ) -> TrainState:
        """A fresh state for ``model`` trained with ``tx``.

        The tensors are copies: training the state does not change ``model``'s own parameters
        (use :meth:`load_into` to copy them back).

        Args:
            model: the module; its ``requires_grad`` parameters become ``params``, its buffers
                and frozen parameters ``buffers``.
            tx: the gradient transformation; ``opt_state = tx.init(params)``.
            device: where to put the copies (default: where the module's tensors are).
        """

        def copy(t: Tensor) -> Tensor:
            t = t.detach()
            return t.to(device, copy=True) if device is not None else t.clone()

        params = {k: copy(v) for k, v in trainable_parameters(model).items()}
        buffers = {k: copy(v) for k, v in model.named_buffers()}
        buffers.update({k: copy(v) for k, v in model.named_parameters() if k not in params})
        return cls(params=params, buffers=buffers, opt_state=tx.init(params))

    def replace(self, **changes: Any) -> TrainState:
        """A copy with ``changes`` applied (``attrs.evolve``)."""
        return attrs.evolve(self, **changes)

    def with_callback_state(self, name: str, value: Any) -> TrainState:
        """A copy whose ``callbacks[name]`` is ``value``."""
        return attrs.evolve(self, callbacks={**self.callbacks, name: value})

    def to(self, device: torch.device | str) -> TrainState:
        """A copy with every tensor moved to ``device`` (other values unchanged)."""
        return self.map_tensors(lambda t: t.to(device))

    def map_tensors(self, fn: Callable[[Tensor], Tensor]) -> TrainState:
        """A copy with ``fn`` applied to every tensor leaf."""
        return tree_map(lambda x: fn(x) if isinstance(x, Tensor) else x, self)

    def load_into(self, model: torch.nn.Module) -> None:
        """Copy ``params`` and ``buffers`` into ``model``'s own tensors (in place)."""
        own: Mapping[str, Tensor] = {
            **dict(model.named_parameters()),
            **dict(model.named_buffers()),
        }
        with torch.no_grad():
            for name, value in {**self.params, **self.buffers}.items():
                if name not in own:
                    raise KeyError(f"TrainState.load_into: the model has no tensor {name!r}")
                own[name].copy_(value)
