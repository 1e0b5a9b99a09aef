"""The transform algebra: chain, identity, stateless helpers, user transforms, states."""

from __future__ import annotations

import io

import attrs
import optree
import pytest
import torch

import functrain as ft
from tests.conftest import make_tree


def snapshot(tree):
    return optree.tree_map(torch.clone, tree, namespace="functrain")


def assert_tree_equal(a, b):
    la, sa = optree.tree_flatten(a, namespace="functrain")
    lb, sb = optree.tree_flatten(b, namespace="functrain")
    assert sa == sb
    for x, y in zip(la, lb, strict=True):
        assert torch.equal(x, y)


def test_identity_and_scale():
    grads = make_tree()
    out, _ = ft.identity().update(grads, ft.identity().init(grads))
    assert_tree_equal(out, grads)
    tx = ft.scale(-2.0)
    out, _ = tx.update(grads, tx.init(grads))
    assert_tree_equal(out, optree.tree_map(lambda g: g * -2.0, grads))


def test_chain_state_is_tuple_of_member_states_and_unpacks():
    tx = ft.chain(ft.clip(1.0), ft.scale_by_adam(), ft.scale_by_learning_rate(0.1))
    init, update = tx
    state = init(make_tree())
    assert isinstance(state, tuple) and len(state) == 3
    assert isinstance(state[0], ft.ClipState)
    assert isinstance(state[1], ft.ScaleByAdamState)
    assert isinstance(state[2], ft.LearningRateState)


def test_user_tree_level_transform_composes_in_chain():
    def init(params):
        return ft.EmptyState()

    def update(updates, state, params=None, **extra):
        return optree.tree_map(lambda u: u + 1.0, updates), state

    tx = ft.chain(ft.GradientTransformation(init, update), ft.scale(2.0))
    grads = make_tree()
    out, _ = tx.update(grads, tx.init(grads))
    assert_tree_equal(out, optree.tree_map(lambda g: (g + 1.0) * 2.0, grads))


def test_stateless_helpers_agree():
    grads, params = make_tree(), make_tree()
    fns = [
        ft.stateless(lambda u, p: optree.tree_map(lambda a, b: a * b, u, p)),
        ft.stateless_with_tree_map(lambda u, p: u * p),
        ft.stateless_foreach(lambda u, p: list(torch._foreach_mul(u, p))),
    ]
    outs = [tx.update(grads, tx.init(params), params)[0] for tx in fns]
    assert_tree_equal(outs[0], outs[1])
    assert_tree_equal(outs[0], outs[2])


def test_extra_keyword_arguments_are_ignored():
    tx = ft.adamw(lr=0.1)
    grads = make_tree()
    state = tx.init(grads)
    out1, _ = tx.update(grads, state, grads)
    out2, _ = tx.update(grads, state, grads, loss=torch.tensor(1.0), anything="else")
    assert_tree_equal(out1, out2)


@pytest.mark.parametrize(
    "tx",
    [
        ft.chain(ft.clip(0.5), ft.adamw(lr=0.1)),
        ft.adam(lr=0.1, weight_decay=0.1, amsgrad=True),
        ft.sgd(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1),
        ft.chain(ft.clip_by_value(0.1), ft.sgd(lr=0.1, momentum=0.5)),
    ],
)
def test_pure_paths_never_mutate_their_inputs(tx):
    params, grads = make_tree(), make_tree()
    state = tx.init(params)
    for _ in range(2):  # the second step has momentum buffers to (not) mutate
        before = snapshot((params, grads, state))
        updates, new_state = tx.update(grads, state, params)
        assert_tree_equal((params, grads, state), before)
        new_params, _ = ft.apply_gradients(tx, params, grads, state)
        assert_tree_equal((params, grads, state), before)
        params, state = ft.apply_updates(params, updates), new_state


def test_donating_path_writes_in_place():
    params, grads = make_tree(), make_tree()
    tx = ft.adamw(lr=0.1)
    state = tx.init(params)
    new_params, _ = ft.apply_gradients(tx, params, grads, state, donate=True)
    assert new_params["mat"] is params["mat"]
    new_params, _ = ft.apply_gradients(tx, params, grads, state, donate=True, fused=False)
    assert new_params["mat"] is params["mat"]


def test_fused_plan_covers_the_torch_optimizers_and_not_others():
    assert ft.fusion_plan(ft.chain(ft.clip(1.0), ft.adamw())) is not None
    assert ft.fusion_plan(ft.sgd(momentum=0.9, weight_decay=1e-4)).decay is not None
    plan = ft.fusion_plan(ft.adamw(weight_decay=0.1))
    assert plan.decoupled and plan.decay[1].fusion.weight_decay == 0.1
    # A scaling between the direction and the decay has no single-kernel form.
    odd = ft.chain(ft.scale_by_adam(), ft.scale(2.0), ft.add_decayed_weights(0.1), ft.scale(-1.0))
    assert ft.fusion_plan(odd) is None
    with pytest.raises(ValueError, match="cannot fuse"):
        ft.apply_gradients(odd, make_tree(), make_tree(), odd.init(make_tree()), fused=True)
    grads = make_tree()
    out, _ = ft.apply_gradients(odd, grads, grads, odd.init(grads))  # falls back
    assert set(out) == set(grads)


def test_fused_falls_back_when_autograd_must_see_the_step():
    params = {"w": torch.ones(3, requires_grad=True)}
    grads = {"w": torch.ones(3)}
    tx = ft.sgd(lr=0.5)
    new, _ = ft.apply_gradients(tx, params, grads, tx.init(params))
    assert new["w"].requires_grad and new["w"].grad_fn is not None
    with pytest.raises(ValueError, match="requires grad"):
        ft.apply_gradients(tx, params, grads, tx.init(params), fused=True)


def test_clip_state_keeps_pre_clip_norm_as_tensor():
    grads = {"a": torch.full((4,), 3.0)}
    tx = ft.clip(1.0)
    out, state = tx.update(grads, tx.init(grads))
    assert isinstance(state.norm, torch.Tensor) and state.norm.item() == pytest.approx(6.0)
    assert torch.linalg.vector_norm(out["a"]).item() == pytest.approx(1.0, rel=1e-5)


def test_clip_by_global_norm_is_clip_and_is_a_global_norm_clip():
    """The primary name and the alias are one function; the clip is by the norm of all leaves
    together (optax's element-wise clip is clip_by_value), as clip_grad_norm_ computes it."""
    assert ft.clip is ft.clip_by_global_norm is ft.transforms.clip_by_global_norm
    grads = {"a": torch.full((4,), 3.0), "b": torch.tensor([-8.0])}
    tx = ft.clip_by_global_norm(5.0)
    out, state = tx.update(grads, tx.init(grads))
    holders = [torch.zeros_like(g, requires_grad=True) for g in grads.values()]
    for h, g in zip(holders, grads.values(), strict=True):
        h.grad = g.clone()
    torch.nn.utils.clip_grad_norm_(holders, 5.0, foreach=True)
    reference = [h.grad for h in holders]
    assert state.norm.item() == 10.0  # sqrt(4 * 9 + 64), exact in float32
    # Same foreach norm and the same coefficient max_norm / (norm + 1e-6) applied by one
    # foreach multiply as clip_grad_norm_: bitwise.
    assert all(torch.equal(o, r) for o, r in zip(out.values(), reference, strict=True))
    assert out["b"].item() == pytest.approx(-4.0)  # -8 * 5 / 10: scaled, not clamped to -5


def test_clip_error_if_nonfinite():
    grads = {"a": torch.tensor([float("inf"), 1.0])}
    tx = ft.clip(1.0, error_if_nonfinite=True)
    with pytest.raises(RuntimeError, match="non-finite"):
        tx.update(grads, tx.init(grads))


def test_learning_rate_schedule_and_settable_lr():
    params = {"w": torch.zeros(())}
    grads = {"w": torch.ones(())}
    tx = ft.chain(ft.scale_by_learning_rate(lambda step: 0.1 * (step + 1)))
    state = tx.init(params)
    seen = []
    for _ in range(3):
        updates, state = tx.update(grads, state, params)
        seen.append(updates["w"].item())
        assert state[0].lr.item() == pytest.approx(-seen[-1])
    assert seen == pytest.approx([-0.1, -0.2, -0.3])
    assert state[0].count.item() == 3

    tx = ft.sgd(lr=0.5)
    state = tx.init(params)
    lr_state = state[-1]
    state = state[:-1] + (attrs.evolve(lr_state, lr=torch.tensor(0.25, dtype=torch.float64)),)
    new, _ = ft.apply_gradients(tx, params, grads, state)
    assert new["w"].item() == pytest.approx(-0.25)


def test_state_round_trips_through_torch_save():
    params = make_tree()
    tx = ft.chain(ft.clip(1.0), ft.adamw(lr=0.1, amsgrad=True))
    state = tx.init(params)
    _, state = tx.update(make_tree(), state, params)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert_tree_equal(loaded, state)


def test_mixed_dtype_tree_runs_on_every_path():
    params = {
        "a": torch.randn(3),
        "b": torch.randn(2, dtype=torch.float64),
        "c": torch.randn(4).bfloat16(),
    }
    grads = optree.tree_map(torch.randn_like, params)
    tx = ft.chain(ft.clip(0.5), ft.adamw(lr=0.1))
    fused, _ = ft.apply_gradients(tx, params, grads, tx.init(params))
    simple, _ = ft.apply_gradients(tx, params, grads, tx.init(params), fused=False)
    for k in params:
        assert fused[k].dtype == params[k].dtype
        torch.testing.assert_close(fused[k], simple[k], rtol=1e-2, atol=1e-2)


def test_lower_precision_first_moment():
    params = make_tree(generator=torch.Generator().manual_seed(11))
    gen = torch.Generator().manual_seed(12)
    grads_seq = [make_tree(generator=gen) for _ in range(20)]
    low, full = ft.adamw(lr=1e-2, mu_dtype=torch.bfloat16), ft.adamw(lr=1e-2)
    assert ft.fusion_plan(low) is None  # bf16 moments: the foreach path
    p_low, s_low = params, low.init(params)
    p_full, s_full = params, full.init(params)
    for g in grads_seq:
        p_low, s_low = ft.apply_gradients(low, p_low, g, s_low)
        p_full, s_full = ft.apply_gradients(full, p_full, g, s_full)
    adam_low = s_low[0][0]
    assert all(m.dtype == torch.bfloat16 for m in adam_low.mu)
    assert all(v.dtype == torch.float32 for v in adam_low.nu)
    for k in ("mat", "conv"):
        assert p_low[k].dtype == torch.float32
        assert not torch.equal(p_low[k], p_full[k])  # bf16 storage really rounds
        torch.testing.assert_close(p_low[k], p_full[k], rtol=0, atol=1e-2)
    # Pure and donating agree bitwise with bf16 moments too.
    p_don, s_don = optree.tree_map(torch.clone, params), low.init(params)
    for g in grads_seq:
        p_don, s_don = ft.apply_gradients(
            low, p_don, optree.tree_map(torch.clone, g), s_don, donate=True
        )
    assert_tree_equal(p_don, p_low)
