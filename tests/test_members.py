"""``ensemble(tx, n)`` and per-member hyperparameters: the core (functrain/transforms/members.py).

Every optimizer's parity over many steps is in test_ensemble_parity.py; here: the rules of the
wrapper itself, the per-member clip against ``clip_grad_norm_`` member by member, values in
force, setting them, the fused path and the errors.
"""

from __future__ import annotations

import pytest
import torch

import functrain as ft
from functrain.transforms.members import PerMember, member_global_norm, per_member
from functrain.tree import flatten

N = 3


def stacked(seed: int = 0, scale: float = 1.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "w": torch.randn(N, 4, 5, generator=g) * scale,
        "b": torch.randn(N, 5, generator=g) * scale,
    }


def member(tree: dict[str, torch.Tensor], i: int) -> dict[str, torch.Tensor]:
    return {k: v[i].clone() for k, v in tree.items()}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    # Relative to the largest value of the leaf (the suite's rule): near-zero entries do not
    # turn an ulp into a large relative error.
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def test_per_member_accepts_sequences_and_1d_tensors() -> None:
    assert isinstance(per_member("lr", [1e-3, 1e-2]), PerMember)
    assert isinstance(per_member("lr", torch.tensor([1e-3, 1e-2])), PerMember)
    assert per_member("lr", 0.1) == 0.1
    assert len(per_member("lr", (1, 2, 3))) == 3
    assert repr(per_member("lr", [0.5, 2])) == "per_member(0.5, 2)"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([1e-3, float("nan")], r"lr\[1\]: nan"),
        ([1e-3, True], r"lr\[1\] must be a number"),
        ([], "empty sequence"),
        (torch.zeros(2, 2), "1-d tensor"),
        ([1e-3, -1.0], r"Invalid lr\[1\]: -1.0; lr must be >= 0"),
    ],
)
def test_bad_per_member_values_name_the_member(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ft.adamw(lr=value)


def test_out_of_range_beta_names_its_member() -> None:
    with pytest.raises(ValueError, match=r"betas\[1\]\[0\]: 1.0"):
        ft.adam(betas=(0.9, [1.0, 0.99]))
    with pytest.raises(ValueError, match=r"max_norm\[1\]"):
        ft.clip([1.0, 0.0])


def test_count_mismatch_names_argument_and_both_sizes() -> None:
    with pytest.raises(ValueError, match=r"lr has 2 per-member values but the ensemble has 3"):
        ft.ensemble(ft.adamw(lr=[1e-3, 1e-2]), N).init(stacked())
    with pytest.raises(ValueError, match=r"eps has 2 per-member values but the ensemble has 3"):
        ft.ensemble(ft.adam(eps=[1e-8, 1e-6]), N).init(stacked())
    with pytest.raises(ValueError, match=r"max_norm has 4 per-member values"):
        ft.ensemble(ft.chain(ft.clip([1.0, 2, 3, 4]), ft.sgd(0.1)), N).init(stacked())


def test_per_member_values_outside_an_ensemble_say_how_to_stack() -> None:
    with pytest.raises(ValueError, match=r"wrap it in functrain.ensemble\(tx, 2\)"):
        ft.adamw(lr=[1e-3, 1e-2]).init({"w": torch.zeros(2, 3)})


def test_leaf_without_member_axis_is_named() -> None:
    tree = stacked()
    tree["b"] = torch.zeros(5)
    with pytest.raises(ValueError, match=r"leaf 'b' has shape \(5,\).*member axis of size 3"):
        ft.ensemble(ft.sgd(0.1), N).init(tree)
    state = ft.ensemble(ft.sgd(0.1), N).init(stacked())
    with pytest.raises(ValueError, match="leaf 'b' has shape \\(2, 5\\)"):
        ft.ensemble(ft.sgd(0.1), N).update(
            {"w": torch.zeros(2, 4, 5), "b": torch.zeros(2, 5)}, state
        )


def test_unstacked_state_is_refused() -> None:
    plain = ft.adamw(1e-3).init(member(stacked(), 0))
    tx = ft.ensemble(ft.adamw(1e-3), N)
    with pytest.raises(ValueError, match="not built for stacked members"):
        tx.update(stacked(1), plain, stacked())
    with pytest.raises(ValueError, match="not built for stacked members"):
        ft.apply_gradients(tx, stacked(), stacked(1), plain)
    with pytest.raises(ValueError, match="built for 3 members but this ensemble has 2"):
        ft.ensemble(ft.adamw(1e-3), 2).update(
            {k: v[:2] for k, v in stacked(1).items()}, tx.init(stacked())
        )
    with pytest.raises(ValueError, match="members must be an int >= 1"):
        ft.ensemble(ft.sgd(0.1), 0)


def test_member_norms_equal_each_members_global_norm() -> None:
    # A member's norm is computed from the same per-slice foreach norms as global_norm's on
    # that member alone; only the last reduction differs in layout ([N, L] rows vs one
    # [L] vector), so a relative ulp bound, not equality.
    grads = stacked(3)
    grads["w"][1] *= 1e3
    leaves, info = flatten(grads)
    for norm_type in (2.0, 1.0, float("inf")):
        norms = member_global_norm(leaves, norm_type, info, N)
        for i in range(N):
            ref = ft.tree.global_norm([x[i] for x in leaves], norm_type)
            assert float(abs(norms[i] - ref) / ref) <= 4 * torch.finfo(torch.float32).eps


def test_clip_is_per_member_as_clip_grad_norm_() -> None:
    grads = stacked(3)
    grads["w"][1] *= 1e3  # member 1's norm is ~1000x the others'
    tx = ft.ensemble(ft.clip(10.0), N)
    out, state = tx.update(grads, tx.init(stacked()))
    assert state.inner.norm.shape == (N,)
    for i in range(N):
        params = [torch.zeros(5, requires_grad=True), torch.zeros(4, 5, requires_grad=True)]
        params[0].grad, params[1].grad = grads["b"][i].clone(), grads["w"][i].clone()
        norm = torch.nn.utils.clip_grad_norm_(params, 10.0)
        assert float(abs(state.inner.norm[i] - norm) / norm) <= 4 * torch.finfo(torch.float32).eps
        assert rel_err(out["b"][i], params[0].grad) <= 1e-6
        assert rel_err(out["w"][i], params[1].grad) <= 1e-6
    # Only member 1 is above max_norm: the others pass through unchanged.
    assert torch.equal(out["w"][0], grads["w"][0]) and torch.equal(out["b"][2], grads["b"][2])
    assert float(out["w"][1].norm()) < 10.0


def run_alone(make_tx, i: int, steps: int) -> dict[str, torch.Tensor]:
    tx = make_tx(i)
    params = member(stacked(0), i)
    state = tx.init(params)
    for k in range(steps):
        params, state = ft.apply_gradients(tx, params, member(stacked(10 + k), i), state)
    return params


def run_stacked(tx, steps: int, **kwargs) -> tuple[dict[str, torch.Tensor], object]:
    params = stacked(0)
    state = tx.init(params)
    for k in range(steps):
        params, state = ft.apply_gradients(tx, params, stacked(10 + k), state, **kwargs)
    return params, state


LRS = [1e-3, 1e-2, 5e-2]
B1 = [0.9, 0.8, 0.0]
B2 = [0.999, 0.99, 0.9]
EPS = [1e-8, 1e-6, 1e-3]
WD = [0.0, 0.1, 0.5]
NORMS = [0.5, 1.0, 100.0]


@pytest.mark.parametrize(
    ("name", "make"),
    [
        (
            "adamw",
            lambda lr, b1, b2, eps, wd, mn: ft.chain(
                ft.clip(mn), ft.adamw(lr, betas=(b1, b2), eps=eps, weight_decay=wd)
            ),
        ),
        (
            "sgd",
            lambda lr, b1, b2, eps, wd, mn: ft.chain(
                ft.clip(mn), ft.sgd(lr, momentum=b1, weight_decay=wd)
            ),
        ),
    ],
)
def test_member_i_equals_its_own_run(name: str, make) -> None:
    # 20 steps with every listed hyperparameter per member. The ensemble multiplies by a
    # per-member tensor where the member alone passes a Python number (and the member alone
    # takes torch's fused kernel), which rounds differently by an ulp per op; over 20 steps
    # that stays far below 1e-6 of the parameters' scale.
    steps = 20
    tx = ft.ensemble(make(LRS, B1, B2, EPS, WD, NORMS), N)
    params, state = run_stacked(tx, steps, donate=True)
    for i in range(N):
        ref = run_alone(lambda i: make(LRS[i], B1[i], B2[i], EPS[i], WD[i], NORMS[i]), i, steps)
        for k in ref:
            assert rel_err(params[k][i], ref[k]) <= 1e-6, (name, i, k)
    values = ft.values_in_force(state)
    assert torch.equal(values["lr"], torch.tensor(LRS, dtype=torch.float64))
    assert values["grad_norm"].shape == (N,)
    assert values["momentum"].shape == (N,)


def test_mixed_scalars_and_vectors() -> None:
    tx = ft.ensemble(ft.chain(ft.clip(1.0), ft.adamw(LRS, betas=(0.9, B2), eps=1e-8)), N)
    params, _ = run_stacked(tx, 5)
    for i in range(N):
        ref = run_alone(
            lambda i: ft.chain(ft.clip(1.0), ft.adamw(LRS[i], betas=(0.9, B2[i]))), i, 5
        )
        for k in ref:
            assert rel_err(params[k][i], ref[k]) <= 1e-6


def test_shared_hyperparameters_take_the_fused_kernel() -> None:
    tx = ft.ensemble(ft.chain(ft.clip(1.0), ft.adamw(1e-2, weight_decay=0.1)), N)
    fused, _ = run_stacked(tx, 5, fused=True)
    plain, _ = run_stacked(tx, 5, fused=False)
    for k in fused:  # torch's fused kernel vs the foreach chain: an ulp per step apart
        assert rel_err(fused[k], plain[k]) <= 1e-6
    # Adam's and SGD's kernels run once per member with that member's learning rate.
    for make in (lambda lr: ft.adamw(lr, weight_decay=0.1), lambda lr: ft.sgd(lr, momentum=0.9)):
        tx = ft.ensemble(ft.chain(ft.clip(1.0), make(LRS)), N)
        fused, _ = run_stacked(tx, 5, fused=True)
        plain, _ = run_stacked(tx, 5, fused=False)
        for k in fused:
            assert rel_err(fused[k], plain[k]) <= 1e-6
        for i in range(N):  # the same kernel as member i's own fused run, clipped alike
            alone = run_alone(lambda i, make=make: ft.chain(ft.clip(1.0), make(LRS[i])), i, 5)
            for k in alone:
                assert rel_err(fused[k][i], alone[k]) <= 1e-6
    # A kernel without a per-member form says so when it is required.
    with pytest.raises(ValueError, match="per-member learning rate"):
        run_stacked(ft.ensemble(ft.adamax(LRS), N), 1, fused=True)


def test_update_path_equals_apply_gradients() -> None:
    tx = ft.ensemble(ft.chain(ft.clip(NORMS), ft.sgd(LRS, momentum=B1)), N)
    params, state = stacked(0), tx.init(stacked(0))
    ref, _ = run_stacked(tx, 3)
    for k in range(3):
        updates, state = tx.update(stacked(10 + k), state, params)
        params = ft.apply_updates(params, updates)
    for k in params:  # both run the same foreach ops in the same order
        assert torch.equal(params[k], ref[k])


def test_set_hyperparam_per_member() -> None:
    tx = ft.ensemble(ft.sgd(LRS), N)
    state = tx.init(stacked())
    state = ft.set_hyperparam(state, "lr", torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    params, state = ft.apply_gradients(tx, stacked(), stacked(1), state)
    assert torch.equal(params["w"][0], stacked()["w"][0])  # lr 0: unchanged
    assert not torch.equal(params["w"][2], stacked()["w"][2])
    state = ft.set_hyperparam(state, "lr", 0.5)  # one number: every member
    assert torch.equal(ft.values_in_force(state)["lr"], torch.full((N,), 0.5, dtype=torch.float64))
    with pytest.raises(ValueError, match="has 3 per-member values, got 2"):
        ft.set_hyperparam(state, "lr", torch.tensor([0.1, 0.2]))


def test_repr_names_the_member_count() -> None:
    tx = ft.ensemble(ft.adamw(LRS), N)
    assert "3" in repr(tx) and "ensemble" in repr(tx)
    with pytest.raises(ValueError, match="already stacked"):
        ft.ensemble(tx, N)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("lr", [1e-2, LRS], ids=["shared-fused", "per-member"])
def test_ensemble_step_on_cuda_has_no_host_sync(lr) -> None:
    tx = ft.ensemble(ft.chain(ft.clip(NORMS), ft.adamw(lr, weight_decay=0.1)), N)
    params = {k: v.cuda() for k, v in stacked(0).items()}
    grads = [{k: v.cuda() for k, v in stacked(10 + k).items()} for k in range(5)]
    state = tx.init(params)
    params, state = ft.apply_gradients(tx, params, grads[0], state, donate=True)  # warm-up
    torch.cuda.set_sync_debug_mode("error")
    try:
        for g in grads[1:]:
            params, state = ft.apply_gradients(tx, params, g, state, donate=True)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    cpu_params, _ = run_stacked(tx, 5, donate=True)
    for k in cpu_params:  # CUDA and CPU kernels round differently: the suite's 1e-6 bound
        assert rel_err(params[k].cpu(), cpu_params[k]) <= 1e-6


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_clip_state_keeps_its_dtype_across_the_first_step(dtype) -> None:
    # A checkpoint restores into a freshly initialised state, which is checked leaf by leaf
    # for dtype: the recorded norm must not change dtype at the first step.
    params = {"w": torch.randn(3, 4).to(dtype)}
    for tx in (ft.clip(1.0), ft.ensemble(ft.clip([1.0, 2.0, 3.0]), 3)):
        state = tx.init(params)
        _, after = tx.update({"w": torch.randn(3, 4).to(dtype)}, state)
        before_norm = state.inner.norm if hasattr(state, "inner") else state.norm
        after_norm = after.inner.norm if hasattr(after, "inner") else after.norm
        assert before_norm.dtype == after_norm.dtype == dtype
