"""Parity of sgd / adam / adamw (+ clip) with torch.optim over 100 steps, on every path.

Four functrain paths are run side by side on a mixed-shape tree (0-d, 1-d, 2-d, 4-d leaves):
pure ``update`` + ``apply_updates``; the same donating (in place); ``apply_gradients`` through
torch's fused kernels, pure and donating. The reference is torch.optim's default
(single-tensor) implementation after ``clip_grad_norm_``; the fused paths are also compared
with torch.optim's ``fused=True``, which runs the same kernel: bitwise without a clip (or in
float64, where the clip is not folded into the kernel).

Which comparisons are exact, and why that holds on every machine: pure vs donating, and fused
vs ``fused=True``, run the same kernels on the same inputs in the same order (the in-place and
out-of-place foreach ops share their arithmetic; the fused paths call torch's own fused
kernel; functrain's clip computes the norm as ``clip_grad_norm_`` does), so a machine that
picks other kernels picks them on both sides. Against torch's default single-tensor
implementation the operations differ (foreach vs per-tensor ops, and vectorized kernels that
fuse multiply-adds on AVX2/AVX-512 but not with ``ATEN_CPU_CAPABILITY=default``), so those
are compared with a tolerance (see ``check_all``).
"""

from __future__ import annotations

import math

import optree
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import functrain as ft
from tests.conftest import make_tree

STEPS = 100


def assert_rel(actual, expected, initial, rtol, what, atol=0.0, past=None):
    """Leafwise ``|a - e| <= rtol * (|e| + scale) + atol``, ``scale = max(max|initial|, max|e|)``
    (and the leaf's largest ``|value|`` during the run, ``past``, a list in leaf order, where
    the caller recorded it).

    The error is relative to the value, or to the leaf's scale where a parameter has crossed
    zero (a float32 parameter near 0 carries the absolute rounding errors of its earlier,
    larger values); ``atol`` adds an absolute bound where the caller derives one.
    """
    paths, leaves_a, leaves_e = _paths_and_leaves(actual, expected)
    past = past or [0.0] * len(paths)
    leaves = zip(paths, leaves_a, leaves_e, optree.tree_leaves(initial), past, strict=True)
    for path, a, e, p0, largest in leaves:
        scale = torch.maximum(p0.abs().max(), e.abs().max()).clamp_min(largest)
        err = (a - e).abs()
        assert bool((err <= rtol * (e.abs() + scale) + atol).all()), (
            f"{what}: leaf {path!r} differs by {err.max().item():.3g} "
            f"(relative to its scale {(err.max() / scale).item():.3g})"
        )


def _paths_and_leaves(a, e):
    paths, leaves_a, _ = optree.tree_flatten_with_path(a)
    leaves_e = optree.tree_leaves(e)
    return [".".join(map(str, p)) for p in paths], leaves_a, leaves_e


def assert_bitwise(a, b, what):
    for path, x, y in zip(*_paths_and_leaves(a, b), strict=True):
        assert torch.equal(x, y), f"{what}: leaf {path!r} not bitwise equal"


def torch_run(make_opt, params, grads_seq, clip, past=None):
    """torch.optim over ``grads_seq`` (after clip_grad_norm_); ``past``, when given, is a list
    that receives each leaf's largest |value| over the run, in leaf order."""
    leaves = [torch.nn.Parameter(t.clone()) for t in optree.tree_leaves(params)]
    opt = make_opt(leaves)
    for grads in grads_seq:
        for p, g in zip(leaves, optree.tree_leaves(grads), strict=True):
            p.grad = g.clone()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(leaves, clip[0], norm_type=clip[1], foreach=True)
        opt.step()
        if past is not None:
            largest = [float(p.detach().abs().max()) for p in leaves]
            past[:] = [max(a, b) for a, b in zip(past, largest, strict=True)] if past else largest
    return optree.tree_unflatten(optree.tree_structure(params), [p.detach() for p in leaves])


def functrain_runs(tx, params, grads_seq):
    """Final params of the four paths."""
    results = {}
    for name, donate, fused in [
        ("pure", False, False),
        ("donate", True, False),
        ("fused-pure", False, True),
        ("fused-donate", True, True),
    ]:
        p = optree.tree_map(torch.clone, params)
        state = tx.init(p)
        for grads in grads_seq:
            g = optree.tree_map(torch.clone, grads)
            if name == "pure":
                updates, state = tx.update(g, state, p)
                p = ft.apply_updates(p, updates)
            else:
                p, state = ft.apply_gradients(tx, p, g, state, donate=donate, fused=fused)
        results[name] = p
    return results


def grads_sequence(seed, dtype, steps=STEPS):
    gen = torch.Generator().manual_seed(seed)
    # Magnitudes spread over several decades so that clipping sometimes engages.
    return [make_tree(dtype=dtype, generator=gen, scale=10 ** ((i % 4) - 2)) for i in range(steps)]


def check_all(
    tx,
    torch_opt,
    torch_fused_opt,
    clip,
    seed,
    dtype,
    update_rtol=None,
    update_gain=0.0,
):
    """The four functrain paths against torch.optim (single-tensor and fused=True).

    ``update_gain``: by how much the optimizer turns a difference in one step's gradient into a
    difference of the parameters, summed over the following steps (SGD with momentum ``mu``:
    ``lr (1 + mu) / (1 - mu)``); it bounds what a folded float32 clip adds (below).
    """
    gen = torch.Generator().manual_seed(seed + 1)
    params = make_tree(dtype=dtype, generator=gen)
    grads_seq = grads_sequence(seed, dtype)
    runs = functrain_runs(tx, params, grads_seq)
    assert_bitwise(runs["pure"], runs["donate"], "pure vs donating path")
    assert_bitwise(runs["fused-pure"], runs["fused-donate"], "fused pure vs fused donating")
    # Where an update is much larger than the parameter (SGD at lr 0.1, momentum 0.9,
    # gradients up to ~40), the parameter swings far from both its initial and its final
    # value and keeps the absolute rounding of those larger values, so the scale includes
    # them (seed 2384, lr 0.1, momentum 0.9, wd 0.1: 2.3e-6 of the final scale with AVX2 /
    # AVX-512 kernels, 1e-6 with the baseline ones; the scalar leaf had reached 35).
    past: list[float] = []
    reference = torch_run(torch_opt, params, grads_seq, clip, past)
    # Each step's update differs from torch's single-tensor one by a few ulps (other op order,
    # machine-dependent); the gradients are fixed in advance (no feedback through the
    # parameters), so these differences add up over the 100 steps instead of growing: about
    # sqrt(100) ulps of the leaf's scale as a random walk (6e-7 in float32, 1e-15 in float64).
    rtol = 1e-6 if dtype == torch.float32 else 1e-12
    assert_rel(
        runs["pure"],
        reference,
        params,
        update_rtol or rtol,
        "pure path vs torch.optim",
        past=past,
    )
    # A float32 clip folded into the kernel computes g / fl(1 / c) where clip_grad_norm_
    # computes g * c: within 2**-22 relative (two roundings and fl(1 / c)), on the steps where
    # the clip engages, where every entry is at most max_norm (|g_i| <= ||g||_p). Summed over
    # the steps, at most STEPS * 2**-22 * max_norm * update_gain apart (e.g. 2.4e-5 for
    # SGD at lr 0.1, momentum 0.9, max_norm 1; measured 5.4e-7).
    folded = clip is not None and dtype == torch.float32
    atol = STEPS * 2.0**-22 * clip[0] * update_gain if folded else 0.0
    assert_rel(runs["fused-pure"], reference, params, rtol, "fused path vs torch.optim", atol, past)
    fused_reference = torch_run(torch_fused_opt, params, grads_seq, clip)
    if clip is None or dtype == torch.float64:
        # the same fused kernel on the same inputs (float64: the same clip ops first)
        assert_bitwise(runs["fused-pure"], fused_reference, "fused path vs torch.optim(fused=True)")
    else:
        # The clip is folded into the kernel's grad_scale: g / (1 / c) instead of g * c.
        assert_rel(
            runs["fused-pure"],
            fused_reference,
            params,
            rtol,
            "fused path vs fused torch",
            atol,
            past,
        )


clips = st.one_of(
    st.none(),
    st.tuples(st.sampled_from([0.1, 1.0, 35.0]), st.sampled_from([2.0, 1.0, math.inf])),
)
dtypes = st.sampled_from([torch.float32, torch.float64])


def with_clip(clip, tx):
    return tx if clip is None else ft.chain(ft.clip(*clip), tx)


@given(
    lr=st.sampled_from([1e-3, 0.02, 0.1]),
    momentum=st.sampled_from([0.0, 0.5, 0.9]),
    dampening=st.sampled_from([0.0, 0.1]),
    weight_decay=st.sampled_from([0.0, 1e-4, 0.1]),
    nesterov=st.booleans(),
    maximize=st.booleans(),
    clip=clips,
    dtype=dtypes,
    seed=st.integers(0, 2**16),
)
def test_sgd_parity(lr, momentum, dampening, weight_decay, nesterov, maximize, clip, dtype, seed):
    if nesterov and (momentum == 0 or dampening != 0):
        nesterov = False
    kw = dict(
        lr=lr,
        momentum=momentum,
        dampening=dampening,
        weight_decay=weight_decay,
        nesterov=nesterov,
        maximize=maximize,
    )
    check_all(
        with_clip(clip, ft.sgd(**kw)),
        lambda ps: torch.optim.SGD(ps, **kw, foreach=False),
        lambda ps: torch.optim.SGD(ps, **kw, fused=True),
        clip,
        seed,
        dtype,
        # a gradient difference reaches the momentum buffer, which adds it up with weights
        # mu**k (dampening only shrinks them; nesterov adds mu * buf once more)
        update_gain=lr * (1 + momentum) / (1 - momentum),
    )


adam_options = dict(
    lr=st.sampled_from([1e-4, 1e-3, 0.05]),
    betas=st.sampled_from([(0.9, 0.999), (0.5, 0.9), (0.0, 0.99)]),
    eps=st.sampled_from([1e-8, 1e-3]),
    amsgrad=st.booleans(),
    maximize=st.booleans(),
    clip=clips,
    dtype=dtypes,
    seed=st.integers(0, 2**16),
)


@given(weight_decay=st.sampled_from([0.0, 1e-4, 0.1]), **adam_options)
def test_adam_parity(lr, betas, eps, weight_decay, amsgrad, maximize, clip, dtype, seed):
    kw = dict(
        lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize
    )
    check_all(
        with_clip(clip, ft.adam(**kw)),
        lambda ps: torch.optim.Adam(ps, **kw, foreach=False),
        lambda ps: torch.optim.Adam(ps, **kw, fused=True),
        clip,
        seed,
        dtype,
    )


@given(weight_decay=st.sampled_from([0.0, 1e-2, 0.1]), **adam_options)
def test_adamw_parity(lr, betas, eps, weight_decay, amsgrad, maximize, clip, dtype, seed):
    kw = dict(
        lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize
    )
    check_all(
        with_clip(clip, ft.adamw(**kw)),
        lambda ps: torch.optim.AdamW(ps, **kw, foreach=False),
        lambda ps: torch.optim.AdamW(ps, **kw, fused=True),
        clip,
        seed,
        dtype,
        # torch multiplies the parameter by (1 - lr * weight_decay) rounded to the parameter's
        # dtype; in float32 that factor is off by up to ~1% of lr * weight_decay, a bias that
        # accumulates over the steps (3.9e-6 relative after 100 steps at lr=1e-4, wd=1e-2).
        # update() computes the exact decay term; apply_gradients() is bitwise torch's.
        update_rtol=2e-5 if dtype == torch.float32 and weight_decay else None,
    )


def test_adam_decoupled_weight_decay_is_adamw():
    kw = dict(lr=1e-2, weight_decay=0.1)
    check_all(
        ft.adam(**kw, decoupled_weight_decay=True),
        lambda ps: torch.optim.AdamW(ps, **kw, foreach=False),
        lambda ps: torch.optim.AdamW(ps, **kw, fused=True),
        None,
        0,
        torch.float32,
        update_rtol=2e-5,
    )


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, math.inf])
def test_clip_alone_is_clip_grad_norm_bitwise(norm_type):
    gen = torch.Generator().manual_seed(3)
    grads = make_tree(generator=gen, scale=5.0)
    tx = ft.clip(1.5, norm_type=norm_type)
    state = tx.init(grads)
    clipped, state = tx.update(grads, state)
    leaves = [torch.nn.Parameter(torch.zeros_like(g)) for g in optree.tree_leaves(grads)]
    for p, g in zip(leaves, optree.tree_leaves(grads), strict=True):
        p.grad = g.clone()
    norm = torch.nn.utils.clip_grad_norm_(leaves, 1.5, norm_type=norm_type)
    # bitwise on every machine: functrain.tree.global_norm runs clip_grad_norm_'s own ops
    # (_foreach_norm, stack, vector_norm) in its order, then the same clamp and multiply
    assert torch.equal(state.norm, norm)
    assert_bitwise(
        clipped,
        optree.tree_unflatten(optree.tree_structure(grads), [p.grad for p in leaves]),
        "clip",
    )


def test_clip_by_value_is_clip_grad_value_():
    gen = torch.Generator().manual_seed(4)
    grads = make_tree(generator=gen, scale=3.0)
    tx = ft.clip_by_value(0.7)
    clipped, _ = tx.update(grads, tx.init(grads))
    leaves = [torch.nn.Parameter(torch.zeros_like(g)) for g in optree.tree_leaves(grads)]
    for p, g in zip(leaves, optree.tree_leaves(grads), strict=True):
        p.grad = g.clone()
    torch.nn.utils.clip_grad_value_(leaves, 0.7)
    assert_bitwise(
        clipped,
        optree.tree_unflatten(optree.tree_structure(grads), [p.grad for p in leaves]),
        "clip_by_value",
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda: ft.chain(ft.clip(1.0), ft.adamw(1e-2, weight_decay=0.1)),
        lambda: ft.sgd(0.1, momentum=0.9, weight_decay=1e-4),
        lambda: ft.adagrad(0.1),
    ],
    ids=["adamw", "sgd", "adagrad"],
)
def test_fused_step_reads_gradients_laid_out_unlike_their_parameters(make) -> None:
    # torch's fused kernels walk a gradient's memory in its parameter's order; torch.func
    # and vmap can return a transposed gradient, which apply_gradients must lay out first.
    g = torch.Generator().manual_seed(0)
    params = {"w": torch.randn(16, 8, generator=g), "b": torch.randn(8, generator=g)}
    grads = [
        {"w": torch.randn(8, 16, generator=g).t(), "b": torch.randn(8, generator=g)}
        for _ in range(3)
    ]
    assert not grads[0]["w"].is_contiguous()
    out = {}
    for fused in (True, False):
        tx = make()
        p, s = {k: v.clone() for k, v in params.items()}, tx.init(params)
        for grad in grads:
            p, s = ft.apply_gradients(tx, p, grad, s, fused=fused)
        out[fused] = p
    for k in params:  # the kernel vs the foreach chain: an ulp per step
        assert torch.allclose(out[True][k], out[False][k], rtol=1e-6, atol=1e-7), k
