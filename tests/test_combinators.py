"""optax-style combinators: masked, partition, freeze, named_chain, apply_if_finite,
multi_steps, and reading / setting the values in force of a state."""

from __future__ import annotations

import collections
import math

import optree
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import functrain as ft
from functrain.transforms.accumulation import MultiSteps, accumulate, has_updated, multi_steps
from functrain.transforms.combinators import (
    ApplyIfFiniteState,
    MaskedState,
    apply_if_finite,
    freeze,
    masked,
    named_chain,
    partition,
    set_to_zero,
    subset_info,
)
from functrain.transforms.loss_scaling import loss_scaling
from functrain.transforms.state_values import set_hyperparam, values_in_force
from functrain.tree import NAMESPACE, flatten
from tests.conftest import make_tree
from tests.test_optimizers_extra import check_meta_gradient
from tests.test_parity_torch import assert_bitwise, assert_rel

PATHS = ("conv", "mat", "nested.a", "nested.b.0", "scalar", "vec")


def clone(tree):
    return optree.tree_map(torch.clone, tree)


def grads_seq(seed, steps, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return [make_tree(dtype=dtype, generator=gen, scale=0.1 * (i % 3 + 1)) for i in range(steps)]


def run(tx, params, grads, donate):
    """Final params, state and the updates of each step (pure path) of ``tx``."""
    p, state, updates = clone(params), tx.init(clone(params)), []
    for g in grads:
        if donate:
            p, state = ft.apply_gradients(tx, p, clone(g), state, donate=True, fused=False)
        else:
            u, state = tx.update(clone(g), state, p)
            updates.append(u)
            p = ft.apply_updates(p, u)
    return p, state, updates


def assert_state_equal(a, b, what):
    la, sa = optree.tree_flatten(a, namespace=NAMESPACE)
    lb, sb = optree.tree_flatten(b, namespace=NAMESPACE)
    assert sa == sb, f"{what}: state structures differ"
    for x, y in zip(la, lb, strict=True):
        assert torch.equal(x, y), f"{what}: state leaves differ"


def leaf(tree, path):
    for key in path.split("."):
        tree = tree[int(key)] if isinstance(tree, list) else tree[key]
    return tree


def sub_tree(tree, paths):
    """The leaves ``paths`` as an insertion-ordered dict (optree keeps that order)."""
    return collections.OrderedDict((p, leaf(tree, p)) for p in paths)


# --------------------------------------------------------------------------- subset_info


def test_subset_info_keeps_paths_and_regroups():
    tree = {
        "a": torch.ones(2),
        "b": torch.ones(2, dtype=torch.float64),
        "c": torch.ones(3),
        "d": torch.ones(1, dtype=torch.float64),
    }
    _, info = flatten(tree)
    assert info.groups == ((0, 2), (1, 3))
    sub = subset_info(info, (1, 2, 3))
    assert sub.paths == ("b", "c", "d")
    assert sub.groups == ((1,), (0, 2))
    assert sub.num_leaves == 3
    assert sub.unflatten([1, 2, 3]) == {"a": None, "b": 1, "c": 2, "d": 3}
    assert subset_info(info, (0, 1, 2, 3)) is info


# --------------------------------------------------------------------------- masked


def inner_optimizer():
    return ft.chain(ft.clip(0.5), ft.adam(lr=0.05))


@given(
    keep=st.lists(st.booleans(), min_size=len(PATHS), max_size=len(PATHS)), seed=st.integers(0, 99)
)
def test_masked_runs_inner_on_masked_in_leaves_only(keep, seed):
    chosen = [p for p, k in zip(PATHS, keep, strict=True) if k]
    params = make_tree(generator=torch.Generator().manual_seed(seed))
    grads = grads_seq(seed, 4)
    tx = masked(inner_optimizer(), lambda path: path in chosen)
    p_pure, state, updates = run(tx, params, grads, donate=False)
    p_donate, state_donate, _ = run(tx, params, grads, donate=True)
    assert_bitwise(p_pure, p_donate, "masked: pure vs donating")
    assert_state_equal(state, state_donate, "masked: pure vs donating")

    # Masked-out leaves: the incoming update, unchanged.
    for g, u in zip(grads, updates, strict=True):
        for path in PATHS:
            if path not in chosen:
                assert torch.equal(leaf(u, path), leaf(g, path)), path
    # Masked-in leaves: the inner transform run on that sub-tree alone (the clip's norm is
    # over the masked-in leaves only).
    if chosen:
        ref = inner_optimizer()
        sp = sub_tree(params, chosen)
        sstate = ref.init(sp)
        for g, u in zip(grads, updates, strict=True):
            su, sstate = ref.update(sub_tree(g, chosen), sstate, sp)
            sp = ft.apply_updates(sp, su)
            for path in chosen:
                assert torch.equal(leaf(u, path), su[path]), path
    # No inner state for masked-out leaves.
    assert isinstance(state, MaskedState)
    adam_state = state.inner_state[1][1]
    assert adam_state.paths == tuple(chosen)
    assert len(adam_state.mu) == len(chosen)


def test_masked_prefix_tree_and_leaf_callable_masks():
    params = make_tree(generator=torch.Generator().manual_seed(0))
    grads = grads_seq(0, 3)
    by_prefix = masked(
        ft.sgd(lr=0.1, momentum=0.9),
        {
            "scalar": False,
            "vec": False,
            "mat": True,
            "conv": True,
            "nested": {"a": False, "b": True},
        },
    )
    by_leaf = masked(ft.sgd(lr=0.1, momentum=0.9), lambda path, p: p.ndim >= 2)
    pa, sa, _ = run(by_prefix, params, grads, False)
    pb, sb, _ = run(by_leaf, params, grads, False)
    assert sa.inner_state[1].paths == ("conv", "mat", "nested.b.0")
    assert_bitwise(pa, pb, "prefix mask vs callable mask")
    assert_state_equal(sa, sb, "prefix mask vs callable mask")
    # Masked-out leaves moved by the raw update: p + sum(g).
    expected = params["vec"].clone()
    for g in grads:
        expected = expected + g["vec"]
    assert torch.equal(pa["vec"], expected)


def test_masked_tree_level_inner_sees_none_for_masked_out_leaves():
    seen = []

    def init(params):
        seen.append(params)
        return ft.EmptyState()

    def update(updates, state, params=None, **extra):
        seen.append(updates)
        return optree.tree_map(lambda u: 2 * u, updates), state

    tx = masked(ft.GradientTransformation(init, update), {"a": True, "b": False})
    params = {"a": torch.ones(2), "b": torch.ones(3)}
    state = tx.init(params)
    out, state = tx.update(params, state, params)
    assert seen[0]["b"] is None and torch.equal(seen[0]["a"], torch.ones(2))
    assert torch.equal(out["a"], 2 * torch.ones(2)) and torch.equal(out["b"], torch.ones(3))


# --------------------------------------------------------------------------- partition


def partition_transforms():
    return {
        "slow": ft.chain(ft.clip(0.3), ft.adamw(lr=0.01, weight_decay=0.1)),
        "fast": ft.sgd(lr=0.1, momentum=0.9, nesterov=True),
        "unused": ft.adam(lr=1.0),
    }


@given(
    labels=st.lists(st.sampled_from(["slow", "fast"]), min_size=len(PATHS), max_size=len(PATHS)),
    seed=st.integers(0, 99),
)
def test_partition_equals_each_transform_on_its_subtree(labels, seed):
    label_of = dict(zip(PATHS, labels, strict=True))
    params = make_tree(generator=torch.Generator().manual_seed(seed))
    grads = grads_seq(seed, 4)
    tx = partition(partition_transforms(), lambda path: label_of[path])
    p_pure, state, updates = run(tx, params, grads, donate=False)
    p_donate, state_donate, _ = run(tx, params, grads, donate=True)
    assert_bitwise(p_pure, p_donate, "partition: pure vs donating")
    assert_state_equal(state, state_donate, "partition: pure vs donating")
    assert set(state.inner_states) == {"slow", "fast", "unused"}
    for label in ("slow", "fast"):
        chosen = [p for p in PATHS if label_of[p] == label]
        if not chosen:
            continue
        ref = partition_transforms()[label]
        sp = sub_tree(params, chosen)
        sstate = ref.init(sp)
        for g, u in zip(grads, updates, strict=True):
            su, sstate = ref.update(sub_tree(g, chosen), sstate, sp)
            sp = ft.apply_updates(sp, su)
            for path in chosen:
                assert torch.equal(leaf(u, path), su[path]), (label, path)
        assert_state_equal(state.inner_states[label], sstate, f"partition state {label}")


def test_partition_with_prefix_labels_and_missing_label():
    params = {"backbone": {"w": torch.ones(3), "b": torch.ones(1)}, "head": torch.ones(2)}
    tx = partition({"bb": ft.sgd(lr=0.1), "hd": ft.sgd(lr=1.0)}, {"backbone": "bb", "head": "hd"})
    state = tx.init(params)
    grads = optree.tree_map(torch.ones_like, params)
    u, state = tx.update(grads, state, params)
    assert torch.equal(u["backbone"]["w"], torch.full((3,), -0.1))
    assert torch.equal(u["head"], torch.full((2,), -1.0))
    with pytest.raises(ValueError, match=r"labels gives 'other'.*'head'"):
        partition({"bb": ft.sgd()}, {"backbone": "bb", "head": "other"}).init(params)
    with pytest.raises(ValueError, match="labels must be a pytree prefix"):
        partition({"bb": ft.sgd()}, {"backbone": "bb"}).init(params)


# --------------------------------------------------------------------------- freeze


def test_freeze_zeroes_updates_and_keeps_no_state():
    params = make_tree(generator=torch.Generator().manual_seed(1))
    grads = grads_seq(1, 5)
    frozen = lambda path: path.startswith("nested.")  # noqa: E731
    tx = ft.chain(ft.adamw(lr=0.1, weight_decay=0.1), freeze(frozen))
    p_pure, state, updates = run(tx, params, grads, False)
    p_donate, state_donate, _ = run(tx, params, grads, True)
    assert_bitwise(p_pure, p_donate, "freeze: pure vs donating")
    assert torch.equal(p_pure["nested"]["a"], params["nested"]["a"])
    assert torch.equal(p_pure["nested"]["b"][0], params["nested"]["b"][0])
    assert not torch.equal(p_pure["vec"], params["vec"])
    assert all(torch.count_nonzero(u["nested"]["a"]) == 0 for u in updates)
    assert state[1] == MaskedState(ft.EmptyState(), (2, 3), PATHS)
    zero = set_to_zero()
    out, _ = zero.update(grads[0], zero.init(params))
    assert all(torch.count_nonzero(x) == 0 for x in optree.tree_leaves(out))
    assert torch.count_nonzero(grads[0]["vec"]) > 0  # pure: the input is untouched


# --------------------------------------------------------------------------- named_chain


def test_named_chain_state_is_keyed_by_name_and_matches_chain():
    params = make_tree(generator=torch.Generator().manual_seed(2))
    grads = grads_seq(2, 4)
    named = named_chain(("clip", ft.clip(0.5)), ("opt", ft.sgd(lr=0.1, momentum=0.9)))
    plain = ft.chain(ft.clip(0.5), ft.sgd(lr=0.1, momentum=0.9))
    pn, sn, _ = run(named, params, grads, False)
    pd, sd, _ = run(named, params, grads, True)
    pc, sc, _ = run(plain, params, grads, False)
    assert list(sn) == ["clip", "opt"]
    assert_bitwise(pn, pc, "named_chain vs chain")
    assert_bitwise(pn, pd, "named_chain: pure vs donating")
    assert_state_equal(sn["opt"], sc[1], "named_chain state")
    assert values_in_force(sn).keys() == {"grad_norm", "momentum", "lr"}
    with pytest.raises(ValueError, match="duplicate name 'a'"):
        named_chain(("a", ft.identity()), ("a", ft.identity()))
    with pytest.raises(ValueError, match="pair"):
        named_chain(ft.identity())
    with pytest.raises(ValueError, match="got a state"):
        named.update(grads[0], sc, params)


def test_multipliers_reach_members_of_named_chain_and_partition():
    params = make_tree(generator=torch.Generator().manual_seed(8))
    grads = grads_seq(8, 1)[0]
    mults = ft.mask_multipliers({"vec": (10.0, 1.0), "mat": (0.5, 1.0)})
    labels = lambda path: "a" if path in ("vec", "scalar") else "b"  # noqa: E731
    part = partition({"a": ft.sgd(lr=0.1), "b": ft.sgd(lr=1.0)}, labels)
    for tx in (ft.chain(part, mults), named_chain(("p", part), ("m", mults))):
        u, _ = tx.update(grads, tx.init(params), params)
        assert torch.allclose(u["vec"], -1.0 * grads["vec"], rtol=1e-6)
        assert torch.allclose(u["scalar"], -0.1 * grads["scalar"], rtol=1e-6)
        assert torch.allclose(u["mat"], -0.5 * grads["mat"], rtol=1e-6)
        assert torch.allclose(u["conv"], -1.0 * grads["conv"], rtol=1e-6)


# --------------------------------------------------------------------------- values in force


def test_values_in_force_on_clip_adamw_with_schedule():
    def schedule(step):
        return 1e-3 * torch.pow(torch.tensor(0.5, dtype=torch.float64), step)

    params = make_tree(generator=torch.Generator().manual_seed(3))
    grads = grads_seq(3, 3)
    tx = ft.chain(ft.clip(1.0), ft.adamw(lr=schedule, betas=(0.85, 0.99)))
    state = tx.init(params)
    values = values_in_force(state)
    assert values.keys() == {"grad_norm", "momentum", "lr"}
    assert values["lr"].item() == pytest.approx(1e-3)
    p = params
    for i, g in enumerate(grads):
        u, state = tx.update(g, state, p)
        p = ft.apply_updates(p, u)
        values = values_in_force(state)
        assert all(isinstance(v, torch.Tensor) and v.ndim == 0 for v in values.values())
        assert values["lr"].item() == pytest.approx(1e-3 * 0.5**i, rel=1e-12)
        assert values["momentum"].item() == 0.85
        leaves = [torch.nn.Parameter(torch.zeros_like(x)) for x in optree.tree_leaves(g)]
        for q, x in zip(leaves, optree.tree_leaves(g), strict=True):
            q.grad = x.clone()
        assert torch.equal(values["grad_norm"], torch.nn.utils.clip_grad_norm_(leaves, 1.0))


def test_values_in_force_names_duplicates_by_label_or_path():
    params = make_tree(generator=torch.Generator().manual_seed(4))
    part = ft.chain(
        ft.clip(1.0),
        partition(
            {"backbone": ft.adamw(lr=1e-4), "head": ft.sgd(lr=0.1, momentum=0.9)},
            lambda path: "head" if path == "vec" else "backbone",
        ),
    )
    values = values_in_force(part.init(params))
    assert values.keys() == {
        "grad_norm",
        "backbone/lr",
        "head/lr",
        "backbone/momentum",
        "head/momentum",
    }
    assert values["head/lr"].item() == 0.1 and values["backbone/lr"].item() == 1e-4
    two_lrs = ft.chain(ft.sgd(lr=0.1), ft.scale_by_learning_rate(0.5, flip_sign=False))
    assert values_in_force(two_lrs.init(params)).keys() == {"0/2/lr", "1/lr", "momentum"}
    scaled = loss_scaling(ft.chain(ft.clip(1.0), ft.sgd(lr=0.1)))
    assert values_in_force(scaled.init(params))["loss_scale"].item() == 2.0**16


def test_set_hyperparam_changes_a_constant_lr_without_rebuilding():
    params = make_tree(generator=torch.Generator().manual_seed(5))
    grads = grads_seq(5, 2)
    tx = ft.sgd(lr=0.1, momentum=0.9)
    state = tx.init(params)
    _, state = tx.update(grads[0], state, params)
    new_state = set_hyperparam(state, "lr", 0.01)
    assert values_in_force(state)["lr"].item() == 0.1  # the old state is untouched
    u_new, _ = tx.update(grads[1], new_state, params)
    u_old, _ = tx.update(grads[1], state, params)
    for a, b in zip(optree.tree_leaves(u_new), optree.tree_leaves(u_old), strict=True):
        assert torch.allclose(a, 0.1 * b, rtol=1e-6, atol=0)
    fresh = ft.sgd(lr=0.01, momentum=0.9)
    fs = fresh.init(params)
    _, fs = fresh.update(grads[0], fs, params)
    u_fresh, _ = fresh.update(grads[1], fs, params)
    assert_bitwise(u_new, u_fresh, "set lr vs an optimizer built with that lr")
    tensor_lr = set_hyperparam(state, "lr", torch.tensor(0.01))
    assert values_in_force(tensor_lr)["lr"].dtype == torch.float64
    part = partition(
        {"a": ft.sgd(lr=0.1), "b": ft.sgd(lr=0.2)}, lambda p: "a" if p == "vec" else "b"
    )
    ps = set_hyperparam(part.init(params), "b/lr", 0.5)
    assert values_in_force(ps)["b/lr"].item() == 0.5 and values_in_force(ps)["a/lr"].item() == 0.1
    with pytest.raises(ValueError, match="logging only"):
        set_hyperparam(state, "momentum", 0.5)
    with pytest.raises(ValueError, match="no value 'lr2'"):
        set_hyperparam(state, "lr2", 0.5)
    with pytest.raises(ValueError, match="Invalid learning rate"):
        set_hyperparam(state, "lr", -1.0)


# --------------------------------------------------------------------------- apply_if_finite


def poisoned(grads, steps, value=math.nan):
    out = []
    for i, g in enumerate(grads):
        g = clone(g)
        if i in steps:
            g["mat"][1, 2] = value
        out.append(g)
    return out


@pytest.mark.parametrize(
    "make_inner",
    [
        lambda: ft.chain(ft.clip(0.5), ft.adam(lr=0.05)),
        lambda: ft.sgd(lr=0.1, momentum=0.9),  # its state changes structure on the first step
    ],
)
@pytest.mark.parametrize("donate", [False, True])
def test_apply_if_finite_skips_non_finite_steps(make_inner, donate):
    params = make_tree(generator=torch.Generator().manual_seed(6))
    bad = {0: math.nan, 2: math.inf, 4: math.nan, 5: -math.inf}
    grads = poisoned(grads_seq(6, 8), {0, 2, 4, 5})
    for i in (2, 5):
        grads[i]["mat"][1, 2] = bad[i]
    tx = apply_if_finite(make_inner(), max_consecutive_errors=2)
    ref = make_inner()
    p, state = clone(params), tx.init(params)
    rp, rstate = clone(params), ref.init(params)
    expected_counts = [1, 0, 1, 0, 1, 2, 0, 0]
    expected_total = [1, 1, 2, 2, 3, 4, 4, 4]
    for i, g in enumerate(grads):
        before = state.inner_state
        if donate:
            p, state = ft.apply_gradients(tx, p, clone(g), state, donate=True, fused=False)
        else:
            u, state = tx.update(clone(g), state, p)
            p = ft.apply_updates(p, u)
        if i in bad:
            assert_state_equal(state.inner_state, before, f"step {i}: inner state")
        else:
            ru, rstate = ref.update(clone(g), rstate, rp)
            rp = ft.apply_updates(rp, ru)
            assert_state_equal(state.inner_state, rstate, f"step {i}: inner state")
        assert_bitwise(p, rp, f"step {i}: params")
        assert state.notfinite_count.item() == expected_counts[i]
        assert state.total_notfinite.item() == expected_total[i]
        assert state.last_finite.item() == (i not in bad)


def test_apply_if_finite_lets_through_after_max_consecutive_errors():
    params = {"w": torch.ones(3)}
    tx = apply_if_finite(ft.sgd(lr=0.1), max_consecutive_errors=2)
    state = tx.init(params)
    nan = {"w": torch.tensor([1.0, math.nan, 1.0])}
    outs = []
    for _ in range(4):
        u, state = tx.update(nan, state, params)
        outs.append(u["w"])
    assert [bool(torch.isnan(o).any()) for o in outs] == [False, False, True, True]
    assert torch.equal(outs[0], torch.zeros(3))
    assert isinstance(state, ApplyIfFiniteState) and state.notfinite_count.item() == 4


# --------------------------------------------------------------------------- multi_steps


def test_multi_steps_equals_mean_of_k_then_inner_step():
    params = make_tree(dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    grads = grads_seq(7, 12, torch.float64)
    k = 3
    tx = multi_steps(ft.chain(ft.clip(0.5), ft.adamw(lr=0.05)), k)
    p_pure, _, updates = run(tx, params, grads, False)
    p_donate, _, _ = run(tx, params, grads, True)
    assert_bitwise(p_pure, p_donate, "multi_steps: pure vs donating")
    ref = ft.chain(ft.clip(0.5), ft.adamw(lr=0.05))
    rp, rs = params, ref.init(params)
    for w in range(len(grads) // k):
        window = grads[w * k : (w + 1) * k]
        mean = optree.tree_map(lambda *gs: sum(gs) / k, *window)
        ru, rs = ref.update(mean, rs, rp)
        rp = ft.apply_updates(rp, ru)
        for j in range(k - 1):
            assert all(torch.count_nonzero(x) == 0 for x in optree.tree_leaves(updates[w * k + j]))
    assert_rel(p_pure, rp, params, 1e-12, "multi_steps vs manual mean")


def test_multi_steps_schedule_sum_and_optax_spelling():
    params = {"w": torch.zeros(2, dtype=torch.float64)}
    grads = [{"w": torch.full((2,), float(i), dtype=torch.float64)} for i in range(1, 8)]
    # k = 2 for the first optimizer step, then 3: windows [1, 2], [3, 4, 5], [6, 7, ...].
    tx = MultiSteps(ft.sgd(lr=1.0), lambda step: 2 if step == 0 else 3, use_grad_mean=False)
    state = tx.init(params)
    applied, flags = [], []
    for g in grads:
        u, state = tx.update(g, state, params)
        applied.append(u["w"][0].item())
        flags.append(tx.has_updated(state))
    assert applied == [0.0, -3.0, 0.0, 0.0, -12.0, 0.0, 0.0]
    assert flags == [False, True, False, False, True, False, False]
    assert has_updated(state) is False and state.gradient_step == 2 and state.mini_step == 2
    in_chain = ft.chain(MultiSteps(ft.sgd(lr=1.0), 2), ft.scale(2.0))
    s = in_chain.init(params)
    _, s = in_chain.update(grads[0], s, params)
    u, s = in_chain.update(grads[1], s, params)
    assert u["w"][0].item() == -3.0  # 2 * -(1 + 2) / 2


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: apply_if_finite(ft.sgd(), -1), "max_consecutive_errors"),
        (lambda: apply_if_finite(ft.sgd(), 1.5), "max_consecutive_errors"),
        (lambda: multi_steps(ft.sgd(), 0), "every_k_schedule"),
        (lambda: partition({}, lambda p: "a"), "transforms_by_label"),
        (lambda: masked(ft.sgd(), None), "mask"),
        (lambda: masked(ft.sgd(), lambda p: 1).init({"w": torch.ones(1)}), r"mask gives 1.*'w'"),
    ],
)
def test_invalid_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_masked_state_checked_against_the_tree():
    tx = masked(ft.sgd(lr=0.1), {"a": True, "b": False})
    state = tx.init({"a": torch.ones(1), "b": torch.ones(1)})
    with pytest.raises(ValueError, match="missing leaf 'b'"):
        tx.update({"a": torch.ones(1)}, state)


# --------------------------------------------------------------------------- purity


WRAPPERS = {
    "masked": lambda: masked(ft.adam(lr=0.1), lambda path: path != "b"),
    "partition": lambda: partition(
        {"x": ft.adam(lr=0.1), "y": ft.sgd(lr=0.1, momentum=0.9)},
        lambda path: "x" if path == "w" else "y",
    ),
    "freeze": lambda: ft.chain(ft.sgd(lr=0.1), freeze({"w": False, "b": True})),
    "named_chain": lambda: named_chain(("clip", ft.clip(0.5)), ("opt", ft.adamw(lr=0.1))),
    "apply_if_finite": lambda: apply_if_finite(ft.sgd(lr=0.1, momentum=0.9), 1),
    "multi_steps": lambda: multi_steps(ft.chain(ft.clip(0.5), ft.adam(lr=0.1)), 2),
    "accumulate": lambda: accumulate(ft.adam(lr=0.1), 2, max_iters=4),
    "loss_scaling": lambda: loss_scaling(ft.chain(ft.clip(0.5), ft.adam(lr=0.1)), 4.0),
}


def small_problem():
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


@pytest.mark.parametrize("name", sorted(WRAPPERS))
def test_pure_update_leaves_its_inputs_untouched(name):
    tx = WRAPPERS[name]()
    p0, loss = small_problem()
    params, state = clone(p0), tx.init(p0)
    for _ in range(4):
        grads = torch.func.grad(loss)(params)
        kept_grads, kept_params = clone(grads), clone(params)
        kept_state = optree.tree_map(torch.clone, state, namespace=NAMESPACE)
        updates, new_state = tx.update(grads, state, params)
        assert_bitwise(grads, kept_grads, f"{name}: grads")
        assert_bitwise(params, kept_params, f"{name}: params")
        assert_state_equal(state, kept_state, f"{name}: state")
        state, params = new_state, ft.apply_updates(params, updates)


@pytest.mark.parametrize("name", sorted(WRAPPERS))
def test_grad_through_four_steps_matches_finite_differences(name):
    check_meta_gradient(WRAPPERS[name](), steps=4, problem=small_problem)


@pytest.mark.parametrize("wrap", ["named_chain", "masked", "partition", "accumulate"])
def test_asgd_averaged_params_finds_its_state_inside_combinators(wrap):
    """One state walker (state_path) for every helper: asgd_averaged_params used to search
    plain tuples only and found nothing inside named_chain / masked / partition."""
    from functrain.transforms.asgd import asgd_averaged_params

    params = {"a": torch.ones(2), "b": torch.ones(3)}
    grads = {"a": torch.full((2,), 0.5), "b": torch.full((3,), 0.25)}
    opt = ft.asgd(lr=0.1, t0=0)
    tx, covered = {
        "named_chain": (ft.named_chain(("opt", opt)), ("a", "b")),
        "masked": (ft.masked(opt, {"a": True, "b": False}), ("a",)),
        "partition": (ft.partition({"x": opt, "y": ft.sgd(0.1)}, {"a": "x", "b": "y"}), ("a",)),
        "accumulate": (ft.accumulate(opt, 1), ("a", "b")),
    }[wrap]
    new, state = ft.apply_gradients(tx, params, grads, tx.init(params))
    averaged = asgd_averaged_params(state, {k: new[k] for k in covered})
    # With t0=0 the average after one step is that step's parameters (ax = p exactly: torch's
    # ASGD copies them when mu == 1).
    assert sorted(averaged) == list(covered)
    assert all(torch.equal(averaged[k], new[k]) for k in covered)
