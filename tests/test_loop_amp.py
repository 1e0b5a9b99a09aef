"""The train step with a loss_scaling transform: mmengine's AmpOptimWrapper / GradScaler flow."""

from __future__ import annotations

import torch

import functrain as ft


def make():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))


def loss_fn(forward, batch):
    x, y = batch
    return ((forward(x) - y) ** 2).mean()


def batches(n):
    gen = torch.Generator().manual_seed(1)
    out = [(torch.randn(16, 4, generator=gen), torch.randn(16, 1, generator=gen)) for _ in range(n)]
    out[3] = (out[3][0], torch.full((16, 1), float("inf")))  # an overflowing step
    return out


def test_train_step_scales_the_loss_and_matches_grad_scaler():
    data = batches(12)
    model = make()
    tx = ft.loss_scaling(
        ft.chain(ft.clip(1.0), ft.adamw(lr=1e-2)), init_scale=2.0**10, growth_interval=3
    )
    step = ft.make_train_step(model, loss_fn, tx)
    state = ft.TrainState.create(model, tx)
    scales, losses = [], []
    for batch in data:
        state, metrics = step(state, batch)
        scales.append(ft.find_loss_scale_state(state.opt_state).scale.item())
        losses.append(metrics["loss"].item())

    ref = make()
    opt = torch.optim.AdamW(ref.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=3)
    ref_scales, ref_losses = [], []
    for x, y in data:
        opt.zero_grad()
        loss = ((ref(x) - y) ** 2).mean()
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        ref_scales.append(scaler.get_scale())
        ref_losses.append(loss.item())
    assert scales == ref_scales  # includes the back-off after the overflowing step 3
    assert scales[3] == scales[2] / 2
    assert losses[:3] == ref_losses[:3]  # metrics report the unscaled loss
    for name, p in ref.named_parameters():
        torch.testing.assert_close(state.params[name], p.detach(), rtol=1e-5, atol=1e-6)
