"""Merging one config over another: ``_base_`` inheritance (a dict merges key by key, a
dict with ``_delete_=True`` replaces), and mmengine's ``--cfg-options`` syntax
(:func:`parse_cfg_options`, applied by :func:`merge_from_dict`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from functrain.config.config_dict import Config, ConfigDict, join_path
from functrain.config.errors import ConfigFileError

__all__ = ["DELETE_KEY", "clean_copy", "merge_from_dict", "merge_into", "parse_cfg_options"]

DELETE_KEY = "_delete_"


def clean_copy(value: Any) -> Any:
    """A fresh copy of the containers in ``value`` (leaves shared) without ``_delete_`` keys.

    Fresh containers keep two keys of a result from sharing one dict (a child that wrote
    ``a = _base_.model`` would otherwise alias ``a`` and ``model``).
    """
    if isinstance(value, dict):
        out = ConfigDict()
        for k, v in dict.items(value):
            if k != DELETE_KEY:
                dict.__setitem__(out, k, clean_copy(v))
        return out
    if type(value) in (list, tuple):
        return type(value)(clean_copy(v) for v in value)
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


def merge_into(a: Mapping[Any, Any], b: Any, path: str, allow_list_keys: bool, where: str) -> Any:
    """``b`` updated with ``a`` (mmengine's ``Config._merge_a_into_b``), without mutating either.

    ``where`` prefixes error messages (a file name, or the option being applied).
    """
    if isinstance(b, (list, tuple)):
        out = list(b)
        valid = f"valid indices 0..{len(out) - 1}" if out else "it is empty"
        for k, v in a.items():
            if k == DELETE_KEY:
                continue
            full = join_path(path, k)
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
        full = join_path(path, k)
        if k in out:
            out[k] = _merge_value(v, out[k], full, allow_list_keys, where)
        else:
            out[k] = clean_copy(v)
    return out


def _merge_value(v: Any, old: Any, full: str, allow_list_keys: bool, where: str) -> Any:
    if not isinstance(v, dict) or v.get(DELETE_KEY, False):
        return clean_copy(v)
    mergeable = (dict, list, tuple) if allow_list_keys else (dict,)
    if isinstance(old, mergeable):
        return merge_into(v, old, full, allow_list_keys, where)
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
    merged: Any = clean_copy(dict(cfg.items()))
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
        merged = merge_into(nested, merged, "", True, f"option {full_key!r}")
    if isinstance(cfg, Config):
        return Config(merged, filename=cfg.filename, text=cfg.text, env_variables=cfg.env_variables)
    return Config(merged)


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
