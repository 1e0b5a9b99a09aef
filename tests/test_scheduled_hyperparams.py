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
