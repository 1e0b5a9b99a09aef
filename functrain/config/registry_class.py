"""Registries: the names a config's ``type=`` keys look up, with mmengine's decorator.

A registry maps a name to a factory (a class or a function). User code registers its own
with the decorator, as mmengine code does::

    from functrain.config import OPTIMIZERS

    @OPTIMIZERS.register_module()
    def my_optimizer(lr: float = 1e-3, a: float = 0.5) -> GradientTransformation:
        return functrain.chain(..., functrain.scale_by_learning_rate(lr))

and a config names it: ``optim_wrapper = dict(optimizer=dict(type='my_optimizer', lr=0.01))``.
A module holding such registrations takes effect when it is imported: list it in the
config's ``custom_imports = dict(imports=['my_project.my_optimizer'])``.

Building checks the config before calling the factory: an unknown ``type`` names the
registry and the closest registered names, an unknown key names the accepted ones, a string
where the factory's default is a number is rejected, and every error carries the key path in
the config (``optim_wrapper.optimizer.lr``). All of them are :class:`ConfigError`.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

from functrain.config.errors import ConfigError, error_text, named_key, suggest

__all__ = [
    "Lazy",
    "Registry",
    "accepted_keys",
    "call",
    "check_kwargs",
    "missing_required",
]

T = TypeVar("T")


def accepted_keys(factory: Callable[..., Any]) -> list[str] | None:
    """The keyword arguments ``factory`` accepts, or ``None`` when it takes ``**kwargs``."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _numeric_defaults(factory: Callable[..., Any]) -> dict[str, Any]:
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return {}
    return {
        p.name: p.default
        for p in params
        if isinstance(p.default, int | float) and not isinstance(p.default, bool)
    }


def check_kwargs(
    path: str, what: str, factory: Callable[..., Any], kwargs: Mapping[str, Any]
) -> None:
    """Raise :class:`ConfigError` for a key ``factory`` does not accept (naming the accepted
    ones) or a string given where ``factory``'s default is a number."""
    accepted = accepted_keys(factory)
    if accepted is not None:
        for key in kwargs:
            if key not in accepted:
                raise ConfigError(
                    f"{path}.{key}" if path else key,
                    f"unknown key {key!r} for {what}{suggest(key, accepted)} "
                    f"(accepted: {', '.join(accepted) or 'none'})",
                )
    for key, default in _numeric_defaults(factory).items():
        if isinstance(kwargs.get(key), str):
            raise ConfigError(
                f"{path}.{key}" if path else key,
                f"{what} expects a number for {key!r} (default {default!r}), "
                f"got the string {kwargs[key]!r}",
            )


class Lazy:
    """A registry entry imported on first use (``Lazy("functrain.zoo:Digits")``), so that
    ``import functrain`` stays free of optional dependencies such as scikit-learn."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __repr__(self) -> str:
        return f"Lazy({self.target!r})"

    def resolve(self) -> Any:
        module, attr = self.target.split(":")
        return getattr(importlib.import_module(module), attr)


class Registry:
    """Names -> factories, with mmengine's ``register_module`` decorator.

    Args:
        name: the registry's name, shown in errors (``"OPTIMIZERS"``).
        what: what its entries build, shown in errors (``"optimizer"``).

    Example:
        >>> MODELS = Registry("MODELS", "model")
        >>> @MODELS.register_module()
        ... class Net(torch.nn.Module): ...
        >>> MODELS.get("Net") is Net
        True
    """

    def __init__(self, name: str, what: str) -> None:
        self.name = name
        self.what = what
        self._entries: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"Registry({self.name!r}, {len(self._entries)} entries)"

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def register_module(
        self,
        name: str | list[str] | None = None,
        force: bool = False,
        module: Any = None,
    ) -> Any:
        """Register ``module`` under ``name`` (default: its ``__name__``); as a decorator
        when ``module`` is not given. Re-registering a name raises unless ``force=True``
        (mmengine's rule), except for the same object (a module imported twice)."""
        if name is not None and not isinstance(name, str | list):
            raise TypeError(
                f"{self.name}.register_module: name must be a str or a list, got {name!r}"
            )

        def register(obj: T) -> T:
            names = [name] if isinstance(name, str) else name or [obj.__name__]  # type: ignore[attr-defined]
            for key in names:
                existing = self._entries.get(key)
                if existing is not None and existing is not obj and not force:
                    raise KeyError(
                        f"{key!r} is already registered in {self.name} (as {existing!r}); "
                        "pass force=True to replace it"
                    )
                self._entries[key] = obj
            return obj

        return register if module is None else register(module)

    register = register_module

    def get(self, name: str, path: str = "type") -> Any:
        """The factory registered as ``name``; :class:`ConfigError` naming the registry
        and the closest names when there is none."""
        if not isinstance(name, str):
            if callable(name):  # a class or function given directly, as mmengine allows
                return name
            raise ConfigError(path, f"type must be a name (str), got {name!r}")
        try:
            entry = self._entries[name]
        except KeyError:
            known = sorted(self._entries)
            raise ConfigError(
                path,
                f"unknown {self.what} type {name!r} (registry {self.name})"
                f"{suggest(name, known)} (registered: {', '.join(known) or 'none'})",
            ) from None
        return entry.resolve() if isinstance(entry, Lazy) else entry

    def build(self, cfg: Mapping[str, Any], path: str, **default_args: Any) -> Any:
        """Call the factory named by ``cfg['type']`` with the other keys (and
        ``default_args`` under them), after :func:`check_kwargs`. Errors raised by the
        factory (``ValueError`` / ``TypeError``) come back as :class:`ConfigError` at
        ``path``."""
        if not isinstance(cfg, Mapping):
            raise ConfigError(path, f"expected a dict with a 'type', got {cfg!r}")
        if "type" not in cfg:
            raise ConfigError(
                path, f"needs a 'type' (registry {self.name}: {', '.join(self) or 'none'})"
            )
        kwargs = {k: v for k, v in cfg.items() if k != "type"}
        factory = self.get(cfg["type"], f"{path}.type")
        what = f"{self.what} {cfg['type'] if isinstance(cfg['type'], str) else factory.__name__}"
        check_kwargs(path, what, factory, kwargs)
        for key, value in default_args.items():
            kwargs.setdefault(key, value)
        return call(path, what, factory, kwargs)


def missing_required(factory: Callable[..., Any], kwargs: Mapping[str, Any]) -> list[str]:
    """The keyword arguments ``factory`` requires (no default) that ``kwargs`` lacks."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return []
    return [
        p.name
        for p in params
        if p.default is p.empty
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and p.name not in kwargs
    ]


def call(path: str, what: str, factory: Callable[..., Any], kwargs: Mapping[str, Any]) -> Any:
    """``factory(**kwargs)`` with its ``ValueError`` / ``TypeError`` re-raised as
    :class:`ConfigError` at ``path``; a missing required argument is one at
    ``path.<argument>``, before the call."""
    missing = missing_required(factory, kwargs)
    if missing:
        raise ConfigError(
            f"{path}.{missing[0]}" if path else missing[0],
            f"{what} needs {' and '.join(repr(m) for m in missing)} (required, no default)",
        )
    try:
        return factory(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError, KeyError) as err:
        text = error_text(err)
        key = named_key(text, kwargs)
        where = f"{path}.{key}" if key and path else key or path
        raise ConfigError(where, f"{what}: {text}") from err
