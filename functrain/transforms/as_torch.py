"""functrain transforms inside any PyTorch training loop: :func:`as_torch_optimizer` wraps a
gradient transformation as a ``torch.optim.Optimizer`` (the reverse of
:func:`~functrain.from_torch_optimizer`).

The optimizer reads ``p.grad`` of its parameters, runs the chain with
:func:`~functrain.apply_gradients` (donating its own state and the parameters, so torch's
fused kernels update ``p`` in place where the chain has a fused form) and keeps the chain's
state as one functrain state. What a torch loop, mmengine's ``OptimWrapper`` / param
schedulers, ``torch.amp.GradScaler`` and Lightning need of an optimizer works:

- ``param_groups``: exactly one group. Its ``lr`` is the chain's learning rate in force, read
  back from the state (:func:`~functrain.transforms.state_values.recorded_paths`); a scheduler
  that writes ``group["lr"]`` sets it in the state at the next ``step()`` (several settable
  learning rates, e.g. one per ``partition`` label, are scaled together, as mmengine scales
  the groups of one optimizer). Given a *factory* instead of a transform (``ft.sgd``,
  ``ft.adamw``, any ``(**hyperparams) -> GradientTransformation``), every keyword of the
  factory is a group key (``momentum``, ``betas``, ``weight_decay``, ...), and changing one
  rebuilds the transform with the new values (the state is kept), so momentum schedulers
  drive it too.
- ``state_dict()`` / ``load_state_dict()``: the functrain state and the group's values; a fresh
  optimizer loaded from a state dict continues bitwise.
- ``step(closure)`` returns the closure's loss; ``zero_grad(set_to_none=True)`` is torch's.
- ``torch.amp.GradScaler``: ``scaler.step(opt)`` unscales ``.grad`` through ``param_groups``
  and skips ``step()`` when it finds an inf or NaN, as for any torch optimizer.

Several param groups (a torch-style list of dicts, or mmengine's ``paramwise_cfg``) are
refused with a ``ValueError``: per-parameter settings belong inside the transform
(:func:`~functrain.with_multipliers`, :func:`~functrain.partition`), where they are part of
the state and of the fused step.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import optree
import torch
from torch import Tensor

from functrain.transforms.base import GradientTransformation
from functrain.transforms.fused_step import apply_gradients
from functrain.transforms.state_path import Path, get, replace
from functrain.transforms.state_values import recorded_paths
from functrain.tree import NAMESPACE, foreach_clone, leaf_paths, tree_map

__all__ = ["FunctrainOptimizer", "as_torch_optimizer"]

#: A transform, or a factory building one from keyword hyperparameters (``ft.sgd``).
TxOrFactory = GradientTransformation | Callable[..., GradientTransformation]


def _named_parameters(params: Any) -> tuple[list[str], list[Tensor], dict[str, Any]]:
    """Names, tensors and the group's other keys from what a torch optimizer accepts: an
    iterable of tensors, of ``(name, tensor)`` pairs (``model.named_parameters()``), a dict
    ``{name: tensor}``, or one group dict ``{"params": ..., **hyperparams}``."""
    group: dict[str, Any] = {}
    if isinstance(params, Tensor):
        raise TypeError(
            "as_torch_optimizer: params must be an iterable of tensors or (name, tensor) "
            f"pairs, a dict of them or one param-group dict, got a {type(params).__name__}"
        )
    if isinstance(params, Mapping) and "params" in params:
        group = {k: v for k, v in params.items() if k != "params"}
        params = params["params"]
    if isinstance(params, Mapping):
        items = list(params.items())
    else:
        items = list(params)
        if items and isinstance(items[0], Mapping):
            if len(items) > 1:
                raise ValueError(
                    f"as_torch_optimizer: got {len(items)} param groups; one transform is one "
                    "group. Express per-parameter settings inside the transform "
                    "(ft.with_multipliers for lr_mult / decay_mult, ft.partition for "
                    "different transforms) and pass the parameters as one group"
                )
            return _named_parameters(items[0])
        if items and isinstance(items[0], tuple):
            items = [(str(n), p) for n, p in items]
        else:
            items = [(str(i), p) for i, p in enumerate(items)]
    if not items:
        raise ValueError("as_torch_optimizer: got an empty parameter list")
    names = [n for n, _ in items]
    tensors = [p for _, p in items]
    for n, p in items:
        if not isinstance(p, Tensor):
            raise TypeError(f"as_torch_optimizer: parameter {n!r} is a {type(p).__name__}")
    if len(set(names)) != len(names):
        raise ValueError(f"as_torch_optimizer: duplicate parameter names in {names!r}")
    if len({id(p) for p in tensors}) != len(tensors):
        raise ValueError("as_torch_optimizer: a parameter appears more than once")
    return names, tensors, group


def _factory_defaults(factory: Callable[..., Any]) -> dict[str, Any]:
    """The keyword arguments of ``factory`` that have defaults (torch puts an optimizer's
    defaults into every group, so schedulers find ``momentum`` / ``betas`` there)."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return {}
    return {
        name: p.default
        for name, p in signature.parameters.items()
        if p.default is not inspect.Parameter.empty
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


class FunctrainOptimizer(torch.optim.Optimizer):
    """A ``torch.optim.Optimizer`` that runs a functrain transform on ``p.grad``; built by
    :func:`as_torch_optimizer` (see there and the module docstring).

    Attributes:
        tx: the transform in use (rebuilt by a factory when a group value changes).
        opt_state: the transform's functrain state (read it with
            :func:`~functrain.values_in_force`).
        names: the dotted leaf path of each parameter, as the transform sees it.
    """

    def __init__(self, tx: TxOrFactory, params: Any, **hyperparams: Any) -> None:
        names, tensors, group_values = _named_parameters(params)
        self.names = names
        if isinstance(tx, GradientTransformation):
            self._factory: Callable[..., GradientTransformation] | None = None
            given = {**group_values, **hyperparams}
            extra = sorted(set(given) - {"lr"})
            if extra:
                raise ValueError(
                    f"as_torch_optimizer: {extra!r} given for a built transform, which closed "
                    "over its hyperparameters; pass a factory (e.g. ft.sgd) with them as "
                    "keywords instead"
                )
            self.tx = tx
            built: dict[str, Any] = {}
        else:
            if not callable(tx):
                raise TypeError(
                    "as_torch_optimizer: tx must be a GradientTransformation or a factory "
                    f"(**hyperparams) -> GradientTransformation, got {type(tx).__name__}"
                )
            self._factory = tx
            built = {**_factory_defaults(tx), **hyperparams, **group_values}
            self.tx = self._build(built)
            given = {}
        # The factory's keywords (none for a built transform): a change rebuilds it.
        self._keys = frozenset(built)
        with torch.no_grad():
            self.opt_state = self.tx.init(self._param_tree(tensors))
        # The settable learning rates and their values (one host read each, here only).
        lr_values: list[float] = []
        settable = []
        for row, path in recorded_paths(self.opt_state, "lr"):
            value = float(get(self.opt_state, path))
            lr_values.append(value)
            if row.settable:
                settable.append((path, value))
        self._lr_paths = _read_back(self.tx, self.opt_state, self._param_tree(tensors), settable)
        defaults = dict(built)
        if "lr" in given:
            defaults["lr"] = given["lr"]
        elif "lr" not in defaults and lr_values:
            defaults["lr"] = lr_values[0]
        self._lr_base = self._lr_paths[0][1] if self._lr_paths else None
        # The values the transform and its state hold now; step() compares the groups with it.
        self._in_force: dict[str, Any] = {}
        self._adding = True
        super().__init__(tensors, defaults)
        self._adding = False
        if "lr" in given:
            self._sync(self.param_groups[0])  # a group lr given by the caller: into the state
        self._in_force = {k: v for k, v in self.param_groups[0].items() if k != "params"}

    # ------------------------------------------------------------------------------------
    def _build(self, values: Mapping[str, Any]) -> GradientTransformation:
        assert self._factory is not None
        try:
            tx = self._factory(**values)
        except TypeError as e:
            raise TypeError(
                f"as_torch_optimizer: the factory rejected {dict(values)!r}: {e}"
            ) from e
        if not isinstance(tx, GradientTransformation):
            raise TypeError(
                f"as_torch_optimizer: the factory returned a {type(tx).__name__}, not a "
                "GradientTransformation"
            )
        return tx

    def _param_tree(self, tensors: Iterable[Tensor]) -> dict[str, Tensor]:
        # Detached each step (not cached): code that swaps p.data (model.to(...)) is seen.
        return {n: p.detach() for n, p in zip(self.names, tensors, strict=True)}

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """torch's, while constructing; later a ``ValueError``: the transform's state was
        built for the parameters given at construction, and one transform is one group."""
        if not getattr(self, "_adding", False):
            raise ValueError(
                "as_torch_optimizer: add_param_group is not supported; the functrain state is "
                "built for the parameters given at construction (build a new optimizer)"
            )
        super().add_param_group(param_group)

    def _set_lr(self, lr: Any) -> None:
        if isinstance(lr, bool) or not isinstance(lr, int | float) or not lr >= 0.0:
            raise ValueError(
                f"as_torch_optimizer: param_groups[0]['lr'] = {lr!r} is not an lr >= 0"
            )
        if not self._lr_paths:
            raise ValueError(
                f"as_torch_optimizer: param_groups[0]['lr'] changed to {lr!r}, but the transform "
                "reads no settable learning rate from its state (a scheduled lr is evaluated "
                "from the step count; give it a float lr to drive it from param_groups)"
            )
        state = self.opt_state
        base = self._lr_base
        for path, value in self._lr_paths:
            # One lr: the group's value exactly. Several (partition labels): scaled together.
            new = float(lr) if len(self._lr_paths) == 1 or not base else value * (lr / base)
            old = get(state, path)
            # torch.full is a fill kernel on the state's device: no host sync.
            state = replace(state, path, torch.full((), new, dtype=old.dtype, device=old.device))
        self.opt_state = state

    def _sync(self, group: dict[str, Any]) -> None:
        """Push the group values a scheduler or the user changed into the transform: a new
        lr into the state, a factory's other keywords by rebuilding the transform. Keys
        that are not the transform's (``initial_lr``, which schedulers add) are ignored.
        Python comparisons of the group's numbers only: no host sync."""
        changed = [
            k for k in self._keys | {"lr"} if k in group and self._in_force.get(k) != group[k]
        ]
        if not changed:
            return
        if any(k in self._keys for k in changed):
            self.tx = self._build({k: group[k] for k in self._keys})
            self._record_momentum(group)
        if "lr" in changed:
            self._set_lr(group["lr"])
        self._in_force = {k: v for k, v in group.items() if k != "params"}

    def _record_momentum(self, group: dict[str, Any]) -> None:
        """Record a rebuilt transform's momentum (``momentum``, or Adam's ``betas[0]``) in
        the state, where loggers read it (``values_in_force``): a transform built with a
        constant keeps recording the value of the state it was given, so without this the
        state would show the first one. Nothing reads it back (a record for logging)."""
        value = group.get("momentum", None)
        if value is None and isinstance(group.get("betas"), tuple | list):
            value = group["betas"][0]
        if isinstance(value, bool) or not isinstance(value, int | float):
            return
        state = self.opt_state
        for _, path in recorded_paths(state, "momentum"):
            old = get(state, path)
            state = replace(state, path, torch.full((), value, dtype=old.dtype, device=old.device))
        self.opt_state = state

    # ------------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One step of the transform on the parameters' ``.grad``.

        A parameter whose ``.grad`` is ``None`` gets a zero gradient (the chain's state is one
        tree over all parameters; a stateful transform still advances for it, unlike torch,
        which skips it: freeze parameters with ``ft.freeze`` / ``ft.masked`` instead). When
        no parameter has a gradient the step is skipped, as torch does. ``.grad`` itself is
        not modified: the transform works on a copy.

        Args:
            closure: re-evaluates the model and returns the loss (run with grad enabled).

        Returns:
            The closure's loss, or ``None``.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        group = self.param_groups[0]
        params = group["params"]
        if all(p.grad is None for p in params):
            return loss
        self._sync(group)
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        # A copy: the chain may write into donated inputs, and .grad stays the caller's.
        grads = foreach_clone([g.detach() for g in grads])
        tree = self._param_tree(params)
        new, self.opt_state = apply_gradients(
            self.tx, tree, dict(zip(self.names, grads, strict=True)), self.opt_state, donate=True
        )
        for name, p in zip(self.names, params, strict=True):
            if new[name] is not tree[name]:  # a path that did not write in place
                p.detach().copy_(new[name])
        return loss

    # ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """``{"state": {"functrain": <the transform's state>}, "param_groups": [...]}``, the
        group's values with ``params`` as indices (torch's layout). The tensors are the
        state's own (as torch's ``state_dict`` gives its buffers); copy them to keep a
        snapshot across further steps."""
        group = {k: v for k, v in self.param_groups[0].items() if k != "params"}
        group["params"] = list(range(len(self.names)))
        group["param_names"] = list(self.names)
        return {"state": {"functrain": self.opt_state}, "param_groups": [group]}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:  # type: ignore[override]
        """Load what :meth:`state_dict` returned (a copy of its tensors, on the parameters'
        device when they share one).

        Raises:
            ValueError: the state dict is not one of this adapter's, or was saved for other
                parameters or another transform (the message names the first difference).
        """
        try:
            loaded = state_dict["state"]["functrain"]
            (group,) = state_dict["param_groups"]
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(
                "as_torch_optimizer.load_state_dict: expected {'state': {'functrain': ...}, "
                "'param_groups': [one group]} (from FunctrainOptimizer.state_dict), got keys "
                f"{sorted(state_dict) if isinstance(state_dict, Mapping) else type(state_dict)}"
            ) from e
        names = group.get("param_names", self.names)
        if list(names) != self.names:
            raise ValueError(
                "as_torch_optimizer.load_state_dict: saved for parameters "
                f"{list(names)[:5]}..., this optimizer has {self.names[:5]}..."
            )
        values = {k: v for k, v in group.items() if k not in ("params", "param_names")}
        if self._factory is not None:
            self.tx = self._build({k: values[k] for k in self._keys if k in values})
        expected = self.opt_state
        want, got = (optree.tree_structure(t, namespace=NAMESPACE) for t in (expected, loaded))
        if want != got:
            raise ValueError(
                "as_torch_optimizer.load_state_dict: the saved state has another structure "
                f"than this transform's:\n saved: {got}\n  this: {want}"
            )
        paths = leaf_paths(want)
        for path, a, b in zip(
            paths, want.flatten_up_to(expected), got.flatten_up_to(loaded), strict=True
        ):
            if isinstance(a, Tensor) and (not isinstance(b, Tensor) or a.shape != b.shape):
                shape = b.shape if isinstance(b, Tensor) else type(b).__name__
                raise ValueError(
                    f"as_torch_optimizer.load_state_dict: state leaf {path!r} is {shape}, "
                    f"expected shape {tuple(a.shape)}"
                )
        devices = {p.device for p in self.param_groups[0]["params"]}
        device = next(iter(devices)) if len(devices) == 1 else None
        self.opt_state = tree_map(
            lambda t: (
                (t.to(device) if device is not None else t).clone() if isinstance(t, Tensor) else t
            ),
            loaded,
        )
        self.param_groups[0].update(values)
        self._in_force = {k: v for k, v in self.param_groups[0].items() if k != "params"}

    def __repr__(self) -> str:
        values = {k: v for k, v in self.param_groups[0].items() if k != "params"}
        return f"FunctrainOptimizer({len(self.names)} parameters, {values}, tx={self.tx!r})"


# The probe's marker: an lr that a schedule is all but certain not to produce.
_MARKER = 0.000123456789


def _read_back(
    tx: GradientTransformation,
    state: Any,
    params: dict[str, Tensor],
    paths: list[tuple[Path, float]],
) -> list[tuple[Path, float]]:
    """The recorded learning rates that ``tx`` reads back from its state.

    ``LearningRateState.lr`` is settable in the table, but a scheduled lr is re-evaluated
    from the step count, so writing it would be silently undone. One pure update on zero
    gradients, with every candidate set to a marker, tells them apart: a constant lr keeps
    the marker, a schedule replaces it. This runs once, at construction (one update's work
    and one host read per candidate). A transform the probe cannot run (one that needs
    extra arguments) keeps every candidate; so does one whose lr was not updated by the
    probe (inside ``accumulate``, whose inner transform runs at the end of a window).
    """
    if not paths:
        return []
    probe = state
    for path, _ in paths:
        old = get(state, path)
        probe = replace(probe, path, torch.full((), _MARKER, dtype=old.dtype, device=old.device))
    try:
        with torch.no_grad():
            _, after = tx.update({k: torch.zeros_like(p) for k, p in params.items()}, probe, params)
    except Exception:  # noqa: BLE001 - a probe failure only means "cannot tell"
        return paths
    return [(path, value) for path, value in paths if float(get(after, path)) == _MARKER]


def as_torch_optimizer(tx: TxOrFactory, params: Any, **hyperparams: Any) -> FunctrainOptimizer:
    """A ``torch.optim.Optimizer`` running the functrain transform ``tx`` on ``p.grad``, for
    plain PyTorch loops, mmengine / MMDetection Runners and Lightning.

    Args:
        tx: a transform (any chain: ``partition``, ``masked``, ``with_multipliers``,
            ``lion``, schedule-free, ``accumulate``, ...), or a factory
            ``(**hyperparams) -> GradientTransformation`` such as ``ft.sgd`` / ``ft.adamw``,
            built with ``hyperparams`` (its own defaults for the rest).
        params: an iterable of parameters, of ``(name, parameter)`` pairs
            (``model.named_parameters()``, so that path-matching transforms see the names),
            a dict of them, or one param-group dict. Unnamed parameters are called
            ``"0"``, ``"1"``, ... Several groups are refused (see the module docstring).
        **hyperparams: for a factory, its keywords (``lr``, ``momentum``, ``betas``, ...),
            which become ``param_groups[0]`` keys that schedulers may change; for a built
            transform only ``lr`` (set into its state).

    Returns:
        The optimizer. ``param_groups[0]["lr"]`` is the lr in force; a change by a scheduler
        is pushed into the state at the next ``step()``. A factory's other keys rebuild the
        transform when they change (the state is kept). Changing a key a built transform
        closed over, or the lr of a transform with a scheduled lr, is a ``ValueError`` at
        ``step()``.

    Example:
        >>> model = torch.nn.Linear(3, 2)
        >>> opt = as_torch_optimizer(ft.adamw, model.named_parameters(), lr=1e-3)  # doctest: +SKIP
        >>> sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=100)  # doctest: +SKIP
    """
    return FunctrainOptimizer(tx, params, **hyperparams)
