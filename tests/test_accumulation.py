"""Gradient accumulation against mmengine's ``OptimWrapper(accumulative_counts=N)``.

mmengine scales each micro-batch's loss by ``1 / N`` (``1 / (max_iters % N)`` in the last,
shortened window), sums the gradients in ``.grad``, clips and steps on the window's last
micro-batch. ``accumulate`` receives the unscaled gradients and does the same division and
sum, so the trajectories agree to rounding (``grad(loss / N)`` vs ``grad(loss) / N``).
"""

from __future__ import annotations

import copy

import optree
import pytest
import torch
from mmengine.optim import OptimWrapper
from mmengine.optim.scheduler import ExponentialLR
from torch import nn

import functrain as ft
from functrain.transforms.accumulation import (
    AccumulateState,
    accumulate,
    has_updated,
    optimizer_step_schedule,
)
from tests.conftest import make_tree
from tests.test_parity_torch import assert_bitwise, assert_rel


class Net(nn.Module):
    """0-d, 1-d and 2-d parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.lin1 = nn.Linear(5, 8)
        self.lin2 = nn.Linear(8, 3)
        self.temperature = nn.Parameter(torch.tensor(1.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(torch.tanh(self.lin1(x))) * self.temperature


def problem(dtype, iters, seed=0):
    torch.manual_seed(seed)
    model = Net().to(dtype)
    gen = torch.Generator().manual_seed(seed + 1)
    xs = torch.randn(iters, 6, 5, generator=gen, dtype=dtype)
    ys = torch.randn(iters, 6, 3, generator=gen, dtype=dtype)
    return model, xs, ys


def loss_fn(out, y):
    return ((out - y) ** 2).mean()


def mmengine_run(model, xs, ys, make_opt, n, max_iters, clip, gamma=None):
    model = copy.deepcopy(model)
    wrapper = OptimWrapper(
        make_opt(model.parameters()),
        accumulative_counts=n,
        clip_grad=None if clip is None else dict(max_norm=clip),
    )
    wrapper.initialize_count_status(model, 0, max_iters)
    scheduler = None if gamma is None else ExponentialLR(wrapper, gamma=gamma, by_epoch=False)
    for i in range(max_iters):
        wrapper.update_params(loss_fn(model(xs[i]), ys[i]))
        if scheduler is not None:
            scheduler.step()  # ParamSchedulerHook.after_train_iter: once per micro-batch
    return {k: v.detach() for k, v in model.named_parameters()}


def functrain_run(model, xs, ys, tx, max_iters):
    params = {k: v.detach().clone() for k, v in model.named_parameters()}

    def loss(p, x, y):
        return loss_fn(torch.func.functional_call(model, p, (x,)), y)

    state = tx.init(params)
    steps = 0
    for i in range(max_iters):
        grads = torch.func.grad(loss)(params, xs[i], ys[i])
        updates, state = tx.update(grads, state, params)
        params = ft.apply_updates(params, updates)
        steps += has_updated(state)
    return params, state, steps


OPTIMIZERS = {
    "sgd": (
        lambda ps: torch.optim.SGD(
            ps, lr=0.05, momentum=0.9, weight_decay=1e-3, nesterov=True, foreach=False
        ),
        lambda lr: ft.sgd(lr=lr, momentum=0.9, weight_decay=1e-3, nesterov=True),
        0.05,
    ),
    "adamw": (
        lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.05, foreach=False),
        lambda lr: ft.adamw(lr=lr, weight_decay=0.05),
        0.01,
    ),
}


@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
@pytest.mark.parametrize(
    "n, max_iters, clip",
    [(1, 9, 0.5), (3, 20, 0.5), (4, 23, None), (5, 21, 0.2), (4, 24, 0.5)],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_mmengine_optim_wrapper(opt, n, max_iters, clip, dtype):
    make_torch, make_ft, lr = OPTIMIZERS[opt]
    model, xs, ys = problem(dtype, max_iters)
    expected = mmengine_run(model, xs, ys, make_torch, n, max_iters, clip)
    inner = make_ft(lr) if clip is None else ft.chain(ft.clip(clip), make_ft(lr))
    params, state, steps = functrain_run(model, xs, ys, accumulate(inner, n, max_iters), max_iters)
    initial = dict(model.named_parameters())
    rtol = 1e-6 if dtype == torch.float32 else 1e-12
    assert_rel(params, expected, initial, rtol, f"accumulate({opt}, {n}) vs mmengine")
    assert steps == -(-max_iters // n)  # the shortened last window steps too
    assert state.micro_step == max_iters and state.acc is None


# torch warns that the scheduler stepped before the optimizer: the first micro-batches of a
# window do not step it, which is the point.
@pytest.mark.filterwarnings(r"ignore:Detected call of `scheduler.step\(\)` before")
@pytest.mark.parametrize("n, max_iters", [(3, 20), (4, 24)])
def test_schedule_advances_once_per_optimizer_step(n, max_iters):
    make_torch, make_ft, lr = OPTIMIZERS["adamw"]
    model, xs, ys = problem(torch.float64, max_iters, seed=3)
    expected = mmengine_run(model, xs, ys, make_torch, n, max_iters, 0.5, gamma=0.9)
    seen = []

    def per_iteration(it):
        seen.append(int(it))
        return lr * torch.pow(torch.tensor(0.9, dtype=torch.float64), it)

    schedule = optimizer_step_schedule(per_iteration, n, max_iters)
    tx = accumulate(ft.chain(ft.clip(0.5), make_ft(schedule)), n, max_iters)
    params, state, steps = functrain_run(model, xs, ys, tx, max_iters)
    assert_rel(params, expected, dict(model.named_parameters()), 1e-12, "scheduled lr")
    # Evaluated once at init and once per optimizer step, at the window's last iteration.
    windows_end = [min(k * n + n - 1, max_iters - 1) for k in range(steps)]
    assert seen == [n - 1] + windows_end
    assert state.inner_state[1][1].count.item() == steps


def test_pure_and_donating_are_bitwise_equal_and_updates_are_zero_between_steps():
    gen = torch.Generator().manual_seed(4)
    params = make_tree(generator=gen)
    grads = [make_tree(generator=gen, scale=0.3) for _ in range(10)]
    tx = accumulate(ft.chain(ft.clip(1.0), ft.adamw(lr=0.01)), 3, max_iters=10)
    p, state = optree.tree_map(torch.clone, params), tx.init(params)
    q, qstate = optree.tree_map(torch.clone, params), tx.init(params)
    for i, g in enumerate(grads):
        updates, state = tx.update(optree.tree_map(torch.clone, g), state, p)
        p = ft.apply_updates(p, updates)
        q, qstate = ft.apply_gradients(
            tx, q, optree.tree_map(torch.clone, g), qstate, donate=True, fused=False
        )
        assert_bitwise(p, q, f"micro-step {i}: pure vs donating")
        stepped = (i + 1) % 3 == 0 or i == 9
        assert has_updated(state) == stepped
        assert (state.acc is None) == stepped  # the buffer lives only inside a window
        if not stepped:
            assert all(torch.count_nonzero(u) == 0 for u in optree.tree_leaves(updates))
    assert isinstance(state, AccumulateState)


def test_errors():
    with pytest.raises(ValueError, match="accumulative_counts"):
        accumulate(ft.sgd(), 0)
    with pytest.raises(ValueError, match="max_iters"):
        accumulate(ft.sgd(), 2, max_iters=0)
    tx = accumulate(ft.sgd(), 2, max_iters=3)
    params = {"w": torch.ones(2)}
    state = tx.init(params)
    for _ in range(3):
        _, state = tx.update(params, state, params)
    with pytest.raises(ValueError, match="past max_iters=3"):
        tx.update(params, state, params)
