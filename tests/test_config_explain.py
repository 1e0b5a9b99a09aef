"""explain(): the per-parameter lr / weight decay table equals mmengine's param groups, and
the schedule table prints the schedules' values; the mmengine-style Hook base class."""

from __future__ import annotations

import re

import pytest
import torch

from functrain.config import Hook, build_optimizer, build_runner
from functrain.config.explain import explain, key_iterations
from functrain.zoo import DigitsNet

torch.set_num_threads(1)

PARAMWISE = dict(
    custom_keys={"backbone.6": dict(lr_mult=0.5)},
    norm_decay_mult=0.0,
    bias_lr_mult=2.0,
    dwconv_decay_mult=0.25,
)


def config(**changes):
    cfg = dict(
        model=dict(type="DigitsNet"),
        train_dataloader=dict(
            batch_size=64,
            sampler=dict(type="DefaultSampler", shuffle=True),
            dataset=dict(type="Digits", split="train"),
        ),
        train_cfg=dict(by_epoch=True, max_epochs=4),
        optim_wrapper=dict(
            optimizer=dict(type="AdamW", lr=1e-3, weight_decay=0.05), paramwise_cfg=PARAMWISE
        ),
        param_scheduler=[
            dict(type="LinearLR", start_factor=0.1, by_epoch=False, begin=0, end=10),
            dict(type="CosineAnnealingLR", T_max=3, by_epoch=True, begin=1, end=4),
        ],
        randomness=dict(seed=0),
    )
    cfg.update(changes)
    return cfg


def test_lr_and_decay_per_parameter_equal_mmengine_param_groups():
    from mmengine.optim import build_optim_wrapper

    model = DigitsNet()
    cfg = config()
    wrapper = build_optim_wrapper(model, dict(cfg["optim_wrapper"]))
    names = {id(p): n for n, p in model.named_parameters()}
    reference = {
        names[id(p)]: (g["lr"], g["weight_decay"])
        for g in wrapper.param_groups
        for p in g["params"]
        if id(p) in names  # mmengine 0.10.7 adds a 0-d placeholder tensor to one group
    }
    plan = build_optimizer(cfg["optim_wrapper"], model)
    ours = {n: (1e-3 * m.lr_mult, 0.05 * m.decay_mult) for n, m in plan.multipliers.items()}
    assert ours.keys() == reference.keys()
    for name, (lr, wd) in reference.items():
        assert ours[name] == pytest.approx((lr, wd), rel=1e-12), name
    text = explain(cfg, model)
    row = next(line for line in text.splitlines() if line.strip().startswith("backbone.6.bias "))
    lr, wd = reference["backbone.6.bias"]  # custom key wins: lr_mult 0.5, no bias_lr_mult
    assert re.search(rf"\b{lr:.4g}\s+{wd:.4g}\b", row), row
    assert "mask_multipliers" in text and "AdamW(" in text


def test_schedule_table_shows_the_values_at_window_edges():
    cfg = config()
    built = build_runner(cfg, device="cpu")
    epoch_length = len(built.runner.train_dataloader)
    steps = key_iterations(cfg, epoch_length, built.runner.train_loop.max_iters)
    assert {0, 9, 10, epoch_length, 4 * epoch_length - 1} <= set(steps)
    text = explain(cfg)
    lr = built.plan.schedules["lr"]
    for step in steps:
        line = next(x for x in text.splitlines() if re.match(rf"\s+{step}\s", x))
        assert float(line.split()[1]) == pytest.approx(float(lr(step)), rel=1e-5), line


def test_mmengine_style_hook_runs_without_the_state_argument(tmp_path):
    seen = []

    class Recorder(Hook):
        priority = "LOW"

        def before_train_epoch(self, runner):
            seen.append(("epoch", runner.epoch))

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            seen.append(("iter", runner.iter, float(outputs["loss"]) > 0))

    cfg = config(train_cfg=dict(by_epoch=True, max_epochs=1), custom_hooks=[Recorder()])
    built = build_runner(cfg, device="cpu", work_dir=tmp_path)
    built.runner.train()
    n = len(built.runner.train_dataloader)
    assert seen == [("epoch", 0)] + [("iter", i, True) for i in range(n)]


def test_num_class_check_hook_from_the_seed(tmp_path):
    """The seed's `custom_hooks = [dict(type='NumClassCheckHook')]`."""
    hooks = [dict(type="NumClassCheckHook")]
    cfg = config(train_cfg=dict(by_epoch=True, max_epochs=1), custom_hooks=hooks)
    build_runner(cfg, device="cpu", work_dir=tmp_path / "ok").runner.train()  # 10 == 10
    cfg["model"] = dict(type="DigitsNet", num_classes=9)
    runner = build_runner(cfg, device="cpu", work_dir=tmp_path / "bad").runner
    with pytest.raises(ValueError, match=r"num_classes=9 of DigitsNet .* 10 classes of Digits"):
        runner.train()
