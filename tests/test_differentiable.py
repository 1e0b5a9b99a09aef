"""``torch.func.grad`` through several optimizer steps matches finite differences (float64).

This is what meta-learning needs: the pure ``update`` path is differentiable with respect to
the initial parameters (and so to anything the loss depends on).
"""

from __future__ import annotations

import pytest
import torch

import functrain as ft
from tests.test_optimizers_extra import check_meta_gradient

OPTIMIZERS = {
    "adamw": lambda: ft.adamw(lr=0.1),
    "adamw+clip": lambda: ft.chain(ft.clip(0.5), ft.adamw(lr=0.1, weight_decay=0.1)),
    "adam-amsgrad-l2": lambda: ft.adam(lr=0.1, weight_decay=0.1, amsgrad=True),
    "adam-maximize": lambda: ft.adam(lr=0.05, maximize=True),
    "sgd-nesterov": lambda: ft.sgd(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1),
    "sgd-dampening+clip-inf": lambda: ft.chain(
        ft.clip(0.3, norm_type=float("inf")), ft.sgd(lr=0.1, momentum=0.9, dampening=0.1)
    ),
    "clip_by_value+sgd": lambda: ft.chain(ft.clip_by_value(0.2), ft.sgd(lr=0.1)),
}


def problem():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, generator=gen, dtype=torch.float64)
    y = torch.randn(8, 2, generator=gen, dtype=torch.float64)
    p0 = {
        "w": torch.randn(3, 2, generator=gen, dtype=torch.float64),
        "b": torch.randn(2, generator=gen, dtype=torch.float64),
    }

    def loss(p):
        return ((x @ p["w"] + p["b"] - y) ** 2).mean()

    return p0, loss


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_grad_through_three_steps_matches_finite_differences(name):
    check_meta_gradient(OPTIMIZERS[name](), steps=3, problem=problem)


def test_grad_with_respect_to_the_learning_rate():
    p0, loss = problem()

    def after_two_steps(lr):
        tx = ft.chain(ft.scale_by_adam(), ft.scale_by_learning_rate(lambda step: lr))
        p, state = p0, tx.init(p0)
        for _ in range(2):
            updates, state = tx.update(torch.func.grad(loss)(p), state, p)
            p = ft.apply_updates(p, updates)
        return loss(p)

    lr = torch.tensor(0.05, dtype=torch.float64)
    analytic = torch.func.grad(after_two_steps)(lr)
    h = 1e-7
    numeric = (after_two_steps(lr + h) - after_two_steps(lr - h)) / (2 * h)
    assert analytic.item() == pytest.approx(numeric.item(), rel=1e-6)
