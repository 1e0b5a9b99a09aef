"""Per-parameter learning-rate and weight-decay multipliers (mmengine's ``paramwise_cfg``).

``with_multipliers(tx, m)`` runs ``tx`` with each leaf's ``(lr_mult, decay_mult)``:

    tx = with_multipliers(
        chain(clip(35.0), scale_by_adamw(weight_decay=0.05), scale_by_learning_rate(1e-4)),
        paramwise_multipliers(model, dict(custom_keys={"backbone": dict(lr_mult=0.1)},
                                          norm_decay_mult=0.0)),
    )

The older spelling, a member ``mask_multipliers(m)`` anywhere in the chain
(``chain(..., mask_multipliers(m))``), keeps working and computes the same numbers;
``with_multipliers`` says at the top which transform the multipliers apply to.

The wrapper splits the (device, dtype) groups of ``tx`` further by multiplier value, like
torch param groups, and hands each group's multipliers to the members through the ``TreeInfo``:
``scale_by_learning_rate`` uses ``lr * lr_mult`` (a schedule re-based at ``base * lr_mult``),
``add_decayed_weights`` uses ``weight_decay * decay_mult`` wherever it sits (L2 before the
direction, decoupled after it), and the fused kernels run once per group with that group's
``lr`` and ``weight_decay``. So ``lr_mult`` scales a parameter's whole update and
``decay_mult`` only its weight-decay term, and no pass is spent per distinct value.

:func:`paramwise_multipliers` computes the multipliers from a model exactly as mmengine's
``DefaultOptimWrapperConstructor`` computes its param groups.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from torch import Tensor, nn

from functrain.transforms.base import (
    GradientTransformation,
    as_flat,
    chain,
    chain_multipliers,
    from_flat,
    stateless_foreach,
)
from functrain.transforms.kernel_specs import MultiplierSpec

__all__ = [
    "Multiplier",
    "MultiplierSpec",
    "mask_multipliers",
    "paramwise_multipliers",
    "trainable_parameters",
    "with_multipliers",
]

_NORM_TYPES = (
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.GroupNorm,
    nn.LayerNorm,
)
PARAMWISE_KEYS = (
    "custom_keys",
    "bias_lr_mult",
    "bias_decay_mult",
    "norm_decay_mult",
    "dwconv_decay_mult",
    "flat_decay_mult",
    "bypass_duplicate",
)
_CUSTOM_KEY_FIELDS = ("lr_mult", "decay_mult")


@attrs.frozen
class Multiplier:
    """A parameter's multipliers: ``lr_mult`` on its whole update, ``decay_mult`` on its decay."""

    lr_mult: float = 1.0
    decay_mult: float = 1.0


def _as_multiplier(path: str, value: Any) -> Multiplier:
    if isinstance(value, Multiplier):
        return value
    if isinstance(value, Mapping):
        unknown = set(value) - set(_CUSTOM_KEY_FIELDS)
        if unknown:
            raise ValueError(
                f"multipliers for {path!r}: unknown key(s) {sorted(unknown)}; use lr_mult / decay_mult"
            )
        value = (value.get("lr_mult", 1.0), value.get("decay_mult", 1.0))
    if isinstance(value, tuple | list) and len(value) == 2:
        for name, v in zip(_CUSTOM_KEY_FIELDS, value, strict=True):
            if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
                raise ValueError(
                    f"multipliers for {path!r}: {name} must be a number >= 0, got {v!r}"
                )
        return Multiplier(float(value[0]), float(value[1]))
    raise ValueError(
        f"multipliers for {path!r} must be a Multiplier, a (lr_mult, decay_mult) pair or a dict, "
        f"got {value!r}"
    )


def _spec(multipliers: Mapping[str, Any] | Callable[[str], Any]) -> MultiplierSpec:
    """The per-leaf lookup of ``multipliers`` (a mapping or a callable of the path)."""
    if callable(multipliers) and not isinstance(multipliers, Mapping):
        fn = multipliers
        return MultiplierSpec(lambda path: _as_multiplier(path, fn(path)))
    if isinstance(multipliers, Mapping):
        table = {str(k): _as_multiplier(str(k), v) for k, v in multipliers.items()}
        default = Multiplier()
        return MultiplierSpec(lambda path: table.get(path, default), tuple(table))
    raise ValueError(
        f"multipliers must be a mapping or a callable, got {type(multipliers).__name__}"
    )


def with_multipliers(
    tx: GradientTransformation, multipliers: Mapping[str, Any] | Callable[[str], Any]
) -> GradientTransformation:
    """Run ``tx`` with per-parameter ``lr_mult`` / ``decay_mult`` (mmengine's param groups).

    The same numbers as the member spelling ``chain(tx, mask_multipliers(multipliers))``,
    fused path included (:func:`functrain.apply_gradients` runs torch's fused kernels once
    per multiplier group); the state is that chain's, ``(tx's state, EmptyState())``, so a
    checkpoint of either spelling loads into the other.

    Args:
        tx: the transform the multipliers apply to (typically the whole optimizer chain).
            It must not hold multipliers of its own.
        multipliers: as for :func:`mask_multipliers`: ``{dotted leaf path: Multiplier |
            (lr_mult, decay_mult) | dict(lr_mult=..., decay_mult=...)}`` (unlisted leaves
            get 1, 1) or a callable ``path -> any of those``.

    Raises:
        ValueError: ``tx`` already holds multipliers, or ``multipliers`` is malformed (the
            message names the path).

    Example:
        >>> tx = with_multipliers(sgd(lr=0.02, momentum=0.9, weight_decay=1e-4),
        ...                       {"head.weight": (10.0, 1.0), "head.bias": (10.0, 0.0)})
    """
    inner = as_flat(tx)
    if isinstance(inner.fusion, MultiplierSpec) or chain_multipliers(inner.parts) is not None:
        raise ValueError(
            f"with_multipliers: {inner.name} already holds multipliers (a mask_multipliers "
            "member); give the mapping once, merged"
        )
    flat = as_flat(chain(tx, mask_multipliers(multipliers)))
    shown = "<callable>" if callable(multipliers) else f"{len(multipliers)} paths"
    return from_flat(attrs.evolve(flat, name=f"with_multipliers({inner.name}, {shown})"))


def mask_multipliers(
    multipliers: Mapping[str, Any] | Callable[[str], Any],
) -> GradientTransformation:
    """Declare per-parameter ``lr_mult`` / ``decay_mult`` for the chain this is a member of:
    the member spelling of :func:`with_multipliers`, kept working.

    ``chain(a, b, mask_multipliers(m))`` computes what ``with_multipliers(chain(a, b), m)``
    does; the member's own update is the identity, its position in the chain does not
    matter, and a chain holds at most one.

    Args:
        multipliers: a mapping from dotted leaf path to a :class:`Multiplier`, a
            ``(lr_mult, decay_mult)`` pair or ``dict(lr_mult=..., decay_mult=...)`` (leaves
            not listed get 1, 1; a listed path that is not a leaf is a ``ValueError``), or a
            callable ``path -> any of those``. :func:`paramwise_multipliers` builds the mapping
            from a model and an mmengine ``paramwise_cfg``.

    Returns:
        A stateless member whose update is the identity; see the module docstring for how the
        chain uses it.

    Example:
        >>> tx = chain(sgd(lr=0.02, momentum=0.9, weight_decay=1e-4),
        ...            mask_multipliers({"head.weight": (10.0, 1.0), "head.bias": (10.0, 0.0)}))
    """
    spec = _spec(multipliers)
    return stateless_foreach(lambda updates, params: updates, name="mask_multipliers", fusion=spec)


def trainable_parameters(model: nn.Module) -> dict[str, Tensor]:
    """``{name: parameter}`` for the parameters that require grad, detached.

    Frozen parameters (``requires_grad=False``) are left out, so they get no update and no
    optimizer state, as mmengine's constructor skips them. Shared parameters appear once,
    under their first name.

    Example:
        >>> params = trainable_parameters(model)  # doctest: +SKIP
    """
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def paramwise_multipliers(
    model: nn.Module,
    paramwise_cfg: Mapping[str, Any] | None = None,
    *,
    weight_decay: float | None = None,
    strict: bool = False,
) -> dict[str, Multiplier]:
    """Each trainable parameter's multipliers, as mmengine's ``DefaultOptimWrapperConstructor``.

    Walks the modules like ``DefaultOptimWrapperConstructor.add_params``: ``custom_keys``
    match as substrings of the full dotted name (a top-level parameter is matched as
    ``".weight"``), longest key first then alphabetical, and a match suppresses every other
    rule; otherwise ``bias_lr_mult`` applies to biases outside norm layers, and the decay
    multiplier is the first of norm (BatchNorm/SyncBatchNorm, InstanceNorm, GroupNorm,
    LayerNorm) > bias > depth-wise conv (``Conv2d`` with ``in_channels == groups``) > flat
    (1-d) that is configured, with no compounding. Frozen parameters are skipped.

    Args:
        model: the model.
        paramwise_cfg: mmengine's ``paramwise_cfg`` dict.
        weight_decay: the optimizer's ``weight_decay`` as written in the config (mmengine's
            ``base_wd``); ``None`` when the config gives none. Decay multipliers apply only
            when it is given, and asking for one without it is a ``ValueError``, as in mmengine.
        strict: a custom key that matches no parameter is a ``ValueError`` instead of a warning.

    Returns:
        ``{dotted name: Multiplier}`` for every trainable parameter, the names of
        ``model.named_parameters()``.

    Raises:
        ValueError: an unknown ``paramwise_cfg`` key (with a suggestion), a decay multiplier
            without weight decay, a shared parameter without ``bypass_duplicate=True``.

    Example:
        >>> model = torch.nn.ModuleDict(dict(backbone=torch.nn.Linear(4, 4), head=torch.nn.Linear(4, 2)))
        >>> mults = paramwise_multipliers(model, dict(custom_keys={"backbone": dict(lr_mult=0.1)},
        ...                                            norm_decay_mult=0.0), weight_decay=0.05)
    """
    cfg = dict(paramwise_cfg or {})
    for key in cfg:
        if key not in PARAMWISE_KEYS:
            close = difflib.get_close_matches(key, PARAMWISE_KEYS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"paramwise_cfg: unknown key {key!r}{hint} (accepted: {', '.join(PARAMWISE_KEYS)})"
            )
    custom_keys = cfg.get("custom_keys", {})
    if not isinstance(custom_keys, Mapping):
        raise ValueError(
            f"paramwise_cfg.custom_keys must be a dict, got {type(custom_keys).__name__}"
        )
    for key, value in custom_keys.items():
        if not isinstance(value, Mapping):
            raise ValueError(f"paramwise_cfg.custom_keys.{key} must be a dict, got {value!r}")
        for field in value:
            if field not in _CUSTOM_KEY_FIELDS:
                raise ValueError(
                    f"paramwise_cfg.custom_keys.{key}.{field}: only lr_mult and decay_mult are "
                    "supported per parameter"
                )
            v = value[field]
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise ValueError(
                    f"paramwise_cfg.custom_keys.{key}.{field} must be a number, got {v!r}"
                )
        if "decay_mult" in value and weight_decay is None:
            raise ValueError(
                f"paramwise_cfg.custom_keys.{key}.decay_mult needs the optimizer's weight_decay "
                "(mmengine: base_wd should not be None)"
            )
    for key in ("bias_decay_mult", "norm_decay_mult", "dwconv_decay_mult"):
        if key in cfg and weight_decay is None:
            raise ValueError(
                f"paramwise_cfg.{key} needs the optimizer's weight_decay (mmengine: base_wd should not be None)"
            )
    sorted_keys = sorted(sorted(custom_keys), key=len, reverse=True)
    bias_lr_mult = cfg.get("bias_lr_mult")
    bias_decay_mult = cfg.get("bias_decay_mult")
    norm_decay_mult = cfg.get("norm_decay_mult")
    dwconv_decay_mult = cfg.get("dwconv_decay_mult")
    flat_decay_mult = cfg.get("flat_decay_mult")
    bypass_duplicate = cfg.get("bypass_duplicate", False)
    has_wd = weight_decay is not None

    names = {id(p): name for name, p in model.named_parameters()}
    out: dict[str, Multiplier] = {}
    seen: set[int] = set()
    used_keys: set[str] = set()
    for prefix, module in model.named_modules():
        is_norm = isinstance(module, _NORM_TYPES)
        is_dwconv = isinstance(module, nn.Conv2d) and module.in_channels == module.groups
        for name, param in module.named_parameters(recurse=False):
            full = f"{prefix}.{name}"
            if id(param) in seen:
                if not bypass_duplicate:
                    raise ValueError(
                        f"parameter {full.lstrip('.')!r} is shared with {names[id(param)]!r}; "
                        "set paramwise_cfg bypass_duplicate=True to keep its first occurrence"
                    )
                continue
            seen.add(id(param))
            if not param.requires_grad:
                continue
            lr_mult, decay_mult = 1.0, 1.0
            key = next((k for k in sorted_keys if k in full), None)
            if key is not None:
                used_keys.add(key)
                lr_mult = float(custom_keys[key].get("lr_mult", 1.0))
                if has_wd:
                    decay_mult = float(custom_keys[key].get("decay_mult", 1.0))
            else:
                if name == "bias" and not is_norm and bias_lr_mult is not None:
                    lr_mult = float(bias_lr_mult)
                if has_wd:
                    if is_norm and norm_decay_mult is not None:
                        decay_mult = float(norm_decay_mult)
                    elif name == "bias" and bias_decay_mult is not None:
                        decay_mult = float(bias_decay_mult)
                    elif is_dwconv and dwconv_decay_mult is not None:
                        decay_mult = float(dwconv_decay_mult)
                    elif param.ndim == 1 and flat_decay_mult is not None:
                        decay_mult = float(flat_decay_mult)
            out[names[id(param)]] = Multiplier(lr_mult, decay_mult)
    unused = [k for k in sorted_keys if k not in used_keys]
    if unused:
        message = f"paramwise_cfg.custom_keys: {unused[0]!r} matches no parameter" + (
            f" (+{len(unused) - 1} more)" if len(unused) > 1 else ""
        )
        if strict:
            raise ValueError(message)
        warnings.warn(message, stacklevel=2)
    return out
