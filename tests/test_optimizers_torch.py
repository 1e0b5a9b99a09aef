"""The torch.optim ports (Adamax, Adagrad, Adadelta, RMSprop, Rprop, ASGD, NAdam, RAdam):
shared parity harness, and the checks that cut across them: bad hyperparameters, purity,
differentiability, the fused plan, scheduled learning rates and readable state.

The per-optimizer parity tests (hypothesis-drawn options, 100 steps, every path) are in
``tests/test_optim_<name>.py`` and use :func:`check_parity` from here.
"""

from __future__ import annotations

import optree
import pytest
import torch

import functrain as ft
from functrain.schedules import cosine_annealing_lr
from functrain.transforms import foreach as foreach_ops
from functrain.transforms.adadelta import adadelta, scale_by_adadelta
from functrain.transforms.adagrad import AdagradLearningRate, adagrad, scale_by_adagrad
from functrain.transforms.adamax import adamax, scale_by_adamax
from functrain.transforms.asgd import ScaleByAsgdState, asgd, asgd_averaged_params, scale_by_asgd
from functrain.transforms.nadam import nadam, scale_by_nadam
from functrain.transforms.radam import radam, scale_by_radam
from functrain.transforms.rmsprop import rmsprop, scale_by_rms
from functrain.transforms.rprop import rprop, scale_by_rprop
from tests.conftest import make_tree
from tests.test_differentiable import problem
from tests.test_optimizers_extra import check_meta_gradient
from tests.test_parity_torch import (
    assert_bitwise,
    assert_rel,
    functrain_runs,
    grads_sequence,
    torch_run,
    with_clip,
)
from tests.test_scheduled_hyperparams import run_functrain, run_torch

STEPS = 100
TORCH = {
    "adamax": torch.optim.Adamax,
    "adagrad": torch.optim.Adagrad,
    "adadelta": torch.optim.Adadelta,
    "rmsprop": torch.optim.RMSprop,
    "rprop": torch.optim.Rprop,
    "asgd": torch.optim.ASGD,
    "nadam": torch.optim.NAdam,
    "radam": torch.optim.RAdam,
}
ALIASES = {
    "adamax": adamax,
    "adagrad": adagrad,
    "adadelta": adadelta,
    "rmsprop": rmsprop,
    "rprop": rprop,
    "asgd": asgd,
    "nadam": nadam,
    "radam": radam,
}


def check_parity(
    name,
    kw,
    clip,
    dtype,
    seed,
    *,
    update_rtol=None,
    fused_rtol=None,
    torch_fused=False,
    fused_bitwise_with_torch_fused=False,
    fused_bitwise_with_torch=False,
    conditioned=False,
):
    """Run ``ALIASES[name](**kw)`` (after ``clip``) on the four paths of ``functrain_runs``
    for 100 steps and compare with ``torch.optim`` (foreach=False, and fused=True where asked).

    Pure and donating paths must agree bitwise; both paths must match torch within
    ``rtol`` (1e-6 float32, 1e-12 float64 unless a looser, documented tolerance is given).
    ``fused_bitwise_with_torch``: the fused step is torch's single-tensor arithmetic, op for
    op, so it must be bitwise torch's result (unless a float32 clip is folded into it).
    ``conditioned``: in float32, allow twice torch's own float32 rounding noise (its distance
    from the same run in float64) where that exceeds 1e-6 (an ill-conditioned problem, such as
    centered RMSprop's variance ``v - m**2`` cancelling).
    """
    tx = with_clip(clip, ALIASES[name](**kw))
    gen = torch.Generator().manual_seed(seed + 1)
    params = make_tree(dtype=dtype, generator=gen)
    grads_seq = grads_sequence(seed, dtype)
    runs = functrain_runs(tx, params, grads_seq)
    assert_bitwise(runs["pure"], runs["donate"], "pure vs donating path")
    assert_bitwise(runs["fused-pure"], runs["fused-donate"], "fused pure vs fused donating")
    cls = TORCH[name]
    reference = torch_run(lambda ps: cls(ps, **kw, foreach=False), params, grads_seq, clip)
    rtol = 1e-6 if dtype == torch.float32 else 1e-12
    if conditioned and dtype == torch.float32:
        rtol = max(rtol, 2 * float32_noise(cls, kw, params, grads_seq, clip, reference))
    assert_rel(runs["pure"], reference, params, update_rtol or rtol, "update path vs torch.optim")
    assert_rel(
        runs["fused-pure"], reference, params, fused_rtol or rtol, "fused path vs torch.optim"
    )
    if fused_bitwise_with_torch and (clip is None or dtype == torch.float64):
        assert_bitwise(runs["fused-pure"], reference, "fused path vs torch.optim(foreach=False)")
    if torch_fused:
        fused_ref = torch_run(lambda ps: cls(ps, **kw, fused=True), params, grads_seq, clip)
        if fused_bitwise_with_torch_fused and (clip is None or dtype == torch.float64):
            assert_bitwise(runs["fused-pure"], fused_ref, "fused path vs torch fused=True")
        else:
            assert_rel(runs["fused-pure"], fused_ref, params, rtol, "fused path vs torch fused")
    return runs, reference


def relative_error(actual, expected, initial):
    """The largest ``|a - e| / (|e| + scale)`` over all leaves, as :func:`assert_rel` bounds it."""
    worst = 0.0
    leaves = zip(*(optree.tree_leaves(t) for t in (actual, expected, initial)), strict=True)
    for a, e, p0 in leaves:
        scale = torch.maximum(p0.abs().max(), e.abs().max())
        worst = max(worst, ((a - e).abs() / (e.abs() + scale)).max().item())
    return worst


def float32_noise(cls, kw, params, grads_seq, clip, reference):
    """How far torch's float32 run is from the same run in float64: the float32 rounding noise
    of the problem itself, relative as :func:`assert_rel` measures it."""

    def to64(tree):
        return optree.tree_map(lambda t: t.double(), tree)

    exact = torch_run(
        lambda ps: cls(ps, **kw, foreach=False), to64(params), [to64(g) for g in grads_seq], clip
    )
    return relative_error(reference, optree.tree_map(lambda t: t.float(), exact), params)


# --------------------------------------------------------------------------------------------
# Bad hyperparameters: a ValueError naming the argument.


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: adamax(lr=-1e-3), "lr"),
        (lambda: adamax(betas=(1.0, 0.999)), r"betas\[0\]"),
        (lambda: adamax(betas=(0.9, -0.1)), r"betas\[1\]"),
        (lambda: adamax(betas=(0.9,)), "betas"),
        (lambda: adamax(eps=-1.0), "eps"),
        (lambda: adamax(weight_decay=-0.1), "weight_decay"),
        (lambda: scale_by_adamax(b1=lambda s: 0.9), r"betas\[0\]"),
        (lambda: adagrad(lr=-0.1), "lr"),
        (lambda: adagrad(lr_decay=-1.0), "lr_decay"),
        (lambda: adagrad(weight_decay=-1.0), "weight_decay"),
        (lambda: adagrad(initial_accumulator_value=-1.0), "initial_accumulator_value"),
        (lambda: adagrad(eps=-1e-10), "eps"),
        (lambda: scale_by_adagrad(eps=float("nan")), "eps"),
        (lambda: adadelta(lr=-1.0), "lr"),
        (lambda: adadelta(rho=1.5), "rho"),
        (lambda: adadelta(rho=-0.1), "rho"),
        (lambda: scale_by_adadelta(rho="0.9"), "rho"),
        (lambda: adadelta(eps=-1.0), "eps"),
        (lambda: adadelta(weight_decay=-1.0), "weight_decay"),
        (lambda: rmsprop(lr=-1.0), "lr"),
        (lambda: rmsprop(alpha=-0.5), "alpha"),
        (lambda: rmsprop(eps=-1.0), "eps"),
        (lambda: rmsprop(momentum=-0.9), "momentum"),
        (lambda: rmsprop(weight_decay=-1.0), "weight_decay"),
        (lambda: scale_by_rms(alpha="x"), "alpha"),
        (lambda: rprop(lr=-1.0), "lr"),
        (lambda: rprop(etas=(1.5, 1.2)), "etas"),
        (lambda: rprop(etas=(0.5, 0.9)), "etas"),
        (lambda: rprop(etas=(0.0, 1.2)), "etas"),
        (lambda: rprop(etas=(0.5,)), "etas"),
        (lambda: scale_by_rprop(etas=("a", 1.2)), r"etas\[0\]"),
        (lambda: rprop(step_sizes=(1.0, 0.5)), "step_sizes"),
        (lambda: rprop(step_sizes=(-1.0, 0.5)), "step_sizes"),
        (lambda: rprop(step_sizes=(1e-6,)), "step_sizes"),
        (lambda: asgd(lr=-1.0), "lr"),
        (lambda: asgd(weight_decay=-1.0), "weight_decay"),
        (lambda: asgd(lambd="x"), "lambd"),
        (lambda: asgd(alpha=float("nan")), "alpha"),
        (lambda: scale_by_asgd(t0=None), "t0"),
        (lambda: nadam(lr=-1.0), "lr"),
        (lambda: nadam(betas=(0.9, 1.0)), r"betas\[1\]"),
        (lambda: nadam(eps=-1.0), "eps"),
        (lambda: nadam(weight_decay=-1.0), "weight_decay"),
        (lambda: nadam(momentum_decay=-4e-3), "momentum_decay"),
        (lambda: scale_by_nadam(b1=lambda s: 0.9), r"betas\[0\]"),
        (lambda: radam(lr=-1.0), "lr"),
        (lambda: radam(betas=(-0.1, 0.999)), r"betas\[0\]"),
        (lambda: radam(eps=-1.0), "eps"),
        (lambda: radam(weight_decay=-1.0), "weight_decay"),
        (lambda: scale_by_radam(b2=1.0), r"betas\[1\]"),
    ],
)
def test_invalid_hyperparameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_asgd_needs_the_parameters():
    tx = asgd()
    params = {"w": torch.ones(2)}
    with pytest.raises(ValueError, match="needs the parameters"):
        tx.update(params, tx.init(params))


@pytest.mark.parametrize("name", ALIASES)
def test_update_tree_that_does_not_match_the_state_names_the_path(name):
    tx = ALIASES[name]()
    params = {"a": torch.ones(2), "b": torch.ones(3)}
    state = tx.init(params)
    wrong = {"a": torch.ones(2), "c": torch.ones(3)}
    with pytest.raises(ValueError, match=r"missing leaf 'b'"):
        tx.update(wrong, state, wrong)
    with pytest.raises(ValueError, match=r"missing leaf 'b'"):
        ft.apply_gradients(tx, wrong, wrong, state, fused=True)


# --------------------------------------------------------------------------------------------
# Purity: the pure paths never touch their inputs; the fused plan is the one expected.

OPTIONS = {
    "adamax": dict(lr=0.01, weight_decay=0.1, maximize=True),
    "adagrad": dict(lr=0.1, lr_decay=0.01, weight_decay=0.1, initial_accumulator_value=0.1),
    "adadelta": dict(lr=0.5, weight_decay=0.1, maximize=True),
    "rmsprop": dict(lr=0.01, weight_decay=0.1, momentum=0.9, centered=True),
    "rprop": dict(lr=0.01, maximize=True),
    "asgd": dict(lr=0.05, weight_decay=0.1, t0=1),
    "nadam": dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True),
    "radam": dict(lr=0.01, weight_decay=0.1, betas=(0.9, 0.9)),
}


def snapshot(tree):
    return optree.tree_map(torch.clone, tree, namespace="functrain")


def assert_same(a, b, what):
    leaves_a = optree.tree_leaves(a, namespace="functrain")
    leaves_b = optree.tree_leaves(b, namespace="functrain")
    assert len(leaves_a) == len(leaves_b)
    for i, (x, y) in enumerate(zip(leaves_a, leaves_b, strict=True)):
        assert torch.equal(x, y), f"{what}: leaf {i} changed"


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("name", ALIASES)
def test_pure_paths_do_not_mutate_their_inputs(name, fused):
    tx = ALIASES[name](**OPTIONS[name])
    gen = torch.Generator().manual_seed(0)
    params = make_tree(generator=gen)
    state = tx.init(params)
    for step in range(8):  # past RAdam's rectification threshold and ASGD's t0
        grads = make_tree(generator=gen)
        before = snapshot((params, grads, state))
        if fused:
            new_params, new_state = ft.apply_gradients(tx, params, grads, state, fused=True)
        else:
            updates, new_state = tx.update(grads, state, params)
            new_params = ft.apply_updates(params, updates)
        assert_same((params, grads, state), before, f"inputs after step {step}")
        params, state = new_params, new_state


@pytest.mark.parametrize("name", ALIASES)
def test_apply_gradients_runs_the_block_as_one_fused_step(name):
    plan = ft.fusion_plan(ALIASES[name](**OPTIONS[name]))
    assert plan is not None
    # RMSprop with momentum: scale_by_rms, then torch's fused SGD-momentum kernel.
    block = {"rmsprop": "trace"}.get(name, f"scale_by_{name}")
    assert plan.kernel[1].name.startswith(block + "("), plan.kernel[1].name


@pytest.mark.parametrize("name", ALIASES)
def test_fused_path_with_device_scalars(name, monkeypatch):
    """The fused steps read CPU scalars on the host; on an accelerator they keep them on the
    device (one more pass, no sync). Forcing that branch here checks it on the CPU."""
    tx = ALIASES[name](**OPTIONS[name])
    params = make_tree(dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    grads_seq = grads_sequence(2, torch.float64, steps=30)
    host, _ = run_functrain(tx, params, grads_seq, fused=True)
    real = foreach_ops.host_scalar
    monkeypatch.setattr(
        foreach_ops,
        "host_scalar",
        lambda x: None if isinstance(x, torch.Tensor) else real(x),
    )
    device, _ = run_functrain(tx, params, grads_seq, fused=True)
    assert_rel(device, host, params, 1e-12, "device-scalar fused path vs host-scalar one")


# --------------------------------------------------------------------------------------------
# Differentiability: torch.func.grad through two steps against central finite differences.

DIFFERENTIABLE = {
    "adamax": lambda: adamax(lr=0.1, weight_decay=0.1),
    "adamax-maximize": lambda: adamax(lr=0.05, maximize=True),
    "adagrad": lambda: adagrad(lr=0.1, lr_decay=0.1, weight_decay=0.1),
    "adagrad+clip": lambda: ft.chain(ft.clip(0.5), adagrad(lr=0.1, initial_accumulator_value=1)),
    "adadelta": lambda: adadelta(lr=1.0, weight_decay=0.1),
    "rmsprop": lambda: rmsprop(lr=0.01, weight_decay=0.1),
    "rmsprop-centered-momentum": lambda: rmsprop(lr=0.01, momentum=0.9, centered=True),
    "rprop": lambda: rprop(lr=0.05),
    "asgd": lambda: asgd(lr=0.1, weight_decay=0.1, t0=0, lambd=0.1),
    "nadam": lambda: nadam(lr=0.1, weight_decay=0.1),
    "nadam-decoupled": lambda: nadam(lr=0.1, weight_decay=0.1, decoupled_weight_decay=True),
    "radam": lambda: radam(lr=0.1, weight_decay=0.1),
    # With betas[1] = 0.999 the rectified branch starts at step 6 (see the test below).
    "radam-rectified-7-steps": lambda: radam(lr=0.02, decoupled_weight_decay=True),
}


@pytest.mark.parametrize("name", DIFFERENTIABLE)
def test_grad_through_two_steps_matches_finite_differences(name):
    check_meta_gradient(
        DIFFERENTIABLE[name](), steps=7 if "7-steps" in name else 2, problem=problem
    )


@pytest.mark.parametrize("name", ["adamax", "adagrad", "rmsprop", "nadam", "radam", "adadelta"])
def test_grad_with_respect_to_the_learning_rate(name):
    p0, loss = problem()

    def after_two_steps(lr):
        tx = ALIASES[name](lr=lambda step: lr)
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


# --------------------------------------------------------------------------------------------
# Scheduled learning rates: torch with the group's lr rewritten before every step.

SCHEDULED = {
    "adamax": dict(weight_decay=0.1),
    "adagrad": dict(lr_decay=0.05, weight_decay=0.1),
    "adadelta": dict(rho=0.5),
    "rmsprop": dict(momentum=0.5),
    "rprop": dict(),
    "asgd": dict(t0=20, lambd=0.01),
    "nadam": dict(weight_decay=0.01, decoupled_weight_decay=True),
    "radam": dict(betas=(0.9, 0.99)),
}


@pytest.mark.parametrize("fused", [False, None])
@pytest.mark.parametrize("name", SCHEDULED)
def test_scheduled_lr_matches_torch_with_a_scheduler(name, fused):
    dtype = torch.float64
    lr = cosine_annealing_lr(0.05, T_max=STEPS, eta_min=1e-3)
    kw = SCHEDULED[name]
    tx = ALIASES[name](lr=lr, **kw)
    params = make_tree(dtype=dtype, generator=torch.Generator().manual_seed(5))
    grads_seq = grads_sequence(7, dtype)
    ours, state = run_functrain(tx, params, grads_seq, fused=fused)

    def set_group(group, step):
        group["lr"] = lr(step)

    ref = run_torch(
        lambda ps: TORCH[name](ps, lr=lr(0), **kw, foreach=False), params, grads_seq, set_group
    )
    assert_rel(ours, ref, params, 1e-12, f"{name} with a scheduled lr vs torch")


def test_adagrad_lr_in_force_is_the_decayed_one():
    tx = adagrad(lr=0.1, lr_decay=0.5)
    params = {"w": torch.ones(3)}
    state = tx.init(params)
    for step in range(4):
        params, state = ft.apply_gradients(tx, params, {"w": torch.ones(3)}, state)
        assert state[-1].lr.item() == pytest.approx(0.1 / (1 + step * 0.5), rel=1e-15)
    assert repr(AdagradLearningRate(0.1, 0.5)) == "AdagradLearningRate(lr=0.1, lr_decay=0.5)"


# --------------------------------------------------------------------------------------------
# Readable state against torch.optim's.


def torch_optimizer_after(name, kw, params, grads_seq):
    leaves = [torch.nn.Parameter(t.clone()) for t in optree.tree_leaves(params)]
    opt = TORCH[name](leaves, **kw, foreach=False)
    for grads in grads_seq:
        for p, g in zip(leaves, optree.tree_leaves(grads), strict=True):
            p.grad = g.clone()
        opt.step()
    return opt, leaves


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("t0", [0, 30.5, 1e6])
def test_asgd_state_matches_torch(t0, fused, dtype):
    kw = dict(lr=0.05, lambd=0.01, alpha=0.75, t0=t0, weight_decay=0.01)
    params = make_tree(dtype=dtype, generator=torch.Generator().manual_seed(2))
    grads_seq = grads_sequence(3, dtype)
    ours, state = run_functrain(asgd(**kw), params, grads_seq, fused=fused)
    opt, leaves = torch_optimizer_after("asgd", kw, params, grads_seq)
    (asgd_state,) = [s for s in state if isinstance(s, ScaleByAsgdState)]
    torch_states = [opt.state[p] for p in leaves]
    assert torch.equal(asgd_state.eta, torch_states[0]["eta"])
    assert torch.equal(asgd_state.mu, torch_states[0]["mu"])
    assert asgd_state.count.item() == torch_states[0]["step"].item() == STEPS
    averaged = asgd_averaged_params(state, ours)
    expected = optree.tree_unflatten(optree.tree_structure(params), [s["ax"] for s in torch_states])
    rtol = 1e-6 if dtype == torch.float32 else 1e-12
    assert_rel(averaged, expected, params, rtol, "averaged parameters vs torch's ax")
    if t0 == 1e6 and fused:  # no averaging yet: ax is a copy of the latest parameters
        assert_bitwise(averaged, ours, "ax before t0")


def test_asgd_averaged_params_errors():
    params = {"w": torch.ones(2)}
    with pytest.raises(ValueError, match="found 0"):
        asgd_averaged_params(ft.sgd().init(params), params)
    state = asgd().init(params)
    with pytest.raises(ValueError, match="missing leaf 'w'"):
        asgd_averaged_params(state, {"v": torch.ones(2)})


def test_nadam_mu_product_matches_torch():
    params = make_tree(generator=torch.Generator().manual_seed(2))
    grads_seq = grads_sequence(3, torch.float32)
    _, state = run_functrain(nadam(), params, grads_seq)
    opt, leaves = torch_optimizer_after("nadam", {}, params, grads_seq)
    assert torch.equal(state[1].mu_product, opt.state[leaves[0]]["mu_product"])


def test_rprop_step_sizes_match_torch():
    params = make_tree(generator=torch.Generator().manual_seed(2))
    grads_seq = grads_sequence(3, torch.float32)
    _, state = run_functrain(rprop(), params, grads_seq)
    opt, leaves = torch_optimizer_after("rprop", {}, params, grads_seq)
    for ours, p in zip(state.step_size, leaves, strict=True):
        assert torch.equal(ours, opt.state[p]["step_size"])


def test_radam_rectification_switches_on_the_device_at_torchs_step():
    # betas[1] = 0.999: rho_t > 5 from step 6 on; no host value decides it in update().
    params = {"w": torch.zeros((), dtype=torch.float64)}
    tx = ft.chain(scale_by_radam(0.0, 0.999, 0.0))
    state = tx.init(params)
    directions = []
    for _ in range(8):
        updates, state = tx.update({"w": torch.tensor(2.0, dtype=torch.float64)}, state, params)
        directions.append(updates["w"].item())
    # Unrectified: m / (1 - 0) = g = 2. Rectified, with v = (1 - b2**t) * g**2:
    # g * r_t * sqrt(1 - b2**t) / sqrt(v) = r_t.
    assert directions[:5] == [2.0] * 5
    b2, t = 0.999, 6
    rho_inf = 2 / (1 - b2) - 1
    rho_t = rho_inf - 2 * t * b2**t / (1 - b2**t)
    rect = ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5
    assert directions[5] == pytest.approx(rect, rel=1e-14)
    assert directions[6] < directions[7] < 1.0


@pytest.mark.parametrize("name", ALIASES)
def test_mixed_dtype_tree_matches_torch(name):
    """float32 and float64 leaves in one tree: two (device, dtype) groups on every path."""
    gen = torch.Generator().manual_seed(4)
    params = {"a": make_tree(generator=gen), "b": make_tree(dtype=torch.float64, generator=gen)}
    grads_seq = [
        {"a": make_tree(generator=gen), "b": make_tree(dtype=torch.float64, generator=gen)}
        for _ in range(30)
    ]
    kw = OPTIONS[name]
    runs = functrain_runs(ALIASES[name](**kw), params, grads_seq)
    assert_bitwise(runs["pure"], runs["donate"], "pure vs donating path")
    assert_bitwise(runs["fused-pure"], runs["fused-donate"], "fused pure vs fused donating")
    reference = torch_run(lambda ps: TORCH[name](ps, **kw, foreach=False), params, grads_seq, None)
    for path in ("pure", "fused-pure"):
        for key, rtol in (("a", 1e-6), ("b", 1e-12)):
            # NAdam's decoupled decay in float32: see test_optim_nadam.
            rtol = 2e-5 if (name, path, key) == ("nadam", "pure", "a") else rtol
            assert_rel(runs[path][key], reference[key], params[key], rtol, f"{path} {key}")


@pytest.mark.parametrize("fused", [False, None])
@pytest.mark.parametrize("name", ["adamax", "rmsprop", "asgd", "nadam", "radam"])
def test_scheduled_weight_decay_matches_torch(name, fused):
    dtype = torch.float64
    wd = cosine_annealing_lr(0.1, T_max=STEPS, eta_min=1e-3)
    kw = {"nadam": dict(decoupled_weight_decay=True)}.get(name, {})
    tx = ALIASES[name](lr=0.01, weight_decay=wd, **kw)
    params = make_tree(dtype=dtype, generator=torch.Generator().manual_seed(5))
    grads_seq = grads_sequence(7, dtype)
    ours, state = run_functrain(tx, params, grads_seq, fused=fused)

    def set_group(group, step):
        group["weight_decay"] = wd(step)

    ref = run_torch(
        lambda ps: TORCH[name](ps, lr=0.01, weight_decay=wd(0), **kw, foreach=False),
        params,
        grads_seq,
        set_group,
    )
    assert_rel(ours, ref, params, 1e-12, f"{name} with a scheduled weight decay vs torch")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "make",
    [
        # A scale after the transforms that own their update: the fused step must honour it.
        lambda: ft.chain(asgd(lr=0.05, weight_decay=0.1, t0=3), ft.scale(0.5)),
        lambda: ft.chain(ft.clip(0.1), asgd(lr=0.05, weight_decay=0.1, t0=3), ft.scale(0.5)),
        lambda: ft.chain(rprop(lr=0.05), ft.scale(0.5)),
        lambda: ft.chain(ft.clip(0.1), rprop(lr=0.05, maximize=True), ft.scale(-2.0)),
    ],
)
def test_fused_step_with_a_scale_after_an_update_owning_transform(make, dtype):
    tx = make()
    assert ft.fusion_plan(tx) is not None
    params = make_tree(dtype=dtype, generator=torch.Generator().manual_seed(3))
    grads_seq = grads_sequence(4, dtype, steps=30)
    runs = functrain_runs(tx, params, grads_seq)
    assert_bitwise(runs["fused-pure"], runs["fused-donate"], "fused pure vs fused donating")
    rtol = 1e-6 if dtype == torch.float32 else 1e-12
    assert_rel(runs["fused-pure"], runs["pure"], params, rtol, "fused path vs update path")
