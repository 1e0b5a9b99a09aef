"""Adafactor: parity with torch.optim.Adafactor over 100 steps on the mixed-shape tree.

Tolerance. float64: 1e-12 relative (measured <= 1.5e-15). float32: 1e-6 without weight
decay (measured <= 4.2e-7 over 200 random draws), 5e-6 with it (<= 1.8e-6 over 350),
each against both torch paths. Two sources: (1) torch applies the decay as its own in-place
multiply, ``param.mul_(1 - lr*wd)`` (rounded to float32), then adds the step (a second
rounding), where an additive update ``param + (decay + step)`` rounds once; each is within
an ulp of the exact value per step, but they differ by up to an ulp per step, compounding
over 100 steps. (The factor ``1 - lr*wd`` itself, rounding included, is reproduced by
``add_decoupled_decay``.) (2) functrain's row/column means are ``mean(G*G)`` where torch
has ``norm(G)**2 / n`` (3-4x faster on CPU; equal up to an ulp). For scale, torch's own
foreach and single-tensor Adafactor differ by up to 2.6e-7 on the same draws.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import functrain as ft
from functrain.transforms.adafactor import (
    adafactor,
    add_decoupled_decay,
    scale_by_factored_rms,
    scale_by_relative_step,
)
from tests.conftest import make_tree
from tests.test_optimizers_extra import (
    assert_bitwise,
    assert_rel,
    check_meta_gradient,
    functrain_pure_and_donate,
    grads_sequence,
    single_thread,  # noqa: F401 (autouse fixture)
    torch_reference,
)


def tolerance(dtype, weight_decay):
    if dtype == torch.float64:
        return 1e-12
    return 5e-6 if weight_decay else 1e-6


@given(
    # 0.5: the relative step min(lr, 1/sqrt(t)) is 1/sqrt(t) after step 4.
    lr=st.sampled_from([1e-2, 1e-3, 0.5]),
    beta2_decay=st.sampled_from([-0.8, -0.5, 0.0]),
    eps1=st.sampled_from([None, 1e-30, 1e-3]),
    eps2=st.sampled_from([1e-3, 1e-5, 0.0]),
    d=st.sampled_from([1.0, 1.5, 4.0]),
    weight_decay=st.sampled_from([0.0, 1e-2, 0.1]),
    maximize=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**16),
)
def test_adafactor_parity(lr, beta2_decay, eps1, eps2, d, weight_decay, maximize, dtype, seed):
    kw = dict(
        lr=lr,
        beta2_decay=beta2_decay,
        eps=(eps1, eps2),
        d=d,
        weight_decay=weight_decay,
        maximize=maximize,
    )
    params = make_tree(dtype=dtype, generator=torch.Generator().manual_seed(seed + 1))
    grads_seq = grads_sequence(seed, dtype)
    runs = functrain_pure_and_donate(adafactor(**kw), params, grads_seq)
    assert_bitwise(runs["pure"][0], runs["donate"][0], "pure vs donating path")
    rtol = tolerance(dtype, weight_decay)
    for foreach in (False, True):
        reference = torch_reference(
            lambda ps, foreach=foreach: [torch.optim.Adafactor(ps, **kw, foreach=foreach)],
            params,
            grads_seq,
        )
        assert_rel(
            runs["pure"][0], reference, params, rtol, f"adafactor vs torch foreach={foreach}"
        )


def test_adafactor_factored_state_shapes_follow_torch():
    params = {"vec": torch.randn(4), "mat": torch.randn(5, 3), "conv": torch.randn(4, 3, 2, 2)}
    state = adafactor().init(params)[0]
    rows = zip(state.row_var, state.col_var, state.variance, strict=True)
    by_path = dict(zip(state.paths, rows, strict=True))
    assert by_path["vec"][0] is None and by_path["vec"][2].shape == (4,)
    assert by_path["mat"][0].shape == (5, 1) and by_path["mat"][1].shape == (1, 3)
    assert by_path["conv"][0].shape == (4, 3, 2, 1) and by_path["conv"][1].shape == (4, 3, 1, 2)
    assert by_path["conv"][2] is None


def test_adafactor_scheduled_lr_matches_constant_and_is_readable():
    params = make_tree(generator=torch.Generator().manual_seed(0))
    grads_seq = grads_sequence(0, torch.float32, steps=5)
    constant = functrain_pure_and_donate(adafactor(lr=0.02, weight_decay=0.1), params, grads_seq)
    scheduled = functrain_pure_and_donate(
        adafactor(lr=lambda step: 0.02, weight_decay=lambda step: 0.1), params, grads_seq
    )
    assert_bitwise(constant["pure"][0], scheduled["pure"][0], "scheduled vs constant")
    _, relative_step, decay = scheduled["pure"][1]
    assert relative_step.lr.item() == 0.02 and decay.lr.item() == 0.02
    assert decay.weight_decay.item() == 0.1
    assert relative_step.count.item() == 5


def test_adafactor_building_blocks_compose_to_the_alias():
    params = make_tree(generator=torch.Generator().manual_seed(0))
    grads_seq = grads_sequence(1, torch.float32, steps=10)
    alias = functrain_pure_and_donate(adafactor(lr=0.05, weight_decay=0.1), params, grads_seq)
    chained = functrain_pure_and_donate(
        ft.chain(
            scale_by_factored_rms(),
            scale_by_relative_step(0.05, 1e-3),
            add_decoupled_decay(0.05, 0.1),
        ),
        params,
        grads_seq,
    )
    assert_bitwise(alias["pure"][0], chained["pure"][0], "alias vs its chain")


def test_adafactor_is_differentiable():
    check_meta_gradient(adafactor(lr=0.1, weight_decay=0.1))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: adafactor(lr=-1.0), "lr"),
        (lambda: adafactor(beta2_decay=0.5), "beta2_decay"),
        (lambda: adafactor(eps=(-1.0, 1e-3)), r"eps\[0\]"),
        (lambda: adafactor(eps=(None, -1e-3)), r"eps\[1\]"),
        (lambda: adafactor(eps=1e-3), "eps"),
        (lambda: adafactor(d=0.5), "d"),
        (lambda: adafactor(weight_decay=-0.1), "weight_decay"),
        (lambda: adafactor(lr="big"), "lr"),
    ],
)
def test_adafactor_invalid_hyperparameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_relative_step_needs_params():
    tx = adafactor()
    params = {"w": torch.ones(2, 2)}
    with pytest.raises(ValueError, match="needs the parameters"):
        tx.update(params, tx.init(params))


def test_adafactor_per_parameter_multipliers_are_torch_param_groups():
    # mmengine's lr_mult / decay_mult: a torch param group with lr * lr_mult and
    # weight_decay * decay_mult (both enter Adafactor's relative step and its decay).
    dtype = torch.float64
    params = make_tree(dtype=dtype, generator=torch.Generator().manual_seed(5))
    grads_seq = grads_sequence(5, dtype, steps=30)
    mults = {"mat": (0.1, 2.0), "vec": (3.0, 0.0)}
    tx = ft.chain(adafactor(lr=0.2, weight_decay=0.1), ft.mask_multipliers(mults))
    runs = functrain_pure_and_donate(tx, params, grads_seq)
    assert_bitwise(runs["pure"][0], runs["donate"][0], "pure vs donating path")

    def make(leaves):
        by_path = dict(
            zip(["conv", "mat", "nested.a", "nested.b.0", "scalar", "vec"], leaves, strict=True)
        )
        rest = [p for k, p in by_path.items() if k not in mults]
        return [
            torch.optim.Adafactor(
                [
                    {"params": [by_path["mat"]], "lr": 0.02, "weight_decay": 0.2},
                    {"params": [by_path["vec"]], "lr": 0.6, "weight_decay": 0.0},
                    {"params": rest},
                ],
                lr=0.2,
                weight_decay=0.1,
            )
        ]

    reference = torch_reference(make, params, grads_seq)
    assert_rel(runs["pure"][0], reference, params, 1e-12, "multipliers vs torch param groups")
