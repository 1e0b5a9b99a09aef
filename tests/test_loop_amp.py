"""The train step with a loss_scaling transform: mmengine's AmpOptimWrapper / GradScaler flow."""

from __future__ import annotations

import functools

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
    for batch in data[:3]:
        # The reported loss is the unscaled loss of the parameters the step started from:
        # the same forward (same kernels, inputs and order) recomputed here, so bitwise.
        forward = functools.partial(torch.func.functional_call, model, state.params)
        expected_loss = loss_fn(forward, batch)
        state, metrics = step(state, batch)
        assert torch.equal(metrics["loss"], expected_loss)
        scales.append(ft.find_loss_scale_state(state.opt_state).scale.item())
        losses.append(metrics["loss"].item())
    for batch in data[3:]:
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
    # Robust on every machine: step 3's targets are inf, so its loss overflows whatever the
    # rounding, and no other step comes near float32's range; the growth every 3 finite steps
    # is then a count, and the scales are powers of two.
    assert scales == ref_scales  # includes the back-off after the overflowing step 3
    assert scales[3] == scales[2] / 2
    # The first loss is bitwise (the same initial weights through the same forward). After a
    # step the parameters differ by an ulp or two (~1.2e-7 relative): functrain's unscale,
    # clip and AdamW round in another order than GradScaler.unscale_ + clip_grad_norm_ +
    # torch's for-loop AdamW, and which entries differ depends on the CPU's kernels. The loss,
    # a smooth function of 49 parameters of O(1) gradient, moves by at most
    # sum |dL/dp| |dp| ~ 1e-6 relative after two steps (measured: one ulp, 8e-8).
    assert losses[0] == ref_losses[0]
    torch.testing.assert_close(losses[1:3], ref_losses[1:3], rtol=1e-6, atol=0.0)
    for name, p in ref.named_parameters():
        torch.testing.assert_close(state.params[name], p.detach(), rtol=1e-5, atol=1e-6)
