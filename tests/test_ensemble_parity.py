"""Member i of a stacked ensemble equals an independent run of member i (issue 13).

Every optimizer of ``TORCH_OPTIMIZERS`` and ``EXTRA_OPTIMIZERS`` runs on ``N = 3`` members
with different initial parameters and different gradients, as
``apply_gradients(ensemble(chain(clip(max_norm), opt(lr=<3 values>, ...)), 3), donate=True)``
for 50 steps, against ``chain(clip(max_norm), opt(lr=lrs[i], ...))`` run alone on member
``i``'s slice. Excepted: LBFGS (its line search and stopping tests decide on the host from
one loss for the whole tree, so it refuses ``ensemble`` and per-member values by name) and
SparseAdam (functrain does not implement it at all; it refuses to be built). Both refusals
are tested below.

Bounds:

- per-member hyperparameters: ``|a - e| <= 1e-6 * scale`` with ``scale`` the largest
  ``|value|`` the leaf took during the reference run (tests/test_parity_torch.py's rule, so a
  parameter crossing zero does not turn an ulp into a large relative error), against the
  member's run on the same path as the ensemble's step (torch's fused kernels when the
  ensemble's step fuses, else the foreach path). A per-member value is a tensor where the
  member alone has a Python number, and the ensemble clips each member by its own factor
  where a fused member folds the clip into the kernel's ``grad_scale``: each op may round an
  ulp apart, a random walk of ~sqrt(steps) ulps (most optimizers measure 0 here);
- against each member's default run (torch's fused kernels) whatever path the ensemble
  takes: 3e-6 (see :func:`test_per_member_lr_against_the_fused_kernels`);
- bitwise where the same kernels run with the same numbers: shared hyperparameters on the
  foreach path on both sides, and on the fused path where the kernel does not vectorise
  over a leaf's elements (see :data:`FUSED_NOT_BITWISE`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import functrain as ft
from functrain.transforms.torch_names import EXTRA_OPTIMIZERS, TORCH_OPTIMIZERS
from tests.test_optimizers_extra import single_thread  # noqa: F401 (autouse fixture)

N = 3
STEPS = 50
RTOL = 1e-6
SHAPES = {"w": (4, 5), "b": (5,)}
# Member 0's gradients never reach max_norm=1, member 2's always do (it is clipped alone),
# member 1's cross it from step to step.
MEMBER_SCALE = (0.03, 1.0, 300.0)

EXCEPTED = {"LBFGS", "SparseAdam"}  # see the module docstring
NAMES = sorted((set(TORCH_OPTIMIZERS) | set(EXTRA_OPTIMIZERS)) - EXCEPTED)
FACTORIES = {**TORCH_OPTIMIZERS, **EXTRA_OPTIMIZERS}
# A base learning rate of each optimizer's own scale; the members take 0.5x, 1x and 2x.
BASE_LR = {"Adadelta": 1.0, "LARS": 1.0, "ScheduleFreeSGD": 0.1, "Rprop": 1e-2}
# Muon takes 2-d leaves only: the bias goes to the fallback.
EXTRA_ARGS: dict[str, dict[str, Any]] = {"Muon": {"fallback": ft.adamw(lr=1e-2)}}


def make(name: str, **kwargs: Any) -> ft.GradientTransformation:
    return FACTORIES[name](**EXTRA_ARGS.get(name, {}), **kwargs)


def lrs(name: str) -> list[float]:
    base = BASE_LR.get(name, 1e-2)
    return [0.5 * base, base, 2.0 * base]


def pick(value: Any, i: int) -> Any:
    """Member i's value of a per-member argument (lists, pairs holding lists, scalars)."""
    if isinstance(value, list):
        return value[i]
    if isinstance(value, tuple):
        return tuple(pick(v, i) for v in value)
    return value


def stacked(generator: torch.Generator, scale: float | tuple[float, ...] = 1.0) -> dict:
    factor = torch.tensor(scale if isinstance(scale, tuple) else (scale,) * N)
    return {
        k: torch.randn((N, *s), generator=generator) * factor.view(N, *(1,) * len(s))
        for k, s in SHAPES.items()
    }


def problem(steps: int = STEPS, seed: int = 0) -> tuple[dict, list[dict]]:
    gen = torch.Generator().manual_seed(seed)
    params = stacked(gen)
    grads = []
    for k in range(steps):
        g = stacked(gen, MEMBER_SCALE)
        for leaf in g.values():
            leaf[1] *= 10.0 ** ((k % 3) - 1)
        grads.append(g)
    return params, grads


def clone(tree: dict) -> dict:
    return {k: v.clone() for k, v in tree.items()}


def member(tree: dict, i: int) -> dict:
    return {k: v[i].clone() for k, v in tree.items()}


def run_stacked(tx, params, grads, fused=None) -> tuple[dict, Any]:
    state = tx.init(params)
    params = clone(params)
    for g in grads:
        params, state = ft.apply_gradients(tx, params, clone(g), state, donate=True, fused=fused)
    return params, state


def run_member(tx, params, grads, i, fused=None) -> tuple[dict, dict]:
    """Member i alone; also each leaf's largest |value| over the run (the error's scale)."""
    params = member(params, i)
    state = tx.init(params)
    largest = {k: float(v.abs().max()) for k, v in params.items()}
    for g in grads:
        params, state = ft.apply_gradients(
            tx, params, member(g, i), state, donate=True, fused=fused
        )
        largest = {k: max(largest[k], float(v.abs().max())) for k, v in params.items()}
    return params, largest


def fuses(tx: ft.GradientTransformation, params: dict, grads: dict) -> bool:
    """Whether ``apply_gradients`` runs ``tx``'s step as fused kernels (``fused=True`` says
    so by raising when it cannot)."""
    try:
        ft.apply_gradients(tx, clone(params), clone(grads), tx.init(params), fused=True)
    except ValueError:
        return False
    return True


def assert_members_equal(
    make_stacked: Callable[[], ft.GradientTransformation],
    make_member: Callable[[int], ft.GradientTransformation],
    steps: int = STEPS,
    rtol: float = RTOL,
    fused: bool | None = None,
    ref_fused: bool | None | str = "same",
    what: str = "",
) -> Any:
    """Member i of the ensemble (``apply_gradients(..., fused=fused)``) vs its own run
    (``fused=ref_fused``; by default ``"same"``: the fused kernels when the ensemble's step
    fuses, else the foreach path, which it takes where a per-member value has no fused
    form)."""
    params, grads = problem(steps)
    tx = ft.ensemble(make_stacked(), N)
    if ref_fused == "same":
        ref_fused = None if fuses(tx, params, grads[0]) and fused is not False else False
    out, state = run_stacked(tx, params, grads, fused=fused)
    for i in range(N):
        ref, largest = run_member(make_member(i), params, grads, i, fused=ref_fused)
        for k, expected in ref.items():
            actual = out[k][i]
            if rtol == 0.0:
                assert torch.equal(actual, expected), (what, i, k)
            else:
                err = float((actual - expected).abs().max()) / max(largest[k], 1e-30)
                assert err <= rtol, f"{what} member {i} leaf {k}: {err:.3g} of its scale"
    return state


def test_every_optimizer_is_covered() -> None:
    assert set(NAMES) | EXCEPTED == set(TORCH_OPTIMIZERS) | set(EXTRA_OPTIMIZERS)


@pytest.mark.parametrize("name", NAMES)
def test_per_member_lr_with_clip(name: str) -> None:
    values = lrs(name)
    state = assert_members_equal(
        lambda: ft.chain(ft.clip(1.0), make(name, lr=values)),
        lambda i: ft.chain(ft.clip(1.0), make(name, lr=values[i])),
        what=name,
    )
    in_force = ft.values_in_force(state)
    # Each member's own pre-clip norm, and its own learning rate (Rprop's lr is only its
    # initial step size: nothing in force; Muon's fallback keeps its shared lr).
    assert in_force["grad_norm"].shape == (N,)
    lr_keys = [k for k in in_force if k == "lr" or k.endswith("/lr")]
    assert name == "Rprop" or any(in_force[k].shape == (N,) for k in lr_keys), in_force
    for key in lr_keys:
        assert in_force[key].shape in ((), (N,)), (key, in_force[key])


# Against each member's default run, which takes torch's fused / one-pass kernels with Python
# numbers where the ensemble (per-member lr) multiplies by per-member tensors on the foreach
# path: an ulp apart per op, a random walk over the steps. Measured at 50 steps (relative to
# the leaf's scale): AdamW 1.5e-6 (torch's kernel folds lr into one addcdiv), NAdam 6.4e-7,
# every other optimizer below 1.3e-7; the bound is 3e-6.
@pytest.mark.parametrize("name", NAMES)
def test_per_member_lr_against_the_fused_kernels(name: str) -> None:
    values = lrs(name)
    assert_members_equal(
        lambda: ft.chain(ft.clip(1.0), make(name, lr=values)),
        lambda i: ft.chain(ft.clip(1.0), make(name, lr=values[i])),
        rtol=3e-6,
        ref_fused=None,
        what=name,
    )


# Every per-member hyperparameter each optimizer takes (besides lr), with values that reach
# different branches per member (no momentum, a zero decay, RAdam rectifying at different
# steps, ...).
BETAS = ([0.9, 0.8, 0.5], [0.999, 0.99, 0.9])
EPS = [1e-8, 1e-6, 1e-3]
WD = [0.0, 0.1, 0.01]
PER_MEMBER: dict[str, dict[str, Any]] = {
    "SGD": {"momentum": [0.9, 0.5, 0.0], "weight_decay": WD},
    "Adam": {"betas": BETAS, "eps": EPS, "weight_decay": WD},
    "AdamW": {"betas": BETAS, "eps": EPS, "weight_decay": WD},
    "Adamax": {"betas": BETAS, "eps": EPS, "weight_decay": WD},
    "Adagrad": {"eps": EPS, "weight_decay": WD},
    "Adadelta": {"eps": EPS, "weight_decay": WD},
    "RMSprop": {"momentum": [0.9, 0.5, 0.0], "eps": EPS, "weight_decay": WD},
    "Rprop": {},
    "ASGD": {"weight_decay": WD},
    "NAdam": {"betas": BETAS, "eps": EPS, "weight_decay": WD},
    "RAdam": {"betas": BETAS, "eps": EPS, "weight_decay": WD},
    "Adafactor": {"eps": (None, [1e-3, 1e-2, 1e-4]), "weight_decay": WD},
    "Muon": {"momentum": [0.95, 0.5, 0.0], "weight_decay": WD, "eps": [1e-7, 1e-3, 1e-5]},
    "Lion": {"betas": BETAS, "weight_decay": WD},
    "LAMB": {"betas": BETAS, "eps": EPS, "weight_decay": WD},
    "LARS": {"momentum": [0.9, 0.5, 0.0], "weight_decay": WD, "eps": EPS},
    "ScheduleFreeAdamW": {"betas": BETAS, "eps": EPS, "weight_decay": WD},
    "ScheduleFreeSGD": {"momentum": [0.9, 0.5, 0.8], "weight_decay": WD},
}
MAX_NORMS = [0.5, 1.0, 100.0]


@pytest.mark.parametrize("name", NAMES)
def test_every_hyperparameter_per_member(name: str) -> None:
    kwargs = {"lr": lrs(name), **PER_MEMBER[name]}
    state = assert_members_equal(
        lambda: ft.chain(ft.clip(MAX_NORMS), make(name, **kwargs)),
        lambda i: ft.chain(
            ft.clip(MAX_NORMS[i]), make(name, **{k: pick(v, i) for k, v in kwargs.items()})
        ),
        what=name,
    )
    for key, value in ft.values_in_force(state).items():
        assert value.ndim == 0 or value.shape == (N,), (key, value.shape)
    if "momentum" in kwargs and name not in ("Muon",):
        assert ft.values_in_force(state)["momentum"].shape == (N,)


def test_every_optimizer_has_its_per_member_table() -> None:
    assert set(PER_MEMBER) == set(NAMES)


# Shared hyperparameters on the foreach path on both sides, no clip: the ensemble runs the
# same foreach ops with the same Python-number scalars on the stacked leaves as each member
# on its own; every op is elementwise or reduces within a member's slice (the norms of LAMB,
# LARS and Adafactor come from the same foreach norm of each slice), so bitwise. (The clip's
# per-member global norm may be reduced in another layout than a member's own: an ulp.)
@pytest.mark.parametrize("name", NAMES)
def test_shared_hyperparameters_on_the_foreach_path_are_bitwise(name: str) -> None:
    lr = lrs(name)[1]
    assert_members_equal(
        lambda: make(name, lr=lr),
        lambda i: make(name, lr=lr),
        steps=20,
        rtol=0.0,
        fused=False,
        ref_fused=False,
        what=name,
    )


# Shared hyperparameters, no clip, apply_gradients choosing on both sides: torch's fused
# kernels (and the ports' one-pass steps) run on the stacked leaves and on each member
# alone. Bitwise where the kernel is a plain elementwise loop; torch's fused Adam / AdamW /
# SGD-with-momentum CPU kernels vectorise over a leaf's elements, so a member's slice of a
# stacked leaf may fall in other vector lanes or the scalar tail than the member alone (an
# ulp per step, the 1e-6 bound).
FUSED_NOT_BITWISE = {"Adam", "AdamW", "LARS"}


@pytest.mark.parametrize("name", NAMES)
def test_shared_hyperparameters_on_the_fused_path(name: str) -> None:
    lr = lrs(name)[1]
    assert_members_equal(
        lambda: make(name, lr=lr),
        lambda i: make(name, lr=lr),
        steps=20,
        rtol=RTOL if name in FUSED_NOT_BITWISE else 0.0,
        fused=None,
        ref_fused=None,
        what=name,
    )


def test_shared_hyperparameters_take_the_fused_kernels() -> None:
    # apply_gradients(fused=True) raises when the step cannot be fused: these ensembles are.
    params, grads = problem(2)
    for name in ("SGD", "Adam", "AdamW", "Adagrad"):
        tx = ft.ensemble(make(name, lr=1e-2, weight_decay=0.1), N)
        run_stacked(tx, params, grads, fused=True)


def test_a_huge_member_is_clipped_alone() -> None:
    params, grads = problem(1)
    tx = ft.ensemble(ft.chain(ft.clip(1.0), ft.sgd(lr=1.0)), N)
    out, state = run_stacked(tx, params, grads)
    norms = ft.values_in_force(state)["grad_norm"]
    for i in range(N):
        own = torch.linalg.vector_norm(torch.cat([g[i].flatten() for g in grads[0].values()]))
        assert math.isclose(float(norms[i]), float(own), rel_tol=1e-6)
        step = torch.cat([(params[k][i] - out[k][i]).flatten() for k in params])
        # Member 0 (norm ~0.2) moves by its gradient; member 2 (norm ~1500) by norm 1.
        expected = min(float(own), 1.0)
        assert math.isclose(float(step.norm()), expected, rel_tol=1e-5)


@pytest.mark.parametrize("name", ["SGD", "AdamW", "LAMB"])
def test_apply_if_finite_skips_only_the_nonfinite_member(name: str) -> None:
    # Member 1's gradient holds a NaN at step 3: its parameters (and its slices of the
    # optimizer state) stay as they were, the others step.
    params, grads = problem(8)
    grads[3]["w"][1, 0, 0] = float("nan")
    kwargs = {"momentum": 0.9} if name == "SGD" else {}

    def tx(lr: Any) -> ft.GradientTransformation:
        return ft.apply_if_finite(ft.chain(ft.clip(1.0), make(name, lr=lr, **kwargs)), 5)

    stacked_tx = ft.ensemble(tx(lrs(name)), N)
    state = stacked_tx.init(params)
    p = clone(params)
    for k, g in enumerate(grads):
        before = clone(p)
        p, state = ft.apply_gradients(stacked_tx, p, clone(g), state)
        if k == 3:
            assert torch.equal(p["w"][1], before["w"][1]) and torch.equal(p["b"][1], before["b"][1])
            assert not torch.equal(p["w"][0], before["w"][0])
    assert state.inner.notfinite_count.tolist() == [0, 0, 0]
    assert state.inner.total_notfinite.tolist() == [0, 1, 0]
    for i in range(N):
        ref, largest = run_member(tx(lrs(name)[i]), params, grads, i)
        # The skipped member's run equals its own skipping run where the optimizer keeps no
        # shared step count (SGD); Adam-like bias corrections count steps for all members
        # at once (a shared step count advances when any member steps), so member 1 is
        # compared only for SGD.
        if i == 1 and name != "SGD":
            continue
        for k in ref:
            err = float((p[k][i] - ref[k]).abs().max()) / largest[k]
            assert err <= RTOL, (name, i, k, err)


def test_loss_scaling_backs_off_only_the_overflowing_member() -> None:
    params, grads = problem(6)
    scale = 4.0
    grads = [{k: v * scale for k, v in g.items()} for g in grads]
    grads[2]["b"][1, 3] = float("inf")

    def tx(lr: Any) -> ft.GradientTransformation:
        inner = ft.chain(ft.clip(1.0), ft.sgd(lr=lr, momentum=0.9))
        return ft.loss_scaling(inner, init_scale=scale, growth_interval=100)

    # The scale must not change while the grads are pre-scaled by a constant: a growth
    # interval longer than the run, and member 1's backoff checked on its own.
    out, state = run_stacked(ft.ensemble(tx(lrs("SGD")), N), params, grads[:3])
    assert state.inner.scale.tolist() == [scale, scale / 2, scale]
    assert state.inner.found_inf.tolist() == [0.0, 1.0, 0.0]
    for i in (0, 2):
        ref, largest = run_member(tx(lrs("SGD")[i]), params, grads[:3], i)
        for k in ref:
            assert float((out[k][i] - ref[k]).abs().max()) / largest[k] <= RTOL


@pytest.mark.parametrize(
    "make_tx",
    [
        # Label and mask callables see one member's slice: the [N, 5] bias is 1-d.
        lambda lr: ft.partition(
            {"decay": ft.adamw(lr=lr, weight_decay=0.1), "plain": ft.adam(lr=lr)},
            lambda path, p: "decay" if p.ndim > 1 else "plain",
        ),
        lambda lr: ft.chain(
            ft.masked(ft.add_decayed_weights(0.1), lambda path, p: p.ndim > 1), ft.sgd(lr=lr)
        ),
        lambda lr: ft.chain(
            ft.mask_multipliers({"b": {"lr_mult": 2.0, "decay_mult": 0.0}}),
            ft.sgd(lr=lr, momentum=0.9, weight_decay=0.1),
        ),
        lambda lr: ft.multi_steps(ft.chain(ft.clip(1.0), ft.adamw(lr=lr)), 3),
        lambda lr: ft.accumulate(ft.chain(ft.clip(1.0), ft.lamb(lr=lr)), 2),
        lambda lr: ft.chain(ft.clip_by_value(0.5), ft.rmsprop(lr=lr, momentum=0.5)),
    ],
    ids=["partition", "masked", "mask_multipliers", "multi_steps", "accumulate", "clip_by_value"],
)
def test_combinators_per_member(make_tx) -> None:
    values = [1e-3, 1e-2, 3e-2]
    assert_members_equal(lambda: make_tx(values), lambda i: make_tx(values[i]), steps=12)


def test_muon_mask_and_shapes_are_per_member() -> None:
    params, _ = problem(1)
    with pytest.raises(ValueError, match=r"leaf 'b' has size \(5,\) per member"):
        ft.ensemble(ft.muon(lr=[1e-2, 1e-2, 1e-2]), N).init(params)
    # With a fallback the default mask sees each member's [4, 5] slice: 'w' is a matrix.
    state = ft.ensemble(ft.muon(lr=1e-2, fallback=ft.adamw(1e-2)), N).init(params)
    assert state.inner.labels == ("muon", "fallback") or set(state.inner.labels) == {
        "muon",
        "fallback",
    }


FLOATS = st.floats(min_value=0.0, max_value=0.5, allow_nan=False)


def scalar_or_vector(values: st.SearchStrategy) -> st.SearchStrategy:
    # Mixed scalars and vectors: each argument is shared or per member.
    return st.one_of(values, st.lists(values, min_size=N, max_size=N))


@settings(max_examples=12, deadline=None)
@given(
    lr=scalar_or_vector(st.floats(1e-4, 0.1)),
    b1=scalar_or_vector(st.floats(0.0, 0.95)),
    b2=scalar_or_vector(st.floats(0.5, 0.999)),
    eps=scalar_or_vector(st.floats(1e-8, 1e-2)),
    weight_decay=scalar_or_vector(FLOATS),
    max_norm=scalar_or_vector(st.floats(0.1, 10.0)),
    sgd=st.booleans(),
)
def test_mixed_scalars_and_vectors(lr, b1, b2, eps, weight_decay, max_norm, sgd) -> None:
    def opt(lr, b1, b2, eps, weight_decay):
        if sgd:
            return ft.sgd(lr=lr, momentum=b1, weight_decay=weight_decay)
        return ft.adamw(lr=lr, betas=(b1, b2), eps=eps, weight_decay=weight_decay)

    args = (lr, b1, b2, eps, weight_decay)
    assert_members_equal(
        lambda: ft.chain(ft.clip(max_norm), opt(*args)),
        lambda i: ft.chain(ft.clip(pick(max_norm, i)), opt(*(pick(a, i) for a in args))),
        steps=10,
    )


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: ft.sgd(0.1, momentum=[0.9, 0.5]), r"momentum has 2 per-member values"),
        (lambda: ft.adam(betas=([0.9, 0.8], 0.999)), r"betas\[0\] has 2 per-member values"),
        (lambda: ft.nadam(eps=[1e-8] * 4), r"eps has 4 per-member values"),
        (lambda: ft.radam(betas=(0.9, [0.99, 0.9])), r"betas\[1\] has 2 per-member values"),
        (lambda: ft.adamax(eps=[1e-8, 1e-6]), r"eps has 2 per-member values"),
        (lambda: ft.rmsprop(eps=[1e-8, 1e-6]), r"eps has 2 per-member values"),
        (lambda: ft.adagrad(eps=[1e-8, 1e-6]), r"eps has 2 per-member values"),
        (lambda: ft.adadelta(eps=[1e-8, 1e-6]), r"eps has 2 per-member values"),
        (lambda: ft.lion(betas=(0.9, [0.9, 0.99])), r"betas\[1\] has 2 per-member values"),
        (lambda: ft.lars(weight_decay=[0.1, 0.2]), r"weight_decay has 2 per-member values"),
        (lambda: ft.lamb(eps=[1e-6, 1e-5]), r"eps has 2 per-member values"),
        (lambda: ft.rprop(lr=[0.1, 0.2]), r"lr has 2 per-member values"),
        (lambda: ft.asgd(lr=[0.1, 0.2]), r"lr has 2 per-member values"),
        (lambda: ft.adafactor(weight_decay=[0.1, 0.2]), r"weight_decay has 2 per-member values"),
        (lambda: ft.adafactor(eps=(None, [1e-3, 1e-2])), r"eps\[1\] has 2 per-member values"),
        (lambda: ft.muon(momentum=[0.9, 0.5]), r"momentum has 2 per-member values"),
        (
            lambda: ft.schedule_free_adamw(betas=([0.9, 0.5], 0.999)),
            r"betas\[0\] has 2 per-member values",
        ),
        (lambda: ft.schedule_free_sgd(momentum=[0.9, 0.5]), r"momentum has 2 per-member values"),
        (lambda: ft.chain(ft.clip([1.0, 2.0]), ft.sgd(0.1)), r"max_norm has 2 per-member values"),
    ],
)
def test_wrong_member_count_fails_at_init_naming_argument_and_sizes(build, message) -> None:
    params = {"w": torch.zeros(N, 4, 4)}
    with pytest.raises(ValueError, match=message + ".*3 members"):
        ft.ensemble(build(), N).init(params)


def test_leaves_disagreeing_on_the_member_axis_name_the_first_path() -> None:
    params = {"a": torch.zeros(N, 2), "b": {"c": torch.zeros(N + 1, 2)}}
    with pytest.raises(ValueError, match=r"leaf 'b.c' has shape \(4, 2\).*member axis of size 3"):
        ft.ensemble(ft.adamw(lr=[1e-3] * N), N).init(params)


def test_unstacked_state_is_refused() -> None:
    params, grads = problem(1)
    plain = ft.adamw(1e-3).init(member(params, 0))
    with pytest.raises(ValueError, match="not built for stacked members"):
        ft.apply_gradients(ft.ensemble(ft.adamw([1e-3] * N), N), params, grads[0], plain)


def test_lbfgs_and_sparse_adam_refuse_by_name() -> None:
    with pytest.raises(ValueError, match="lbfgs takes no per-member lr"):
        ft.lbfgs(lr=[1.0, 0.5, 0.1])
    with pytest.raises(ValueError, match="lbfgs cannot run under functrain.ensemble"):
        ft.ensemble(ft.lbfgs(), N).init({"w": torch.zeros(N, 3)})
    with pytest.raises(ValueError, match=r"SparseAdam takes no per-member betas"):
        ft.sparse_adam(betas=(0.9, [0.99, 0.9, 0.999]))
    with pytest.raises(ValueError, match=r"adafactor takes no per-member eps\[0\]"):
        ft.adafactor(eps=([1e-30, 1e-29, 1e-28], 1e-3))


# ------------------------------------------------------------- the vmap path (issue 13 item 3)


def vmap_cases() -> dict[str, Callable[[], ft.GradientTransformation]]:
    from tests import test_vmap

    return {**test_vmap.OPTIMIZERS, **test_vmap.COMBINATORS}


@pytest.mark.parametrize("name", sorted(vmap_cases()))
def test_vmap_path_equals_the_stacked_path(name: str) -> None:
    # torch.func.vmap over the members of the unbatched transform (shared hyperparameters)
    # vs ensemble(tx, N) on the stacked tree, on test_vmap's leaves (0-d to 4-d per member)
    # and gradients (member 1 overflows at step 2 for the skipping wrappers). Both run
    # update + apply_updates; under vmap each foreach op runs leaf by leaf (and Muon's
    # Newton-Schulz batched), so the bound is the 1e-6 of the leaf's scale.
    from tests import test_vmap

    make_tx = vmap_cases()[name]
    overflow = name in ("loss_scaling", "apply_if_finite")
    gen = torch.Generator().manual_seed(0)
    params = test_vmap.stacked_tree(N, generator=gen)
    grads = test_vmap.grads_sequence(N, 4, overflow=overflow)
    vmapped, _ = test_vmap.run_vmapped(make_tx(), params, grads)
    tx = ft.ensemble(make_tx(), N)
    state = tx.init(params)
    out = params
    for g in grads:
        updates, state = tx.update(g, state, out)
        out = ft.apply_updates(out, updates)
    # Member 1's skipped step: under vmap its AdamW step count stays behind, in the ensemble
    # the shared count advances with the other members (see apply_if_finite's docstring), so
    # its later bias corrections differ by design; the other members must agree.
    compared = [0, 2] if overflow else list(range(N))
    for k in out:
        scale = max(float(out[k].abs().max()), float(params[k].abs().max()), 1e-30)
        err = float((out[k][compared] - vmapped[k][compared]).abs().max()) / scale
        assert err <= RTOL, (name, k, err)
