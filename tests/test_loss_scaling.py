"""Dynamic loss scaling against ``torch.amp.GradScaler`` (on CPU), with injected inf/nan.

The torch side is mmengine's ``AmpOptimWrapper.step``: ``scaler.scale(loss).backward()``,
``scaler.unscale_`` + ``clip_grad_norm_`` when clipping, ``scaler.step(opt)``,
``scaler.update()``; with a static scale, ``scaler.update(loss_scale)``.
"""

from __future__ import annotations

import copy
import math

import optree
import pytest
import torch
from torch import nn

import functrain as ft
from functrain.transforms.accumulation import accumulate, has_updated
from functrain.transforms.loss_scaling import LossScaleState, loss_scaling, scale_loss
from functrain.transforms.state_values import set_hyperparam, values_in_force
from functrain.tree import NAMESPACE
from tests.test_parity_torch import assert_bitwise, assert_rel

STEPS = 30
BAD = {
    0: math.inf,
    1: math.nan,
    5: -math.inf,
    9: math.inf,
    10: math.nan,
    11: math.inf,
    20: math.nan,
}


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin1 = nn.Linear(5, 8)
        self.lin2 = nn.Linear(8, 3)
        self.temperature = nn.Parameter(torch.tensor(1.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(torch.tanh(self.lin1(x))) * self.temperature


def problem(seed=0):
    torch.manual_seed(seed)
    model = Net()
    gen = torch.Generator().manual_seed(seed + 1)
    return model, torch.randn(STEPS, 6, 5, generator=gen), torch.randn(STEPS, 6, 3, generator=gen)


def loss_fn(out, y):
    return ((out - y) ** 2).mean()


def torch_run(model, xs, ys, make_opt, clip, scaler_kw, static=None):
    model = copy.deepcopy(model)
    opt = make_opt(model.parameters())
    scaler = torch.amp.GradScaler("cpu", **scaler_kw)
    scales, params = [], []
    for i in range(STEPS):
        opt.zero_grad()
        scaler.scale(loss_fn(model(xs[i]), ys[i])).backward()
        if i in BAD:
            model.lin1.weight.grad[1, 2] = BAD[i]
        if clip is not None:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        scaler.step(opt)
        scaler.update(static)
        scales.append(scaler.get_scale())
        params.append({k: v.detach().clone() for k, v in model.named_parameters()})
    return scales, params


def functrain_run(model, xs, ys, tx, donate):
    params = {k: v.detach().clone() for k, v in model.named_parameters()}

    def scaled_loss(p, x, y, state):
        return scale_loss(loss_fn(torch.func.functional_call(model, p, (x,)), y), state)

    state = tx.init(params)
    scales, skipped, trajectory = [], [], []
    for i in range(STEPS):
        grads = torch.func.grad(scaled_loss)(params, xs[i], ys[i], state)
        if i in BAD:
            grads["lin1.weight"][1, 2] = BAD[i]
        if donate:
            params, state = ft.apply_gradients(tx, params, grads, state, donate=True, fused=False)
        else:
            updates, state = tx.update(grads, state, params)
            params = ft.apply_updates(params, updates)
        ls = state if isinstance(state, LossScaleState) else state[0]
        scales.append(ls.scale.item())
        skipped.append(bool(ls.found_inf.item()))
        trajectory.append(optree.tree_map(torch.clone, params))
    return scales, skipped, trajectory, state


OPTIMIZERS = {
    "sgd-momentum": (
        lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=1e-3, foreach=False),
        lambda: ft.sgd(lr=0.05, momentum=0.9, weight_decay=1e-3),
    ),
    "adam": (
        lambda ps: torch.optim.Adam(ps, lr=0.01, foreach=False),
        lambda: ft.adam(lr=0.01),
    ),
}


@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
@pytest.mark.parametrize("clip", [None, 0.5])
@pytest.mark.parametrize(
    "scaler_kw",
    [
        dict(growth_interval=3),
        dict(init_scale=1000.0, growth_factor=3.0, backoff_factor=0.25, growth_interval=2),
    ],
)
def test_matches_grad_scaler(opt, clip, scaler_kw):
    make_torch, make_ft = OPTIMIZERS[opt]
    model, xs, ys = problem()
    scales, expected = torch_run(model, xs, ys, make_torch, clip, scaler_kw)
    inner = make_ft() if clip is None else ft.chain(ft.clip(clip), make_ft())
    tx = loss_scaling(inner, **scaler_kw)
    got_scales, skipped, trajectory, state = functrain_run(model, xs, ys, tx, donate=False)
    assert got_scales == scales
    assert skipped == [i in BAD for i in range(STEPS)]
    initial = dict(model.named_parameters())
    for i in range(STEPS):
        assert_rel(trajectory[i], expected[i], initial, 1e-6, f"step {i} vs GradScaler")
        if i in BAD and i > 0:
            assert_bitwise(trajectory[i], trajectory[i - 1], f"skipped step {i}")
    _, _, donated, dstate = functrain_run(model, xs, ys, tx, donate=True)
    assert_bitwise(donated[-1], trajectory[-1], "pure vs donating")
    for a, b in zip(
        optree.tree_leaves(state, namespace=NAMESPACE),
        optree.tree_leaves(dstate, namespace=NAMESPACE),
        strict=True,
    ):
        assert torch.equal(a, b)


def test_static_scale_matches_mmengine_static_loss_scale():
    make_torch, make_ft = OPTIMIZERS["sgd-momentum"]
    model, xs, ys = problem(1)
    scales, expected = torch_run(model, xs, ys, make_torch, 0.5, dict(init_scale=512.0), 512.0)
    tx = loss_scaling(ft.chain(ft.clip(0.5), make_ft()), init_scale=512.0, dynamic=False)
    got_scales, skipped, trajectory, _ = functrain_run(model, xs, ys, tx, donate=False)
    assert got_scales == scales == [512.0] * STEPS
    assert skipped == [i in BAD for i in range(STEPS)]
    assert_rel(trajectory[-1], expected[-1], dict(model.named_parameters()), 1e-6, "static")


def test_mixed_dtypes_share_one_found_inf_and_the_scale_is_settable():
    params = {"a": torch.ones(3), "h": torch.ones(4, dtype=torch.float16)}
    tx = ft.chain(loss_scaling(ft.sgd(lr=1.0), init_scale=4.0, growth_interval=1))
    state = tx.init(params)
    grads = {"a": torch.full((3,), 8.0), "h": torch.full((4,), 8.0, dtype=torch.float16)}
    updates, state = tx.update(grads, state, params)
    assert torch.equal(updates["a"], torch.full((3,), -2.0))
    assert torch.equal(updates["h"], torch.full((4,), -2.0, dtype=torch.float16))
    assert values_in_force(state)["loss_scale"].item() == 8.0  # grew after one good step
    grads["h"] = torch.tensor([1.0, 1.0, math.inf, 1.0], dtype=torch.float16)
    updates, state = tx.update(grads, state, params)
    assert all(torch.count_nonzero(u) == 0 for u in optree.tree_leaves(updates))
    assert state[0].found_inf.item() == 1.0 and state[0].scale.item() == 4.0
    state = set_hyperparam(state, "loss_scale", 1024.0)
    assert scale_loss(torch.tensor(2.0, dtype=torch.float16), state).item() == 2048.0
    half = torch.tensor(2.0, dtype=torch.float16)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    assert scale_loss(half, state).dtype == scaler.scale(half).dtype  # torch's promotion
    batch = torch.ones(3, dtype=torch.float16)
    assert scale_loss(batch, state).dtype == scaler.scale(batch).dtype == torch.float16


def test_differentiable_through_two_steps():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, generator=gen, dtype=torch.float64)
    y = torch.randn(8, 2, generator=gen, dtype=torch.float64)
    p0 = {"w": torch.randn(3, 2, generator=gen, dtype=torch.float64)}

    def loss(p):
        return ((x @ p["w"] - y) ** 2).mean()

    tx = loss_scaling(ft.chain(ft.clip(0.5), ft.adam(lr=0.1)), init_scale=8.0)

    def meta_loss(p):
        state = tx.init(p)
        for _ in range(2):
            grads = torch.func.grad(lambda q, s=state: scale_loss(loss(q), s))(p)
            updates, state = tx.update(grads, state, p)
            p = ft.apply_updates(p, updates)
        return loss(p)

    analytic = torch.func.grad(meta_loss)(p0)
    direction = {"w": torch.randn(3, 2, generator=gen, dtype=torch.float64)}
    h = 1e-6
    plus = meta_loss({"w": p0["w"] + h * direction["w"]})
    minus = meta_loss({"w": p0["w"] - h * direction["w"]})
    numeric = ((plus - minus) / (2 * h)).item()
    assert (analytic["w"] * direction["w"]).sum().item() == pytest.approx(numeric, rel=1e-6)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(init_scale=0.0), "init_scale"),
        (dict(growth_factor=1.0), "growth_factor"),
        (dict(backoff_factor=1.0), "backoff_factor"),
        (dict(growth_interval=0), "growth_interval"),
    ],
)
def test_invalid_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        loss_scaling(ft.sgd(), **kw)


def test_accumulated_scaled_gradients_are_unscaled_once_per_step():
    """accumulate(loss_scaling(opt), N): mmengine's AmpOptimWrapper with accumulative_counts
    (each micro-batch backpropagates scale * loss / N; one unscale, step and update per
    window). An inf in one micro-batch skips its whole window."""
    n, iters = 3, 14
    make_torch, make_ft = OPTIMIZERS["adam"]
    model, xs, ys = problem(2)
    bad = {4: math.inf, 12: math.nan}

    ref = copy.deepcopy(model)
    opt = make_torch(ref.parameters())
    scaler = torch.amp.GradScaler("cpu", growth_interval=2)
    scales = []
    for i in range(iters):
        factor = n if i < iters - iters % n else iters % n
        scaler.scale(loss_fn(ref(xs[i]), ys[i]) / factor).backward()
        if i in bad:
            ref.lin1.weight.grad[0, 0] = bad[i]
        if (i + 1) % n == 0 or i + 1 == iters:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.5)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad()
            scales.append(scaler.get_scale())

    def scaled_loss(p, x, y, s):
        return scale_loss(loss_fn(torch.func.functional_call(model, p, (x,)), y), s)

    tx = accumulate(loss_scaling(ft.chain(ft.clip(0.5), make_ft()), growth_interval=2), n, iters)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    state = tx.init(params)
    got = []
    for i in range(iters):
        grads = torch.func.grad(scaled_loss)(params, xs[i], ys[i], state)
        if i in bad:
            grads["lin1.weight"][0, 0] = bad[i]
        updates, state = tx.update(grads, state, params)
        params = ft.apply_updates(params, updates)
        if has_updated(state):
            got.append(state.inner_state.scale.item())
    assert got == scales
    expected = {k: v.detach() for k, v in ref.named_parameters()}
    assert_rel(params, expected, dict(model.named_parameters()), 1e-6, "accumulate + scaling")
