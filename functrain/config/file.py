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
import os
import re
import traceback
import types
import warnings
from collections.abc import Mapping
from typing import Any

from functrain.config.config_dict import (
    BASE_KEY,
    RESERVED_KEYS,
    SUPPORTED_EXTENSIONS,
    Config,
    ConfigDict,
)
from functrain.config.errors import ConfigFileError
from functrain.config.overrides import clean_copy, merge_from_dict, merge_into, parse_cfg_options

# Some names are re-exported from the modules they moved to when the config package was
# split by what each module holds, so that imports from here keep working.
__all__ = [
    "Config",
    "ConfigDict",
    "ConfigFileError",
    "load_config",
    "merge_from_dict",
    "parse_cfg_options",
]

_DEPRECATION_KEY = "_deprecation_"
_BASE_VAR_RE = re.compile(r"\{\{\s*" + BASE_KEY + r"\.([\w.]+)\s*\}\}")
_ENV_VAR_RE = re.compile(r"\{\{['\"]?\s*\$(\w+)\s*:\s*(\S*?)\s*['\"]?\}\}")
_PREDEFINED = ("fileDirname", "fileBasename", "fileBasenameNoExtension", "fileExtname")


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


def _check_extension(file: str, what: str) -> None:
    """``ConfigFileError`` (``what`` first) unless ``file`` is a Python config file."""
    ext = os.path.splitext(file)[1]
    if ext not in SUPPORTED_EXTENSIONS:
        raise ConfigFileError(
            f"{what} has extension {ext!r}; only Python config files "
            f"({', '.join(map(repr, SUPPORTED_EXTENSIONS))}) are supported"
        )


def _resolve_base(spec: str, path: str) -> str:
    if "::" in spec:
        raise ConfigFileError(
            f"{path}: package-scoped base config {spec!r} is not supported; copy the base file "
            "next to your config and name it by a relative path"
        )
    resolved = os.path.normpath(os.path.join(os.path.dirname(path), spec))
    _check_extension(resolved, f"{path}: base config {spec!r}")
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
    return merge_into(own, clean_copy(base), "", False, path)


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
    _check_extension(path, f"cannot load config {path}:")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path} does not exist")
    texts: list[str] = []
    env_used: dict[str, str] = {}
    merged = _load(path, (), texts, env_used)
    return Config(merged, filename=path, text="\n".join(texts), env_variables=env_used)
