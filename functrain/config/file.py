"""mmengine-compatible Python config files, ``--cfg-options`` and attribute-access dicts.

A config file is a Python file whose top-level variables are the config::

    # configs/sgd_clip.py
    _base_ = ['./_base_/schedule_1x.py', './_base_/default_runtime.py']

    optim_wrapper = dict(
        _delete_=True,
        type='OptimWrapper',
        optimizer=dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=0.0001),
        clip_grad=dict(max_norm=35, norm_type=2),
    )
    lr = _base_.optim_wrapper.optimizer.lr  # the inherited values are readable as ``_base_``

:func:`load_config` gives the same values as mmengine 0.10.7's ``Config.fromfile``:

- **Variables.** Every top-level name becomes a key, except names starting with ``__``,
  modules (``import math``) and functions (``def``/``lambda``, which may be used as helpers
  while the file runs). Everything else is kept as it is, classes included (as in mmengine).
- **Inheritance.** ``_base_`` is a path or a list of paths, relative to the directory of the
  file that names them. Bases are loaded recursively and combined in order; a top-level key
  defined by two bases is an error (mmengine's "Duplicate key is not allowed among bases").
  The file's own variables are then merged over the bases: a dict merges key by key,
  recursively; a dict with ``_delete_=True`` replaces the inherited value instead; any other
  value (lists included) replaces it. ``_delete_`` never appears in the result.
- **Reading the bases.** While the file runs, the name ``_base_`` holds the merged values of
  its bases (a :class:`ConfigDict`), so ``_base_.model.backbone`` or
  ``_base_.optim_wrapper.optimizer.lr * 2`` work as in mmengine; changes made through
  ``_base_`` apply to the inherited values, as in mmengine. Other variables of a base file
  (helpers, imports) are not visible.
- **Substitutions** (as mmengine): ``{{ fileDirname }}``, ``{{ fileBasename }}``,
  ``{{ fileBasenameNoExtension }}`` and ``{{ fileExtname }}`` are replaced by the file's
  directory and names, ``{{$NAME:default}}`` by the environment variable ``NAME`` (or the
  default), in the text of the file before it runs.

Not supported, each with an error that says so: mmengine's ``{{_base_.xxx}}`` text
substitution (write ``_base_.xxx``, without braces), the new-style "lazy import" configs
(``with read_base(): from .base import *``), YAML/JSON config files and package-scoped bases
(``'mmdet::configs/...'``). A file that imports non-standard-library modules is simply run
(mmengine switches to its lazy-import mode there); modules are not config values.
``custom_imports`` is returned as a value: importing those modules is the builder's job.

**Security: a Python config file is code.** Loading one executes it with the full rights
of the process, exactly like ``import``: load only files you trust.

Command-line overrides use mmengine's ``--cfg-options`` syntax: :func:`parse_cfg_options`
turns ``['optim_wrapper.optimizer.lr=0.01', 'param_scheduler.0.end=10']`` into values
(``1`` -> int, ``0.1`` -> float, ``true``/``False`` -> bool, ``None``, ``a,b`` -> list,
``[a,(b,c)]`` -> nested lists/tuples, quotes stripped) and :func:`merge_from_dict` applies
them (dotted keys create nested dicts; an integer component indexes a list).
"""

from __future__ import annotations

import ast
import difflib
import keyword
import math
import os
import re
import traceback
import types
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "Config",
    "ConfigDict",
    "ConfigFileError",
    "load_config",
    "merge_from_dict",
    "parse_cfg_options",
]

BASE_KEY = "_base_"
DELETE_KEY = "_delete_"
_DEPRECATION_KEY = "_deprecation_"
# Top-level names that are Config attributes (the same list mmengine reserves).
RESERVED_KEYS = ("filename", "text", "pretty_text", "env_variables")
SUPPORTED_EXTENSIONS = (".py",)
_MAX_WIDTH = 100

_BASE_VAR_RE = re.compile(r"\{\{\s*" + BASE_KEY + r"\.([\w.]+)\s*\}\}")
_ENV_VAR_RE = re.compile(r"\{\{['\"]?\s*\$(\w+)\s*:\s*(\S*?)\s*['\"]?\}\}")
_PREDEFINED = ("fileDirname", "fileBasename", "fileBasenameNoExtension", "fileExtname")


class ConfigFileError(ValueError):
    """A config file or a ``--cfg-options`` item cannot be used: bad ``_base_``, a cycle,
    duplicate keys among bases, unsupported syntax, an exception raised while the file ran, a
    malformed option, an option path through a non-container or past the end of a list, or a
    misspelled top-level key. The message names the file (and line) or the option.

    Missing files raise ``FileNotFoundError`` and invalid Python ``SyntaxError`` instead,
    both naming the file."""


# --------------------------------------------------------------------------------------
# ConfigDict / Config
# --------------------------------------------------------------------------------------


def _convert(value: Any) -> Any:
    """Plain dicts (at any depth, inside lists and tuples too) become ConfigDicts.

    Like mmengine, only exact ``dict``/``OrderedDict`` are converted: a user's own mapping
    type keeps its type and behaviour.
    """
    if type(value) in (dict, OrderedDict):
        return ConfigDict(value)
    if type(value) is list:
        return [_convert(v) for v in value]
    if type(value) is tuple:
        return tuple(_convert(v) for v in value)
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
        super().__setitem__(key, _convert(value))

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


# --------------------------------------------------------------------------------------
# Writing Python literals (pretty_text)
# --------------------------------------------------------------------------------------


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


def _join_path(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _format_inline(value: Any, path: str) -> str:
    if isinstance(value, dict):
        if _dict_uses_call_syntax(value):
            items = ", ".join(
                f"{k}={_format_inline(v, _join_path(path, k))}" for k, v in dict.items(value)
            )
            return f"dict({items})"
        items = ", ".join(
            f"{_format_scalar(k, path + ' (a key)')}: {_format_inline(v, _join_path(path, k))}"
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
            sub = _format_block(v, _join_path(path, k), indent + 4, len(prefix))
            lines.append(f"{pad}{prefix}{sub},")
    else:
        open_, close = ("(", ")") if type(value) is tuple else ("[", "]")
        for i, v in enumerate(value):
            lines.append(f"{pad}{_format_block(v, f'{path}[{i}]', indent + 4, 0)},")
    return open_ + "\n" + "\n".join(lines) + "\n" + " " * indent + close


# --------------------------------------------------------------------------------------
# Merging
# --------------------------------------------------------------------------------------


def _clean(value: Any) -> Any:
    """A fresh copy of the containers in ``value`` (leaves shared) without ``_delete_`` keys.

    Fresh containers keep two keys of a result from sharing one dict (a child that wrote
    ``a = _base_.model`` would otherwise alias ``a`` and ``model``).
    """
    if isinstance(value, dict):
        out = ConfigDict()
        for k, v in dict.items(value):
            if k != DELETE_KEY:
                dict.__setitem__(out, k, _clean(v))
        return out
    if type(value) in (list, tuple):
        return type(value)(_clean(v) for v in value)
    return value


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"a {type(value).__name__} ({text})"


def _as_index(key: Any) -> int | None:
    if isinstance(key, int) and not isinstance(key, bool):
        return key if key >= 0 else None
    if isinstance(key, str) and key.isdigit():
        return int(key)
    return None


def _merge(a: Mapping[Any, Any], b: Any, path: str, allow_list_keys: bool, where: str) -> Any:
    """``b`` updated with ``a`` (mmengine's ``Config._merge_a_into_b``), without mutating either.

    ``where`` prefixes error messages (a file name, or the option being applied).
    """
    if isinstance(b, (list, tuple)):
        out = list(b)
        valid = f"valid indices 0..{len(out) - 1}" if out else "it is empty"
        for k, v in a.items():
            if k == DELETE_KEY:
                continue
            full = _join_path(path, k)
            idx = _as_index(k)
            if idx is None:
                raise ConfigFileError(
                    f"{where}: cannot set {full!r}: {path!r} is a list; index it with an "
                    f"integer ({valid})"
                )
            if idx >= len(out):
                raise ConfigFileError(
                    f"{where}: index {idx} in {full!r} is out of range: {path!r} is a list of "
                    f"{len(out)} element(s) ({valid})"
                )
            out[idx] = _merge_value(v, out[idx], full, allow_list_keys, where)
        return tuple(out) if type(b) is tuple else out
    out = ConfigDict()
    for k, v in dict.items(b):
        dict.__setitem__(out, k, v)
    for k, v in a.items():
        if k == DELETE_KEY:
            continue
        full = _join_path(path, k)
        if k in out:
            out[k] = _merge_value(v, out[k], full, allow_list_keys, where)
        else:
            out[k] = _clean(v)
    return out


def _merge_value(v: Any, old: Any, full: str, allow_list_keys: bool, where: str) -> Any:
    if not isinstance(v, dict) or v.get(DELETE_KEY, False):
        return _clean(v)
    mergeable = (dict, list, tuple) if allow_list_keys else (dict,)
    if isinstance(old, mergeable):
        return _merge(v, old, full, allow_list_keys, where)
    if allow_list_keys:  # an option: the key path goes through a leaf
        raise ConfigFileError(
            f"{where}: cannot set keys inside {full!r}: it is {_describe(old)}, not a dict; "
            f"set {full!r} itself instead"
        )
    raise ConfigFileError(
        f"{where}: {full!r} is a dict in this config but {_describe(old)} in its _base_ "
        f"config, so the two cannot be merged; add {DELETE_KEY}=True to the dict to replace "
        "the inherited value"
    )


def merge_from_dict(cfg: Mapping[str, Any], options: Mapping[str, Any]) -> Config:
    """A new config: ``cfg`` with ``options`` applied (mmengine's ``--cfg-options``).

    Each key is a dotted path; missing dicts along it are created. A path component that is
    an integer indexes into a list (or tuple) (mmengine's ``allow_list_keys=True``). A dict
    value merges into a dict already there (``_delete_=True`` replaces it instead); any other
    value replaces. Options are applied in order. ``cfg`` is not modified.

    Args:
        cfg: a :class:`Config` (its filename is kept) or any mapping.
        options: ``{dotted key: value}``, e.g. from :func:`parse_cfg_options`.

    Raises:
        ConfigFileError: (a ValueError) naming the option, when an index is out of range or
            not an integer, or the path runs through a value that is not a dict or list.

    Example:
        >>> cfg = Config(dict(optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.02)),
        ...                   param_scheduler=[dict(type='LinearLR', end=500)]))
        >>> new = merge_from_dict(cfg, {'optim_wrapper.optimizer.lr': 0.01,
        ...                             'param_scheduler.0.end': 10, 'work_dir': 'runs/a'})
        >>> new.optim_wrapper.optimizer.lr, new.param_scheduler[0].end, new.work_dir
        (0.01, 10, 'runs/a')
    """
    if not isinstance(options, Mapping):
        raise TypeError(
            f"options must be a mapping of dotted keys to values, got {type(options).__name__}; "
            "parse 'key=value' strings with parse_cfg_options first"
        )
    # Fresh containers throughout: the result shares no dict or list with ``cfg``.
    merged: Any = _clean(dict(cfg.items()))
    for full_key, value in options.items():
        if not isinstance(full_key, str):
            raise TypeError(f"option keys must be strings, got {full_key!r}")
        parts = full_key.split(".")
        if not all(parts):
            raise ConfigFileError(
                f"option {full_key!r}: empty key component; write dotted keys like "
                "'optim_wrapper.optimizer.lr'"
            )
        nested: Any = value
        for part in reversed(parts):
            nested = {part: nested}
        merged = _merge(nested, merged, "", True, f"option {full_key!r}")
    if isinstance(cfg, Config):
        return Config(merged, filename=cfg.filename, text=cfg.text, env_variables=cfg.env_variables)
    return Config(merged)


# --------------------------------------------------------------------------------------
# --cfg-options parsing
# --------------------------------------------------------------------------------------


def _parse_scalar(val: str) -> Any:
    try:
        return int(val)
    except ValueError:
        pass
    try:
        return float(val)
    except ValueError:
        pass
    if val.lower() in ("true", "false"):
        return val.lower() == "true"
    if val == "None":
        return None
    return val


def _next_comma(text: str) -> int:
    depth = {"(": 0, "[": 0}
    closing = {")": "(", "]": "["}
    for idx, char in enumerate(text):
        if char in depth:
            depth[char] += 1
        elif char in closing:
            depth[closing[char]] -= 1
        elif char == "," and not any(depth.values()):
            return idx
    return len(text)


def _parse_value(val: str, item: str) -> Any:
    # mmengine strips quotes and then deletes *every* space ('my dir' -> 'mydir'); functrain
    # strips spaces only around values and elements and keeps the ones inside.
    val = val.strip().strip("'\"").strip()
    if val.count("(") != val.count(")") or val.count("[") != val.count("]"):
        if val.startswith(("(", "[")) or "," in val:
            raise ConfigFileError(f"--cfg-options item {item!r}: unbalanced brackets in {val!r}")
    is_tuple = False
    if val.startswith("(") and val.endswith(")"):
        is_tuple, val = True, val[1:-1]
    elif val.startswith("[") and val.endswith("]"):
        val = val[1:-1]
    elif "," not in val:
        return _parse_scalar(val)
    elif _next_comma(val) == len(val):
        # Commas only inside brackets of something that is not a list or a tuple: a call such
        # as dict(type='Adam', lr=0.01), which this syntax (mmengine's) cannot express.
        raise ConfigFileError(
            f"--cfg-options item {item!r}: cannot parse {val!r}; values are numbers, strings, "
            "None, true/false, lists [a,b] and tuples (a,b): set a dict's keys one at a time "
            "(e.g. optim_wrapper.optimizer.type=Adam optim_wrapper.optimizer.lr=0.01)"
        )
    values = []
    while val.strip():
        idx = _next_comma(val)
        values.append(_parse_value(val[:idx], item))
        val = val[idx + 1 :]
    return tuple(values) if is_tuple else values


def parse_cfg_options(items: Sequence[str]) -> dict[str, Any]:
    """Parse ``--cfg-options`` items (``'key=value'`` strings) like mmengine's ``DictAction``.

    Each item splits at its first ``=``. Values: ``'1'`` -> 1, ``'0.1'``/``'1e-3'`` -> float,
    ``'true'``/``'False'`` -> bool (any case), ``'None'`` -> None, ``'a,b,c'`` -> a list,
    ``'[a,b]'`` -> a list and ``'(a,b)'`` -> a tuple, nested (``'[(1,2),[a,b]]'``); quotes
    around values and elements are stripped; anything else stays a string. A later item for
    the same key wins. Unlike mmengine, spaces inside a value are kept (``'a b'`` stays
    ``'a b'``; mmengine gives ``'ab'``).

    Raises:
        ConfigFileError: (a ValueError) naming the item, when it has no ``=``, an empty key, or
            unbalanced brackets.

    Example:
        >>> parse_cfg_options(['optim_wrapper.optimizer.lr=0.01', 'model.out_indices=(1,2)',
        ...                    'train_cfg.by_epoch=False', 'default_hooks.logger=None'])
        ... # doctest: +NORMALIZE_WHITESPACE
        {'optim_wrapper.optimizer.lr': 0.01, 'model.out_indices': (1, 2),
         'train_cfg.by_epoch': False, 'default_hooks.logger': None}
    """
    if isinstance(items, (str, bytes)):
        raise TypeError(f"pass a list of 'key=value' strings, not one string: {items!r}")
    options: dict[str, Any] = {}
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"--cfg-options items must be strings, got {item!r}")
        if "=" not in item:
            raise ConfigFileError(
                f"--cfg-options item {item!r} has no '='; write KEY=VALUE, e.g. "
                "'optim_wrapper.optimizer.lr=0.01'"
            )
        key, val = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigFileError(f"--cfg-options item {item!r} has an empty key; write KEY=VALUE")
        options[key] = _parse_value(val, item)
    return options


# --------------------------------------------------------------------------------------
# Top-level key validation
# --------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------
# Loading files
# --------------------------------------------------------------------------------------


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _substitute(text: str, path: str, env_used: dict[str, str]) -> str:
    """mmengine's predefined-variable and environment-variable substitutions."""
    base = os.path.basename(path)
    values = {
        "fileDirname": os.path.dirname(path),
        "fileBasename": base,
        "fileBasenameNoExtension": os.path.splitext(base)[0],
        "fileExtname": os.path.splitext(path)[1],
    }
    for name in _PREDEFINED:
        value = values[name].replace("\\", "/")
        text = re.sub(r"\{\{\s*" + name + r"\s*\}\}", lambda _m, v=value: v, text)

    def env(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        value = os.environ.get(name, default)
        if name in os.environ:
            env_used[name] = value
        if not value:
            raise ConfigFileError(
                f"{path}, line {_line_of(text, match.start())}: environment variable "
                f"{name!r} is not set and {match.group(0)!r} gives no default; set {name} or "
                f"write {{{{${name}:default}}}}"
            )
        return value

    return _ENV_VAR_RE.sub(env, text)


def _check_supported_syntax(tree: ast.Module, path: str) -> None:
    for node in tree.body:
        if isinstance(node, ast.With):
            for item in node.items:
                expr = item.context_expr
                func = getattr(expr, "func", None)
                name = getattr(func, "id", None) or getattr(func, "attr", None)
                if name == "read_base":
                    raise ConfigFileError(
                        f"{path}, line {node.lineno}: new-style (lazy-import) configs with "
                        "`with read_base():` are not supported; inherit with "
                        "`_base_ = ['path/to/base.py']` instead"
                    )
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            raise ConfigFileError(
                f"{path}, line {node.lineno}: relative imports (new-style lazy-import configs) "
                "are not supported; inherit with `_base_ = ['path/to/base.py']` instead"
            )


def _base_specs(tree: ast.Module, path: str) -> tuple[list[str], ast.Module]:
    """The ``_base_`` paths of a file, and its AST without the ``_base_`` assignment."""
    body, specs, seen = [], None, None
    for node in tree.body:
        is_base = (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id == BASE_KEY
        )
        if not is_base:
            body.append(node)
            continue
        if seen is not None:
            raise ConfigFileError(
                f"{path}, line {node.lineno}: `{BASE_KEY}` is assigned twice (first on line "
                f"{seen}); list all bases in one assignment"
            )
        seen = node.lineno
        try:
            # The base list is read before the file runs (it decides what `_base_` holds),
            # so it must be computable on its own: literals, or simple expressions of them.
            value = eval(compile(ast.Expression(node.value), path, "eval"), {})  # noqa: S307
        except Exception as e:
            raise ConfigFileError(
                f"{path}, line {node.lineno}: cannot evaluate `{BASE_KEY}` on its own "
                f"({type(e).__name__}: {e}); write a string or a list of strings"
            ) from e
        specs = [value] if isinstance(value, str) else value
        if not isinstance(specs, (list, tuple)) or not all(isinstance(s, str) for s in specs):
            raise ConfigFileError(
                f"{path}, line {node.lineno}: `{BASE_KEY}` must be a path or a list of paths "
                f"(strings), got {value!r}"
            )
    module = ast.Module(body=body, type_ignores=tree.type_ignores)
    return list(specs or []), module


def _resolve_base(spec: str, path: str) -> str:
    if "::" in spec:
        raise ConfigFileError(
            f"{path}: package-scoped base config {spec!r} is not supported; copy the base file "
            "next to your config and name it by a relative path"
        )
    resolved = os.path.normpath(os.path.join(os.path.dirname(path), spec))
    ext = os.path.splitext(resolved)[1]
    if ext not in SUPPORTED_EXTENSIONS:
        raise ConfigFileError(
            f"{path}: base config {spec!r} has extension {ext!r}; only Python config files "
            f"({', '.join(map(repr, SUPPORTED_EXTENSIONS))}) are supported"
        )
    if not os.path.isfile(resolved):
        hint = ""
        directory = os.path.dirname(resolved)
        if os.path.isdir(directory):
            siblings = [f for f in os.listdir(directory) if f.endswith(".py")]
            close = difflib.get_close_matches(os.path.basename(resolved), siblings, n=1)
            if close:
                hint = f"; did you mean {os.path.join(os.path.dirname(spec), close[0])!r}?"
        raise FileNotFoundError(
            f"base config {spec!r} referenced by `{BASE_KEY}` in {path} does not exist "
            f"(looked for {resolved}){hint}"
        )
    return resolved


def _run(code: types.CodeType, namespace: dict[str, Any], path: str) -> None:
    try:
        exec(code, namespace)  # noqa: S102  (a config file is code; see the module docstring)
    except Exception as e:
        line = None
        for frame in traceback.extract_tb(e.__traceback__):
            if frame.filename == path:
                line = frame.lineno
        where = f"{path}, line {line}" if line is not None else path
        raise ConfigFileError(
            f"error while executing config file {where}: {type(e).__name__}: {e}"
        ) from e


def _load(
    path: str, chain: tuple[str, ...], texts: list[str], env_used: dict[str, str]
) -> ConfigDict:
    real = os.path.realpath(path)
    if real in chain:
        loop = [*chain[chain.index(real) :], real]
        raise ConfigFileError("circular _base_ inheritance: " + " -> ".join(loop))
    with open(path, encoding="utf-8") as f:
        source = f.read()
    text = _substitute(source, path, env_used)
    match = _BASE_VAR_RE.search(text)
    if match:
        raise ConfigFileError(
            f"{path}, line {_line_of(text, match.start())}: {match.group(0)!r} substitution is "
            f"not supported; write `_base_.{match.group(1)}` (a Python expression reading the "
            "inherited value), repeat the value, or import it from a Python module"
        )
    try:
        tree = ast.parse(text, filename=path)
    except SyntaxError as e:
        # str() appends "(<file name>, line <n>)" to this message.
        raise SyntaxError(
            f"invalid syntax in config file {path}: {e.msg}",
            (path, e.lineno, e.offset, e.text),
        ) from None
    _check_supported_syntax(tree, path)
    specs, module = _base_specs(tree, path)

    base = ConfigDict()
    defined_in: dict[Any, str] = {}
    for spec in specs:
        base_path = _resolve_base(spec, path)
        sub = _load(base_path, (*chain, real), texts, env_used)
        duplicates = sorted((k for k in sub if k in base), key=str)
        if duplicates:
            where = ", ".join(f"{k!r} (also in {defined_in[k]})" for k in duplicates)
            raise ConfigFileError(
                f"{path}: duplicate key is not allowed among bases: {base_path} defines {where}; "
                "define each top-level key in one base only"
            )
        for k, v in dict.items(sub):
            dict.__setitem__(base, k, v)
            defined_in[k] = base_path

    namespace: dict[str, Any] = {BASE_KEY: base}
    _run(compile(module, path, "exec"), namespace, path)
    own = {
        k: v
        for k, v in namespace.items()
        if k != BASE_KEY
        and not k.startswith("__")
        and not isinstance(v, (types.FunctionType, types.ModuleType))
    }
    if _DEPRECATION_KEY in own:
        info = own.pop(_DEPRECATION_KEY)
        message = f"The config file {path} will be deprecated in the future."
        if isinstance(info, Mapping) and "expected" in info:
            message += f" Please use {info['expected']} instead."
        if isinstance(info, Mapping) and "reference" in info:
            message += f" More information can be found at {info['reference']}"
        warnings.warn(message, DeprecationWarning, stacklevel=4)
    for key in own:
        if key in RESERVED_KEYS:
            raise ConfigFileError(
                f"{path}: top-level variable {key!r} is reserved (a Config attribute: "
                f"{', '.join(RESERVED_KEYS)}); rename it"
            )
    texts.append(f"{path}\n{source}")
    # `base` (possibly changed through `_base_`) is merged under the file's own values.
    return _merge(own, _clean(base), "", False, path)


def load_config(path: str | os.PathLike[str]) -> Config:
    """Load a Python config file, with ``_base_`` inheritance (mmengine's semantics).

    **Loading executes the file** (and its bases) as Python code; load only trusted files.
    See the module docstring for the format: top-level variables (minus ``__names``, modules
    and functions), ``_base_`` paths relative to the file, bases combined without duplicate
    keys, the file merged over them (``_delete_=True`` replaces instead of merging), and the
    bases' values readable while the file runs as ``_base_`` (``_base_.model.backbone``).
    Other variables of the base files are not visible to the file.

    Args:
        path: a ``.py`` file.

    Returns:
        a :class:`Config` with :attr:`Config.filename` set to the absolute path.

    Raises:
        ConfigFileError: unsupported extension or syntax, ``_base_`` cycles, duplicate keys
            among bases, a dict merged over a non-dict, an error raised by the file's code.
        FileNotFoundError: the file, or a base it names (the message names both the missing
            path and the file that referenced it).
        SyntaxError: naming the file and the line.

    Example:
        >>> cfg = load_config('configs/faster_rcnn_sgd_clip.py')  # doctest: +SKIP
        >>> cfg.optim_wrapper.clip_grad  # doctest: +SKIP
        {'max_norm': 35, 'norm_type': 2}
    """
    path = os.path.abspath(os.path.expanduser(os.fspath(path)))
    ext = os.path.splitext(path)[1]
    if ext not in SUPPORTED_EXTENSIONS:
        raise ConfigFileError(
            f"cannot load config {path}: extension {ext!r} is not supported; only Python "
            f"config files ({', '.join(map(repr, SUPPORTED_EXTENSIONS))}) are"
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path} does not exist")
    texts: list[str] = []
    env_used: dict[str, str] = {}
    merged = _load(path, (), texts, env_used)
    return Config(merged, filename=path, text="\n".join(texts), env_variables=env_used)
