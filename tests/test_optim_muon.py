"""Muon: parity with torch.optim.Muon (2-d leaves) + AdamW (the others) over 100 steps.

torch's Muon takes only 2-d parameters; the reference runs ``torch.optim.Muon`` on the 2-d
leaves of the mixed-shape tree and ``torch.optim.AdamW`` (foreach=False) on the rest, and
functrain runs ``muon(..., fallback=adamw(...))``. torch's Muon has no foreach or fused
implementation.

Tolerance. The Newton-Schulz iteration runs the same bfloat16 ops in the same order as
torch, on a bitwise-equal momentum buffer, so its output is bitwise torch's; the difference
is in applying it. float64: 1e-12 (measured <= 1.1e-15). float32: 1e-6 without weight
decay, 5e-6 with it, for the reason given in test_optim_adafactor.py: torch's
``param.mul_(1 - lr*wd)`` then ``param.add_(O, alpha=-lr)`` rounds twice per step, the
additive update once (worst of 100 random float32 draws: 2.4e-6).
"""

from __future__ import annotations

import optree
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import functrain as ft
from functrain.transforms.muon import (
    NS_COEFFICIENTS,
    muon,
    newton_schulz,
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

FALLBACK = dict(lr=1e-3, weight_decay=1e-2)


def torch_muon_and_adamw(kw):
    def make(leaves):
        matrices = [p for p in leaves if p.ndim == 2]
        others = [p for p in leaves if p.ndim != 2]
        return [
            torch.optim.Muon(matrices, **kw),
            torch.optim.AdamW(others, **FALLBACK, foreach=False),
        ]

    return make


@given(
    lr=st.sampled_from([1e-3, 0.02, 0.1]),
    weight_decay=st.sampled_from([0.0, 0.01, 0.1]),
    momentum=st.sampled_from([0.95, 0.9, 0.0]),
    nesterov=st.booleans(),
    ns_steps=st.sampled_from([5, 3, 1]),
    adjust_lr_fn=st.sampled_from([None, "original", "match_rms_adamw"]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**16),
)
def test_muon_parity(lr, weight_decay, momentum, nesterov, ns_steps, adjust_lr_fn, dtype, seed):
    kw = dict(
        lr=lr,
        weight_decay=weight_decay,
        momentum=momentum,
        nesterov=nesterov,
        ns_steps=ns_steps,
        adjust_lr_fn=adjust_lr_fn,
    )
    params = make_tree(dtype=dtype, generator=torch.Generator().manual_seed(seed + 1))
    grads_seq = grads_sequence(seed, dtype)
    tx = muon(**kw, fallback=ft.adamw(**FALLBACK))
    runs = functrain_pure_and_donate(tx, params, grads_seq)
    assert_bitwise(runs["pure"][0], runs["donate"][0], "pure vs donating path")
    reference = torch_reference(torch_muon_and_adamw(kw), params, grads_seq)
    if dtype == torch.float64:
        rtol = 1e-12
    else:
        rtol = 5e-6 if weight_decay else 1e-6
    paths = [".".join(map(str, p)) for p in optree.tree_paths(params)]
    ours, theirs, init = (optree.tree_leaves(t) for t in (runs["pure"][0], reference, params))
    matrices = [i for i, p in enumerate(init) if p.ndim == 2]
    others = [i for i, p in enumerate(init) if p.ndim != 2]
    assert_rel(
        {paths[i]: ours[i] for i in matrices},
        {paths[i]: theirs[i] for i in matrices},
        {paths[i]: init[i] for i in matrices},
        rtol,
        "muon leaves vs torch.optim.Muon",
    )
    # AdamW in float32: torch's (1 - lr*wd) rounding, the tolerance test_parity_torch.py
    # gives AdamW's update path.
    assert_rel(
        {paths[i]: ours[i] for i in others},
        {paths[i]: theirs[i] for i in others},
        {paths[i]: init[i] for i in others},
        2e-5 if dtype == torch.float32 else 1e-12,
        "fallback leaves vs torch.optim.AdamW",
    )


def test_newton_schulz_is_torchs_bitwise():
    from torch.optim._muon import _zeropower_via_newtonschulz

    gen = torch.Generator().manual_seed(0)
    for shape in [(5, 3), (3, 5), (8, 8)]:
        g = torch.randn(shape, generator=gen)
        before = g.clone()
        ours = newton_schulz(g, NS_COEFFICIENTS, 5, 1e-7)
        assert torch.equal(ours, _zeropower_via_newtonschulz(g.clone(), NS_COEFFICIENTS, 5, 1e-7))
        assert torch.equal(g, before), "newton_schulz modified its input"


def test_muon_without_fallback_rejects_non_matrix_leaves_by_path():
    with pytest.raises(ValueError, match=r"leaf 'head\.bias' has size \(3,\).*fallback"):
        muon().init({"head": {"bias": torch.zeros(3), "weight": torch.zeros(3, 4)}})
    tx = muon(lr=0.02)
    params = {"a": torch.randn(4, 3), "b": torch.randn(2, 2)}
    state = tx.init(params)
    updates, _ = tx.update(params, state, params)
    assert optree.tree_structure(updates) == optree.tree_structure(params)


def test_muon_routes_leaves_by_mask_with_full_paths():
    params = {"enc": {"w": torch.randn(4, 3), "b": torch.randn(4)}, "head": torch.randn(2, 2)}
    grads = optree.tree_map(torch.ones_like, params)
    tx = muon(lr=0.02, fallback=ft.sgd(lr=0.5))
    state = tx.init(params)
    assert state.labels == ("fallback", "muon", "muon")  # enc.b, enc.w, head
    assert state.inner_states["muon"][0].paths == ("enc.w", "head")
    updates, _ = tx.update(grads, state, params)
    assert torch.equal(updates["enc"]["b"], -0.5 * torch.ones(4))
    assert not torch.equal(updates["enc"]["w"], -0.5 * torch.ones(4, 3))
    with pytest.raises(ValueError, match="missing leaf 'head'"):
        tx.update({"enc": grads["enc"]}, state, {"enc": params["enc"]})


def test_muon_custom_mask_and_scheduled_momentum():
    params = {"a": torch.randn(4, 3), "b": torch.randn(3, 3), "c": torch.randn(3)}
    grads_seq = [optree.tree_map(torch.randn_like, params) for _ in range(4)]
    tx = muon(
        lr=0.02,
        momentum=lambda step: 0.9,
        fallback=ft.sgd(lr=0.1),
        mask=lambda path, p: path == "a",
    )
    runs = functrain_pure_and_donate(tx, params, grads_seq)
    assert_bitwise(runs["pure"][0], runs["donate"][0], "pure vs donating path")
    state = runs["pure"][1]
    assert state.labels == ("muon", "fallback", "fallback")
    muon_state = state.inner_states["muon"][0]
    assert muon_state.momentum.item() == 0.9 and muon_state.count.item() == 4
    reference = torch_reference(
        lambda ps: [
            torch.optim.Muon([ps[0]], lr=0.02, momentum=0.9),
            torch.optim.SGD(ps[1:], lr=0.1),
        ],
        params,
        grads_seq,
    )
    assert_rel(runs["pure"][0], reference, params, 1e-6, "custom mask vs torch")


def test_muon_is_differentiable_with_a_float64_iteration():
    # torch's bfloat16 iteration is too coarse for finite differences; the same algorithm
    # in float64 is checked instead (the only change is ns_dtype).
    check_meta_gradient(muon(lr=0.1, ns_dtype=torch.float64, fallback=ft.adamw(lr=0.1)), rel=1e-5)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: muon(lr=-1.0), "lr"),
        (lambda: muon(momentum=-0.5), "momentum"),
        (lambda: muon(weight_decay=-0.1), "weight_decay"),
        (lambda: muon(adjust_lr_fn="fancy"), "adjust_lr_fn"),
        (lambda: muon(ns_steps=100), "ns_steps"),
        (lambda: muon(ns_coefficients=(1.0, 2.0)), "ns_coefficients"),
        (lambda: muon(eps=-1.0), "eps"),
        (lambda: muon(mask=lambda path, p: True), "fallback"),
    ],
)
def test_muon_invalid_hyperparameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_muon_per_parameter_multipliers_are_torch_param_groups():
    dtype = torch.float64
    params = make_tree(dtype=dtype, generator=torch.Generator().manual_seed(6))
    grads_seq = grads_sequence(6, dtype, steps=30)
    tx = ft.chain(
        muon(lr=0.02, weight_decay=0.1, fallback=ft.sgd(lr=0.1)),
        ft.mask_multipliers({"mat": (0.5, 3.0), "vec": (2.0, 1.0)}),
    )
    runs = functrain_pure_and_donate(tx, params, grads_seq)
    assert_bitwise(runs["pure"][0], runs["donate"][0], "pure vs donating path")

    def make(leaves):
        by_path = dict(
            zip(["conv", "mat", "nested.a", "nested.b.0", "scalar", "vec"], leaves, strict=True)
        )
        return [
            torch.optim.Muon(
                [
                    {"params": [by_path["mat"]], "lr": 0.01, "weight_decay": 0.3},
                    {"params": [by_path["nested.b.0"]]},
                ],
                lr=0.02,
                weight_decay=0.1,
            ),
            torch.optim.SGD(
                [
                    {"params": [by_path["vec"]], "lr": 0.2},
                    {"params": [by_path[k] for k in ("conv", "nested.a", "scalar")]},
                ],
                lr=0.1,
            ),
        ]

    reference = torch_reference(make, params, grads_seq)
    assert_rel(runs["pure"][0], reference, params, 1e-12, "multipliers vs torch param groups")
