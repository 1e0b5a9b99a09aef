"""Scheduled hyperparameters (lr, momentum / betas[0], weight decay) against torch.optim.

The reference is what mmengine does: its schedulers rewrite the optimizer's param_group
before each step. The seed config (CosineAnnealingLR + CosineAnnealingMomentum, up then down,
converted to iterations) runs through mmengine's real schedulers and torch's AdamW.
"""

from __future__ import annotations

import warnings

import optree
import pytest
import torch

import functrain as ft
from functrain.schedules import cosine_annealing_lr, from_mmengine, linear_lr
from tests.conftest import make_tree
from tests.test_parity_torch import assert_rel, grads_sequence

STEPS = 100


def run_functrain(tx, params, grads_seq, fused=None):
    p, state = optree.tree_map(torch.clone, params), tx.init(params)
    for g in grads_seq:
        p, state = ft.apply_gradients(tx, p, g, state, fused=fused)
    return p, state


def run_torch(make_opt, params, grads_seq, set_group):
    leaves = [torch.nn.Parameter(t.clone()) for t in optree.tree_leaves(params)]
    opt = make_opt(leaves)
    for step, grads in enumerate(grads_seq):
        set_group(opt.param_groups[0], step)
        for p, g in zip(leaves, optree.tree_leaves(grads), strict=True):
            p.grad = g.clone()
        opt.step()
    return optree.tree_unflatten(optree.tree_structure(params), [p.detach() for p in leaves])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("decoupled", [False, True])
def test_adam_with_scheduled_lr_beta1_and_weight_decay(dtype, decoupled):
    lr = cosine_annealing_lr(1e-2, T_max=STEPS, eta_min=1e-4)
    beta1 = cosine_annealing_lr(0.95, T_max=STEPS, eta_min=0.85)
    wd = linear_lr(0.1, start_factor=0.5, end=STEPS // 2)
    tx = (ft.adamw if decoupled else ft.adam)(lr=lr, betas=(beta1, 0.99), weight_decay=wd)
    assert ft.fusion_plan(tx) is None  # scheduled betas[0]: the foreach path
    params = make_tree(dtype=dtype, generator=torch.Generator().manual_seed(5))
    grads_seq = grads_sequence(7, dtype)
    ours, state = run_functrain(tx, params, grads_seq)

    def set_group(group, step):
        group["lr"], group["betas"], group["weight_decay"] = lr(step), (beta1(step), 0.99), wd(step)

    opt_cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    ref = run_torch(lambda ps: opt_cls(ps, lr=1.0, foreach=False), params, grads_seq, set_group)
    # float32: see test_adamw_parity for the decoupled-decay rounding bias.
    rtol = (2e-5 if decoupled else 1e-6) if dtype == torch.float32 else 1e-12
    assert_rel(ours, ref, params, rtol, "scheduled adam vs torch")
    adam_state = state[1] if not decoupled else state[0][0]
    assert adam_state.b1.item() == pytest.approx(beta1(STEPS - 1))
    assert state[-1].lr.item() == pytest.approx(lr(STEPS - 1))


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_with_scheduled_momentum_and_weight_decay(nesterov):
    momentum = cosine_annealing_lr(0.9, T_max=STEPS, eta_min=0.5)
    wd = cosine_annealing_lr(1e-2, T_max=STEPS, eta_min=0.0)
    tx = ft.chain(
        ft.clip(1.0), ft.sgd(lr=0.05, momentum=momentum, weight_decay=wd, nesterov=nesterov)
    )
    params = make_tree(dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    grads_seq = grads_sequence(8, torch.float64)
    ours, state = run_functrain(tx, params, grads_seq)
    leaves = [torch.nn.Parameter(t.clone()) for t in optree.tree_leaves(params)]
    opt = torch.optim.SGD(leaves, lr=0.05, momentum=0.9, nesterov=nesterov, foreach=False)
    for step, grads in enumerate(grads_seq):
        opt.param_groups[0].update(momentum=momentum(step), weight_decay=wd(step))
        for p, g in zip(leaves, optree.tree_leaves(grads), strict=True):
            p.grad = g.clone()
        torch.nn.utils.clip_grad_norm_(leaves, 1.0)
        opt.step()
    ref = optree.tree_unflatten(optree.tree_structure(params), [p.detach() for p in leaves])
    assert_rel(ours, ref, params, 1e-12, "scheduled sgd vs torch")
    trace_state = state[1][1]
    assert trace_state.momentum.item() == pytest.approx(momentum(STEPS - 1))
    assert trace_state.count.item() == STEPS


def test_seed_momentum_config_matches_mmengine_driving_torch_adamw():
    """The seed's cyclic config: lr and betas[0] up for 8 epochs, then down for 12."""
    import mmengine.optim  # noqa: F401 - registers the schedulers
    from mmengine.registry import PARAM_SCHEDULERS

    lr0, epoch_length, epochs = 1e-4, 4, 20
    cfg = [
        dict(
            type="CosineAnnealingLR",
            T_max=8,
            eta_min=lr0 * 10,
            begin=0,
            end=8,
            by_epoch=True,
            convert_to_iter_based=True,
        ),
        dict(
            type="CosineAnnealingLR",
            T_max=12,
            eta_min=lr0 * 1e-4,
            begin=8,
            end=20,
            by_epoch=True,
            convert_to_iter_based=True,
        ),
        dict(
            type="CosineAnnealingMomentum",
            T_max=8,
            eta_min=0.85 / 0.95,
            begin=0,
            end=8,
            by_epoch=True,
            convert_to_iter_based=True,
        ),
        dict(
            type="CosineAnnealingMomentum",
            T_max=12,
            eta_min=1,
            begin=8,
            end=20,
            by_epoch=True,
            convert_to_iter_based=True,
        ),
    ]
    params = make_tree(dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    grads_seq = grads_sequence(10, torch.float64, steps=epochs * epoch_length)

    leaves = [torch.nn.Parameter(t.clone()) for t in optree.tree_leaves(params)]
    opt = torch.optim.AdamW(leaves, lr=lr0, betas=(0.95, 0.99), weight_decay=0.01, foreach=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        schedulers = [
            PARAM_SCHEDULERS.build(
                dict(c), default_args=dict(optimizer=opt, epoch_length=epoch_length)
            )
            for c in cfg
        ]
        for grads in grads_seq:
            for p, g in zip(leaves, optree.tree_leaves(grads), strict=True):
                p.grad = g.clone()
            torch.nn.utils.clip_grad_norm_(leaves, 35.0)
            opt.step()
            for s in schedulers:
                s.step()
    ref = optree.tree_unflatten(optree.tree_structure(params), [p.detach() for p in leaves])

    lr = from_mmengine(cfg, base=lr0, epoch_length=epoch_length, param="lr")
    beta1 = from_mmengine(cfg, base=0.95, epoch_length=epoch_length, param="momentum")
    tx = ft.chain(ft.clip(35.0), ft.adamw(lr=lr, betas=(beta1, 0.99), weight_decay=0.01))
    ours, state = run_functrain(tx, params, grads_seq)
    assert_rel(ours, ref, params, 1e-10, "seed momentum config vs mmengine + torch AdamW")
    assert state[1][0][0].b1.item() == pytest.approx(beta1(len(grads_seq) - 1), rel=1e-12)


def test_scheduled_hyperparameters_refuse_fused_and_validate():
    tx = ft.sgd(lr=0.1, momentum=cosine_annealing_lr(0.9, T_max=10))
    p = {"w": torch.ones(2)}
    with pytest.raises(ValueError, match="cannot fuse"):
        ft.apply_gradients(tx, p, p, tx.init(p), fused=True)
    with pytest.raises(ValueError, match=r"betas\[1\]"):
        ft.adam(betas=(0.9, cosine_annealing_lr(0.9, T_max=10)))
    with pytest.raises(ValueError, match="weight_decay"):
        ft.adamw(weight_decay=-1.0)


# -- ReduceOnPlateauCallback writes only what the transform reads back ----------------------


class _Logs:
    def info(self, message):
        pass


def _plateau_runner():
    import types

    return types.SimpleNamespace(logger=_Logs())


def _plateau_state(tx):
    from functrain.state import TrainState

    torch.manual_seed(0)
    return TrainState.create(torch.nn.Linear(2, 1), tx)


@pytest.mark.parametrize(
    "tx, record",
    [
        (lambda: ft.sgd(lr=0.1, momentum=0.9), "TraceState.momentum"),
        (lambda: ft.adam(lr=0.1), "ScaleByAdamState.b1"),
    ],
)
def test_plateau_refuses_a_momentum_the_transform_does_not_read(tx, record):
    """Before the fix the callback wrote TraceState.momentum / ScaleByAdamState.b1, which
    trace / scale_by_adam never read (they close over the number): a silent no-op. It now
    refuses before training, as set_hyperparam refuses the same write."""
    from functrain.callbacks import ReduceOnPlateauCallback
    from functrain.schedules import ReduceOnPlateau

    callback = ReduceOnPlateauCallback(ReduceOnPlateau(monitor="loss"), param="momentum")
    state = _plateau_state(tx())
    with pytest.raises(ValueError, match=rf"{record}\) is recorded for logging only"):
        callback.before_train(_plateau_runner(), state)
    with pytest.raises(ValueError, match="recorded for logging only"):
        ft.set_hyperparam(state.opt_state, "momentum", 0.5)


def test_plateau_momentum_write_would_not_change_sgd():
    """Why the refusal: writing TraceState.momentum leaves SGD's next step bitwise the same
    (the same kernels on the same inputs), so a plateau that "changed" it changed nothing."""
    from functrain.transforms.momentum import TraceState
    from functrain.transforms.state_path import find, replace

    tx = ft.sgd(lr=0.1, momentum=0.9)
    params = {"w": torch.randn(5, generator=torch.Generator().manual_seed(1))}
    grads = [{"w": torch.randn(5, generator=torch.Generator().manual_seed(s))} for s in (2, 3)]
    state = tx.init(params)
    updates, state = tx.update(grads[0], state, params)
    [path] = find(state, TraceState)
    path += (("attr", "momentum"),)
    written = replace(state, path, torch.tensor(0.1, dtype=torch.float64))
    same, _ = tx.update(grads[1], state, params)
    other, _ = tx.update(grads[1], written, params)
    assert torch.equal(same["w"], other["w"])


def test_plateau_drives_a_torch_optimizer_lr():
    """from_torch_optimizer reads its lr back from the state (a settable row of the table),
    so the plateau's value is the lr of the next step: w moves by exactly -lr * grad."""
    from functrain.callbacks import ReduceOnPlateauCallback
    from functrain.schedules import ReduceOnPlateau

    callback = ReduceOnPlateauCallback(ReduceOnPlateau(monitor="loss", patience=0, factor=0.5))
    state = _plateau_state(ft.from_torch_optimizer(torch.optim.SGD, lr=0.5))
    runner = _plateau_runner()
    state = callback.before_train(runner, state)
    state = callback.after_val_epoch(runner, state, {"loss": 1.0}) or state
    state = callback.after_val_epoch(runner, state, {"loss": 1.0})  # a plateau: lr halves
    assert float(state.opt_state.lr) == 0.25  # 0.5 * 0.5 is exact in binary
    params = {k: v.detach() for k, v in state.params.items()}
    grads = {k: torch.ones_like(v) for k, v in params.items()}
    tx = ft.from_torch_optimizer(torch.optim.SGD, lr=0.5)
    # apply_gradients lets torch's SGD write the parameters itself: p.add_(g, alpha=-lr), the
    # same op on the same inputs as below, so bitwise.
    new, _ = ft.apply_gradients(tx, params, grads, state.opt_state)
    for k in params:
        assert torch.equal(new[k], params[k].add(grads[k], alpha=-0.25))
