"""Run a module on given tensors instead of its own, with the per-call lookups done once.

:func:`torch.func.functional_call` rebinds a module's parameters and buffers for one call: on
every call it walks the module tree to find tied tensors, resolves each dotted name to its
submodule, swaps the tensors into the submodules' ``_parameters`` / ``_buffers`` dicts, runs
the module and swaps them back. A train step calls it with the same names every iteration,
so :class:`ModuleCall` resolves the names once and then only swaps: the same dict entries
are written with the same tensors, so the module computes exactly what ``functional_call``
makes it compute (bitwise), for a fraction of the Python overhead on small models.

It falls back to ``functional_call`` itself whenever the shortcut could differ: a module with
tied tensors (one tensor under several names, which ``functional_call`` unties), names the
module does not have, a name given in both dicts, or while ``torch.compile`` traces (dynamo
knows ``functional_call``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from torch.func import functional_call

__all__ = ["ModuleCall"]

Slot = tuple[dict[str, Any], str]  # a submodule's _parameters or _buffers dict, and the key


class ModuleCall:
    """``call(params, buffers, args, kwargs)``: ``module(*args, **kwargs)`` run with ``params``
    and ``buffers`` (``{dotted name: tensor}``) in place of the module's own tensors, which
    are restored afterwards; what ``torch.func.functional_call(module, (params, buffers),
    args, kwargs)`` does (see the module docstring for when it is exactly that call).

    Args:
        module: the module; only its structure and code are used.

    Example:
        >>> model = torch.nn.Linear(2, 1)
        >>> call = ModuleCall(model)
        >>> params = {"weight": torch.ones(1, 2), "bias": torch.zeros(1)}
        >>> call(params, {}, (torch.ones(1, 2),), {})
        tensor([[2.]])
    """

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module
        self._slots: dict[str, Slot] | None = None
        self._tied = False
        # The names of the last call and their slots (None: use functional_call for them).
        self._names: tuple[tuple[str, ...], tuple[str, ...]] | None = None
        self._targets: list[Slot] | None = None

    def _index(self) -> None:
        """Every parameter and buffer slot of the module by dotted name, and whether any
        tensor sits in more than one slot (tied weights, a shared submodule)."""
        slots: dict[str, Slot] = {}
        owners: dict[int, str] = {}
        tied = False
        for prefix, sub in self.module.named_modules(remove_duplicate=False):
            for table in (sub._parameters, sub._buffers):
                for key, tensor in table.items():
                    if tensor is None:
                        continue
                    slots[f"{prefix}.{key}" if prefix else key] = (table, key)
                    tied = tied or id(tensor) in owners
                    owners[id(tensor)] = key
        self._slots, self._tied = slots, tied

    def _resolve(self, names: tuple[tuple[str, ...], tuple[str, ...]]) -> list[Slot] | None:
        """The slots of ``names``, or ``None`` when ``functional_call`` must handle them."""
        self._index()  # the module may have gained or lost tensors since the last names
        params, buffers = names
        if self._tied or not set(params).isdisjoint(buffers):
            return None
        slots = self._slots
        assert slots is not None
        if any(name not in slots for name in params + buffers):
            return None
        return [slots[name] for name in params + buffers]

    def __call__(
        self,
        params: Mapping[str, Tensor],
        buffers: Mapping[str, Tensor],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        names = (tuple(params), tuple(buffers))
        if names != self._names:
            self._targets = self._resolve(names)
            self._names = names
        targets = self._targets
        if targets is None or torch.compiler.is_compiling():
            return functional_call(self.module, (dict(params), dict(buffers)), args, kwargs)
        saved = [table[key] for table, key in targets]
        try:
            for (table, key), tensor in zip(
                targets, (*params.values(), *buffers.values()), strict=True
            ):
                table[key] = tensor
            return self.module(*args, **kwargs)
        finally:
            for (table, key), tensor in zip(targets, saved, strict=True):
                table[key] = tensor
