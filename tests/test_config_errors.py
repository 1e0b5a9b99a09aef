"""Bad configs: a table of realistic mistakes, each one documented error, never a traceback.

Every row is a small valid config (DigitsNet, Digits, DefaultSampler, a one-epoch
EpochBasedTrainLoop with validation, SGD, a warmup + MultiStepLR schedule, checkpoint and
logger hooks; :func:`base_config`) with ONE mistake. Each row is checked three ways, none of
which trains:

- as a dict: ``build_runner(cfg)`` raises :class:`ConfigError` whose ``.path`` is the key
  path of the mistake and whose message (``"<path>: <reason>"``, one line) holds the hint;
- as a config file (``load_config`` + ``--cfg-options`` + ``build_runner``, what the command
  line does): the same error; file problems raise ``ConfigFileError``, ``FileNotFoundError``
  or ``SyntaxError`` naming the file (and the line);
- through ``functrain train CONFIG``: exit status 2 and ONE line on stderr,
  ``functrain: error: <path>: <reason>``; the work dir is never created.

=================================  ===================================================  ==============================
row (test id)                      mistake                                              error path / hint
=================================  ===================================================  ==============================
optimizer-type-misspelt            ``optimizer=dict(type='AdamW2')``                    ``optim_wrapper.optimizer.type``, 'AdamW'
optimizer-type-lowercase           ``type='adamw'``                                     ``optim_wrapper.optimizer.type``, 'AdamW'
optim-wrapper-key-misspelt         ``clip_grads=dict(max_norm=35)``                     ``optim_wrapper.clip_grads``, 'clip_grad'
optim-wrapper-optimzer             ``optimzer=`` (the seed's own typo)                  ``optim_wrapper.optimzer``, 'optimizer'
optimizer-arg-weight_decays        ``weight_decays=1e-4``                               ``optim_wrapper.optimizer.weight_decays``
optimizer-arg-momentun             ``momentun=0.9``                                     ``optim_wrapper.optimizer.momentun``
lr-as-string                       ``lr='0.01'``                                        ``optim_wrapper.optimizer.lr``
betas-as-string                    Adam ``betas='0.9,0.999'``                           ``optim_wrapper.optimizer.betas``
lr_mult-as-string                  ``custom_keys={'backbone': dict(lr_mult='0.1')}``    ``...custom_keys.backbone.lr_mult``
paramwise-key-misspelt             ``paramwise_cfg=dict(norm_decay_mul=0)``             ``optim_wrapper.paramwise_cfg.norm_decay_mul``
decay_mult-without-weight_decay    ``decay_mult`` and no ``weight_decay``               ``...custom_keys.backbone.decay_mult``
custom-key-field-misspelt          ``custom_keys={'backbone': dict(lr_multi=0.1)}``     ``...custom_keys.backbone.lr_multi``
clip-type-l2                       ``clip_grad=dict(type='l2', ...)``                   ``optim_wrapper.clip_grad.type``, norm_type=2
amp-dtype-fp16                     ``AmpOptimWrapper`` with ``dtype='fp16'``            ``optim_wrapper.dtype``, 'float16'
accumulative-counts-0              ``accumulative_counts=0``                            ``optim_wrapper.accumulative_counts``
wrapper-type-misspelt              ``type='AmpOptimWraper'``                            ``optim_wrapper.type``
scheduler-end-not-after-begin      2nd scheduler ``begin=3, end=3``                     ``param_scheduler[1].end``
scheduler-type-misspelt            ``type='CosineAnealingLR'``                          ``param_scheduler[1].type``
scheduler-arg-misspelt             ``T_maxx=2``                                         ``param_scheduler[1].T_maxx``, 'T_max'
convert-without-by_epoch           ``convert_to_iter_based=True, by_epoch=False``       ``param_scheduler[1].convert_to_iter_based``
by_epoch-scheduler-iter-loop       by-epoch scheduler, ``IterBasedTrainLoop``           ``param_scheduler[1].by_epoch``
momentum-scheduler-no-momentum     ``CosineAnnealingMomentum`` with Adagrad             ``param_scheduler.type``
hook-type-misspelt                 ``type='CheckpointHok'``                             ``default_hooks.checkpoint.type``
hook-arg-misspelt                  ``max_keep_ckpt=3``                                  ``default_hooks.checkpoint.max_keep_ckpt``
hook-priority-misspelt             ``priority='NORMALL'``                               ``custom_hooks[0].priority``, 'NORMAL'
hook-required-arg-missing          ``dict(type='EarlyStoppingHook')``                   ``custom_hooks[0].monitor``
top-level-optim_wraper             ``optim_wraper = dict(...)``                         ``optim_wraper``, 'optim_wrapper'
top-level-param_schedulers         ``param_schedulers = [...]``                         ``param_schedulers``
top-level-optimi_wrapper           ``optimi_wrapper`` (the seed's other typo)           ``optimi_wrapper``
train-loop-type-misspelt           ``type='EpochBasedTrainLop'``                        ``train_cfg.type``
max_epochs-as-string               ``max_epochs='1'``                                   ``train_cfg.max_epochs``
max_epochs-missing                 ``train_cfg=dict(type='EpochBasedTrainLoop')``       ``train_cfg.max_epochs``
val_interval-0                     ``val_interval=0`` (mmengine: ZeroDivisionError)     ``train_cfg.val_interval``
dynamic_intervals-flat             ``dynamic_intervals=[8, 2]`` for ``[(8, 2)]``        ``train_cfg.dynamic_intervals[0]``
val-without-evaluator              ``val_dataloader`` but no ``val_evaluator``          ``val_evaluator``
dataloader-key-misspelt            ``batchsize=64``                                     ``train_dataloader.batchsize``
dataloader-shuffle                 ``shuffle=True`` on the loader                       ``train_dataloader.shuffle``
collate_fn-as-string               ``collate_fn='pseudo_collate'``                      ``train_dataloader.collate_fn``
sampler-type-misspelt              ``type='DefaultSamplr'``                             ``train_dataloader.sampler.type``
dataset-type-misspelt              ``type='Digit'``                                     ``train_dataloader.dataset.type``
model-type-misspelt                ``type='DigitNet'``                                  ``model.type``
custom-imports-missing-module      ``imports=['my_project.hooks']``                     ``custom_imports.imports[0]``
custom-imports-class-not-module    ``imports=['functrain.zoo.DigitsNet']``              ``custom_imports.imports[0]``
launcher-slurm                     ``launcher='slurm'``                                 ``launcher``, names 'pytorch'
file-missing-base                  ``_base_`` names a file that is not there            FileNotFoundError, the file
file-delete-drops-optimizer        the seed's ``_delete_=True`` clip snippet            ``optim_wrapper``, '_delete_'
file-syntax-error                  an unclosed ``dict(``                                SyntaxError, file and line
file-undefined-name                ``lr = base_lr * 2``                                 ConfigFileError, file and line
cfg-options-without-equals         ``--cfg-options optim_wrapper.optimizer.lr``         ConfigFileError, KEY=VALUE
cfg-options-misspelt-key           ``--cfg-options ...optimizer.momentun=0.9``          ``optim_wrapper.optimizer.momentun``
cfg-options-index-out-of-range     ``--cfg-options param_scheduler.5.end=10``           ConfigFileError, valid indices
=================================  ===================================================  ==============================

Not errors, but warnings (each tested below): a ``custom_keys`` entry that matches no
parameter (mmengine ignores it silently; functrain builds the same multipliers and warns with
the key's path), ``custom_imports`` of a missing module with ``allow_failed_imports=True``
(skipped with a warning, as mmengine), and MMCV 1.x keys such as ``lr_config`` (ignored by
mmengine; functrain warns and names the replacement).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from functrain.cli import main
from functrain.config import ConfigError, build_runner
from functrain.config.file import ConfigFileError, load_config, merge_from_dict, parse_cfg_options
from functrain.transforms.multipliers import Multiplier

Edit = Callable[[dict[str, Any]], None]


def base_config() -> dict[str, Any]:
    """A small valid config: every row of the table changes one thing in it."""
    return dict(
        model=dict(type="DigitsNet", width=8),
        train_dataloader=dict(
            batch_size=128,
            dataset=dict(type="Digits", split="train"),
            sampler=dict(type="DefaultSampler", shuffle=True),
        ),
        train_cfg=dict(type="EpochBasedTrainLoop", max_epochs=1, val_interval=1),
        val_dataloader=dict(
            batch_size=256,
            dataset=dict(type="Digits", split="val"),
            sampler=dict(type="DefaultSampler", shuffle=False),
        ),
        val_cfg=dict(type="ValLoop"),
        val_evaluator=dict(type="Accuracy"),
        optim_wrapper=dict(
            type="OptimWrapper",
            optimizer=dict(type="SGD", lr=0.01, momentum=0.9, weight_decay=1e-4),
        ),
        param_scheduler=[
            dict(type="LinearLR", start_factor=0.1, by_epoch=False, begin=0, end=5),
            dict(type="MultiStepLR", milestones=[1], by_epoch=True),
        ],
        default_hooks=dict(
            checkpoint=dict(type="CheckpointHook", interval=1),
            logger=dict(type="LoggerHook", interval=5),
        ),
        randomness=dict(seed=0),
    )


# ----------------------------------------------------------------------------------------
# Edits
# ----------------------------------------------------------------------------------------


def _walk(cfg: Any, dotted: str) -> tuple[Any, Any]:
    """The container holding the last key of ``dotted`` and that key (ints index lists)."""
    *parents, last = dotted.split(".")
    node = cfg
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    return node, int(last) if isinstance(node, list) else last


def put(dotted: str, value: Any) -> Edit:
    """Set ``cfg[a][b][c] = value`` for ``dotted='a.b.c'``."""

    def edit(cfg: dict[str, Any]) -> None:
        node, key = _walk(cfg, dotted)
        node[key] = value

    return edit


def drop(dotted: str) -> Edit:
    def edit(cfg: dict[str, Any]) -> None:
        node, key = _walk(cfg, dotted)
        del node[key]

    return edit


def rename(old: str, new: str) -> Edit:
    """Rename the key ``old`` (dotted) to ``new`` (a key in the same dict), keeping its value."""

    def edit(cfg: dict[str, Any]) -> None:
        node, key = _walk(cfg, old)
        node[new] = node.pop(key)

    return edit


def edits(*parts: Edit) -> Edit:
    def edit(cfg: dict[str, Any]) -> None:
        for part in parts:
            part(cfg)

    return edit


def render(cfg: dict[str, Any]) -> str:
    """A Python config file holding ``cfg``."""
    return "".join(f"{key} = {value!r}\n" for key, value in cfg.items())


@dataclass(frozen=True)
class Mistake:
    """One row: an edit of :func:`base_config` (or a config file's source, which may
    inherit ``./base.py``, the base config as a file), ``--cfg-options`` items, the error
    expected, its key path (``None`` for file errors, which have none) and the substrings
    its message must hold."""

    edit: Edit | None = None
    path: str | None = None
    hints: tuple[str, ...] = ()
    error: type[Exception] = ConfigError
    source: str | None = None
    cfg_options: tuple[str, ...] = field(default=())


M = Mistake
SCHED = "param_scheduler.1"
CUSTOM = "optim_wrapper.paramwise_cfg.custom_keys"

MISTAKES = [
    # -- optim_wrapper ------------------------------------------------------------------
    pytest.param(
        M(put("optim_wrapper.optimizer.type", "AdamW2"), "optim_wrapper.optimizer.type",
          ("unknown optimizer type 'AdamW2'", "registry OPTIMIZERS", "did you mean 'AdamW'")),
        id="optimizer-type-misspelt",
    ),
    pytest.param(
        M(put("optim_wrapper.optimizer.type", "adamw"), "optim_wrapper.optimizer.type",
          ("did you mean 'AdamW'?",)),
        id="optimizer-type-lowercase",
    ),
    pytest.param(
        M(put("optim_wrapper.clip_grads", dict(max_norm=35)), "optim_wrapper.clip_grads",
          ("unknown key 'clip_grads'", "did you mean 'clip_grad'", "accepted: type, optimizer")),
        id="optim-wrapper-key-misspelt",
    ),
    pytest.param(
        M(rename("optim_wrapper.optimizer", "optimzer"), "optim_wrapper.optimzer",
          ("unknown key 'optimzer' for OptimWrapper", "did you mean 'optimizer'")),
        id="optim-wrapper-optimzer",
    ),
    pytest.param(
        M(put("optim_wrapper.optimizer.weight_decays", 1e-4),
          "optim_wrapper.optimizer.weight_decays",
          ("for optimizer SGD", "did you mean 'weight_decay'")),
        id="optimizer-arg-weight_decays",
    ),
    pytest.param(
        M(put("optim_wrapper.optimizer.momentun", 0.9), "optim_wrapper.optimizer.momentun",
          ("did you mean 'momentum'", "accepted: lr, momentum, dampening, weight_decay")),
        id="optimizer-arg-momentun",
    ),
    pytest.param(
        M(put("optim_wrapper.optimizer.lr", "0.01"), "optim_wrapper.optimizer.lr",
          ("expects a number for 'lr'", "got the string '0.01'")),
        id="lr-as-string",
    ),
    pytest.param(
        M(put("optim_wrapper.optimizer", dict(type="Adam", lr=1e-3, betas="0.9,0.999")),
          "optim_wrapper.optimizer.betas", ("a pair of numbers", "'0.9,0.999'")),
        id="betas-as-string",
    ),
    pytest.param(
        M(put("optim_wrapper.paramwise_cfg", dict(custom_keys={"backbone": dict(lr_mult="0.1")})),
          f"{CUSTOM}.backbone.lr_mult", ("expected a number", "'0.1'")),
        id="lr_mult-as-string",
    ),
    pytest.param(
        M(put("optim_wrapper.paramwise_cfg", dict(norm_decay_mul=0.0)),
          "optim_wrapper.paramwise_cfg.norm_decay_mul",
          ("unknown key 'norm_decay_mul'", "did you mean 'norm_decay_mult'")),
        id="paramwise-key-misspelt",
    ),
    pytest.param(
        M(edits(drop("optim_wrapper.optimizer.weight_decay"),
                put("optim_wrapper.paramwise_cfg",
                    dict(custom_keys={"backbone": dict(decay_mult=0.0)}))),
          f"{CUSTOM}.backbone.decay_mult",
          ("needs the optimizer's weight_decay", "base_wd should not be None")),
        id="decay_mult-without-weight_decay",
    ),
    pytest.param(
        M(put("optim_wrapper.paramwise_cfg", dict(custom_keys={"backbone": dict(lr_multi=0.1)})),
          f"{CUSTOM}.backbone.lr_multi", ("only lr_mult and decay_mult",)),
        id="custom-key-field-misspelt",
    ),
    pytest.param(
        M(put("optim_wrapper.clip_grad", dict(type="l2", max_norm=35)),
          "optim_wrapper.clip_grad.type", ("unknown clip type 'l2'", "norm_type=2")),
        id="clip-type-l2",
    ),
    pytest.param(
        M(edits(put("optim_wrapper.type", "AmpOptimWrapper"), put("optim_wrapper.dtype", "fp16")),
          "optim_wrapper.dtype", ("unknown dtype 'fp16'", "did you mean 'float16'")),
        id="amp-dtype-fp16",
    ),
    pytest.param(
        M(put("optim_wrapper.accumulative_counts", 0), "optim_wrapper.accumulative_counts",
          ("must be > 0, got 0",)),
        id="accumulative-counts-0",
    ),
    pytest.param(
        M(put("optim_wrapper.type", "AmpOptimWraper"), "optim_wrapper.type",
          ("registry OPTIM_WRAPPERS", "did you mean 'AmpOptimWrapper'")),
        id="wrapper-type-misspelt",
    ),
    # -- param_scheduler ----------------------------------------------------------------
    pytest.param(
        M(edits(put(f"{SCHED}.begin", 3), put(f"{SCHED}.end", 3)), "param_scheduler[1].end",
          ("`end` must be larger than `begin`", "begin=3, end=3")),
        id="scheduler-end-not-after-begin",
    ),
    pytest.param(
        M(put(SCHED, dict(type="CosineAnealingLR", T_max=1)), "param_scheduler[1].type",
          ("registry PARAM_SCHEDULERS", "did you mean 'CosineAnnealingLR'")),
        id="scheduler-type-misspelt",
    ),
    pytest.param(
        M(put(SCHED, dict(type="CosineAnnealingLR", T_maxx=2)), "param_scheduler[1].T_maxx",
          ("CosineAnnealingLR has no argument 'T_maxx'", "did you mean 'T_max'")),
        id="scheduler-arg-misspelt",
    ),
    pytest.param(
        M(put(SCHED, dict(type="CosineAnnealingLR", T_max=100, by_epoch=False,
                          convert_to_iter_based=True)),
          "param_scheduler[1].convert_to_iter_based", ("by_epoch=True",)),
        id="convert-without-by_epoch",
    ),
    pytest.param(
        M(put("train_cfg", dict(type="IterBasedTrainLoop", max_iters=20, val_interval=10)),
          "param_scheduler[1].by_epoch", ("iteration-based", "set by_epoch=False")),
        id="by_epoch-scheduler-iter-loop",
    ),
    pytest.param(
        M(edits(put("optim_wrapper.optimizer", dict(type="Adagrad", lr=0.01)),
                put("param_scheduler", dict(type="CosineAnnealingMomentum", T_max=1))),
          "param_scheduler.type", ("schedules 'momentum'", "schedulable: lr")),
        id="momentum-scheduler-no-momentum",
    ),
    # -- hooks --------------------------------------------------------------------------
    pytest.param(
        M(put("default_hooks.checkpoint.type", "CheckpointHok"), "default_hooks.checkpoint.type",
          ("registry HOOKS", "did you mean 'CheckpointHook'")),
        id="hook-type-misspelt",
    ),
    pytest.param(
        M(put("default_hooks.checkpoint.max_keep_ckpt", 3),
          "default_hooks.checkpoint.max_keep_ckpt",
          ("did you mean 'max_keep_ckpts'", "accepted: interval")),
        id="hook-arg-misspelt",
    ),
    pytest.param(
        M(put("custom_hooks", [dict(type="EMAHook", priority="NORMALL")]),
          "custom_hooks[0].priority", ("unknown priority 'NORMALL'", "did you mean 'NORMAL'")),
        id="hook-priority-misspelt",
    ),
    pytest.param(
        M(put("custom_hooks", [dict(type="EarlyStoppingHook")]), "custom_hooks[0].monitor",
          ("EarlyStoppingHook needs 'monitor'",)),
        id="hook-required-arg-missing",
    ),
    # -- top level, loops, data ---------------------------------------------------------
    pytest.param(
        M(rename("optim_wrapper", "optim_wraper"), "optim_wraper",
          ("unknown config key 'optim_wraper'", "did you mean 'optim_wrapper'")),
        id="top-level-optim_wraper",
    ),
    pytest.param(
        M(rename("param_scheduler", "param_schedulers"), "param_schedulers",
          ("did you mean 'param_scheduler'",)),
        id="top-level-param_schedulers",
    ),
    pytest.param(
        M(rename("optim_wrapper", "optimi_wrapper"), "optimi_wrapper",
          ("did you mean 'optim_wrapper'",)),
        id="top-level-optimi_wrapper",
    ),
    pytest.param(
        M(put("train_cfg.type", "EpochBasedTrainLop"), "train_cfg.type",
          ("registry LOOPS", "did you mean 'EpochBasedTrainLoop'")),
        id="train-loop-type-misspelt",
    ),
    pytest.param(
        M(put("train_cfg.max_epochs", "1"), "train_cfg.max_epochs", ("expected an int", "'1'")),
        id="max_epochs-as-string",
    ),
    pytest.param(
        M(put("train_cfg", dict(type="EpochBasedTrainLoop")), "train_cfg.max_epochs",
          ("EpochBasedTrainLoop needs 'max_epochs'",)),
        id="max_epochs-missing",
    ),
    pytest.param(
        M(put("train_cfg.val_interval", 0), "train_cfg.val_interval", ("must be >= 1, got 0",)),
        id="val_interval-0",
    ),
    pytest.param(
        M(put("train_cfg.dynamic_intervals", [8, 2]), "train_cfg.dynamic_intervals[0]",
          ("(milestone, interval) pair", "got 8")),
        id="dynamic_intervals-flat",
    ),
    pytest.param(
        M(drop("val_evaluator"), "val_evaluator", ("must be given together",)),
        id="val-without-evaluator",
    ),
    pytest.param(
        M(put("train_dataloader.batchsize", 64), "train_dataloader.batchsize",
          ("unknown dataloader key 'batchsize'", "did you mean 'batch_size'")),
        id="dataloader-key-misspelt",
    ),
    pytest.param(
        M(put("train_dataloader.shuffle", True), "train_dataloader.shuffle",
          ("sampler=dict(type='DefaultSampler', shuffle=True)",)),
        id="dataloader-shuffle",
    ),
    pytest.param(
        M(put("train_dataloader.collate_fn", "pseudo_collate"), "train_dataloader.collate_fn",
          ("dict(type='pseudo_collate')",)),
        id="collate_fn-as-string",
    ),
    pytest.param(
        M(put("train_dataloader.sampler.type", "DefaultSamplr"), "train_dataloader.sampler.type",
          ("registry DATA_SAMPLERS", "did you mean 'DefaultSampler'")),
        id="sampler-type-misspelt",
    ),
    pytest.param(
        M(put("train_dataloader.dataset.type", "Digit"), "train_dataloader.dataset.type",
          ("registry DATASETS", "did you mean 'Digits'")),
        id="dataset-type-misspelt",
    ),
    pytest.param(
        M(put("model.type", "DigitNet"), "model.type",
          ("registry MODELS", "did you mean 'DigitsNet'")),
        id="model-type-misspelt",
    ),
    pytest.param(
        M(put("custom_imports", dict(imports=["my_project.hooks"], allow_failed_imports=False)),
          "custom_imports.imports[0]", ("cannot import 'my_project.hooks'",)),
        id="custom-imports-missing-module",
    ),
    pytest.param(
        M(put("custom_imports", dict(imports=["functrain.zoo.DigitsNet"])),
          "custom_imports.imports[0]", ("the module that registers it ('functrain.zoo')",)),
        id="custom-imports-class-not-module",
    ),
    pytest.param(
        M(put("launcher", "slurm"), "launcher", ("'slurm' is not supported", "'pytorch'")),
        id="launcher-slurm",
    ),
    # -- files and the command line -----------------------------------------------------
    pytest.param(
        M(source="_base_ = ['./base.py', './schedule_1x.py']\n", error=FileNotFoundError,
          hints=("'./schedule_1x.py'", "config.py", "does not exist")),
        id="file-missing-base",
    ),
    pytest.param(
        M(source="_base_ = ['./base.py']\n"
                 "optim_wrapper = dict(\n    _delete_=True, clip_grad=dict(max_norm=35, norm_type=2))\n",
          path="optim_wrapper", hints=("needs an 'optimizer'", "_delete_=True")),
        id="file-delete-drops-optimizer",
    ),
    pytest.param(
        M(source="_base_ = ['./base.py']\n"
                 "optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.01)\n"
                 "train_cfg = dict(max_epochs=2)\n",
          error=SyntaxError, hints=("config.py", "line 2")),
        id="file-syntax-error",
    ),
    pytest.param(
        M(source="_base_ = ['./base.py']\nlr = base_lr * 2\n", error=ConfigFileError,
          hints=("config.py, line 2", "NameError", "base_lr")),
        id="file-undefined-name",
    ),
    pytest.param(
        M(cfg_options=("optim_wrapper.optimizer.lr",), error=ConfigFileError,
          hints=("'optim_wrapper.optimizer.lr' has no '='", "KEY=VALUE")),
        id="cfg-options-without-equals",
    ),
    pytest.param(
        M(cfg_options=("optim_wrapper.optimizer.momentun=0.9",),
          path="optim_wrapper.optimizer.momentun", hints=("did you mean 'momentum'",)),
        id="cfg-options-misspelt-key",
    ),
    pytest.param(
        M(cfg_options=("param_scheduler.5.end=10",), error=ConfigFileError,
          hints=("param_scheduler.5", "out of range", "valid indices 0..1")),
        id="cfg-options-index-out-of-range",
    ),
]  # fmt: skip

DICT_MISTAKES = [p for p in MISTAKES if p.values[0].source is None and not p.values[0].cfg_options]


def check_error(err: BaseException, mistake: Mistake) -> None:
    """The error is the documented one: its type, its path, its hints, on one line."""
    assert isinstance(err, mistake.error), f"{type(err).__name__}: {err}"
    text = str(err)
    assert "\n" not in text.strip()
    if mistake.error is ConfigError:
        assert isinstance(err, ConfigError)
        assert err.path == mistake.path, text
        assert text.startswith(f"{mistake.path}: "), text
    for hint in mistake.hints:
        assert hint in text, f"{hint!r} not in {text!r}"


def write_config(tmp_path: Path, mistake: Mistake) -> Path:
    """The config of a row as files: ``base.py`` (the valid base) and ``config.py``."""
    (tmp_path / "base.py").write_text(render(base_config()))
    cfg = base_config()
    if mistake.edit is not None:
        mistake.edit(cfg)
    path = tmp_path / "config.py"
    path.write_text(mistake.source if mistake.source is not None else render(cfg))
    return path


def test_the_table_has_enough_distinct_rows_and_the_docstring_lists_them():
    ids = [p.id for p in MISTAKES]
    assert len(ids) >= 25 and len(set(ids)) == len(ids)
    for row in ids:
        assert f"\n{row} " in __doc__, f"row {row!r} missing from the module docstring"


def test_the_base_config_builds(tmp_path):
    built = build_runner(base_config(), work_dir=tmp_path / "work", device="cpu")
    assert built.plan.optimizer["type"] == "SGD" and built.runner.val_loop is not None
    assert built.runner.train_loop.max_epochs == 1


@pytest.mark.parametrize("mistake", DICT_MISTAKES)
def test_dict_config_mistake(mistake: Mistake, tmp_path):
    cfg = base_config()
    mistake.edit(cfg)
    before = copy.deepcopy(cfg)
    with pytest.raises(mistake.error) as info:
        build_runner(cfg, work_dir=tmp_path / "work", device="cpu")
    check_error(info.value, mistake)
    assert cfg == before  # the config is not modified
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize("mistake", MISTAKES)
def test_config_file_mistake(mistake: Mistake, tmp_path):
    path = write_config(tmp_path, mistake)
    with pytest.raises(mistake.error) as info:
        cfg = load_config(path)
        if mistake.cfg_options:
            cfg = merge_from_dict(cfg, parse_cfg_options(list(mistake.cfg_options)))
        build_runner(cfg, work_dir=tmp_path / "work", device="cpu")
    check_error(info.value, mistake)
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize("mistake", MISTAKES)
def test_cli_mistake_exits_2_with_one_line(mistake: Mistake, tmp_path, capsys):
    path = write_config(tmp_path, mistake)
    argv = ["train", str(path), "--work-dir", str(tmp_path / "work"), "--device", "cpu"]
    if mistake.cfg_options:
        argv += ["--cfg-options", *mistake.cfg_options]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("functrain: error: ") and "Traceback" not in err
    if mistake.path is not None:
        assert lines[0].startswith(f"functrain: error: {mistake.path}: "), lines[0]
    for hint in mistake.hints:
        assert hint in lines[0], f"{hint!r} not in {lines[0]!r}"
    assert out == ""
    assert not (tmp_path / "work").exists()


def test_error_format_is_path_colon_reason_on_one_line():
    err = ConfigError("optim_wrapper.optimizer.lr", "expected a number,\n  got '0.01'")
    assert (err.path, err.reason) == ("optim_wrapper.optimizer.lr", "expected a number, got '0.01'")
    assert str(err) == "optim_wrapper.optimizer.lr: expected a number, got '0.01'"
    assert isinstance(err, ValueError)


def test_a_missing_config_file_exits_2(tmp_path, capsys):
    assert main(["train", str(tmp_path / "nope.py"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("functrain: error: ") and "nope.py" in err


# ----------------------------------------------------------------------------------------
# Warnings, not errors
# ----------------------------------------------------------------------------------------


def test_custom_key_matching_nothing_warns_and_changes_nothing_like_mmengine(tmp_path):
    """mmengine's DefaultOptimWrapperConstructor silently ignores a custom key that is a
    substring of no parameter name (a 'neck' key copied from a detector config onto a model
    without a neck). functrain builds the same thing (every multiplier 1) and warns with the
    key's path and the model's top-level modules."""
    from mmengine.optim import build_optim_wrapper

    cfg = base_config()
    cfg["optim_wrapper"]["paramwise_cfg"] = dict(
        custom_keys={"neck": dict(lr_mult=0.1), "backbone": dict(lr_mult=0.5)}
    )
    with pytest.warns(UserWarning) as record:
        built = build_runner(cfg, work_dir=tmp_path / "work", device="cpu")
    messages = [str(w.message) for w in record if "custom_keys" in str(w.message)]
    assert len(messages) == 1, messages  # one warning, for 'neck' only (not the inner one too)
    assert messages[0].startswith("optim_wrapper.paramwise_cfg.custom_keys.neck: ")
    assert "top-level modules: backbone, head" in messages[0]

    torch.manual_seed(0)
    model = built.model
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # mmengine says nothing about the unused key
        wrapper = build_optim_wrapper(model, copy.deepcopy(cfg["optim_wrapper"]))
    names = {id(p): n for n, p in model.named_parameters()}
    for group in wrapper.optimizer.param_groups:
        (param,) = group["params"]
        mult = built.plan.multipliers[names[id(param)]]
        assert mult == Multiplier(group["lr"] / 0.01, group["weight_decay"] / 1e-4)
    assert {m.lr_mult for m in built.plan.multipliers.values()} == {0.5, 1.0}


def test_allow_failed_imports_warns_and_builds(tmp_path):
    cfg = base_config()
    cfg["custom_imports"] = dict(imports=["my_project.hooks"], allow_failed_imports=True)
    with pytest.warns(UserWarning, match=r"custom_imports\.imports\[0\]: my_project\.hooks"):
        built = build_runner(cfg, work_dir=tmp_path / "work", device="cpu")
    assert built.plan is not None


def test_mmcv1_keys_warn_and_name_the_replacement(tmp_path):
    cfg = base_config()
    cfg["lr_config"] = dict(policy="step", step=[8, 11])
    cfg["runner"] = dict(type="EpochBasedRunner", max_epochs=12)
    with pytest.warns(UserWarning) as record:
        built = build_runner(cfg, work_dir=tmp_path / "work", device="cpu")
    text = " | ".join(str(w.message) for w in record)
    assert "lr_config: an MMCV 1.x" in text and "use param_scheduler" in text
    assert "runner: an MMCV 1.x" in text and "train_cfg=dict(type='EpochBasedTrainLoop'" in text
    assert built.runner.train_loop.max_epochs == 1  # ignored, as mmengine ignores them


def test_the_base_config_trains_through_the_cli(tmp_path, capsys):
    """The base every row changes is valid end to end (so each row fails by its mistake)."""
    path = write_config(tmp_path, Mistake())
    assert main(["train", str(path), "--work-dir", str(tmp_path / "work"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "trained 1 epochs" in out and "accuracy" in out.lower()
    assert any((tmp_path / "work").rglob("*.pth"))
