"""``paramwise_cfg`` and optimizer wrapper constructors -> per-parameter multipliers, with
errors at the key in the config and a warning for a ``custom_keys`` entry that matches
nothing."""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from typing import Any

from torch import nn

from functrain.config.errors import ConfigError, check_number, error_text, suggest
from functrain.transforms.multipliers import Multiplier, paramwise_multipliers

__all__ = ["DefaultOptimWrapperConstructor", "check_paramwise_values", "paramwise_error"]


class DefaultOptimWrapperConstructor:
    """mmengine's default constructor, as per-parameter multipliers: ``paramwise_cfg``
    through :func:`functrain.paramwise_multipliers`.

    A custom constructor (the seed's "optimizer wrapper constructor" for special cases such
    as BatchNorm weight decay) subclasses this, registers in ``OPTIM_WRAPPER_CONSTRUCTORS``
    and is named by ``optim_wrapper.constructor``; it returns ``{parameter path:
    Multiplier(lr_mult, decay_mult)}`` for the trainable parameters it wants to change
    (the others keep 1, 1).

    Args:
        optim_wrapper_cfg: the ``optim_wrapper`` dict.
        paramwise_cfg: its ``paramwise_cfg``.

    Example:
        >>> from functrain.config import OPTIM_WRAPPER_CONSTRUCTORS
        >>> @OPTIM_WRAPPER_CONSTRUCTORS.register_module()
        ... class NoDecayOnNorms(DefaultOptimWrapperConstructor):
        ...     def __call__(self, model):
        ...         mults = super().__call__(model)
        ...         for name, module in model.named_modules():
        ...             if isinstance(module, torch.nn.BatchNorm2d):
        ...                 for p in ("weight", "bias"):
        ...                     mults[f"{name}.{p}"] = Multiplier(1.0, 0.0)
        ...         return mults
    """

    def __init__(
        self, optim_wrapper_cfg: Mapping[str, Any], paramwise_cfg: Mapping[str, Any] | None = None
    ) -> None:
        self.optim_wrapper_cfg = dict(optim_wrapper_cfg)
        self.paramwise_cfg = dict(paramwise_cfg or {})
        self.weight_decay = dict(self.optim_wrapper_cfg.get("optimizer", {})).get("weight_decay")

    def __call__(self, model: nn.Module) -> dict[str, Multiplier]:
        with warnings.catch_warnings():
            # Reported below with the key's full path and the model's module names.
            warnings.filterwarnings("ignore", message="paramwise_cfg.custom_keys: ")
            mults = paramwise_multipliers(model, self.paramwise_cfg, weight_decay=self.weight_decay)
        _warn_unmatched_custom_keys(model, self.paramwise_cfg.get("custom_keys") or {})
        return mults


def _warn_unmatched_custom_keys(model: nn.Module, custom_keys: Mapping[str, Any]) -> None:
    """A ``UserWarning`` for each ``custom_keys`` entry that is a substring of no trainable
    parameter's name (mmengine ignores such a key silently, so it is not an error)."""
    fulls = [
        f"{prefix}.{name}"
        for prefix, module in model.named_modules()
        for name, p in module.named_parameters(recurse=False)
        if p.requires_grad
    ]
    modules = [name for name, _ in model.named_modules() if name]
    for key in custom_keys:
        if not any(key in full for full in fulls):
            top = sorted({m.split(".")[0] for m in modules})
            warnings.warn(
                f"optim_wrapper.paramwise_cfg.custom_keys.{key}: {key!r} is a substring of no "
                f"trainable parameter name of {type(model).__name__}, so it changes nothing"
                f"{suggest(key, modules)} (top-level modules: {', '.join(top) or 'none'}; "
                "mmengine ignores it silently)",
                UserWarning,
                stacklevel=3,
            )


def check_paramwise_values(path: str, paramwise_cfg: Any) -> None:
    """Type errors in ``paramwise_cfg`` with their full path (the multiplier builder checks
    the names and the semantics)."""
    if not isinstance(paramwise_cfg, Mapping):
        raise ConfigError(path, f"must be a dict, got {paramwise_cfg!r}")
    for key, value in paramwise_cfg.items():
        if key.endswith("_mult"):
            check_number(f"{path}.{key}", value)
        elif key == "custom_keys":
            if not isinstance(value, Mapping):
                raise ConfigError(f"{path}.custom_keys", f"must be a dict, got {value!r}")
            for name, mults in value.items():
                if not isinstance(mults, Mapping):
                    raise ConfigError(
                        f"{path}.custom_keys.{name}",
                        f"must be a dict like dict(lr_mult=0.1), got {mults!r}",
                    )
                for field, mult in mults.items():
                    check_number(f"{path}.custom_keys.{name}.{field}", mult)


def paramwise_error(path: str, err: BaseException, *, default: bool) -> ConfigError:
    """The multiplier builder's error at its key: ``paramwise_cfg.custom_keys.backbone.
    decay_mult needs ...`` -> path ``optim_wrapper.paramwise_cfg.custom_keys.backbone.
    decay_mult``; ``paramwise_cfg: unknown key 'x'`` -> ``optim_wrapper.paramwise_cfg.x``.
    Other messages stay at ``paramwise_cfg`` (``constructor`` for a custom constructor)."""
    text = error_text(err)
    match = re.match(r"paramwise_cfg((?:\.\S+?)*)(?::\s+|\s+(?=\w))", text)
    if match is None:
        return ConfigError(f"{path}.{'paramwise_cfg' if default else 'constructor'}", text)
    sub, text = match.group(1), text[match.end() :]
    unknown = re.match(r"unknown key '([^']+)'", text)
    if not sub and unknown:
        sub = f".{unknown.group(1)}"
    if "weight_decay" in text and "needs" in text:
        text += "; give the optimizer a weight_decay (e.g. optimizer=dict(..., weight_decay=1e-4))"
    return ConfigError(f"{path}.paramwise_cfg{sub}", text)
