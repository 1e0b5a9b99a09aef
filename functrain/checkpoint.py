"""Checkpoint files: atomic writes, ``weights_only`` loading, clear errors.

A checkpoint is a plain dict saved with ``torch.save``::

    {"format": "functrain.checkpoint", "version": 1,
     "meta": {"epoch": ..., "iter": ..., ...},
     "state": {"params": {...}, "buffers": {...}, "opt_state": ..., "callbacks": {...},
               "iteration": ..., "epoch": ..., "rng": ...},
     "loop": {...},          # where the data iterator stood (written by the runner)
     "loop_per_rank": [...]} # under torch.distributed: every rank's own "loop" entry

Under ``torch.distributed`` rank 0 writes the file (the state is the same on every rank, or
the runner's ``state_for_checkpoint`` gathers it) and every rank reads it back: tensors are
loaded onto the CPU and placed on the devices of the rank's own state (its ``cuda:LOCAL_RANK``).

State records (``ScaleByAdamState``, ...) are written as ``{"__record__": "module:Class",
"fields": {...}}`` so that the file holds only dicts, lists, tuples, numbers, strings, bytes
and tensors and loads with ``torch.load(weights_only=True)``: a checkpoint file cannot run
code. A record class is looked up by name among attrs classes of modules already imported
from ``functrain`` (or registered with :func:`register_record_class`); nothing else is
imported or called.

Writes go to a temporary file in the destination directory, are flushed and fsync'ed, and
then renamed over the destination (``os.replace``), so a crash leaves either the old file or
the new one, never a partial file under the final name.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import Tensor

from functrain.pickle_scan import first_foreign_object
from functrain.state import RngState, TrainState

__all__ = [
    "CheckpointError",
    "CheckpointMismatchError",
    "atomic_save",
    "atomic_write_text",
    "decode",
    "encode",
    "find_latest_checkpoint",
    "find_loadable_checkpoint",
    "first_foreign_object",
    "list_checkpoints",
    "load_checkpoint",
    "register_record_class",
    "restore_state",
    "state_to_dict",
]

FORMAT = "functrain.checkpoint"
VERSION = 1
_RECORD = "__record__"

_registered: dict[str, type] = {}


class CheckpointError(RuntimeError):
    """A checkpoint file cannot be read (missing, truncated, corrupt, or not a checkpoint).

    ``path`` is the file at fault when known (the command line names another one that
    loads)."""

    def __init__(self, message: str, path: str | os.PathLike[str] | None = None) -> None:
        super().__init__(message)
        self.path = None if path is None else str(path)


class CheckpointMismatchError(CheckpointError, ValueError):
    """A checkpoint's tree does not match the model / optimizer it is loaded into."""


def register_record_class(cls: type) -> type:
    """Allow instances of the attrs class ``cls`` (outside ``functrain``) in checkpoints.

    Usable as a decorator. Built-in functrain records need no registration.
    """
    if not attrs.has(cls):
        raise TypeError(f"register_record_class: {cls!r} is not an attrs class")
    _registered[_qualname(cls)] = cls
    return cls


def _qualname(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _lookup(name: str, where: str) -> type:
    if name in _registered:
        return _registered[name]
    module_name, _, qual = name.partition(":")
    if not (module_name == "functrain" or module_name.startswith("functrain.")):
        raise CheckpointError(
            f"{where}: record class {name!r} is not a functrain class and was not registered "
            "with functrain.checkpoint.register_record_class"
        )
    module = sys.modules.get(module_name)
    if module is None:
        import importlib

        module = importlib.import_module(module_name)
    obj: Any = module
    for part in qual.split("."):
        obj = getattr(obj, part, None)
    if not (isinstance(obj, type) and attrs.has(obj)):
        raise CheckpointError(f"{where}: unknown record class {name!r}")
    return obj


def encode(obj: Any) -> Any:
    """``obj`` as plain containers and tensors (records become ``{"__record__": ...}`` dicts).

    Tensors are detached and moved to the CPU (a sync, which saving needs anyway).
    """
    if isinstance(obj, Tensor):
        return obj.detach().cpu()
    if attrs.has(type(obj)):
        fields = {f.name: encode(getattr(obj, f.name)) for f in attrs.fields(type(obj))}
        return {_RECORD: _qualname(type(obj)), "fields": fields}
    if isinstance(obj, dict):
        return {k: encode(v) for k, v in obj.items()}
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(encode(v) for v in obj)
    if isinstance(obj, list):
        return [encode(v) for v in obj]
    if obj is None or type(obj) in (bool, int, float, str, bytes):
        return obj
    # Subclasses (torch's TorchVersion is a str, numpy scalars...) would need their class to
    # unpickle; weights_only loading refuses classes, so write the plain value.
    for plain in (bool, int, float, str, bytes):
        if isinstance(obj, plain):
            return plain(obj)
    raise TypeError(
        f"cannot write a {type(obj).__name__} into a checkpoint: use tensors, numbers, "
        "strings, dicts, lists, tuples or attrs records"
    )


def decode(obj: Any, where: str = "checkpoint") -> Any:
    """Inverse of :func:`encode`."""
    if isinstance(obj, dict):
        if _RECORD in obj:
            cls = _lookup(obj[_RECORD], where)
            fields = {k: decode(v, where) for k, v in obj["fields"].items()}
            try:
                return cls(**fields)
            except TypeError as e:
                raise CheckpointError(f"{where}: cannot rebuild {obj[_RECORD]}: {e}") from None
        return {k: decode(v, where) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(decode(v, where) for v in obj)
    if isinstance(obj, list):
        return [decode(v, where) for v in obj]
    return obj


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _atomic_write(path: Path, write: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save(obj, path)`` through a temporary file in the same directory, fsync and
    ``os.replace``: readers see the old file or the complete new one."""
    _atomic_write(Path(path), lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path: str | os.PathLike[str]) -> None:
    """Write ``text`` to ``path`` atomically (as :func:`atomic_save`)."""
    _atomic_write(Path(path), lambda f: f.write(text.encode()))


def state_to_dict(state: TrainState, *, save_optimizer: bool = True) -> dict[str, Any]:
    """The ``"state"`` entry of a checkpoint (plain containers and CPU tensors)."""
    out = {
        "params": encode(state.params),
        "buffers": encode(state.buffers),
        "callbacks": encode(state.callbacks),
        "iteration": state.iteration,
        "epoch": state.epoch,
        "rng": encode(state.rng),
    }
    if save_optimizer:
        out["opt_state"] = encode(state.opt_state)
    return out


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint file with ``torch.load(weights_only=True)`` onto the CPU.

    Raises:
        CheckpointError: naming ``path``, when the file is missing, truncated or corrupt, or
            is not a functrain checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise CheckpointError(f"checkpoint file {str(path)!r} {what}", path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message advises weights_only=False, i.e. running the file's code: wrong
        # advice for a checkpoint, which never holds code. Say what is in the file instead.
        foreign = first_foreign_object(path)
        if foreign is None:
            raise CheckpointError(
                f"cannot read checkpoint {str(path)!r} (truncated or corrupt file?)", path
            ) from e
        raise CheckpointError(
            f"refused to load {str(path)!r}: it holds objects that are not tensors or plain "
            f"containers (the first: {foreign}); functrain checkpoints never do, so the file "
            "is not a functrain checkpoint or was tampered with (nothing in it was run)",
            path,
        ) from e
    except Exception as e:  # torch raises RuntimeError, EOFError, ...
        raise CheckpointError(
            f"cannot read checkpoint {str(path)!r} (truncated or corrupt file?): "
            f"{type(e).__name__}: {_first_sentence(e)}",
            path,
        ) from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or "state" not in ckpt:
        raise CheckpointError(
            f"{str(path)!r} is not a functrain checkpoint: it holds {_contents(ckpt)}; "
            "functrain reads the files its CheckpointCallback writes (a dict with "
            f"format={FORMAT!r} and a 'state')",
            path,
        )
    if ckpt.get("version", 0) > VERSION:
        raise CheckpointError(
            f"{str(path)!r} was written by a newer functrain (format version {ckpt['version']})",
            path,
        )
    return ckpt


def _contents(obj: Any) -> str:
    """What a file that is not a functrain checkpoint holds, in words."""
    if isinstance(obj, Mapping):
        tensors = sum(isinstance(v, Tensor) for v in obj.values())
        if obj and tensors == len(obj):
            return f"a dict of {tensors} tensors (a model's state_dict?)"
        keys = ", ".join(repr(k) for k in list(obj)[:5])
        more = ", ..." if len(obj) > 5 else ""
        hint = " (an mmengine checkpoint?)" if "state_dict" in obj else ""
        return f"a dict with the keys {keys}{more}{hint}"
    return _describe(obj)


def _first_sentence(err: BaseException) -> str:
    """The first sentence of an error's message (torch appends paragraphs of advice)."""
    text = " ".join(str(err).split())
    end = text.find(". ")
    return (text if end < 0 else text[:end]).rstrip(".")


def find_latest_checkpoint(work_dir: str | os.PathLike[str]) -> str | None:
    """The path in ``work_dir/last_checkpoint`` (written by the checkpoint callback), if the
    pointer and the file it names exist."""
    pointer = Path(work_dir) / "last_checkpoint"
    if not pointer.is_file():
        return None
    target = pointer.read_text().strip()
    return target if target and Path(target).is_file() else None


def list_checkpoints(directory: str | os.PathLike[str]) -> list[Path]:
    """The ``*.pth`` files in ``directory``, newest first (by modification time, then name),
    without reading them."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    files = [p for p in directory.glob("*.pth") if p.is_file()]
    return sorted(files, key=lambda p: (p.stat().st_mtime, p.name), reverse=True)


def find_loadable_checkpoint(
    directory: str | os.PathLike[str],
    *,
    exclude: tuple[str | os.PathLike[str], ...] = (),
    resumable: bool = True,
) -> Path | None:
    """The newest checkpoint in ``directory`` that :func:`load_checkpoint` reads (and that
    holds an optimizer state when ``resumable``), skipping ``exclude``; ``None`` if none.
    Each candidate is read in full, so this is for error messages, not for a hot path."""
    skip = {Path(p).resolve() for p in exclude}
    for path in list_checkpoints(directory):
        if path.resolve() in skip:
            continue
        try:
            ckpt = load_checkpoint(path)
        except CheckpointError:
            continue
        if not resumable or "opt_state" in ckpt["state"]:
            return path
    return None


def _describe(x: Any) -> str:
    if isinstance(x, Tensor):
        return f"a {str(x.dtype).replace('torch.', '')} tensor of shape {tuple(x.shape)}"
    if x is None:
        return "None"
    if attrs.has(type(x)):
        return type(x).__name__
    return type(x).__name__


def _first_mismatch(saved: Any, template: Any, path: str) -> str | None:
    """Where ``saved`` (decoded from a file) does not fit ``template``, or ``None``.

    ``None`` on either side is accepted (state that is created lazily, such as SGD's
    momentum buffer before the first step).
    """
    if saved is None or template is None:
        return None
    if isinstance(template, Tensor):
        if not isinstance(saved, Tensor):
            return f"{path}: {_describe(saved)} in the file, {_describe(template)} expected"
        if saved.shape != template.shape or saved.dtype != template.dtype:
            return f"{path}: {_describe(saved)} in the file, {_describe(template)} expected"
        return None
    if attrs.has(type(template)):
        if type(saved) is not type(template):
            return f"{path}: {_describe(saved)} in the file, {_describe(template)} expected"
        for f in attrs.fields(type(template)):
            a, b = getattr(saved, f.name), getattr(template, f.name)
            if f.metadata.get("static", False):
                # Structure (leaf paths) must match; host counters (ints) naturally differ.
                numeric = (int, float)
                if not (isinstance(a, numeric) and isinstance(b, numeric)) and a != b:
                    return f"{path}.{f.name}: static field differs ({a!r} in the file)"
                continue
            found = _first_mismatch(a, b, f"{path}.{f.name}")
            if found:
                return found
        return None
    if isinstance(template, Mapping):
        if not isinstance(saved, Mapping):
            return f"{path}: {_describe(saved)} in the file, a dict expected"
        for key in template:
            if key not in saved:
                return f"{path}.{key}: missing in the file"
        for key in saved:
            if key not in template:
                return f"{path}.{key}: in the file but not in the model"
        for key in template:
            found = _first_mismatch(saved[key], template[key], f"{path}.{key}")
            if found:
                return found
        return None
    if isinstance(template, tuple | list):
        if not isinstance(saved, tuple | list) or len(saved) != len(template):
            n = len(saved) if isinstance(saved, tuple | list) else None
            return (
                f"{path}: {_describe(saved) if n is None else f'{n} entries'} in the file, "
                f"{len(template)} entries expected"
            )
        for i, (a, b) in enumerate(zip(saved, template, strict=True)):
            found = _first_mismatch(a, b, f"{path}.{i}")
            if found:
                return found
    return None


def _require_fit(saved: Any, template: Any, name: str, where: str, what: str) -> None:
    """:class:`CheckpointMismatchError` naming the file and the first path where ``saved``
    does not fit ``template`` (``what``: ``"model"`` or ``"optimizer"``)."""
    problem = _first_mismatch(saved, template, name)
    if problem:
        raise CheckpointMismatchError(
            f"checkpoint {where!r} does not match the {what}: {problem}", where
        )


def _placed(saved: Any, template: Any, default: torch.device | None) -> Any:
    """``saved`` with each tensor moved to the device of the matching template tensor, or to
    ``default`` where the template has none (lazily created state, callback state)."""
    if isinstance(saved, Tensor):
        device = template.device if isinstance(template, Tensor) else default
        return saved if device is None else saved.to(device)
    if attrs.has(type(saved)):
        tmpl = template if type(template) is type(saved) else None
        changes = {
            f.name: _placed(getattr(saved, f.name), getattr(tmpl, f.name, None), default)
            for f in attrs.fields(type(saved))
            if not f.metadata.get("static", False)
        }
        return attrs.evolve(saved, **changes)
    if isinstance(saved, dict):
        tmpl = template if isinstance(template, Mapping) else {}
        return {k: _placed(v, tmpl.get(k), default) for k, v in saved.items()}
    if isinstance(saved, tuple | list):
        tmpl = template if isinstance(template, tuple | list) else ()
        items = [
            _placed(v, tmpl[i] if i < len(tmpl) else None, default) for i, v in enumerate(saved)
        ]
        return items if isinstance(saved, list) else tuple(items)
    return saved


def restore_state(
    ckpt: Mapping[str, Any],
    template: TrainState,
    *,
    path: str | os.PathLike[str] = "checkpoint",
    load_optimizer: bool = True,
    strict: bool = True,
) -> TrainState:
    """The :class:`TrainState` stored in ``ckpt``, checked against and placed like ``template``.

    Args:
        ckpt: a dict returned by :func:`load_checkpoint`.
        template: a state for the same model and transform (usually the fresh one); its
            tree decides what must be in the file, and its tensors' devices where the loaded
            tensors go.
        path: the file name, for error messages.
        load_optimizer: restore ``opt_state`` and the counters (resume) rather than only the
            weights (``load_from``).
        strict: require exactly the template's params and buffers.

    Raises:
        CheckpointMismatchError: naming the file and the first path that differs.
    """
    where = str(path)
    saved = ckpt["state"]
    params = decode(saved["params"], where)
    buffers = decode(saved["buffers"], where)
    for name, got, want in (
        ("params", params, template.params),
        ("buffers", buffers, template.buffers),
    ):
        if not strict:
            got = {k: v for k, v in got.items() if k in want}
            want = {k: v for k, v in want.items() if k in got}
        _require_fit(got, want, name, where, "model")
    default = next((t.device for t in template.params.values()), None)
    params = {**template.params, **_placed(params, template.params, default)}
    buffers = {**template.buffers, **_placed(buffers, template.buffers, default)}
    if not load_optimizer:
        return template.replace(params=params, buffers=buffers)
    if "opt_state" not in saved:
        raise CheckpointError(
            f"checkpoint {where!r} has no optimizer state (saved with save_optimizer=False); "
            "load it with load_from= instead of resuming (on the command line: "
            "--cfg-options load_from=PATH)",
            where,
        )
    opt_state = decode(saved["opt_state"], where)
    _require_fit(opt_state, template.opt_state, "opt_state", where, "optimizer")
    rng = decode(saved.get("rng"), where)
    if rng is not None and not isinstance(rng, RngState):
        raise CheckpointError(f"checkpoint {where!r}: bad rng entry ({_describe(rng)})")
    callbacks = _placed(decode(saved.get("callbacks", {}), where), template.callbacks, default)
    return TrainState(
        params=params,
        buffers=buffers,
        opt_state=_placed(opt_state, template.opt_state, default),
        callbacks={**template.callbacks, **callbacks},
        iteration=int(saved["iteration"]),
        epoch=int(saved["epoch"]),
        rng=rng,
    )
