"""Packed parameters: views, flat gradients through functional_call, identical optimizer steps."""

from __future__ import annotations

import optree
import pytest
import torch

import functrain as ft
from tests.conftest import make_tree


def test_pack_unpack_round_trip_and_views_share_storage():
    tree = make_tree()
    tree["half"] = torch.randn(3, dtype=torch.float64)
    packed, layout = ft.pack(tree)
    assert sorted(packed) == ["float32@cpu", "float64@cpu"]
    views = layout.unpack(packed)
    for a, b in zip(optree.tree_leaves(views), optree.tree_leaves(tree), strict=True):
        assert torch.equal(a, b)
    packed["float32@cpu"].zero_()
    assert float(views["mat"].abs().sum()) == 0.0  # a view, not a copy


def test_functional_call_differentiates_into_the_flat_buffer():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    params = {k: v.detach() for k, v in model.named_parameters()}
    packed, layout = ft.pack(params)
    x, y = torch.randn(5, 4), torch.randn(5, 2)

    def loss(p):
        return ((torch.func.functional_call(model, p, (x,)) - y) ** 2).mean()

    flat_grads = torch.func.grad(lambda pk: loss(layout.unpack(pk)))(packed)
    tree_grads = torch.func.grad(loss)(params)
    assert torch.equal(flat_grads["float32@cpu"], layout.pack(tree_grads)["float32@cpu"])


@pytest.mark.parametrize(
    "make_tx", [lambda: ft.adamw(lr=0.1), lambda: ft.sgd(lr=0.1, momentum=0.9)]
)
def test_optimizer_step_is_the_same_packed(make_tx):
    params = make_tree()
    gen = torch.Generator().manual_seed(2)
    grads_seq = [make_tree(generator=gen) for _ in range(10)]
    tx = make_tx()
    p, state = params, tx.init(params)
    packed, layout = ft.pack(params)
    pstate = tx.init(packed)
    for g in grads_seq:
        p, state = ft.apply_gradients(tx, p, g, state)
        packed, pstate = ft.apply_gradients(tx, packed, layout.pack(g), pstate, donate=True)
    # The kernels vectorise a long buffer differently from many short tensors (the tail
    # elements of each short tensor go through the scalar code), so the values agree to
    # float32 rounding rather than bitwise.
    for a, b in zip(optree.tree_leaves(layout.unpack(packed)), optree.tree_leaves(p), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_pack_rejects_a_tree_of_another_structure():
    _, layout = ft.pack({"w": torch.ones(2), "b": torch.ones(1)})
    with pytest.raises(ValueError, match="missing leaf 'b'"):
        layout.pack({"w": torch.ones(2)})
    with pytest.raises(ValueError, match="do not match this layout"):
        layout.unpack({"float64@cpu": torch.ones(3)})
