"""``CheckpointCallback``: periodic, last and best checkpoints (mmengine's CheckpointHook)."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optree
import torch

from functrain.callbacks.base import Callback
from functrain.checkpoint import atomic_write_text
from functrain.ranks import is_main_process

__all__ = ["CheckpointCallback", "infer_rule"]

RULE_MAP = {"greater": lambda x, y: x > y, "less": lambda x, y: x < y}
INIT_VALUE_MAP = {"greater": -math.inf, "less": math.inf}
DEFAULT_GREATER_KEYS = (
    "acc",
    "top",
    "AR@",
    "auc",
    "precision",
    "mAP",
    "mDice",
    "mIoU",
    "mAcc",
    "aAcc",
)
DEFAULT_LESS_KEYS = ("loss",)


def infer_rule(
    key: str,
    greater_keys: Sequence[str] = DEFAULT_GREATER_KEYS,
    less_keys: Sequence[str] = DEFAULT_LESS_KEYS,
) -> str:
    """mmengine's rule inference: an exact (case-insensitive) match in ``greater_keys`` or
    ``less_keys`` first, then a substring match, greater before less.

    Example:
        >>> infer_rule("val/top1_acc"), infer_rule("val_loss")
        ('greater', 'less')
    """
    lc = key.lower()
    greater = {k.lower() for k in greater_keys}
    less = {k.lower() for k in less_keys}
    if lc in greater:
        return "greater"
    if lc in less:
        return "less"
    if any(k in lc for k in greater):
        return "greater"
    if any(k in lc for k in less):
        return "less"
    raise ValueError(
        f"Cannot infer the rule for key {key}, thus a specific rule must be specified."
    )


def _str_list(name: str, value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, Sequence) and all(isinstance(v, str) for v in value):
        return list(value)
    raise TypeError(f'"{name}" should be a str or list of str or None, but got {type(value)}')


class CheckpointCallback(Callback):
    """Save checkpoints periodically, at the end, and for the best validation metric.

    Options, defaults and file names are those of mmengine's ``CheckpointHook``: with
    ``by_epoch`` the file after epoch ``e`` (1-based) is ``epoch_{e}.pth``, by iteration
    ``iter_{i}.pth``; best checkpoints are ``best_{metric}_{epoch_e.pth}`` (``/`` replaced by
    ``_``) and hold no optimizer state. ``work_dir/last_checkpoint`` names the latest file,
    which ``Runner(resume=True)`` resumes from.

    Differences, on purpose: files are written atomically (temporary file, fsync, rename),
    an old checkpoint is deleted only after the new one is written, and only files this
    callback wrote are deleted (the ids it kept, its previous best). The kept ids and best
    scores are part of the train state, so ``max_keep_ckpts`` holds across resumes.

    Under ``torch.distributed`` the callback runs on every rank (its bookkeeping is part of
    every rank's state) and the runner's save is a collective; only rank 0 writes, deletes
    old files and updates ``last_checkpoint`` (as mmengine), and the other ranks go on only
    once the file is complete.

    Args:
        interval: save every ``interval`` epochs (``by_epoch``) or iterations; ``-1``: never
            (but see ``save_last``).
        by_epoch: count epochs (in ``after_train_epoch``) or iterations
            (``after_train_iter``).
        save_optimizer: include the optimizer state (needed to resume).
        save_param_scheduler: accepted for mmengine compatibility; schedules live in the
            optimizer state, so this has no separate effect.
        out_dir: directory of the checkpoints; default ``runner.work_dir``. When given, the
            files go to ``out_dir / basename(work_dir)`` (mmengine's rule).
        max_keep_ckpts: keep at most this many periodic checkpoints (``-1``: all).
        save_last: always save after the last epoch / iteration.
        save_best: a metric name, a list of names, or ``"auto"`` (the first metric).
        rule: ``"greater"``, ``"less"``, a list of them, or ``None`` (inferred from the key:
            ``greater_keys`` such as ``acc``, ``mAP``; ``less_keys`` such as ``loss``).
        greater_keys, less_keys: override mmengine's default key lists.
        filename_tmpl: e.g. ``"ckpt_{}.pth"``; one ``{}`` for the epoch / iteration.
        save_begin: first epoch / iteration counted by ``interval``.
        members: for an ensemble run (``runner.members`` = N), which best checkpoints
            ``save_best`` keeps: ``"each"`` (default) one per member, judged on member i's
            ``"<key>/<i>"`` (``best_acc_member3_epoch_5.pth``), or ``"best"`` only the best
            member's, judged on the best member's score
            (``best_acc_epoch_5.pth``, ``meta["member"]`` names it).

    Ensembles: periodic and last checkpoints hold the stacked state (resumed bitwise). A
    best checkpoint is an ordinary single-run checkpoint of one member
    (:func:`functrain.member_state`, with its optimizer state, so that ``load_from``,
    ``Runner(resume=...)`` and ``functrain train --resume`` of a plain run with that
    member's settings accept it). Of the callback state it keeps what is per member (an
    EMA's stacked average, sliced: with ``EMA(swap_checkpoint=True)`` the file's params are
    the member's average, as a plain run writes them); best scores, wait counts and the
    active-members mask describe the ensemble and are left out.
    """

    priority = "VERY_LOW"

    def __init__(
        self,
        interval: int = -1,
        by_epoch: bool = True,
        save_optimizer: bool = True,
        save_param_scheduler: bool = True,
        out_dir: str | os.PathLike[str] | None = None,
        max_keep_ckpts: int = -1,
        save_last: bool = True,
        save_best: str | Sequence[str] | None = None,
        rule: str | Sequence[str | None] | None = None,
        greater_keys: Sequence[str] | str | None = None,
        less_keys: Sequence[str] | str | None = None,
        filename_tmpl: str | None = None,
        save_begin: int = 0,
        members: str = "each",
    ) -> None:
        if members not in ("each", "best"):
            raise ValueError(
                f'CheckpointCallback: members must be "each" or "best", got {members!r}'
            )
        self.members = members
        self.interval = interval
        self.by_epoch = by_epoch
        self.save_optimizer = save_optimizer
        self.save_param_scheduler = save_param_scheduler
        self.out_dir_arg = out_dir
        self.out_dir: Path | None = None
        self.max_keep_ckpts = max_keep_ckpts
        self.save_last = save_last
        if filename_tmpl is None:
            filename_tmpl = "epoch_{}.pth" if by_epoch else "iter_{}.pth"
        if filename_tmpl.count("{}") != 1:
            raise ValueError(
                f'filename_tmpl must contain exactly one "{{}}", got {filename_tmpl!r}'
            )
        self.filename_tmpl = filename_tmpl
        if save_begin < 0:
            raise ValueError(f"save_begin should not be less than 0, but got {save_begin}")
        self.save_begin = save_begin

        best = _str_list("save_best", save_best)
        if best is not None:
            if "auto" in best and len(best) != 1:
                raise ValueError('Only support one "auto" in "save_best" list.')
            if len(best) != len(set(best)):
                raise ValueError('Find duplicate element in "save_best".')
        self.save_best = best
        rules: list[str | None]
        if isinstance(rule, list | tuple):
            if best is None or len(rule) not in (1, len(best)):
                raise ValueError(
                    'Number of "rule" must be 1 or the same as number of "save_best", '
                    f"but got {len(rule)}."
                )
            rules = list(rule)
        else:
            rules = [rule]
        self.greater_keys = tuple(_str_list("greater_keys", greater_keys) or DEFAULT_GREATER_KEYS)
        self.less_keys = tuple(_str_list("less_keys", less_keys) or DEFAULT_LESS_KEYS)
        if best is not None:
            self._init_rule(rules, best)

    def _init_rule(self, rules: list[str | None], keys: list[str]) -> None:
        if len(rules) == 1:
            rules = rules * len(keys)
        self.rules: list[str | None] = []
        for r, key in zip(rules, keys, strict=True):
            if r is not None and r not in RULE_MAP:
                raise KeyError(f"rule must be greater, less or None, but got {r}.")
            if r is None and key != "auto":
                r = infer_rule(key, self.greater_keys, self.less_keys)
            self.rules.append(r)
        self.key_indicators = keys

    # -- persistent state: {"keep_ckpt_ids", "last_ckpt", "best_score", "best_ckpt"} --------
    def _cs(self, state: Any) -> dict[str, Any]:
        return dict(self.get_state(state) or {})

    def before_train(self, runner: Any, state: Any) -> Any:
        if self.out_dir_arg is None:
            self.out_dir = Path(runner.work_dir)
        else:
            self.out_dir = Path(self.out_dir_arg) / Path(runner.work_dir).name
        cs = self._cs(state)
        if self.max_keep_ckpts > 0:
            ids = list(cs.get("keep_ckpt_ids", []))
            while len(ids) > self.max_keep_ckpts:
                self._remove(ids.pop(0))
            cs["keep_ckpt_ids"] = ids
            return self.set_state(state, cs)
        return None

    def _remove(self, step: int) -> None:
        assert self.out_dir is not None
        if not is_main_process():
            return
        path = self.out_dir / self.filename_tmpl.format(step)
        if path.is_file():
            path.unlink()

    def after_train_epoch(self, runner: Any, state: Any) -> Any:
        if not self.by_epoch:
            return None
        if self.every_n_epochs(runner, self.interval, self.save_begin) or (
            self.save_last and self.is_last_train_epoch(runner)
        ):
            runner.logger.info(f"Saving checkpoint at {runner.epoch + 1} epochs")
            return self._save_checkpoint_with_step(runner, state, runner.epoch + 1)
        return None

    def after_train_iter(
        self, runner: Any, state: Any, batch_idx: int, data_batch: Any = None, outputs: Any = None
    ) -> Any:
        if self.by_epoch:
            return None
        if self.every_n_train_iters(runner, self.interval, self.save_begin) or (
            self.save_last and self.is_last_train_iter(runner)
        ):
            runner.logger.info(f"Saving checkpoint at {runner.iter + 1} iterations")
            return self._save_checkpoint_with_step(runner, state, runner.iter + 1)
        return None

    def after_val_epoch(self, runner: Any, state: Any, metrics: Any = None) -> Any:
        if not metrics:
            warnings.warn(
                "Since `metrics` is an empty dict, the behavior to save the best checkpoint "
                "will be skipped in this evaluation.",
                stacklevel=2,
            )
            return None
        if runner.train_loop is None or self.out_dir is None:
            return None  # a standalone validation run saves nothing
        return self._save_best_checkpoint(runner, state, metrics)

    def _save_checkpoint_with_step(self, runner: Any, state: Any, step: int) -> Any:
        assert self.out_dir is not None
        cs = self._cs(state)
        removed = None
        if self.max_keep_ckpts > 0:
            ids = list(cs.get("keep_ckpt_ids", []))
            if not (ids and ids[-1] == step):
                if len(ids) >= self.max_keep_ckpts:
                    removed = ids.pop(0)
                ids.append(step)
            cs["keep_ckpt_ids"] = ids
        path = self.out_dir / self.filename_tmpl.format(step)
        cs["last_ckpt"] = str(path)
        state = self.set_state(state, cs)

        def saved() -> None:
            if removed is not None and removed != step:
                self._remove(removed)  # only once the new file is safely written
            atomic_write_text(str(path), Path(runner.work_dir) / "last_checkpoint")

        runner.save_checkpoint(path, state, save_optimizer=self.save_optimizer, on_saved=saved)
        return state

    def _save_best_checkpoint(self, runner: Any, state: Any, metrics: dict[str, Any]) -> Any:
        if not self.save_best:
            return None
        assert self.out_dir is not None
        if self.by_epoch:
            ckpt_filename = self.filename_tmpl.format(runner.epoch)
            cur_type, cur_time = "epoch", runner.epoch
        else:
            ckpt_filename = self.filename_tmpl.format(runner.iter)
            cur_type, cur_time = "iter", runner.iter
        if "auto" in self.key_indicators:
            first = next(iter(metrics))
            if getattr(runner, "members", None):
                first = first.rpartition("/")[0] or first  # "acc/0" -> "acc"
            self._init_rule(self.rules, [first])
        if getattr(runner, "members", None):
            return self._save_best_members(runner, state, metrics, runner.members, ckpt_filename)
        cs = self._cs(state)
        best_scores = dict(cs.get("best_score", {}))
        best_paths = dict(cs.get("best_ckpt", {}))
        updated = False
        for key, rule in zip(self.key_indicators, self.rules, strict=True):
            if key not in metrics:
                raise KeyError(
                    f"save_best: metric {key!r} is not among the validation metrics "
                    f"{sorted(metrics)}"
                )
            score = float(metrics[key])
            best = best_scores.get(key, INIT_VALUE_MAP[rule])
            if not RULE_MAP[rule](score, best):
                continue
            updated = True
            best_scores[key] = score
            name = f"best_{key}_{ckpt_filename}".replace("/", "_")
            new_path = self.out_dir / name
            old_path = best_paths.get(key)
            best_paths[key] = str(new_path)
            cs["best_score"], cs["best_ckpt"] = dict(best_scores), dict(best_paths)
            state = self.set_state(state, cs)

            saved = _remove_previous_best(runner, old_path, new_path)
            runner.save_checkpoint(new_path, state, save_optimizer=False, on_saved=saved)
            runner.logger.info(
                f"The best checkpoint with {score:0.4f} {key} at {cur_time} {cur_type} is "
                f"saved to {name}."
            )
        if updated and cs.get("last_ckpt") is not None:
            # Re-save the periodic checkpoint so that it records the new best (mmengine).
            state = self._save_checkpoint_with_step(runner, state, cur_time)
        return state if updated else None

    def _save_best_members(
        self, runner: Any, state: Any, metrics: dict[str, Any], n: int, ckpt_filename: str
    ) -> Any:
        """Best checkpoints of an ensemble: per member (``members="each"``, scores and paths
        kept under ``"<key>/<i>"``) or of the best member (``"best"``)."""
        from functrain.callbacks.members import describe, member_key, member_values

        cs = self._cs(state)
        best_scores = dict(cs.get("best_score", {}))
        best_paths = dict(cs.get("best_ckpt", {}))
        labels = getattr(runner, "member_labels", None) or [f"#{i}" for i in range(n)]
        updated = False
        assert self.out_dir is not None
        for key, rule in zip(self.key_indicators, self.rules, strict=True):
            scores = member_values(metrics, key, n)
            if scores is None:
                raise KeyError(
                    f"save_best: metric {key!r} has no per-member values {key}/0..{key}/{n - 1} "
                    f"among the validation metrics {sorted(metrics)}"
                )
            if self.members == "each":
                candidates = [(member_key(key, i), i, scores[i]) for i in range(n)]
            else:
                finite = [i for i in range(n) if math.isfinite(scores[i])] or list(range(n))
                pick = max if rule == "greater" else min
                b = pick(finite, key=lambda i: scores[i])
                candidates = [(key, b, scores[b])]
            for slot, i, score in candidates:
                best = best_scores.get(slot, INIT_VALUE_MAP[rule])
                if not RULE_MAP[rule](score, best):
                    continue
                updated = True
                best_scores[slot] = score
                tag = f"_member{i}" if self.members == "each" else ""
                name = f"best_{key}{tag}_{ckpt_filename}".replace("/", "_")
                new_path = self.out_dir / name
                old_path = best_paths.get(slot)
                best_paths[slot] = str(new_path)
                if self.members == "best":
                    cs["best_member"] = {**cs.get("best_member", {}), key: i}
                cs["best_score"], cs["best_ckpt"] = dict(best_scores), dict(best_paths)
                state = self.set_state(state, cs)

                saved = _remove_previous_best(runner, old_path, new_path)
                runner.save_checkpoint(
                    new_path,
                    state,
                    save_optimizer=True,
                    meta={"member": i, "member_label": labels[i]},
                    on_saved=saved,
                    select=lambda s, i=i: _member_checkpoint_state(s, i),
                )
                runner.logger.info(
                    f"The best checkpoint of member {describe(runner, i)} with {score:0.4f} "
                    f"{key} is saved to {name}."
                )
        if updated and cs.get("last_ckpt") is not None:
            cur = runner.epoch if self.by_epoch else runner.iter
            state = self._save_checkpoint_with_step(runner, state, cur)
        return state if updated else None


def _member_checkpoint_state(state: Any, i: int) -> Any:
    """Member ``i`` of an ensemble state as a plain run's state. Callback states made of
    per-member tensors (an EMA's stacked average) are sliced to member ``i``, so that a
    plain run's callback finds its own kind of state (and ``EMA(swap_checkpoint=True)``
    writes the member's average as the checkpoint's params, as for a plain run); the
    others (best scores, wait counts, the active-members mask) describe the ensemble and
    are left out."""
    from functrain.ensembles import ACTIVE_MEMBERS, member_state
    from functrain.tree import tree_map

    one = member_state(state.replace(callbacks={}), i)
    n = next(iter(state.params.values())).shape[0]
    kept: dict[str, Any] = {}
    for name, value in state.callbacks.items():
        tensors = [
            t
            for t in optree.tree_leaves(value, namespace="functrain")
            if isinstance(t, torch.Tensor)
        ]
        if name == ACTIVE_MEMBERS or not tensors:
            continue
        if all(t.dim() > 0 and t.shape[0] == n for t in tensors):
            kept[name] = tree_map(
                lambda t: t[i].clone() if isinstance(t, torch.Tensor) else t, value
            )
    return one.replace(callbacks=kept)


def _remove_previous_best(runner: Any, old_path: str | None, new_path: Path) -> Any:
    """The ``on_saved`` callback of a new best checkpoint: once it is written, the previous
    best one (another file) is deleted, so a failed save never leaves no best checkpoint."""

    def saved() -> None:
        if old_path and Path(old_path) != new_path and Path(old_path).is_file():
            Path(old_path).unlink()
            runner.logger.info(f"The previous best checkpoint {old_path} is removed")

    return saved
