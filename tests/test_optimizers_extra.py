"""Helpers shared by tests/test_optim_*.py (not a test module)."""

from __future__ import annotations

import optree
import pytest
import torch

import functrain as ft
from tests.test_parity_torch import assert_bitwise, assert_rel, grads_sequence

__all__ = [
    "single_thread",
    "assert_bitwise",
    "assert_rel",
    "check_meta_gradient",
    "functrain_pure_and_donate",
    "grads_sequence",
    "max_rel_error",
    "torch_reference",
]


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """One intra-op thread while these modules run: their tensors are tiny, and on a loaded
    2-core machine OpenMP's spinning threads made each small op 10-50x slower. Restored
    afterwards; ours and torch's runs are compared under the same setting."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def functrain_pure_and_donate(tx, params, grads_seq):
    """Final params of the pure path (update + apply_updates) and of the donating path
    (apply_gradients(donate=True, fused=False), which writes in place)."""
    results = {}
    for name in ("pure", "donate"):
        p = optree.tree_map(torch.clone, params)
        state = tx.init(p)
        for grads in grads_seq:
            g = optree.tree_map(torch.clone, grads)
            if name == "pure":
                updates, state = tx.update(g, state, p)
                p = ft.apply_updates(p, updates)
            else:
                p, state = ft.apply_gradients(tx, p, g, state, donate=True, fused=False)
        results[name] = (p, state)
    return results


def torch_reference(make_opts, params, grads_seq):
    """Run torch optimizers built by ``make_opts(leaves) -> [opt, ...]`` over ``grads_seq``."""
    leaves = [torch.nn.Parameter(t.clone()) for t in optree.tree_leaves(params)]
    opts = make_opts(leaves)
    for grads in grads_seq:
        for p, g in zip(leaves, optree.tree_leaves(grads), strict=True):
            p.grad = g.clone()
        for opt in opts:
            opt.step()
    return optree.tree_unflatten(optree.tree_structure(params), [p.detach() for p in leaves])


def max_rel_error(actual, expected, initial):
    """The largest ``|a - e| / (|e| + scale)`` over all leaves (assert_rel's measure)."""
    worst = 0.0
    for a, e, p0 in zip(
        optree.tree_leaves(actual),
        optree.tree_leaves(expected),
        optree.tree_leaves(initial),
        strict=True,
    ):
        scale = torch.maximum(p0.abs().max(), e.abs().max())
        worst = max(worst, ((a - e).abs() / (e.abs() + scale)).max().item())
    return worst


def regression_problem():
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


def check_meta_gradient(tx, steps=2, problem=regression_problem, rel=1e-6):
    """``torch.func.grad`` through ``steps`` pure updates vs central finite differences."""
    p0, loss = problem()

    def meta_loss(p):
        state = tx.init(p)
        for _ in range(steps):
            grads = torch.func.grad(loss)(p)
            updates, state = tx.update(grads, state, p)
            p = ft.apply_updates(p, updates)
        return loss(p)

    analytic = torch.func.grad(meta_loss)(p0)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        direction = {k: torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in p0.items()}
        h = 1e-6
        plus = meta_loss({k: p0[k] + h * direction[k] for k in p0})
        minus = meta_loss({k: p0[k] - h * direction[k] for k in p0})
        numeric = (plus - minus) / (2 * h)
        projected = sum((analytic[k] * direction[k]).sum() for k in p0)
        assert projected.item() == pytest.approx(numeric.item(), rel=rel, abs=1e-8)
    return analytic


# =========================================================================================
# The beyond-torch optimizers against straightforward per-tensor references (float64).
# =========================================================================================

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from functrain.transforms.lamb import lamb, scale_by_trust_ratio  # noqa: E402
from functrain.transforms.lars import lars  # noqa: E402
from functrain.transforms.lion import lion  # noqa: E402
from functrain.transforms.schedule_free import (  # noqa: E402
    schedule_free_adamw,
    schedule_free_eval_params,
    schedule_free_sgd,
)
from functrain.transforms.sparse_adam import sparse_adam  # noqa: E402
from tests.conftest import make_tree  # noqa: E402

STEPS = 100
RTOL = 1e-12  # float64: the references and the transforms differ only in rounding order


def lr_value(lr, step):
    """A float or a schedule at ``step``, as a Python float."""
    return float(lr(torch.tensor(step))) if callable(lr) else lr


def reference_run(step_fn, init_fn, params, grads_seq):
    """Per-tensor reference: ``init_fn(p) -> state``; ``step_fn(t, p, g, state) -> p``."""
    leaves = [p.clone() for p in optree.tree_leaves(params)]
    states = [init_fn(p) for p in leaves]
    for t, grads in enumerate(grads_seq):
        for i, g in enumerate(optree.tree_leaves(grads)):
            leaves[i] = step_fn(t, leaves[i], g, states[i])
    return optree.tree_unflatten(optree.tree_structure(params), leaves), states


def check_against_reference(tx, step_fn, init_fn, seed, steps=STEPS):
    params = make_tree(dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 1))
    grads_seq = grads_sequence(seed, torch.float64, steps)
    runs = functrain_pure_and_donate(tx, params, grads_seq)
    assert_bitwise(runs["pure"][0], runs["donate"][0], "pure vs donating path")
    expected, states = reference_run(step_fn, init_fn, params, grads_seq)
    assert_rel(runs["pure"][0], expected, params, RTOL, "vs the reference implementation")
    return runs, expected, states, params


schedules = st.sampled_from(["constant", "decaying"])


def make_lr(base, kind):
    # A schedule of the step (0-d int64 tensor), evaluated identically by the reference.
    return base if kind == "constant" else (lambda step: base * 0.98 ** step.double())


# --- Lion --------------------------------------------------------------------------------


@given(
    lr=st.sampled_from([1e-4, 1e-3, 0.01]),
    lr_kind=schedules,
    betas=st.sampled_from([(0.9, 0.99), (0.95, 0.98), (0.0, 0.9)]),
    weight_decay=st.sampled_from([0.0, 0.1, 1.0]),
    maximize=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_lion_matches_the_paper(lr, lr_kind, betas, weight_decay, maximize, seed):
    b1, b2 = betas
    schedule = make_lr(lr, lr_kind)

    def step(t, p, g, state):
        g = -g if maximize else g
        c = b1 * state["m"] + (1 - b1) * g
        p = p - lr_value(schedule, t) * (torch.sign(c) + weight_decay * p)
        state["m"] = b2 * state["m"] + (1 - b2) * g
        return p

    tx = lion(schedule, betas, weight_decay, maximize=maximize)
    check_against_reference(tx, step, lambda p: {"m": torch.zeros_like(p)}, seed)


# --- LAMB --------------------------------------------------------------------------------


@given(
    lr=st.sampled_from([1e-3, 0.01, 0.1]),
    lr_kind=schedules,
    betas=st.sampled_from([(0.9, 0.999), (0.5, 0.9)]),
    eps=st.sampled_from([1e-6, 1e-3]),
    weight_decay=st.sampled_from([0.0, 0.01, 0.5]),
    seed=st.integers(0, 2**16),
)
def test_lamb_matches_the_paper(lr, lr_kind, betas, eps, weight_decay, seed):
    b1, b2 = betas
    schedule = make_lr(lr, lr_kind)

    def step(t, p, g, state):
        state["m"] = b1 * state["m"] + (1 - b1) * g
        state["v"] = b2 * state["v"] + (1 - b2) * g * g
        m_hat = state["m"] / (1 - b1 ** (t + 1))
        v_hat = state["v"] / (1 - b2 ** (t + 1))
        u = m_hat / (v_hat.sqrt() + eps) + weight_decay * p
        p_norm, u_norm = p.norm().item(), u.norm().item()
        ratio = p_norm / u_norm if p_norm > 0 and u_norm > 0 else 1.0
        return p - lr_value(schedule, t) * ratio * u

    tx = lamb(schedule, betas, eps, weight_decay)
    check_against_reference(
        tx, step, lambda p: {"m": torch.zeros_like(p), "v": torch.zeros_like(p)}, seed
    )


def test_trust_ratio_is_one_for_zero_norms():
    params = {"zero": torch.zeros(3), "w": torch.full((2,), 3.0)}
    updates = {"zero": torch.ones(3), "w": torch.zeros(2)}
    tx = scale_by_trust_ratio()
    out, _ = tx.update(updates, tx.init(params), params)
    assert torch.equal(out["zero"], torch.ones(3)) and torch.equal(out["w"], torch.zeros(2))
    out, _ = tx.update({"zero": torch.ones(3), "w": torch.ones(2)}, tx.init(params), params)
    # ||p|| / ||u|| = sqrt(18) / sqrt(2) = 3
    assert torch.allclose(out["w"], torch.full((2,), 3.0))


# --- LARS --------------------------------------------------------------------------------


@given(
    lr=st.sampled_from([0.1, 1.0, 5.0]),
    lr_kind=schedules,
    momentum=st.sampled_from([0.0, 0.9]),
    weight_decay=st.sampled_from([0.0, 1e-4, 0.1]),
    trust_coefficient=st.sampled_from([1e-3, 0.02]),
    eps=st.sampled_from([0.0, 1e-8]),
    nesterov=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_lars_matches_the_paper(
    lr, lr_kind, momentum, weight_decay, trust_coefficient, eps, nesterov, seed
):
    nesterov = nesterov and momentum > 0
    schedule = make_lr(lr, lr_kind)

    def step(t, p, g, state):
        p_norm, g_norm = p.norm().item(), g.norm().item()
        if p_norm > 0 and g_norm > 0:
            local_lr = trust_coefficient * p_norm / (g_norm + weight_decay * p_norm + eps)
        else:
            local_lr = 1.0
        u = lr_value(schedule, t) * local_lr * (g + weight_decay * p)
        state["v"] = momentum * state["v"] + u
        return p - (u + momentum * state["v"] if nesterov else state["v"])

    tx = lars(schedule, momentum, weight_decay, trust_coefficient, eps, nesterov)
    check_against_reference(tx, step, lambda p: {"v": torch.zeros_like(p)}, seed)


# --- schedule-free -----------------------------------------------------------------------


def schedule_free_reference(lr, b1, weight_decay, warmup_steps, r, weight_lr_power, b2, eps):
    """The authors' reference form (schedulefree/*_reference.py): explicit x, y and z, and
    the group-level scalars kept in a shared dict."""
    shared = {"lr_max": -1.0, "weight_sum": 0.0, "k": -1, "ckp1": None, "lr": None}

    def scalars(t):
        if shared["k"] == t:
            return
        shared["k"] = t
        sched = (t + 1) / warmup_steps if t < warmup_steps else 1.0
        lr_t = lr * sched
        if b2 is not None:
            lr_t *= (1 - b2 ** (t + 1)) ** 0.5
        shared["lr"] = lr_t
        shared["lr_max"] = max(lr_t, shared["lr_max"])
        weight = (t + 1) ** r * shared["lr_max"] ** weight_lr_power
        shared["weight_sum"] += weight
        ws = shared["weight_sum"]
        shared["ckp1"] = weight / ws if ws != 0 else 0.0

    def init(p):
        return {"z": p.clone(), "x": p.clone(), "v": torch.zeros_like(p)}

    def step(t, y, g, state):
        scalars(t)
        lr_t, ckp1, z, x = shared["lr"], shared["ckp1"], state["z"], state["x"]
        if b2 is None:  # SGD: L2 at y
            z = z - lr_t * (g + weight_decay * y)
        else:  # AdamW: decay at y, then the normalised gradient
            state["v"] = b2 * state["v"] + (1 - b2) * g * g
            z = z - lr_t * weight_decay * y
            z = z - lr_t * g / (state["v"].sqrt() + eps)
        x = (1 - ckp1) * x + ckp1 * z
        state["z"], state["x"] = z, x
        return b1 * x + (1 - b1) * z

    return step, init


@given(
    adamw=st.booleans(),
    lr=st.sampled_from([0.0025, 0.1, 1.0]),
    b1=st.sampled_from([0.9, 0.5, 0.98]),
    b2=st.sampled_from([0.999, 0.9]),
    eps=st.sampled_from([1e-8, 1e-3]),
    weight_decay=st.sampled_from([0.0, 0.01, 0.1]),
    warmup_steps=st.sampled_from([0, 1, 10]),
    r=st.sampled_from([0.0, 1.0]),
    weight_lr_power=st.sampled_from([2.0, 0.0, 1.0]),
    seed=st.integers(0, 2**16),
)
def test_schedule_free_matches_the_reference_and_recovers_x(
    adamw, lr, b1, b2, eps, weight_decay, warmup_steps, r, weight_lr_power, seed
):
    common = dict(
        lr=lr,
        weight_decay=weight_decay,
        warmup_steps=warmup_steps,
        r=r,
        weight_lr_power=weight_lr_power,
    )
    if adamw:
        tx = schedule_free_adamw(betas=(b1, b2), eps=eps, **common)
        step, init = schedule_free_reference(
            lr, b1, weight_decay, warmup_steps, r, weight_lr_power, b2, eps
        )
    else:
        tx = schedule_free_sgd(momentum=b1, **common)
        step, init = schedule_free_reference(
            lr, b1, weight_decay, warmup_steps, r, weight_lr_power, None, None
        )
    runs, _, states, params = check_against_reference(tx, step, init, seed)
    y, opt_state = runs["pure"]
    x = schedule_free_eval_params(y, opt_state)
    expected_x = optree.tree_unflatten(optree.tree_structure(params), [s["x"] for s in states])
    # x = lerp(y, z, 1 - 1/b1) amplifies y's rounding by up to 1/b1.
    assert_rel(x, expected_x, params, RTOL / b1, "eval params x vs the reference's x")
    sf_state = opt_state[-1]
    assert sf_state.count.item() == STEPS and sf_state.b1.item() == b1


def test_schedule_free_eval_params_errors():
    params = {"w": torch.ones(2)}
    with pytest.raises(ValueError, match="exactly one ScheduleFreeState"):
        schedule_free_eval_params(params, ft.adamw().init(params))
    tx = schedule_free_adamw(betas=(0.0, 0.999))
    with pytest.raises(ValueError, match="b1 is 0"):
        schedule_free_eval_params(params, tx.init(params))


# --- SparseAdam --------------------------------------------------------------------------


def test_sparse_adam_is_rejected_with_an_explanation():
    with pytest.raises(ValueError, match="SparseAdam is not supported.*dense.*adam"):
        sparse_adam()
    # torch's own argument checks come first.
    with pytest.raises(ValueError, match="lr"):
        sparse_adam(lr=0.0)
    with pytest.raises(ValueError, match="eps"):
        sparse_adam(eps=0.0)
    with pytest.raises(ValueError, match=r"betas\[1\]"):
        sparse_adam(betas=(0.9, 1.0))


# --- differentiability --------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: lion(lr=0.05, weight_decay=0.1),
        lambda: lamb(lr=0.1, weight_decay=0.1),
        lambda: lars(lr=1.0, momentum=0.9, weight_decay=0.1, trust_coefficient=0.05),
        lambda: lars(lr=1.0, momentum=0.9, trust_coefficient=0.05, nesterov=True),
        lambda: schedule_free_sgd(lr=0.1, weight_decay=0.1, warmup_steps=2),
        lambda: schedule_free_adamw(lr=0.05, weight_decay=0.1),
    ],
    ids=["lion", "lamb", "lars", "lars-nesterov", "schedule_free_sgd", "schedule_free_adamw"],
)
def test_grad_through_two_steps_matches_finite_differences(make):
    check_meta_gradient(make())


def test_grad_through_schedule_free_eval_params():
    p0, loss = regression_problem()
    tx = schedule_free_adamw(lr=0.05)

    def eval_loss(p):
        state = tx.init(p)
        for _ in range(2):
            updates, state = tx.update(torch.func.grad(loss)(p), state, p)
            p = ft.apply_updates(p, updates)
        return loss(schedule_free_eval_params(p, state))

    check_meta_gradient_of(eval_loss, p0)


def check_meta_gradient_of(fn, p0):
    analytic = torch.func.grad(fn)(p0)
    direction = {k: torch.ones_like(v) for k, v in p0.items()}
    h = 1e-6
    plus = fn({k: p0[k] + h * direction[k] for k in p0})
    minus = fn({k: p0[k] - h * direction[k] for k in p0})
    projected = sum((analytic[k] * direction[k]).sum() for k in p0)
    assert projected.item() == pytest.approx(((plus - minus) / (2 * h)).item(), rel=1e-6)


# --- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: lion(lr=-1.0), "lr"),
        (lambda: lion(betas=(1.0, 0.99)), r"betas\[0\]"),
        (lambda: lion(betas=(0.9, -0.1)), r"betas\[1\]"),
        (lambda: lion(weight_decay=-1.0), "weight_decay"),
        (lambda: lamb(lr=-1.0), "lr"),
        (lambda: lamb(eps=-1.0), "eps"),
        (lambda: lamb(betas=(0.9, 1.5)), r"betas\[1\]"),
        (lambda: lamb(weight_decay=-0.1), "weight_decay"),
        (lambda: lars(lr=-1.0), "lr"),
        (lambda: lars(momentum=-0.9), "momentum"),
        (lambda: lars(weight_decay=-1.0), "weight_decay"),
        (lambda: lars(trust_coefficient=-1.0), "trust_coefficient"),
        (lambda: lars(momentum=0.0, nesterov=True), "Nesterov"),
        (lambda: scale_by_trust_ratio(min_norm=-1.0), "min_norm"),
        (lambda: schedule_free_sgd(lr=-1.0), "lr"),
        (lambda: schedule_free_sgd(momentum=0.0), "momentum"),
        (lambda: schedule_free_sgd(momentum=1.0), "momentum"),
        (lambda: schedule_free_sgd(warmup_steps=-1), "warmup_steps"),
        (lambda: schedule_free_sgd(weight_decay=-1.0), "weight_decay"),
        (lambda: schedule_free_adamw(betas=(0.9, 1.0)), r"betas\[1\]"),
        (lambda: schedule_free_adamw(eps=-1.0), "eps"),
        (lambda: schedule_free_adamw(r="x"), "r"),
    ],
)
def test_invalid_hyperparameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_transforms_that_need_params_say_so():
    params = {"w": torch.ones(2)}
    for tx in (lamb(), lars(), schedule_free_sgd()):
        with pytest.raises(ValueError, match="needs the parameters"):
            tx.update(params, tx.init(params))


# --- purity ------------------------------------------------------------------------------


def _all_optimizers():
    from functrain.transforms.adafactor import adafactor
    from functrain.transforms.muon import muon

    return {
        "adafactor": lambda: adafactor(lr=0.5, weight_decay=0.1),
        "muon": lambda: muon(lr=0.02, nesterov=False, fallback=ft.adamw()),
        "muon-nesterov": lambda: muon(lr=0.02, fallback=ft.sgd(lr=0.1, momentum=0.9)),
        "lion": lambda: lion(weight_decay=0.1, maximize=True),
        "lamb": lambda: lamb(weight_decay=0.1),
        "lars": lambda: lars(weight_decay=0.1),
        "schedule_free_sgd": lambda: schedule_free_sgd(weight_decay=0.1),
        "schedule_free_adamw": lambda: schedule_free_adamw(weight_decay=0.1),
    }


@pytest.mark.parametrize("name", list(_all_optimizers()))
def test_pure_update_leaves_its_inputs_alone(name):
    tx = _all_optimizers()[name]()
    params = make_tree(generator=torch.Generator().manual_seed(0))
    grads_seq = grads_sequence(0, torch.float32, steps=3)
    state = tx.init(params)
    updates, state = tx.update(grads_seq[0], state, params)
    params = ft.apply_updates(params, updates)
    snapshot = ft.tree_map(torch.clone, (grads_seq[1], state, params))
    first, _ = tx.update(grads_seq[1], state, params)
    again, _ = tx.update(grads_seq[1], state, params)
    after = optree.tree_leaves((grads_seq[1], state, params), namespace="functrain")
    before = optree.tree_leaves(snapshot, namespace="functrain")
    assert len(after) == len(before)
    for i, (a, b) in enumerate(zip(after, before, strict=True)):
        assert torch.equal(a, b), f"{name}: input leaf {i} modified by a pure update"
    assert_bitwise(first, again, f"{name}: same inputs, same update")
