"""Recent values of named scalars (mmengine's message hub), read on the host only on demand."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = ["ScalarHistory"]


def _plain(value: Any) -> Any:
    """A DTensor (the optimizer state of a ZeRO-1 / FSDP run holds them) as a plain tensor:
    replicated values read locally, others gathered (a collective that every rank runs, as
    every rank runs the same callbacks). Anything else unchanged."""
    placements = getattr(value, "placements", None)
    if isinstance(value, Tensor) and placements is not None and hasattr(value, "to_local"):
        if all(p.is_replicate() for p in placements):
            return value.to_local()
        return value.full_tensor()
    return value


class _Deferred:
    """A value recorded as ``fn(arg)``, computed when first read (see
    :meth:`ScalarHistory.defer`)."""

    __slots__ = ("arg", "fn")

    def __init__(self, fn: Callable[[Any], Any], arg: Any) -> None:
        self.fn = fn
        self.arg = arg


def _resolve(buf: deque[Any], start: int = 0) -> None:
    """Replace the deferred values of ``buf`` from index ``start`` on by their values."""
    for i in range(max(start, 0), len(buf)):
        item = buf[i]
        if isinstance(item, _Deferred):
            buf[i] = _plain(item.fn(item.arg))


class ScalarHistory:
    """Recent values of named scalars (mmengine's message hub ``HistoryBuffer``s).

    Values may be Python numbers or 0-d tensors left on the device: reading them (``mean``,
    ``current``) is deferred until someone asks, and :meth:`read` turns many of them into
    floats with a single host transfer; a value recorded with :meth:`defer` is not even
    computed until then. DTensors (a sharded optimizer state's learning rate
    or gradient norm) are kept as plain local tensors.
    """

    def __init__(self, max_length: int = 1000) -> None:
        self.max_length = max_length
        self._data: dict[str, deque[Any]] = {}
        self.info: dict[str, Any] = {}

    def update(self, key: str, value: Any) -> None:
        buf = self._data.get(key)
        if buf is None:
            buf = self._data[key] = deque(maxlen=self.max_length)
        buf.append(_plain(value))

    def defer(self, key: str, fn: Callable[[Any], Any], arg: Any) -> None:
        """Record ``fn(arg)`` under ``key`` without computing it now: it is computed when a
        reader first asks for it (``values``, ``current``, ``mean``), which for a value only
        logged every ``interval`` iterations saves the computation on all the others.
        ``fn`` must be a pure function of ``arg`` (a schedule of the iteration, say).

        Example:
            >>> h = ScalarHistory()
            >>> h.defer("train/lr", lambda i: 0.1 * 0.5**i, 3)
            >>> h.current("train/lr")
            0.0125
        """
        buf = self._data.get(key)
        if buf is None:
            buf = self._data[key] = deque(maxlen=self.max_length)
        buf.append(_Deferred(fn, arg))

    def keys(self) -> list[str]:
        return list(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data and len(self._data[key]) > 0

    def clear(self, prefix: str = "") -> None:
        for key in [k for k in self._data if k.startswith(prefix)]:
            del self._data[key]

    def values(self, key: str, window: int | None = None) -> list[Any]:
        buf = self._data.get(key)
        if buf is None:
            return []
        _resolve(buf, len(buf) - window if window is not None and window > 0 else 0)
        items = list(buf)
        return items if window is None else items[-window:]

    def current(self, key: str) -> Any:
        buf = self._data[key]
        _resolve(buf, len(buf) - 1)
        return buf[-1]

    def mean(self, key: str, window: int | None = None) -> Any:
        """Mean of the last ``window`` values (all kept values when ``None``); a tensor when
        the values are tensors (no host sync), else a float. Values of shape ``[N]`` (one per
        ensemble member) average element by element: the mean is ``[N]`` too."""
        items = self.values(key, window)
        if not items:
            raise KeyError(f"no values recorded for {key!r}")
        if any(isinstance(v, Tensor) for v in items):
            device = next(v.device for v in items if isinstance(v, Tensor))
            shape = next(v.shape for v in items if isinstance(v, Tensor))
            shape = shape if len(shape) == 1 else ()  # per member, or one scalar
            return torch.stack(
                [torch.as_tensor(v, device=device).float().reshape(shape) for v in items]
            ).mean(0)
        return sum(float(v) for v in items) / len(items)

    @staticmethod
    def read(values: dict[str, Any]) -> dict[str, float]:
        """``values`` with tensors turned into floats, with one host transfer per device."""
        out: dict[str, float] = {}
        by_device: dict[Any, list[tuple[str, Tensor]]] = {}
        for k, v in values.items():
            v = _plain(v)
            if isinstance(v, Tensor):
                by_device.setdefault(v.device, []).append((k, v))
            else:
                out[k] = float(v)
        for items in by_device.values():
            numbers = torch.stack([v.detach().double().reshape(()) for _, v in items]).tolist()
            for (k, _), x in zip(items, numbers, strict=True):
                out[k] = x
        return {k: out[k] for k in values}
