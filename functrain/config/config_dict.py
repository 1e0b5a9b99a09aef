"""``ConfigDict`` (a dict with attribute access) and ``Config`` (a loaded config file: its
values, file name, text, and mmengine-style ``pretty_text`` / ``dump``)."""

from __future__ import annotations

import ast
import difflib
import keyword
import math
import os
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "BASE_KEY",
    "Config",
    "ConfigDict",
    "RESERVED_KEYS",
    "SUPPORTED_EXTENSIONS",
    "join_path",
    "to_plain",
]

BASE_KEY = "_base_"
SUPPORTED_EXTENSIONS = (".py",)
# Top-level names that are Config attributes (the same list mmengine reserves).
RESERVED_KEYS = ("filename", "text", "pretty_text", "env_variables")
_MAX_WIDTH = 100


def _as_config_dict(value: Any) -> Any:
    """Plain dicts (at any depth, inside lists and tuples too) become ConfigDicts.

    Like mmengine, only exact ``dict``/``OrderedDict`` are converted: a user's own mapping
    type keeps its type and behaviour.
    """
    if type(value) in (dict, OrderedDict):
        return ConfigDict(value)
    if type(value) is list:
        return [_as_config_dict(v) for v in value]
    if type(value) is tuple:
        return tuple(_as_config_dict(v) for v in value)
    return value


def to_plain(value: Any) -> Any:
    """Nested mappings / lists / tuples as plain dicts, lists and tuples (a ``Config`` and its
    ``ConfigDict``s become dicts)."""
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in dict.items(value)}
    if isinstance(value, Mapping):
        return {k: to_plain(v) for k, v in value.items()}
    if type(value) in (list, tuple):
        return type(value)(to_plain(v) for v in value)
    return value


def _missing_key_message(name: object, keys: Iterable[object]) -> str:
    names = sorted(str(k) for k in keys)
    close = difflib.get_close_matches(str(name), names, n=3, cutoff=0.6)
    if close:
        hint = "did you mean " + " or ".join(repr(c) for c in close) + "?"
    elif names:
        shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
        hint = f"available keys: {shown}"
    else:
        hint = "it is empty"
    return f"config has no key {name!r}; {hint}"


class ConfigDict(dict):
    """A ``dict`` whose keys are also attributes, recursively.

    Nested plain dicts, and dicts inside lists and tuples, are converted to ``ConfigDict`` when
    stored, so ``cfg.optim_wrapper.optimizer.lr`` and ``cfg.param_scheduler[0].end`` work.
    Item access always works; attribute access works for keys that are not also ``dict``
    methods (``cfg['items']`` reads a key named ``items``). A missing key raises
    ``AttributeError`` (attribute access) or ``KeyError`` (item access) naming the closest
    keys. Otherwise it is a plain ``dict``: ``update`` replaces values (it does not merge).

    Example:
        >>> d = ConfigDict(optimizer=dict(type='SGD', lr=0.02))
        >>> d.optimizer.lr
        0.02
        >>> d.optimizer.momentum = 0.9
        >>> d.to_dict()
        {'optimizer': {'type': 'SGD', 'lr': 0.02, 'momentum': 0.9}}
        >>> d.optimizer.lrr
        Traceback (most recent call last):
            ...
        AttributeError: config has no key 'lrr'; did you mean 'lr'?
    """

    def __init__(self, mapping: Mapping[Any, Any] | Iterable[tuple[Any, Any]] = (), /, **kwargs):
        super().__init__()
        self.update(mapping, **kwargs)

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, _as_config_dict(value))

    def __missing__(self, key: Any) -> Any:
        raise KeyError(_missing_key_message(key, self.keys()))

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails. Dunder names are protocol probes
        # (copy, pickle, numpy): answer fast and never look at the keys.
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        if name in self:
            return dict.__getitem__(self, name)
        raise AttributeError(_missing_key_message(name, self.keys()))

    def __setattr__(self, name: str, value: Any) -> None:
        if hasattr(type(self), name):
            raise AttributeError(
                f"{name!r} is an attribute of {type(self).__name__} and cannot be set as a key "
                f"by attribute; use cfg[{name!r}] = ..."
            )
        self[name] = value

    def __delattr__(self, name: str) -> None:
        if name not in self:
            raise AttributeError(_missing_key_message(name, self.keys()))
        del self[name]

    def __dir__(self) -> list[str]:
        keys = [k for k in self if isinstance(k, str) and k.isidentifier()]
        return sorted(set(super().__dir__()) | set(keys))

    def update(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        """``dict.update`` (values replace, they are not merged), converting plain dicts."""
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def setdefault(self, key: Any, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return dict.__getitem__(self, key)

    def __ior__(self, other: Any) -> ConfigDict:  # type: ignore[override]
        self.update(other)
        return self

    def copy(self) -> ConfigDict:  # type: ignore[override]
        """A shallow copy of the same type."""
        return type(self)(self)

    def to_dict(self) -> dict[Any, Any]:
        """A deep copy made of plain ``dict``, ``list`` and ``tuple`` containers.

        Example:
            >>> type(ConfigDict(a=dict(b=[dict(c=1)])).to_dict()['a']['b'][0])
            <class 'dict'>
        """
        return to_plain(self)


class Config(ConfigDict):
    """A whole config: a :class:`ConfigDict` of the top-level variables, plus where it came from.

    Args:
        cfg_dict: the top-level keys and values (default: empty).
        filename: the file it was loaded from, if any.
        text: the source text (of the file and its bases), if any.
        env_variables: environment variables substituted while loading (``{{$NAME:...}}``).

    Example:
        >>> cfg = Config(dict(optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.02))))
        >>> cfg.optim_wrapper.optimizer.lr
        0.02
        >>> print(cfg.pretty_text)
        optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.02))
        <BLANKLINE>
    """

    def __init__(
        self,
        cfg_dict: Mapping[Any, Any] | None = None,
        *,
        filename: str | os.PathLike[str] | None = None,
        text: str | None = None,
        env_variables: Mapping[str, str] | None = None,
    ):
        cfg_dict = {} if cfg_dict is None else cfg_dict
        if not isinstance(cfg_dict, Mapping):
            raise TypeError(f"Config expects a mapping, got {type(cfg_dict).__name__}")
        for key in cfg_dict:
            if key in RESERVED_KEYS:
                raise ValueError(
                    f"top-level config key {key!r} is reserved (it is a Config attribute: "
                    f"{', '.join(RESERVED_KEYS)}); rename the variable"
                )
        object.__setattr__(self, "_filename", None if filename is None else os.fspath(filename))
        object.__setattr__(self, "_text", text or "")
        object.__setattr__(self, "_env_variables", dict(env_variables or {}))
        super().__init__(cfg_dict)

    @classmethod
    def fromfile(
        cls,
        filename: str | os.PathLike[str],
        cfg_options: Mapping[str, Any] | Sequence[str] | None = None,
    ) -> Config:
        """Load a Python config file (see :func:`load_config`), then apply ``cfg_options``.

        Args:
            filename: path of a ``.py`` config file. Loading it executes it.
            cfg_options: overrides, either parsed (``{'optim_wrapper.optimizer.lr': 0.01}``)
                or as ``'key=value'`` strings (parsed with :func:`parse_cfg_options`);
                applied with :func:`merge_from_dict`.

        Example:
            >>> cfg = Config.fromfile('configs/sgd.py', ['optim_wrapper.optimizer.lr=0.01'])
            ... # doctest: +SKIP
        """
        from functrain.config.file import load_config
        from functrain.config.overrides import merge_from_dict, parse_cfg_options

        cfg = load_config(filename)
        if cfg_options:
            if not isinstance(cfg_options, Mapping):
                cfg_options = parse_cfg_options(cfg_options)
            cfg = merge_from_dict(cfg, cfg_options)
        return cfg

    @property
    def filename(self) -> str | None:
        """The (absolute) path of the file this config was loaded from, or None."""
        return self._filename

    @property
    def text(self) -> str:
        """The source of the file and of its bases (each preceded by its path), or ''."""
        return self._text

    @property
    def env_variables(self) -> dict[str, str]:
        """Environment variables that ``{{$NAME:default}}`` substitutions read."""
        return dict(self._env_variables)

    @property
    def pretty_text(self) -> str:
        """The config as a Python config file that loads back equal (one ``key = value``
        line per top-level key, long values split over lines).

        Raises:
            ValueError: naming the key path, when a value is not a literal that a Python file
                can hold (None, bool, int, float, str, bytes, list, tuple, dict), or when a
                top-level key is not a Python identifier.
        """
        lines = []
        for key, value in self.items():
            if not (isinstance(key, str) and key.isidentifier()) or keyword.iskeyword(key):
                raise ValueError(
                    f"cannot write top-level key {key!r} to a Python config file: it is not a "
                    "valid Python variable name"
                )
            if key.startswith("__") or key == BASE_KEY:
                raise ValueError(
                    f"cannot write top-level key {key!r} to a Python config file: the loader "
                    "would not read it back as a value"
                )
            lines.append(f"{key} = {_format_block(value, key, 0, len(key) + 3)}")
        text = "\n".join(lines) + "\n"
        ast.parse(text)  # what we write must at least be Python
        return text

    def dump(self, file: str | os.PathLike[str] | None = None) -> str | None:
        """Write :attr:`pretty_text` to ``file`` (a ``.py`` path, written atomically), or
        return it when ``file`` is None.

        Example:
            >>> from functrain.config import load_config
            >>> cfg = Config(dict(lr=0.01, param_scheduler=[dict(type='LinearLR', end=500)]))
            >>> cfg.dump('/tmp/functrain_dump_example.py')
            >>> load_config('/tmp/functrain_dump_example.py') == cfg
            True
        """
        text = self.pretty_text  # raises before anything is written
        if file is None:
            return text
        path = os.fspath(file)
        if os.path.splitext(path)[1] not in SUPPORTED_EXTENSIONS:
            raise ValueError(
                f"cannot dump a config to {path!r}: only Python config files "
                f"({', '.join(map(repr, SUPPORTED_EXTENSIONS))}) are supported"
            )
        from functrain.checkpoint import atomic_write_text

        atomic_write_text(text, path)
        return None

    def copy(self) -> Config:  # type: ignore[override]
        """A shallow copy that keeps :attr:`filename`, :attr:`text` and the env variables."""
        return Config(
            self, filename=self._filename, text=self._text, env_variables=self._env_variables
        )

    def __repr__(self) -> str:
        return f"Config (path: {self._filename}): {dict.__repr__(self)}"


def _dict_uses_call_syntax(d: Mapping[Any, Any]) -> bool:
    return all(isinstance(k, str) and k.isidentifier() and not keyword.iskeyword(k) for k in d)


def _format_scalar(value: Any, path: str) -> str:
    if value is None or isinstance(value, bool):
        return repr(value)
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "float('nan')"
        if math.isinf(value):
            return "float('inf')" if value > 0 else "float('-inf')"
        return float.__repr__(value)
    if isinstance(value, str):
        return str.__repr__(value)
    if isinstance(value, bytes):
        return bytes.__repr__(value)
    raise ValueError(
        f"cannot write {path} = {value!r} (type {type(value).__name__}) to a Python config "
        "file: only None, bool, int, float, str, bytes, list, tuple and dict values can be "
        "written; store a name (e.g. type='ReLU') instead of the object"
    )


def join_path(path: str, key: Any) -> str:
    """``path.key`` (``key`` alone at the top level): the dotted path of a key, for errors."""
    return f"{path}.{key}" if path else str(key)


def _format_inline(value: Any, path: str) -> str:
    if isinstance(value, dict):
        if _dict_uses_call_syntax(value):
            items = ", ".join(
                f"{k}={_format_inline(v, join_path(path, k))}" for k, v in dict.items(value)
            )
            return f"dict({items})"
        items = ", ".join(
            f"{_format_scalar(k, path + ' (a key)')}: {_format_inline(v, join_path(path, k))}"
            for k, v in dict.items(value)
        )
        return "{" + items + "}"
    if type(value) in (list, tuple):
        items = [_format_inline(v, f"{path}[{i}]") for i, v in enumerate(value)]
        if type(value) is tuple:
            return "(" + items[0] + ",)" if len(items) == 1 else "(" + ", ".join(items) + ")"
        return "[" + ", ".join(items) + "]"
    return _format_scalar(value, path)


def _format_block(value: Any, path: str, indent: int, head: int) -> str:
    """``value`` as Python source starting at column ``indent + head``; containers that do not
    fit on the line are split, one item per line, with a trailing comma."""
    inline = _format_inline(value, path)
    is_container = isinstance(value, dict) or type(value) in (list, tuple)
    if indent + head + len(inline) + 1 <= _MAX_WIDTH or not is_container or not value:
        return inline
    pad = " " * (indent + 4)
    lines = []
    if isinstance(value, dict):
        call = _dict_uses_call_syntax(value)
        open_, close = ("dict(", ")") if call else ("{", "}")
        for k, v in dict.items(value):
            prefix = f"{k}=" if call else f"{_format_scalar(k, path + ' (a key)')}: "
            sub = _format_block(v, join_path(path, k), indent + 4, len(prefix))
            lines.append(f"{pad}{prefix}{sub},")
    else:
        open_, close = ("(", ")") if type(value) is tuple else ("[", "]")
        for i, v in enumerate(value):
            lines.append(f"{pad}{_format_block(v, f'{path}[{i}]', indent + 4, 0)},")
    return open_ + "\n" + "\n".join(lines) + "\n" + " " * indent + close
