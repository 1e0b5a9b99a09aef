"""Hyperparameter sweeps from a config: a grid of settings times seeds, trained as one
stacked ensemble (``functrain sweep``).

A config (or the command line) names the values to try::

    sweep = dict(
        grid={"optim_wrapper.optimizer.lr": [1e-3, 3e-3, 1e-2],
              "optim_wrapper.optimizer.weight_decay": [0, 0.05]},
        seeds=[0, 1],
    )

The members are the grid's cartesian product times the seeds, in this order: the grid keys
in the order given (config keys first, then ``--grid`` keys; the last key varies fastest),
and the seeds innermost, so member ``i`` is ``(grid point i // len(seeds), seed
i % len(seeds))``. :func:`plan_sweep` checks the keys and values and gives the member table;
:func:`run_sweep` trains every member at once with :func:`functrain.ensemble` and
:func:`functrain.make_ensemble_train_step`.

What can vary inside one process (each becomes a per-member vector):

- optimizer hyperparameters: ``optim_wrapper.optimizer.{lr, momentum, betas, eps,
  weight_decay}``;
- ``optim_wrapper.clip_grad.max_norm``;
- the numbers of a schedule: ``param_scheduler[i].{eta_min, eta_min_ratio, start_factor,
  end_factor, factor, gamma, power, T_max, ...}``;
- an EMA's momentum: ``custom_hooks[i].momentum`` of an ``EMAHook``;
- seeds (``seeds=[...]`` or ``--seeds``): member i's model is built after
  ``torch.manual_seed(seed_i)`` (:func:`functrain.init_members`). The data order is shared by
  all members: it follows the first seed of the sweep (the config's own
  ``randomness.seed`` when the sweep varies no seed).

Everything else (the model, the optimizer type, batch size, dataset, loop length, the
shape of a schedule, paramwise multipliers, other hooks) is shared by the members of one ensemble:
varying it is refused with one line naming the key and why, or, with ``groups=True``
(``--groups``), the members are split into groups with equal values of those keys, trained
one group after another.
"""

from __future__ import annotations

import ast
import copy
import csv
import difflib
import inspect
import itertools
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import optree
import torch
from torch import Tensor

from functrain.callbacks.base import Callback
from functrain.config.errors import ConfigError, MemberValues

__all__ = [
    "Member",
    "MemberEvaluator",
    "SweepPlan",
    "SweepResult",
    "estimate_member_bytes",
    "optimizer_state_bytes",
    "export_member",
    "member_config",
    "parse_grid_option",
    "parse_seeds",
    "plan_sweep",
    "run_sweep",
]

#: Optimizer hyperparameters a sweep turns into per-member vectors.
VECTOR_OPTIMIZER_KEYS = ("lr", "momentum", "betas", "eps", "weight_decay")
#: Numbers of a ``param_scheduler`` item a sweep turns into per-member vectors.
VECTOR_SCHEDULE_KEYS = (
    "eta_min", "eta_min_ratio", "start_factor", "end_factor", "factor", "gamma", "power",
    "T_max", "eta_max", "max_lr", "final_div_factor", "div_factor", "pct_start",
)  # fmt: skip
SEED_KEY = "randomness.seed"
RESULTS_FILE = "results.csv"
PLOT_FILE = "sweep.png"
TABLE_FILE = "sweep.json"
STATE_FILE = "sweep_final.pth"

_TOKEN = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


# -- keys --------------------------------------------------------------------------------------


def _tokens(key: str) -> list[str | int]:
    """``"param_scheduler[1].eta_min"`` -> ``["param_scheduler", 1, "eta_min"]``."""
    out: list[str | int] = []
    pos = 0
    for m in _TOKEN.finditer(key):
        if m.start() != pos and key[pos : m.start()] != ".":
            raise ConfigError(key, "not a key path like optim_wrapper.optimizer.lr")
        out.append(m[1] if m[1] is not None else int(m[2]))
        pos = m.end()
    if pos != len(key) or not out:
        raise ConfigError(key, "not a key path like optim_wrapper.optimizer.lr")
    return out


_MISSING = object()


def _get(cfg: Any, tokens: Sequence[str | int]) -> Any:
    """The value at ``tokens`` in ``cfg``, or ``_MISSING``."""
    node = cfg
    for t in tokens:
        if isinstance(t, int) and isinstance(node, list | tuple) and t < len(node):
            node = node[t]
        elif isinstance(t, str) and isinstance(node, Mapping) and t in node:
            node = node[t]
        else:
            return _MISSING
    return node


def _set(cfg: Any, tokens: Sequence[str | int], value: Any) -> None:
    node = cfg
    for t in tokens[:-1]:
        if isinstance(node, Mapping) and t not in node:
            node[t] = {}
        node = node[t]
    if isinstance(node, tuple):
        raise ConfigError(".".join(map(str, tokens)), "cannot set an element of a tuple")
    node[tokens[-1]] = value


def _leaf_paths(cfg: Any, prefix: str = "", depth: int = 0) -> list[str]:
    """Every key path of ``cfg`` (for the "did you mean" of an unknown key)."""
    out = []
    if depth > 6:
        return out
    if isinstance(cfg, Mapping):
        for k, v in cfg.items():
            if not isinstance(k, str) or k.startswith("_"):
                continue
            p = f"{prefix}.{k}" if prefix else k
            out.append(p)
            out += _leaf_paths(v, p, depth + 1)
    elif isinstance(cfg, list) and prefix:
        for i, v in enumerate(cfg):
            p = f"{prefix}[{i}]"
            out += _leaf_paths(v, p, depth + 1)
    return out


def _optimizer_defaults(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The optimizer factory's keyword defaults (a sweep may vary one the config omits)."""
    from functrain.config.builtin_registries import OPTIMIZERS

    opt = (cfg.get("optim_wrapper") or {}).get("optimizer") or {}
    try:
        factory = OPTIMIZERS.get(opt.get("type"), "optim_wrapper.optimizer.type")
        params = inspect.signature(factory).parameters.values()
    except (ConfigError, TypeError, ValueError):
        return {}
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


def _classify(cfg: Mapping[str, Any], key: str, tokens: Sequence[str | int]) -> str | None:
    """``None`` when ``key`` can vary inside one process, else why it cannot."""
    head = tokens[0]
    if tokens[:2] == ["optim_wrapper", "optimizer"] and len(tokens) == 3:
        if tokens[2] in VECTOR_OPTIMIZER_KEYS:
            return None
        if tokens[2] == "type":
            return "the optimizer type: the members of one ensemble share one update rule"
        return (
            f"only {', '.join(VECTOR_OPTIMIZER_KEYS)} of the optimizer vary per member; "
            f"{tokens[2]!r} is shared"
        )
    if list(tokens) == ["optim_wrapper", "clip_grad", "max_norm"]:
        return None
    if head == "optim_wrapper" and len(tokens) > 1 and tokens[1] == "paramwise_cfg":
        return (
            "paramwise multipliers are per-parameter constants of the one transform the "
            "members share (mask_multipliers); per-member multipliers are not supported"
        )
    if head == "param_scheduler":
        last = tokens[-1]
        if isinstance(last, str) and last in VECTOR_SCHEDULE_KEYS:
            return None
        return (
            "a schedule's shape (type, begin, end, by_epoch, milestones) is shared by the "
            f"members; only its numbers ({', '.join(VECTOR_SCHEDULE_KEYS[:7])}, ...) vary"
        )
    if head == "model":
        return "the model architecture: the members are one stacked module"
    if isinstance(head, str) and head.endswith("_dataloader"):
        what = "batch size" if tokens[-1] == "batch_size" else "data pipeline"
        return f"the {what}: every member trains on the same batches"
    if head in ("train_cfg", "val_cfg", "test_cfg"):
        return "the loop (max_epochs, max_iters, intervals) is shared by the members"
    if head == "custom_hooks" and len(tokens) == 3 and tokens[2] == "momentum":
        hook = _get(cfg, tokens[:2])
        if isinstance(hook, Mapping) and hook.get("type") in ("EMAHook", "EMA"):
            return None  # the ensemble's EMA takes one momentum per member
    if head == "custom_hooks" or head == "default_hooks":
        return "callbacks (EMA, early stopping, checkpoints) are shared by the members"
    if head == "randomness":
        return "only randomness.seed varies per member (give it with seeds=[...] / --seeds)"
    return (
        "not a per-member value: the members share everything except the optimizer's "
        "lr / momentum / betas / eps / weight_decay, clip_grad.max_norm, the numbers of "
        "param_scheduler items and the seeds"
    )


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _check_values(key: str, current: Any, values: Sequence[Any]) -> list[Any]:
    """``values`` checked against the type of ``current`` (the config's value)."""
    out = []
    for v in values:
        if _is_number(current):
            ok = _is_number(v)
            expected = "a number"
        elif isinstance(current, list | tuple):
            ok = (
                isinstance(v, list | tuple)
                and len(v) == len(current)
                and all(_is_number(a) == _is_number(b) for a, b in zip(v, current, strict=True))
            )
            expected = f"a sequence of {len(current)} like {tuple(current)!r}"
            v = tuple(v) if ok and isinstance(current, tuple) else v
        elif current is None:
            ok, expected = True, ""
        else:
            ok = isinstance(v, type(current)) and not (
                isinstance(v, bool) != isinstance(current, bool)
            )
            expected = f"a {type(current).__name__} like {current!r}"
        if not ok:
            raise ConfigError(
                key, f"sweep value {v!r} ({type(v).__name__}) is not {expected} (the config's "
                f"value is {current!r})",
            )  # fmt: skip
        out.append(v)
    return out


# -- the member table ----------------------------------------------------------------------------


@attrs.frozen
class Member:
    """One member of a sweep.

    Attributes:
        index: its place in the member table (its slice of the stacked state).
        settings: ``{key path: value}`` of the varied grid keys.
        seed: its seed (``randomness.seed``), or ``None`` for the config's own.
        group: the index of its group (members trained together in one ensemble).
    """

    index: int
    settings: dict[str, Any]
    seed: int | None
    group: int = 0

    def label(self, keys: Sequence[str] | None = None, with_seed: bool = True) -> str:
        """``"lr=0.001, weight_decay=0.05, seed=1"`` (the last component of each key)."""
        keys = list(self.settings) if keys is None else keys
        parts = [f"{_short(k)}={_fmt(self.settings[k])}" for k in keys]
        if with_seed and self.seed is not None:
            parts.append(f"seed={self.seed}")
        return ", ".join(parts) or "config"


def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, tuple | list):
        return "(" + ", ".join(_fmt(x) for x in v) + ")"
    return str(v)


@attrs.frozen
class SweepPlan:
    """The member table of a sweep (see :func:`plan_sweep`).

    Attributes:
        grid: ``{key: values}`` in member order.
        seeds: the seeds (``()`` when the sweep varies none).
        members: one :class:`Member` per grid point and seed.
        vector_keys: grid keys that vary inside one ensemble.
        group_keys: grid keys that split the members into groups (``groups=True``).
    """

    grid: dict[str, list[Any]]
    seeds: tuple[int, ...]
    members: tuple[Member, ...]
    vector_keys: tuple[str, ...]
    group_keys: tuple[str, ...]

    @property
    def varied(self) -> list[str]:
        """The varied keys, seeds last (as ``randomness.seed``)."""
        return [*self.grid, *([SEED_KEY] if self.seeds else [])]

    def groups(self) -> list[list[Member]]:
        """Members by group, in group order."""
        out: dict[int, list[Member]] = {}
        for m in self.members:
            out.setdefault(m.group, []).append(m)
        return [out[g] for g in sorted(out)]

    def explain(self) -> str:
        """The member table and which keys vary, as ``functrain sweep --explain`` prints."""
        lines = [f"{len(self.members)} members"
                 + (f" in {len(self.groups())} groups (trained one after another)"
                    if self.group_keys else " trained together as one stacked ensemble")]  # fmt: skip
        for k in self.vector_keys:
            lines.append(f"  per member: {k} = {[_fmt(v) for v in self.grid[k]]}")
        if self.seeds:
            lines.append(f"  per member: {SEED_KEY} (model init) = {list(self.seeds)}; data "
                         "order shared")  # fmt: skip
        for k in self.group_keys:
            lines.append(f"  per group:  {k} = {[_fmt(v) for v in self.grid[k]]}")
        header = ["member", *(["group"] if self.group_keys else []),
                  *(_short(k) for k in self.varied)]  # fmt: skip
        rows = [
            [str(m.index), *([str(m.group)] if self.group_keys else []),
             *(_fmt(m.settings[k]) for k in self.grid),
             *([str(m.seed)] if self.seeds else [])]
            for m in self.members
        ]  # fmt: skip
        lines.append(_table(header, rows))
        return "\n".join(lines)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return "\n".join(fmt.format(*r) for r in [header, *rows])


def parse_values(text: str) -> list[Any]:
    """``"1e-3,3e-3"`` -> ``[0.001, 0.003]``; ``"(0.9,0.999),(0.95,0.999)"`` -> two tuples;
    words that are not Python literals stay strings (``"SGD,Adam"``)."""
    try:
        value = ast.literal_eval(f"[{text}]")
    except (ValueError, SyntaxError):
        value = [_literal(p.strip()) for p in text.split(",")]
    return list(value)


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_grid_option(item: str) -> tuple[str, list[Any]]:
    """One ``--grid KEY=V1,V2,...`` -> ``(key, values)``."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError("--grid", f"expected KEY=V1,V2,..., got {item!r}")
    return key.strip(), parse_values(text) if text.strip() else []


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` or ``"0-3"`` (0, 1, 2, 3) -> a list of ints."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)-(\d+)", part)
        if m:
            out += range(int(m[1]), int(m[2]) + 1)
        elif re.fullmatch(r"-?\d+", part):
            out.append(int(part))
        else:
            raise ConfigError("--seeds", f"expected ints like 0,1,2 or a range 0-7, got {part!r}")
    return out


def plan_sweep(
    cfg: Mapping[str, Any],
    grid: Mapping[str, Sequence[Any]] | Iterable[tuple[str, Sequence[Any]]] | None = None,
    seeds: Sequence[int] | None = None,
    *,
    groups: bool = False,
) -> SweepPlan:
    """The member table of a sweep over ``cfg``.

    Args:
        cfg: the config (plain dicts); its ``sweep=dict(grid={...}, seeds=[...])`` is used.
        grid: more ``{key: values}`` (the command line's ``--grid``): a key the config's
            sweep also has takes these values.
        seeds: the seeds (override the config's ``sweep.seeds``).
        groups: allow keys that cannot vary inside one process; members with equal values
            of them form a group.

    Returns:
        A :class:`SweepPlan`.

    Raises:
        ConfigError: an unknown key (with the closest names), a value of the wrong type, an
            empty grid, or (without ``groups``) a key that cannot vary per member.

    Example:
        >>> plan = plan_sweep(cfg, {"optim_wrapper.optimizer.lr": [1e-3, 1e-2]}, seeds=[0, 1])  # doctest: +SKIP
        >>> [m.label() for m in plan.members]  # doctest: +SKIP
        ['lr=0.001, seed=0', 'lr=0.001, seed=1', 'lr=0.01, seed=0', 'lr=0.01, seed=1']
    """
    spec = cfg.get("sweep") or {}
    if not isinstance(spec, Mapping):
        raise ConfigError(
            "sweep", f"must be dict(grid={{key: [values]}}, seeds=[...]), got {spec!r}"
        )
    for k in spec:
        if k not in ("grid", "seeds"):
            hint = difflib.get_close_matches(str(k), ["grid", "seeds"], n=1)
            raise ConfigError(f"sweep.{k}", "unknown key" + (f"; did you mean {hint[0]!r}?" if hint
                              else "") + " (accepted: grid, seeds)")  # fmt: skip
    merged: dict[str, list[Any]] = {}
    base_grid = spec.get("grid") or {}
    if not isinstance(base_grid, Mapping):
        raise ConfigError("sweep.grid", f"must be a dict {{key: [values]}}, got {base_grid!r}")
    extra = dict(grid.items() if isinstance(grid, Mapping) else (grid or []))
    for key, values in [*base_grid.items(), *extra.items()]:
        if not isinstance(values, list | tuple):
            raise ConfigError(key, f"sweep values must be a list, got {values!r}")
        merged[key] = list(values)
    if seeds is None:
        seeds = spec.get("seeds")
    if SEED_KEY in merged:
        if seeds is not None:
            raise ConfigError(SEED_KEY, "give the seeds once: in the grid or as seeds / --seeds")
        seeds = merged.pop(SEED_KEY)
    seeds = list(seeds) if seeds is not None else []
    for s in seeds:
        if not isinstance(s, int) or isinstance(s, bool):
            raise ConfigError("sweep.seeds", f"seeds must be ints, got {s!r}")
    if not merged and not seeds:
        raise ConfigError(
            "sweep", "the grid is empty: give sweep=dict(grid={key: [values]}, seeds=[...]) in "
            "the config or --grid KEY=V1,V2 / --seeds 0,1 on the command line",
        )  # fmt: skip
    defaults = _optimizer_defaults(cfg)
    known = None
    vector, grouped = [], []
    for key, values in merged.items():
        if not values:
            raise ConfigError(key, "the sweep gives no values for this key")
        tokens = _tokens(key)
        current = _get(cfg, tokens)
        if current is _MISSING:
            opt_arg = tokens[:2] == ["optim_wrapper", "optimizer"] and len(tokens) == 3
            if opt_arg and tokens[2] in defaults:
                current = defaults[tokens[2]]
            else:
                known = known if known is not None else _leaf_paths(cfg)
                close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
                if not close:
                    close = [p for p in known if p.endswith("." + str(tokens[-1]))][:3]
                hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
                raise ConfigError(key, f"the config has no such key{hint}")
        merged[key] = _check_values(key, current, values)
        why = _classify(cfg, key, tokens)
        if why is None:
            vector.append(key)
        elif groups:
            grouped.append(key)
        else:
            raise ConfigError(
                key, f"cannot vary inside one process: {why}; pass --groups to train each "
                "value as a separate group, one after another",
            )  # fmt: skip
    points = list(itertools.product(*merged.values())) if merged else [()]
    seed_list: list[int | None] = list(seeds) if seeds else [None]
    members = []
    group_index: dict[tuple[Any, ...], int] = {}
    keys = list(merged)
    for point in points:
        settings = dict(zip(keys, point, strict=True))
        gkey = tuple(repr(settings[k]) for k in grouped)
        g = group_index.setdefault(gkey, len(group_index))
        for seed in seed_list:
            members.append(Member(len(members), settings, seed, g))
    return SweepPlan(merged, tuple(seeds), tuple(members), tuple(vector), tuple(grouped))


def member_config(cfg: Mapping[str, Any], member: Member) -> dict[str, Any]:
    """The ordinary config that trains ``member`` alone (``functrain train`` on it gives
    the member's numbers): its settings set, its seed as ``randomness.seed``, no ``sweep``."""
    out = copy.deepcopy({k: v for k, v in cfg.items() if k != "sweep"})
    for key, value in member.settings.items():
        _set(out, _tokens(key), copy.deepcopy(value))
    if member.seed is not None:
        out.setdefault("randomness", {})
        out["randomness"] = {**(out["randomness"] or {}), "seed": member.seed}
    return out


def _vector_config(
    cfg: Mapping[str, Any], plan: SweepPlan, members: Sequence[Member]
) -> dict[str, Any]:
    """The config of one ensemble: group keys as in its members, per-member keys as
    :class:`MemberValues` (a plain value when every member has the same)."""
    out = member_config(cfg, attrs.evolve(members[0], seed=None))
    for key in plan.vector_keys:
        values = [m.settings[key] for m in members]
        if all(v == values[0] for v in values):
            continue  # shared: the scalar path (and its fused kernels) as in a plain run
        if isinstance(values[0], tuple | list):  # betas: one vector per position
            value: Any = tuple(
                MemberValues(v[j] for v in values) if len({v[j] for v in values}) > 1
                else values[0][j]
                for j in range(len(values[0]))
            )  # fmt: skip
        else:
            value = MemberValues(values)
        _set(out, _tokens(key), value)
    return out


# -- memory ---------------------------------------------------------------------------------------


def estimate_member_bytes(
    model: torch.nn.Module,
    state_bytes: int,
    batch: Any,
    loss: Callable[[torch.nn.Module, Any], Any],
) -> int:
    """Rough bytes one member needs while training: parameters + buffers, gradients,
    ``state_bytes`` of optimizer state and the tensors autograd saves for one forward pass
    of ``loss(model, batch)`` (counted with ``saved_tensors_hooks``)."""
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    grads = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    saved = [0]

    def pack(t: Tensor) -> Tensor:
        saved[0] += t.numel() * t.element_size()
        return t

    was = model.training
    with torch.random.fork_rng(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.train()
        try:
            loss(model, batch)
        finally:
            model.train(was)
    return size + grads + state_bytes + saved[0]


def optimizer_state_bytes(tx: Any, params: Mapping[str, Tensor], members: int) -> int:
    """Bytes of ``tx``'s state per member, from ``tx.init`` on ``meta`` copies of the stacked
    ``params`` (nothing allocated)."""
    meta = {k: torch.empty_like(p, device="meta") for k, p in params.items()}
    try:
        leaves = optree.tree_leaves(tx.init(meta), namespace="functrain")
    except (RuntimeError, NotImplementedError, TypeError, ValueError):
        # A transform that reads values at init: assume Adam's two moments.
        return 2 * sum(p.numel() * p.element_size() for p in params.values()) // members
    total = sum(t.numel() * t.element_size() for t in leaves if isinstance(t, Tensor))
    return total // members


def available_bytes(device: torch.device) -> int:
    """Free memory on ``device``: CUDA's free memory, else the host's MemAvailable."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**26 else f"{n / 2**20:.1f} MiB"


def check_memory(per_member: int, members: int, available: int, device: Any) -> None:
    """:class:`ConfigError` when ``members`` x ``per_member`` (with 20% headroom) exceeds
    ``available``."""
    need = int(per_member * members * 1.2)
    if need > available:
        fit = max(int(available / (per_member * 1.2)), 0)
        raise ConfigError(
            "sweep", f"{members} members need about {_gib(need)} on {device} ({_gib(per_member)} "
            f"each: parameters, gradients, optimizer state, activations), but {_gib(available)} "
            f"is available; at most {fit} members fit: sweep fewer values or seeds, or use --groups",
        )  # fmt: skip


# -- training -------------------------------------------------------------------------------------


class MemberEvaluator:
    """Evaluates every member of an ensemble: ``evaluators[i]`` sees member i's slice of the
    stacked outputs; ``evaluate`` returns ``{"<metric>/<i>": value}`` (the per-member naming
    of the logs: ``accuracy/3`` is member 3's accuracy)."""

    def __init__(self, evaluators: Sequence[Any]) -> None:
        self.evaluators = list(evaluators)

    def reset(self) -> None:
        for e in self.evaluators:
            if hasattr(e, "reset"):
                e.reset()

    def process(self, outputs: Any, data_batch: Any = None) -> None:
        for i, e in enumerate(self.evaluators):
            e.process(
                optree.tree_map(lambda t, i=i: t[i], outputs, namespace="functrain"), data_batch
            )

    def evaluate(self) -> dict[str, float]:
        out = {}
        for i, e in enumerate(self.evaluators):
            out.update({f"{k}/{i}": v for k, v in dict(e.evaluate()).items()})
        return out


def per_member(metrics: Mapping[str, float], n: int) -> dict[str, list[float]]:
    """``{"accuracy/0": a, "accuracy/1": b}`` -> ``{"accuracy": [a, b]}``."""
    out: dict[str, list[float]] = {}
    for key, value in metrics.items():
        name, _, idx = key.rpartition("/")
        if name and idx.isdigit() and int(idx) < n:
            out.setdefault(name, [math.nan] * n)[int(idx)] = float(value)
    return out


class SweepRecorder(Callback):
    """Records each validation's per-member metrics and prints one progress line."""

    priority = "LOW"

    def __init__(self, members: Sequence[Member], progress: Callable[[str], None] | None,
                 group: str = "") -> None:  # fmt: skip
        self.members = list(members)
        self.progress = progress
        self.group = group
        self.curves: list[tuple[int, dict[str, list[float]]]] = []

    def after_val_epoch(
        self, runner: Any, state: Any, metrics: Mapping[str, float] | None = None, **kw: Any
    ) -> None:
        values = per_member(metrics or {}, len(self.members))
        loop = runner.train_loop
        at = runner.state.epoch if loop is not None and loop.by_epoch else runner.state.iteration
        self.curves.append((at, values))
        if self.progress is None or not values:
            return
        name, vals = next(iter(values.items()))
        order = sorted(range(len(vals)), key=lambda i: vals[i])
        best = order[0] if _lower_is_better(name) else order[-1]
        total = (
            loop.max_epochs if loop is not None and loop.by_epoch else getattr(loop, "max_iters", 0)
        )
        unit = "epoch" if loop is not None and loop.by_epoch else "iter"
        self.progress(
            f"sweep{self.group}: {unit} {at}/{total}  {name}: min {vals[order[0]]:.4f} "
            f"median {vals[order[len(vals) // 2]]:.4f} max {vals[best]:.4f} "
            f"(member {self.members[best].index}: {self.members[best].label()})"
        )


def _lower_is_better(metric: str) -> bool:
    from functrain.callbacks.checkpoint import infer_rule

    try:
        return infer_rule(metric) == "less"
    except ValueError:
        return False


@attrs.frozen
class SweepResult:
    """What :func:`run_sweep` returns.

    Attributes:
        plan: the member table.
        metric: the validation metric ranked (the first the evaluator returns).
        curves: per member, ``[(epoch or iteration, value), ...]`` of ``metric``.
        rows: one dict per member: the varied settings, ``final``, ``best``, ``best_at``.
        work_dir: where ``results.csv``, ``sweep.png`` and the final state are.
    """

    plan: SweepPlan
    metric: str
    curves: list[list[tuple[int, float]]]
    rows: list[dict[str, Any]]
    work_dir: Path

    def table(self) -> str:
        """The results table as the command line prints it."""
        keys = self.plan.varied
        at = "epoch" if self.rows and self.rows[0].get("by_epoch", True) else "iter"
        header = ["member", *(_short(k) for k in keys), f"final {self.metric}",
                  f"best {self.metric}", f"best {at}"]  # fmt: skip
        rows = [[str(r["member"]), *(_fmt(r[k]) for k in keys), f"{r['final']:.4f}",
                 f"{r['best']:.4f}", str(r["best_at"])] for r in self.rows]  # fmt: skip
        return _table(header, rows)


def build_ensemble_runner(
    cfg: Mapping[str, Any],
    plan: SweepPlan,
    members: Sequence[Member],
    *,
    work_dir: str | Path,
    device: str | torch.device | None = None,
    progress: Callable[[str], None] | None = None,
    group: str = "",
    available: int | None = None,
    hooks: tuple[dict[str, Any], list[Any]] | None = None,
) -> tuple[Any, SweepRecorder, Any]:
    """The :class:`~functrain.runner.Runner` training ``members`` (one group) as one
    stacked ensemble; returns ``(runner, recorder, the meta module)``. The config's
    ``default_hooks`` and ``custom_hooks`` run per member (the Runner's ``members``): the
    logger writes ``loss/<i>``, ``accuracy/<i>``, the checkpoints hold the stacked state (and
    ``save_best`` each member's best as an ordinary checkpoint), ``EarlyStopping`` freezes
    members one by one. ``hooks`` replaces them (``(default_hooks, custom_hooks)``)."""
    from functrain.config.build import (
        build_model,
        build_training,
        check_top_level,
        import_custom_modules,
    )
    from functrain.config.config_dict import to_plain
    from functrain.config.dataloaders import seed_from_config
    from functrain.config.loops_hooks import build_eval_loop, build_hooks
    from functrain.config.model_calls import loss_fn, predict_fn
    from functrain.ensembles import init_members, make_ensemble_eval_step, make_ensemble_train_step
    from functrain.evaluators import MeanMetrics
    from functrain.runner import Runner
    from functrain.state import TrainState
    from functrain.transforms.members import ensemble

    cfg = to_plain(cfg)
    check_top_level({k: v for k, v in cfg.items() if k != "sweep"})
    import_custom_modules(cfg.get("custom_imports"))
    n = len(members)
    vcfg = _vector_config(cfg, plan, members)
    seeds = [m.seed for m in members]
    if seeds[0] is not None:  # the data order follows the first seed (shared by the members)
        vcfg["randomness"] = {**(vcfg.get("randomness") or {}), "seed": seeds[0]}
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    for key in ("train_dataloader", "train_cfg", "optim_wrapper"):
        if vcfg.get(key) is None:
            raise ConfigError(key, f"a sweep trains: the config needs {key}")
    seed = seed_from_config(vcfg, 0)
    member_seeds = [s if s is not None else seed for s in seeds]
    member_seeds = [s if s is not None else 0 for s in member_seeds]
    with torch.random.fork_rng():  # the generators stay as `functrain train` leaves them
        one = build_model(vcfg, "cpu")
    train_loop, optim = build_training(vcfg, one, seed=seed)
    tx = ensemble(optim.tx, n)
    # The memory check, before any member is allocated: optimizer state from meta tensors,
    # activations from one forward pass of one member on one batch.
    if available is None:
        available = available_bytes(device)
    stacked = {k: p.detach().to("meta").expand(n, *p.shape) for k, p in one.named_parameters()
               if p.requires_grad}  # fmt: skip
    with torch.random.fork_rng():
        batch = next(iter(train_loop.dataloader))
    loss = loss_fn(torch.device("cpu"))

    def backward(m: torch.nn.Module, b: Any) -> None:
        loss(m, b)[0].backward()

    # First with a generous bound on the optimizer state (4 tensors per parameter: more than
    # any built-in optimizer keeps); only a sweep near the limit pays for the exact count
    # (tx.init on meta tensors, whose Python meta kernels take seconds to load).
    param_bytes = sum(p.numel() * p.element_size() for p in stacked.values()) // n
    per = estimate_member_bytes(one, 4 * param_bytes, batch, backward)
    if per * n * 1.2 > available:
        per = estimate_member_bytes(one, optimizer_state_bytes(tx, stacked, n), batch, backward)
    check_memory(per, n, available, device)
    del one, batch
    # Each member's model is the one `functrain train` builds right after seeding.
    params, buffers, module = init_members(
        lambda: build_model(vcfg, "cpu"), member_seeds, device=device
    )
    state = TrainState(params=params, buffers=buffers, opt_state=tx.init(params))
    train_step = make_ensemble_train_step(module, loss_fn(device), tx, n, autocast=optim.autocast)
    val_loop, _ = build_eval_loop(vcfg, "val", module, device, seed)
    if val_loop is None:
        raise ConfigError("val_evaluator", "a sweep ranks its members by a validation metric: "
                          "the config needs val_dataloader, val_cfg and val_evaluator")  # fmt: skip
    val_loop.eval_step = make_ensemble_eval_step(module, predict_fn(device), n)
    if not isinstance(val_loop.evaluator, MeanMetrics):  # MeanMetrics averages per member itself
        val_loop.evaluator = MemberEvaluator([copy.deepcopy(val_loop.evaluator) for _ in range(n)])
    recorder = SweepRecorder(members, progress, group)
    defaults, custom = hooks if hooks is not None else build_hooks(vcfg)
    runner = Runner(
        state=state,
        train_step=train_step,
        train_loop=train_loop,
        val_loop=val_loop,
        callbacks=[*custom, recorder],
        default_callbacks=defaults,
        work_dir=work_dir,
        # The terminal shows the sweep's progress lines; the log file keeps INFO.
        log_level=vcfg.get("log_level", "INFO") if progress is None else "WARNING",
        members=n,
        member_labels=[m.label() for m in members],
    )
    return runner, recorder, module


def run_sweep(
    cfg: Mapping[str, Any],
    plan: SweepPlan,
    *,
    work_dir: str | Path,
    device: str | torch.device | None = None,
    progress: Callable[[str], None] | None = print,
    plot: bool = True,
    available: int | None = None,
) -> SweepResult:
    """Train every member of ``plan`` (one stacked ensemble per group, groups one after
    another), write ``results.csv``, ``sweep.json`` (the member table), the final stacked
    state of each group (``sweep_final.pth``, ``group<g>_sweep_final.pth`` with groups) and
    ``sweep.png``.

    Args:
        cfg: the config (plain dicts or a loaded ``Config``).
        plan: from :func:`plan_sweep`.
        work_dir: the output directory.
        device: ``'cpu'`` / ``'cuda'`` (default: CUDA when available).
        progress: called with one line after each validation (``None``: quiet).
        plot: draw ``sweep.png``.
        available: bytes available for the members (default: measured), for the memory check.

    Returns:
        A :class:`SweepResult`.
    """
    import json

    from functrain.config.config_dict import to_plain

    cfg = to_plain(cfg)
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    groups = plan.groups()
    curves: list[list[tuple[int, float]]] = [[] for _ in plan.members]
    metric = ""
    by_epoch = True
    for g, members in enumerate(groups):
        tag = f" group {g + 1}/{len(groups)}" if len(groups) > 1 else ""
        # With groups, each group's logs and checkpoints go to its own subdirectory.
        group_dir = work / f"group{g}" if len(groups) > 1 else work
        runner, recorder, _ = build_ensemble_runner(
            cfg, plan, members, work_dir=group_dir, device=device, progress=progress, group=tag,
            available=available,
        )  # fmt: skip
        runner.train()
        by_epoch = bool(runner.train_loop.by_epoch)
        runner.save_checkpoint(work / _state_file(g, len(groups)), meta={"sweep_group": g})
        for at, values in recorder.curves:
            if not values:
                continue
            metric = metric or next(iter(values))
            for j, m in enumerate(members):
                curves[m.index].append((at, values[metric][j]))
    rows = []
    sign = -1.0 if _lower_is_better(metric) else 1.0  # mmengine's rule: loss-like is less
    for m in plan.members:
        c = curves[m.index]
        final = c[-1][1] if c else math.nan
        # The first epoch reaching the best value (as save_best keeps the first).
        best_at, best = max(c, key=lambda p: sign * p[1]) if c else (0, math.nan)
        rows.append({"member": m.index, **({"group": m.group} if plan.group_keys else {}),
                     **m.settings, **({SEED_KEY: m.seed} if plan.seeds else {}),
                     "final": final, "best": best, "best_at": best_at, "by_epoch": by_epoch})  # fmt: skip
    result = SweepResult(plan, metric or "metric", curves, rows, work)
    with open(work / RESULTS_FILE, "w", newline="") as f:
        writer = csv.writer(f)
        at = "epoch" if by_epoch else "iter"
        keys = [*(["group"] if plan.group_keys else []), *plan.varied]
        writer.writerow(["member", *keys, f"final_{result.metric}", f"best_{result.metric}",
                         f"best_{at}"])  # fmt: skip
        for r in rows:
            writer.writerow([r["member"], *(_fmt(r[k]) for k in keys), repr(r["final"]),
                             repr(r["best"]), r["best_at"]])  # fmt: skip
    table = {
        "members": [
            {"index": m.index, "group": m.group, "settings": m.settings, "seed": m.seed}
            for m in plan.members
        ],  # fmt: skip
        "grid": plan.grid,
        "seeds": list(plan.seeds),
        "groups": len(groups),
        "config": _jsonable(cfg),
    }
    (work / TABLE_FILE).write_text(json.dumps(table, indent=1, default=repr))
    if plot:
        _plot(result, work / PLOT_FILE)
    return result


def _state_file(group: int, groups: int) -> str:
    return STATE_FILE if groups == 1 else f"group{group}_{STATE_FILE}"


def _jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    return x if isinstance(x, int | float | str | bool | type(None)) else repr(x)


def _plot(result: SweepResult, out: Path) -> None:
    """``sweep.png``: the metric per member over epochs (left) and the final metric against
    each varied hyperparameter (one panel per key)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in result.plan.varied]
    fig, axes = plt.subplots(1, 1 + len(keys), figsize=(5 * (1 + len(keys)), 4), squeeze=False)
    ax = axes[0][0]
    for m, c in zip(result.plan.members, result.curves, strict=True):
        if c:
            ax.plot([p[0] for p in c], [p[1] for p in c], label=m.label(), marker=".")
    at = "epoch" if not result.rows or result.rows[0]["by_epoch"] else "iteration"
    ax.set(xlabel=at, ylabel=f"validation {result.metric}", title="per member")
    if len(result.plan.members) <= 16:
        ax.legend(fontsize="x-small")
    for ax, key in zip(axes[0][1:], keys, strict=True):
        xs = [r[key] for r in result.rows]
        numeric = all(_is_number(x) for x in xs)
        pos = xs if numeric else [_fmt(x) for x in xs]
        ax.scatter(pos, [r["final"] for r in result.rows])
        if numeric and key != SEED_KEY and min(xs) > 0 and max(xs) / min(xs) >= 10:
            ax.set_xscale("log")
        ax.set(
            xlabel=key,
            ylabel=f"final {result.metric}",
            title=f"final {result.metric} vs {_short(key)}",
        )
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


# -- export ---------------------------------------------------------------------------------------


def export_member(
    work_dir: str | Path, index: int, out: str | Path, *, device: str | torch.device = "cpu"
) -> Path:
    """Write member ``index`` of the sweep in ``work_dir`` as an ordinary checkpoint: the
    one ``functrain train`` on :func:`member_config` would write at the same point, which
    ``load_from`` and ``functrain train --resume`` accept (with the member's settings).

    Args:
        work_dir: a ``functrain sweep`` work dir (``sweep.json`` + the final state).
        index: the member (its row in ``results.csv``).
        out: the checkpoint to write.
        device: where to build the states while converting.
    """
    import json

    from functrain.checkpoint import CheckpointError

    work = Path(work_dir)
    table_file = work / TABLE_FILE
    if not table_file.is_file():
        raise CheckpointError(f"{work}: not a sweep work dir (no {TABLE_FILE})", str(table_file))
    table = json.loads(table_file.read_text())
    count = len(table["members"])
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
        raise ConfigError("--member", f"expected a member 0..{count - 1}, got {index!r}")
    cfg = table["config"]
    # JSON gives lists where the config had tuples (betas): restored from the config's types
    # by plan_sweep's checks.
    plan = plan_sweep({**cfg, "sweep": {}}, grid=table["grid"], seeds=table["seeds"] or None,
                      groups=True)  # fmt: skip
    member = plan.members[index]
    group = [m for m in plan.members if m.group == member.group]
    import shutil
    import tempfile

    from functrain.callbacks.checkpoint import _member_checkpoint_state

    tmp = tempfile.mkdtemp(prefix="functrain-export-")
    try:
        runner, _, _ = build_ensemble_runner(cfg, plan, group, work_dir=tmp, device=device,
                                             progress=None, available=2**62)  # fmt: skip
        runner.resume(work / _state_file(member.group, len(plan.groups())))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    position = [m.index for m in group].index(index)
    out = Path(out)
    # The Runner's per-member checkpoint (what save_best writes for a member): member i's
    # params, buffers and optimizer state as a plain run's state, with the data position.
    runner.save_checkpoint(
        out,
        select=lambda s: _member_checkpoint_state(s, position),
        meta={"sweep_member": index, "sweep_settings": _jsonable(member.settings)},
    )
    return out
