"""Every built-in transform under ``torch.func.vmap``: the numbers of the unbatched call.

A tree whose leaves carry a leading member axis goes through ``vmap(tx.init)``,
``vmap(tx.update)``, ``vmap(apply_updates)`` and ``vmap(apply_gradients)``; member i must
equal the unbatched transform run on member i's slice. Under vmap, foreach ops run leaf by
leaf with the plain torch op (no batching rule for ``torch._foreach_*``); on CPU a foreach op
is itself that op applied tensor by tensor, and every op here is elementwise or reduces
within one member, so member i's values go through the same kernel arithmetic: bitwise
(checked with ATEN_CPU_CAPABILITY=default, avx2 and avx512). Exceptions, each with its bound
stated where it is checked: Muon's Newton-Schulz matmuls (a batched matmul blocks its
products differently from a single one), and ``apply_gradients`` against the unbatched
*fused* kernel (vmap never runs fused kernels).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import optree
import pytest
import torch
import torch.utils._pytree as torch_pytree
from hypothesis import given
from hypothesis import strategies as st
from torch.func import grad, vmap

import functrain as ft
import functrain.schedules as sch
from functrain.transforms.adam import ScaleByAdamState
from functrain.transforms.loss_scaling import update_scale
from functrain.transforms.muon import adjusted_ratio
from functrain.transforms.state_path import find_one
from functrain.transforms.torch_names import EXTRA_OPTIMIZERS, TORCH_OPTIMIZERS
from functrain.tree import NAMESPACE
from tests.test_optimizers_extra import single_thread  # noqa: F401 (autouse fixture)

N = 3
SHAPES = {"scalar": (), "vec": (7,), "mat": (5, 3), "conv": (4, 3, 2, 2)}

# Every optimizer with hyperparameters that reach its less common branches. LBFGS and
# SparseAdam are excepted: lbfgs refuses vmap (tested below), sparse_adam refuses to be
# built at all (functrain has no sparse path).
OPTIMIZERS = {
    "SGD": lambda: ft.sgd(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1),
    "Adam": lambda: ft.adam(lr=0.1, weight_decay=0.1, amsgrad=True),
    "AdamW": lambda: ft.adamw(lr=0.1, weight_decay=0.1),
    "Adamax": lambda: ft.adamax(lr=0.1, weight_decay=0.1),
    "Adagrad": lambda: ft.adagrad(lr=0.1, lr_decay=0.01, weight_decay=0.1),
    "Adadelta": lambda: ft.adadelta(lr=1.0, weight_decay=0.1),
    "RMSprop": lambda: ft.rmsprop(lr=0.01, momentum=0.5, centered=True, weight_decay=0.1),
    "Rprop": lambda: ft.rprop(lr=0.1),
    "ASGD": lambda: ft.asgd(lr=0.1, t0=1, weight_decay=0.1),
    "NAdam": lambda: ft.nadam(lr=0.1, weight_decay=0.1, decoupled_weight_decay=True),
    "RAdam": lambda: ft.radam(lr=0.1, weight_decay=0.1),
    "Adafactor": lambda: ft.adafactor(lr=0.1, weight_decay=0.1),
    # float64 Newton-Schulz: the batched matmuls then agree with the single ones here; the
    # default bfloat16 is checked with its own bound in test_muon_bfloat16_within_its_bound.
    "Muon": lambda: ft.muon(lr=0.1, fallback=ft.adamw(lr=0.1), ns_dtype=torch.float64),
    "Lion": lambda: ft.lion(lr=0.1, weight_decay=0.1),
    "LAMB": lambda: ft.lamb(lr=0.1, weight_decay=0.1),
    "LARS": lambda: ft.lars(lr=0.1, weight_decay=0.1, nesterov=True),
    "ScheduleFreeAdamW": lambda: ft.schedule_free_adamw(lr=0.1, warmup_steps=2, weight_decay=0.1),
    "ScheduleFreeSGD": lambda: ft.schedule_free_sgd(lr=0.1, weight_decay=0.1),
}


def adamw() -> ft.GradientTransformation:
    return ft.adamw(lr=0.1, weight_decay=0.1)


COMBINATORS = {
    "clip": lambda: ft.chain(ft.clip(1.0), adamw()),
    "clip-inf": lambda: ft.chain(ft.clip(1.0, norm_type=math.inf), ft.sgd(lr=0.1, momentum=0.9)),
    "clip_by_value": lambda: ft.chain(ft.clip_by_value(0.5), ft.sgd(lr=0.1)),
    "chain": lambda: ft.chain(
        ft.trace(momentum=0.9), ft.add_decayed_weights(0.1), ft.scale_by_learning_rate(0.1)
    ),
    "masked": lambda: ft.masked(adamw(), lambda path, leaf: path != "vec"),
    "partition": lambda: ft.partition(
        {"a": adamw(), "s": ft.sgd(lr=0.1, momentum=0.9)},
        lambda path, leaf: "a" if leaf.ndim >= 2 else "s",
    ),
    "freeze": lambda: ft.chain(ft.freeze(lambda path, leaf: path == "vec"), adamw()),
    "with_multipliers": lambda: ft.with_multipliers(
        adamw(), {"vec": {"lr_mult": 0.5, "decay_mult": 0.0}}
    ),
    "mask_multipliers": lambda: ft.chain(
        ft.mask_multipliers({"mat": {"lr_mult": 0.5, "decay_mult": 2.0}}),
        ft.sgd(lr=0.1, weight_decay=0.1),
    ),
    "accumulate": lambda: ft.accumulate(adamw(), 2),
    "multi_steps": lambda: ft.multi_steps(adamw(), 2),
    # init_scale 4 and growth_interval 2: the scale grows in members 0 and 2 and backs off in
    # member 1, whose gradient overflows at step 2 (see grads_sequence).
    "loss_scaling": lambda: ft.loss_scaling(adamw(), init_scale=4.0, growth_interval=2),
    "apply_if_finite": lambda: ft.apply_if_finite(adamw(), 3),
    "scheduled-lr": lambda: ft.adamw(lr=sch.warmup_cosine(0.1, warmup_steps=2, total_steps=4)),
    "scheduled-b1": lambda: ft.adam(
        lr=0.1, betas=(sch.linear_lr(0.9, start_factor=0.5, end=3), 0.999)
    ),
    "scheduled-weight-decay": lambda: ft.adamw(
        lr=0.1, weight_decay=sch.multistep_lr(0.1, milestones=[2])
    ),
    "scheduled-momentum": lambda: ft.sgd(
        lr=sch.step_lr(0.1, step_size=2), momentum=sch.cosine_annealing_lr(0.9, T_max=4)
    ),
    "schedule_free": lambda: ft.schedule_free_adamw(lr=0.1, warmup_steps=2),
}


def stacked_tree(n, shapes=SHAPES, generator=None, dtype=torch.float32, scale=1.0):
    return {
        k: torch.randn((n, *s), generator=generator, dtype=dtype) * scale for k, s in shapes.items()
    }


def grads_sequence(n, steps, shapes=SHAPES, dtype=torch.float32, overflow=False):
    gen = torch.Generator().manual_seed(1)
    seq = [stacked_tree(n, shapes, gen, dtype, scale=3.0) for _ in range(steps)]
    if overflow:  # member 1's step 2 overflows (combinators that skip or rescale it)
        seq[1]["vec"][1, 2] = float("inf")
    return seq


def member(tree, i):
    """Member i's slice of a stacked tree or state (optree sees through state records)."""
    return ft.tree_map(lambda t: t[i], tree)


def run_vmapped(tx, params, grads_seq, how="update"):
    state = vmap(tx.init)(params)
    for grads in grads_seq:
        if how == "update":
            updates, state = vmap(lambda g, s, p: tx.update(g, s, p))(grads, state, params)
            params = vmap(ft.apply_updates)(params, updates)
        else:
            params, state = vmap(lambda p, g, s: ft.apply_gradients(tx, p, g, s))(
                params, grads, state
            )
    return params, state


def run_member(tx, params, grads_seq, i, how="update", fused=None):
    params = member(params, i)
    state = tx.init(params)
    for grads in grads_seq:
        if how == "update":
            updates, state = tx.update(member(grads, i), state, params)
            params = ft.apply_updates(params, updates)
        else:
            params, state = ft.apply_gradients(tx, params, member(grads, i), state, fused=fused)
    return params, state


def assert_same(actual, expected, what, rtol=0.0, atol=0.0):
    """Same structure; leaves equal (bitwise by default; nan where nan)."""
    a_leaves, a_spec = optree.tree_flatten(actual, namespace=NAMESPACE)
    e_leaves, e_spec = optree.tree_flatten(expected, namespace=NAMESPACE)
    assert a_spec == e_spec, f"{what}: structures differ"
    for k, (a, e) in enumerate(zip(a_leaves, e_leaves, strict=True)):
        torch.testing.assert_close(
            a, e, rtol=rtol, atol=atol, equal_nan=True, msg=lambda m, k=k: f"{what} leaf {k}: {m}"
        )


def check_members(tx, n=N, steps=3, how="update", overflow=False, dtype=torch.float32):
    params = stacked_tree(n, generator=torch.Generator().manual_seed(0), dtype=dtype)
    grads_seq = grads_sequence(n, steps, dtype=dtype, overflow=overflow)
    got = run_vmapped(tx, params, grads_seq, how)
    for i in range(n):
        # apply_gradients under vmap is update + apply_updates (fused kernels have no
        # batching rule): the same arithmetic as the unbatched fused=False step.
        want = run_member(tx, params, grads_seq, i, how, fused=False)
        assert_same(member(got, i), want, f"member {i}")
    return params, grads_seq, got


# ------------------------------------------------------------------ states and torch pytree


def test_states_are_torch_pytree_nodes_with_none_kept_in_the_structure():
    params = {k: torch.randn(s) for k, s in SHAPES.items()}
    # SGD momentum's buffer is None before the first step; Adafactor holds per-leaf tuples
    # with None where a leaf has no row / column factor.
    for tx in (ft.sgd(lr=0.1, momentum=0.9), ft.adafactor(lr=0.1), ft.chain(ft.clip(1.0))):
        state = tx.init(params)
        leaves, spec = torch_pytree.tree_flatten(state)
        assert all(isinstance(leaf, torch.Tensor) for leaf in leaves)
        expected = optree.tree_leaves(state, namespace=NAMESPACE)
        assert len(leaves) == len(expected) and all(
            a is b for a, b in zip(leaves, expected, strict=True)
        )
        assert torch_pytree.tree_unflatten(leaves, spec) == state
        # torch.export.save writes tree specs as JSON: tuples must come back as tuples.
        assert torch_pytree.treespec_loads(torch_pytree.treespec_dumps(spec)) == spec
    keyed, _ = torch_pytree.tree_flatten_with_path(ft.adam(lr=0.1).init(params))
    assert any(torch_pytree.keystr(path).endswith(".mu[0]") for path, _ in keyed)


def test_vmapped_init_returns_state_records_with_a_member_axis():
    params = stacked_tree(N, generator=torch.Generator().manual_seed(0))
    state = vmap(ft.chain(ft.clip(1.0), ft.adam(lr=0.1)).init)(params)
    assert type(state[0]).__name__ == "ClipState" and state[0].norm.shape == (N,)
    adam = find_one(state, ScaleByAdamState, "test")
    assert [m.shape for m in adam.mu] == [(N, *SHAPES[k]) for k in adam.paths]


# ------------------------------------------------------------------ optimizers


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optimizer_update_under_vmap_equals_each_member(name):
    check_members(OPTIMIZERS[name]())


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optimizer_apply_gradients_under_vmap_equals_each_member(name):
    tx = OPTIMIZERS[name]()
    params, grads_seq, got = check_members(tx, how="apply_gradients")
    # Against the unbatched default step (torch's fused or one-pass kernels where they
    # apply): those evaluate the same formula with different roundings. Bound as the torch
    # parity tests state it: 1e-6 of the leaf's scale in float32 over three steps.
    for i in range(N):
        fused_params, _ = run_member(tx, params, grads_seq, i, "apply_gradients")
        for a, e in zip(
            optree.tree_leaves(member(got[0], i)), optree.tree_leaves(fused_params), strict=True
        ):
            scale = e.abs().max().clamp_min(1e-30)
            assert ((a - e).abs().max() / scale).item() <= 1e-6


def test_every_optimizer_is_covered():
    names = (set(TORCH_OPTIMIZERS) | set(EXTRA_OPTIMIZERS)) - {"LBFGS", "SparseAdam"}
    assert names == set(OPTIMIZERS)


def test_muon_bfloat16_within_its_bound():
    """Default Muon orthogonalises in bfloat16. A batched matmul rounds its bfloat16 products
    differently from a single one, and five Newton-Schulz iterations amplify that: the
    orthogonalised direction (entries within about +-1.5) differs by up to 0.11 between the
    two (measured over 30 random matrices, ~15 bfloat16 eps of 2^-7). Bound: 0.25 on the
    direction, i.e. ``|delta update| <= 0.25 * lr * ratio(shape)`` after one step."""
    shapes = {"a": (5, 3), "b": (8, 8), "c": (3, 12)}
    lr = 0.1
    tx = ft.muon(lr=lr, weight_decay=0.0)
    params = stacked_tree(N, shapes, torch.Generator().manual_seed(0))
    grads = grads_sequence(N, 1, shapes)[0]
    updates, _ = vmap(lambda g, s, p: tx.update(g, s, p))(grads, vmap(tx.init)(params), params)
    for i in range(N):
        want, _ = tx.update(member(grads, i), tx.init(member(params, i)), member(params, i))
        for path, shape in shapes.items():
            bound = 0.25 * lr * adjusted_ratio(None, shape)
            assert (updates[path][i] - want[path]).abs().max().item() <= bound


@given(
    name=st.sampled_from(["SGD", "AdamW", "RMSprop", "Adagrad", "Lion", "LAMB"]),
    n=st.integers(1, 4),
    shapes=st.dictionaries(
        st.sampled_from("abc"), st.lists(st.integers(1, 5), max_size=3).map(tuple), min_size=1
    ),
    lr=st.floats(1e-3, 1.0),
    weight_decay=st.sampled_from([0.0, 0.01, 0.3]),
)
def test_update_under_vmap_equals_each_member_for_any_shape(name, n, shapes, lr, weight_decay):
    factories = {
        "SGD": lambda: ft.sgd(lr=lr, momentum=0.9, weight_decay=weight_decay),
        "AdamW": lambda: ft.adamw(lr=lr, weight_decay=weight_decay),
        "RMSprop": lambda: ft.rmsprop(lr=lr, momentum=0.9, weight_decay=weight_decay),
        "Adagrad": lambda: ft.adagrad(lr=lr, weight_decay=weight_decay),
        "Lion": lambda: ft.lion(lr=lr, weight_decay=weight_decay),
        "LAMB": lambda: ft.lamb(lr=lr, weight_decay=weight_decay),
    }
    tx = ft.chain(ft.clip(0.5), factories[name]())
    params = stacked_tree(n, shapes, torch.Generator().manual_seed(0))
    grads_seq = grads_sequence(n, 2, shapes)
    got = run_vmapped(tx, params, grads_seq)
    for i in range(n):
        assert_same(member(got, i), run_member(tx, params, grads_seq, i), f"member {i}")


# ------------------------------------------------------------------ combinators


@pytest.mark.parametrize("how", ["update", "apply_gradients"])
@pytest.mark.parametrize("name", COMBINATORS)
def test_combinator_under_vmap_equals_each_member(name, how):
    overflow = name in ("loss_scaling", "apply_if_finite")
    _, _, (params, state) = check_members(COMBINATORS[name](), steps=4, how=how, overflow=overflow)
    if overflow:
        # Member 1 skipped its step 2 (state checked against its own run above); the other
        # members' parameters are finite.
        assert all(bool(t[[0, 2]].isfinite().all()) for t in params.values())


def test_loss_scaling_scale_rule_is_the_kernels_bitwise():
    """update_scale (the vmap path of loss_scaling) against torch._amp_update_scale_ over
    overflow / growth / infinite-growth cases and factors not exact in float32."""
    cases = [
        (65536.0, 0, 1.0, 2.0, 0.5, 3),
        (65536.0, 2, 0.0, 2.0, 0.5, 3),
        (65536.0, 1, 0.0, 2.0, 0.5, 3),
        (3.0e38, 4, 0.0, 10.0, 0.5, 5),
        (1.7, 6, 0.0, 1.3, 0.3, 7),
        (1.7, 6, 1.0, 1.3, 0.3, 7),
    ]
    for scale, tracker, found, growth, backoff, interval in cases:
        s = torch.tensor(scale, dtype=torch.float32)
        t = torch.tensor(tracker, dtype=torch.int32)
        f = torch.tensor(found, dtype=torch.float32)
        got = update_scale(s, t, f, growth, backoff, interval)
        s2, t2 = s.clone(), t.clone()
        torch._amp_update_scale_(s2, t2, f, growth, backoff, interval)
        assert torch.equal(got[0], s2) and torch.equal(got[1], t2), (scale, tracker, found)


def test_schedule_free_eval_params_under_vmap():
    tx = ft.schedule_free_adamw(lr=0.1)
    params, _, (final, state) = check_members(tx)
    got = vmap(ft.schedule_free_eval_params)(final, state)
    for i in range(N):
        want = ft.schedule_free_eval_params(member(final, i), member(state, i))
        assert_same(member(got, i), want, f"member {i}")


# ------------------------------------------------------------------ meta-gradients


def regression(n):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, generator=gen, dtype=torch.float64)
    y = torch.randn(8, 2, generator=gen, dtype=torch.float64)
    p0 = {
        "w": torch.randn(n, 3, 2, generator=gen, dtype=torch.float64),
        "b": torch.randn(n, 2, generator=gen, dtype=torch.float64),
    }

    def loss(p):
        return ((x @ p["w"] + p["b"] - y) ** 2).mean()

    return p0, loss


@pytest.mark.parametrize("how", ["update", "apply_gradients"])
@pytest.mark.parametrize("name", [*OPTIMIZERS, "clip+adamw", "loss_scaling", "accumulate"])
def test_meta_gradient_under_vmap_equals_each_member(name, how):
    extra = {
        "clip+adamw": lambda: ft.chain(ft.clip(0.5), ft.adamw(lr=0.1)),
        "loss_scaling": lambda: ft.loss_scaling(ft.adam(lr=0.1), init_scale=1.0),
        "accumulate": lambda: ft.accumulate(ft.sgd(lr=0.1, momentum=0.9), 2),
    }
    tx = {**OPTIMIZERS, **extra}[name]()
    p0, loss = regression(N)

    def after_three_steps(p):
        state = tx.init(p)
        for _ in range(3):
            g = grad(loss)(p)
            if how == "update":
                updates, state = tx.update(g, state, p)
                p = ft.apply_updates(p, updates)
            else:
                p, state = ft.apply_gradients(tx, p, g, state)
        return loss(p)

    got = vmap(grad(after_three_steps))(p0)
    # Muon's float64 Newton-Schulz differentiates through batched matmuls, whose backward
    # sums in another order: within 64 float64 ulps of the gradient's scale (5.8e-15 seen).
    rtol = 64 * torch.finfo(torch.float64).eps if name == "Muon" else 0.0
    for i in range(N):
        want = grad(after_three_steps)(member(p0, i))
        for k in want:
            scale = want[k].abs().max().item()
            assert_same(got[k][i], want[k], f"member {i} {k}", atol=rtol * scale)


@pytest.mark.parametrize(
    "make",
    [
        lambda lr: ft.adamw(lr=lambda step: lr),
        lambda lr: ft.sgd(lr=lambda step: lr, momentum=0.9),
        lambda lr: ft.chain(
            ft.clip(0.5), ft.scale_by_adam(), ft.scale_by_learning_rate(lambda s: lr)
        ),
        lambda b1: ft.adam(lr=0.1, betas=(lambda step: b1, 0.999)),
    ],
    ids=["adamw-lr", "sgd-lr", "clip-adam-lr", "adam-b1"],
)
def test_per_member_hyperparameter_meta_gradients(make):
    """vmap over a hyperparameter (entering as a schedule's value) and grad with respect to
    it: a per-member hypergradient sweep in one call."""
    p0, loss = regression(1)
    p0 = member(p0, 0)

    def after_three_steps(h):
        tx = make(h)
        p, state = p0, tx.init(p0)
        for _ in range(3):
            updates, state = tx.update(grad(loss)(p), state, p)
            p = ft.apply_updates(p, updates)
        return loss(p)

    values = torch.tensor([0.01, 0.05, 0.1, 0.9], dtype=torch.float64)
    got = vmap(grad(after_three_steps))(values)
    want = torch.stack([grad(after_three_steps)(v) for v in values])
    assert torch.equal(got, want)


# ------------------------------------------------------------------ refusals


def vmapped_update(tx, **extra):
    params = stacked_tree(N, {"w": (4, 2)}, torch.Generator().manual_seed(0))
    state = vmap(tx.init)(params)
    return vmap(lambda g, s, p: tx.update(g, s, p, **extra))(params, state, params)


def test_lbfgs_refuses_vmap_by_name():
    def loss_fn(p):
        return (p["w"] ** 2).sum()

    with pytest.raises(ValueError, match=r"^lbfgs cannot run under torch.func.vmap: .*host"):
        vmapped_update(ft.lbfgs(), loss_fn=loss_fn)


def test_from_torch_optimizer_refuses_vmap_by_name():
    tx = ft.from_torch_optimizer(torch.optim.SGD, lr=0.1)
    with pytest.raises(ValueError, match=r"^from_torch_optimizer\(SGD\) cannot run under"):
        vmap(tx.init)({"w": torch.zeros(N, 2)})
    state = tx.init({"w": torch.zeros(2)})
    with pytest.raises(ValueError, match=r"functrain\.sgd"):
        vmap(lambda g: tx.update(g, state, {"w": torch.zeros(2)}))({"w": torch.ones(N, 2)})


def test_clip_error_if_nonfinite_refuses_vmap_by_name():
    with pytest.raises(ValueError, match=re.escape("clip(error_if_nonfinite=True) cannot run")):
        vmapped_update(ft.clip(1.0, error_if_nonfinite=True))


@pytest.mark.parametrize("wrap", [ft.apply_if_finite, ft.loss_scaling], ids=["aif", "ls"])
def test_skipping_wrappers_name_themselves_when_the_inner_state_changes_shape(wrap):
    # torch-style SGD momentum creates its buffer on the first step: which state a member
    # keeps would have to be decided on the host.
    inner = ft.sgd(lr=0.1, momentum=0.9)
    tx = wrap(inner, 3) if wrap is ft.apply_if_finite else wrap(inner)
    with pytest.raises(ValueError, match=rf"^{wrap.__name__} cannot run under torch.func.vmap"):
        vmapped_update(tx)


def test_sparse_adam_is_refused_before_any_vmap():
    with pytest.raises(ValueError, match="SparseAdam is not supported"):
        ft.sparse_adam()


# ------------------------------------------------------------------ README


def test_readme_vmap_code_runs():
    readme = Path(__file__).resolve().parents[1] / "README.md"
    code = re.search(
        r"### Under `torch.func.vmap`\n.*?```python\n(.*?)```", readme.read_text(), re.S
    ).group(1)
    namespace: dict = {}
    exec(compile(code, str(readme), "exec"), namespace)
    assert namespace["hypergrads"].shape == (4,)
    assert namespace["params"]["w"].shape == (4, 8, 3)
