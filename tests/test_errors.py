"""Bad input: each a ValueError that names the argument or the leaf path."""

from __future__ import annotations

import pytest
import torch

import functrain as ft


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: ft.sgd(lr=-0.1), "lr"),
        (lambda: ft.adam(lr=-1e-3), "lr"),
        (lambda: ft.adamw(lr=-1e-3), "lr"),
        (lambda: ft.scale_by_learning_rate(-1.0), "lr"),
        (lambda: ft.adam(betas=(1.0, 0.999)), r"betas\[0\]"),
        (lambda: ft.adamw(betas=(0.9, -0.1)), r"betas\[1\]"),
        (lambda: ft.adam(betas=(0.9,)), "betas"),
        (lambda: ft.scale_by_adam(b2=1.5), r"betas\[1\]"),
        (lambda: ft.adam(eps=-1.0), "eps"),
        (lambda: ft.adamw(weight_decay=-0.1), "weight_decay"),
        (lambda: ft.sgd(momentum=-0.9), "momentum"),
        (lambda: ft.sgd(momentum=0.0, nesterov=True), "Nesterov"),
        (lambda: ft.sgd(momentum=0.9, dampening=0.1, nesterov=True), "Nesterov"),
        (lambda: ft.clip(0.0), "max_norm"),
        (lambda: ft.clip(-1.0), "max_norm"),
        (lambda: ft.clip(1.0, norm_type=-2), "norm_type"),
        (lambda: ft.clip_by_value(0.0), "clip_value"),
        (lambda: ft.sgd(lr="fast"), "lr"),
        (lambda: ft.adam(lr=float("nan")), "lr"),
    ],
)
def test_invalid_hyperparameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_non_tensor_leaf_in_params_or_updates():
    tx = ft.adamw()
    with pytest.raises(ValueError, match=r"'head\.bias\.0' is a float"):
        tx.init({"head": {"bias": [1.0, 2.0]}})
    params = {"w": torch.ones(2)}
    state = tx.init(params)
    with pytest.raises(ValueError, match="'w' is a float"):
        tx.update({"w": 1.0}, state, params)


def test_update_tree_that_does_not_match_the_state_names_the_path():
    params = {"backbone": {"w": torch.ones(2)}, "head": {"w": torch.ones(3)}}
    tx = ft.chain(ft.clip(1.0), ft.adamw())
    state = tx.init(params)
    wrong = {"backbone": {"w": torch.ones(2)}, "neck": {"w": torch.ones(3)}}
    with pytest.raises(ValueError, match=r"missing leaf 'head\.w'.*unexpected leaf 'neck\.w'"):
        tx.update(wrong, state, wrong)
    with pytest.raises(ValueError, match="missing leaf 'head.w'"):
        ft.sgd(momentum=0.9).update(
            {"backbone": {"w": torch.ones(2)}}, ft.sgd(momentum=0.9).init(params)
        )


def test_params_tree_that_does_not_match_the_updates():
    tx = ft.adamw()
    params = {"w": torch.ones(2), "b": torch.ones(2)}
    state = tx.init(params)
    with pytest.raises(ValueError, match="params tree does not match.*missing leaf 'b'"):
        tx.update(params, state, {"w": torch.ones(2)})
    with pytest.raises(ValueError, match="params tree does not match the updates tree"):
        tx.update(params, state, {"w": torch.ones(2)})
    # apply_gradients / apply_updates take the structure from params: the message says so
    # (it used to read "updates tree does not match the updates tree").
    with pytest.raises(ValueError, match="grads tree does not match the params tree"):
        ft.apply_gradients(tx, params, {"w": torch.ones(2)}, state)
    with pytest.raises(ValueError, match="updates tree does not match the params tree"):
        ft.apply_updates(params, {"w": torch.ones(2)})


def test_wrong_state_for_a_chain():
    tx = ft.chain(ft.clip(1.0), ft.sgd())
    params = {"w": torch.ones(2)}
    with pytest.raises(ValueError, match="chain of 2 transforms got a state"):
        tx.update(params, ft.sgd().init(params)[:1], params)


def test_decay_without_params():
    tx = ft.add_decayed_weights(0.1)
    with pytest.raises(ValueError, match="needs the parameters"):
        tx.update({"w": torch.ones(1)}, tx.init({"w": torch.ones(1)}))


def test_sparse_gradients_are_rejected_with_the_path():
    params = {"emb": torch.zeros(4, 2)}
    grads = {"emb": torch.zeros(4, 2).to_sparse()}
    tx = ft.adam()
    with pytest.raises(ValueError, match="'emb' is a torch.sparse_coo tensor"):
        ft.apply_gradients(tx, params, grads, tx.init(params))
