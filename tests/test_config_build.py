"""build_optimizer / build_runner wiring that the mmengine parity tests cannot reach on a CPU:
AmpOptimWrapper (mmengine's needs CUDA), a registered torch.optim.Optimizer subclass, and
mmengine's ZeroRedundancyOptimizer config in one process."""

from __future__ import annotations

import pytest
import torch

import functrain as ft
from functrain.config import OPTIMIZERS, build_optimizer, build_runner
from functrain.transforms.loss_scaling import find_loss_scale_state
from functrain.zoo import DigitsNet

torch.set_num_threads(1)


def config(optim_wrapper, **changes):
    cfg = dict(
        model=dict(type="DigitsNet"),
        train_dataloader=dict(
            batch_size=64,
            sampler=dict(type="DefaultSampler", shuffle=True),
            dataset=dict(type="Digits", split="train"),
        ),
        train_cfg=dict(by_epoch=False, max_iters=6),
        optim_wrapper=optim_wrapper,
        default_hooks=dict(checkpoint=None, logger=None),
        randomness=dict(seed=0),
    )
    cfg.update(changes)
    return cfg


def train(cfg, tmp_path):
    built = build_runner(cfg, device="cpu", work_dir=tmp_path)
    return built, built.runner.train()


def batches(n):
    built = build_runner(config(dict(optimizer=dict(type="SGD", lr=0.1))), device="cpu")
    loader = built.runner.train_dataloader
    out = []
    while len(out) < n:
        out += list(loader)
    return out[:n]


def manual(tx, autocast=None):
    """The same run written by hand with functrain's pieces."""
    torch.manual_seed(0)
    model = DigitsNet()
    state = ft.TrainState.create(model, tx)

    def loss_fn(forward, batch):
        x, y = batch
        return forward(x, y, mode="loss")["loss"]

    step = ft.make_train_step(model, loss_fn, tx, autocast=autocast)
    for batch in batches(6):
        state, _ = step(state, batch)
    return state


@pytest.mark.parametrize(
    "loss_scale", ["dynamic", 512.0, dict(init_scale=256.0, growth_interval=2)]
)
def test_amp_optim_wrapper_is_loss_scaling_under_autocast(tmp_path, loss_scale):
    optim_wrapper = dict(
        type="AmpOptimWrapper",
        dtype="bfloat16",
        loss_scale=loss_scale,
        optimizer=dict(type="SGD", lr=0.05, momentum=0.9),
        clip_grad=dict(max_norm=1.0),
    )
    built, state = train(config(optim_wrapper), tmp_path)
    assert built.plan.autocast is torch.bfloat16
    kwargs = (
        {}
        if loss_scale == "dynamic"
        else dict(init_scale=loss_scale, dynamic=False)
        if isinstance(loss_scale, float)
        else loss_scale
    )
    tx = ft.loss_scaling(ft.chain(ft.clip(1.0), ft.sgd(lr=0.05, momentum=0.9)), **kwargs)
    expected = manual(tx, autocast=torch.bfloat16)
    for k, v in expected.params.items():
        assert torch.equal(state.params[k], v), k
    scale = find_loss_scale_state(state.opt_state).scale
    assert torch.equal(scale, find_loss_scale_state(expected.opt_state).scale)
    if isinstance(loss_scale, float):
        assert scale.item() == loss_scale  # static: never grows
    if isinstance(loss_scale, dict):
        assert scale.item() == 256.0 * 2**3  # grew every 2 good steps


def test_registered_torch_optimizer_class_runs_through_the_adapter(tmp_path, monkeypatch):
    class SeedOptimizer(torch.optim.Optimizer):
        """The seed's MyOptimizer(a, b, c) shape: momentum a, decay b, step scale c."""

        def __init__(self, params, lr=0.01, a=0.9, b=1e-4, c=1.0):
            super().__init__(params, dict(lr=lr, a=a, b=b, c=c))

        @torch.no_grad()
        def step(self, closure=None):
            for group in self.param_groups:
                for p in group["params"]:
                    state = self.state[p]
                    buf = state.setdefault("buf", torch.zeros_like(p))
                    buf.mul_(group["a"]).add_(p.grad + group["b"] * p)
                    p.add_(buf, alpha=-group["lr"] * group["c"])

    monkeypatch.setattr(OPTIMIZERS, "_entries", dict(OPTIMIZERS._entries))
    OPTIMIZERS.register_module(module=SeedOptimizer)
    optim_wrapper = dict(optimizer=dict(type="SeedOptimizer", lr=0.05, a=0.8, b=1e-3, c=0.5))
    _, state = train(config(optim_wrapper), tmp_path)
    expected = manual(ft.from_torch_optimizer(SeedOptimizer, lr=0.05, a=0.8, b=1e-3, c=0.5))
    for k, v in expected.params.items():
        assert torch.equal(state.params[k], v), k


def test_zero_redundancy_optimizer_config_in_one_process_is_the_plain_optimizer(tmp_path):
    zero = dict(optimizer=dict(type="ZeroRedundancyOptimizer", optimizer_type="AdamW", lr=1e-3))
    plain = dict(optimizer=dict(type="AdamW", lr=1e-3))
    plan = build_optimizer(zero, DigitsNet())
    assert plan.sharded and plan.optimizer["type"] == "AdamW"
    _, a = train(config(zero), tmp_path / "zero")
    _, b = train(config(plain), tmp_path / "plain")
    for k, v in b.params.items():
        assert torch.allclose(a.params[k], v, rtol=1e-6, atol=1e-7), k
