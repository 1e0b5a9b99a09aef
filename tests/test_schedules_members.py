"""Schedules with per-member values (issue 13): shapes, member-by-member equality, errors.

A schedule given a sequence or 1-d tensor of length N for any numeric argument returns
[N] for one step and [T, N] for T steps; column i must equal the plain schedule built,
independently, with member i's values. The comparisons are bitwise (as int64 patterns,
so that even the sign of a zero counts): member i's column is computed by the same
floating point operations, in the same order, on the same numbers as the plain schedule.
The one CPU kernel whose result depends on an element's position in the loop (pow:
SIMD lanes vs the scalar tail) is run row by row (``member_pow``) so that this holds on
every CPU capability too; the test runs under ``ATEN_CPU_CAPABILITY=default`` and ``avx2``
alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import functrain
from functrain.schedules import (
    CosineAnnealing,
    Linear,
    Piece,
    Schedule,
    Step,
    as_schedule,
    constant_lr,
    cosine_annealing_lr,
    cosine_restart_lr,
    cyclic_lr,
    exponential_lr,
    from_mmengine,
    lambda_lr,
    linear_lr,
    linear_warmup,
    members,
    multiplicative_lr,
    multistep_lr,
    onecycle_lr,
    poly_lr,
    schedule_list,
    step_lr,
    warmup_cosine,
)

F64 = torch.float64


def bits(x: torch.Tensor) -> list[int]:
    return x.contiguous().view(torch.int64).tolist()


def assert_same_bits(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.dtype == want.dtype == F64
    assert got.shape == want.shape
    if bits(got) != bits(want):
        raise AssertionError(f"not bitwise equal:\n{got.tolist()}\n{want.tolist()}")


# ------------------------------------------------------------------ families and draws

_BASE = st.floats(0.01, 2.0)
_FRAC = st.floats(0.01, 1.0)
_GAMMA = st.floats(0.05, 1.5)
_ETA = st.floats(0.0, 0.05)
_LEN = st.integers(1, 30)

# family -> (builder, fixed keyword arguments, {argument: strategy of one member's value})
FAMILIES: dict[str, tuple[Callable[..., Schedule], dict[str, Any], dict[str, Any]]] = {
    "constant": (constant_lr, {}, {"base": _BASE, "factor": _FRAC, "end": _LEN}),
    "linear": (
        linear_lr,
        {},
        {"base": _BASE, "start_factor": _FRAC, "end_factor": st.floats(0.0, 1.0), "end": _LEN},
    ),
    "linear_warmup": (linear_warmup, {}, {"base": _BASE, "steps": _LEN, "start_factor": _FRAC}),
    "step": (step_lr, {}, {"base": _BASE, "step_size": st.integers(1, 7), "gamma": _GAMMA}),
    "multistep": (multistep_lr, {"milestones": (2, 5, 5, 11)}, {"base": _BASE, "gamma": _GAMMA}),
    "exponential": (exponential_lr, {}, {"base": _BASE, "gamma": _GAMMA, "end": _LEN}),
    "multiplicative": (
        multiplicative_lr,
        {"fn": lambda k: 0.9 if k % 2 else 0.97},
        {"base": _BASE, "end": _LEN},
    ),
    "cosine": (cosine_annealing_lr, {}, {"base": _BASE, "T_max": _LEN, "eta_min": _ETA}),
    "cosine_ratio": (
        cosine_annealing_lr,
        {},
        {"base": _BASE, "T_max": _LEN, "eta_min_ratio": st.floats(0.0, 0.5), "end": _LEN},
    ),
    "cosine_restarting": (
        # T_max shorter than the window: mmengine's curve climbs back (additive branch).
        cosine_annealing_lr,
        {"end": 40},
        {"base": _BASE, "T_max": st.integers(1, 12), "eta_min": _ETA},
    ),
    "poly": (
        poly_lr,
        {},
        {
            "base": _BASE,
            "eta_min": _ETA,
            "power": st.sampled_from([0.5, 1.0, 2.0, 0.9]),
            "end": _LEN,
        },
    ),
    "cosine_restart": (
        cosine_restart_lr,
        {"periods": (5, 7, 3), "restart_weights": (1.0, 0.5, 0.25)},
        {"base": _BASE, "eta_min": _ETA},
    ),
    "cosine_restart_ratio": (
        cosine_restart_lr,
        {"periods": (4, 9), "restart_weights": (1.0, 0.7)},
        {"base": _BASE, "eta_min_ratio": st.floats(0.0, 0.5)},
    ),
    "onecycle": (
        onecycle_lr,
        {"anneal_strategy": "cos"},
        {
            "eta_max": st.floats(0.1, 2.0),
            "total_steps": st.integers(4, 40),
            "pct_start": st.floats(0.1, 0.9),
            "div_factor": st.floats(2.0, 30.0),
            "final_div_factor": st.floats(2.0, 1e4),
        },
    ),
    "onecycle_linear3": (
        onecycle_lr,
        {"anneal_strategy": "linear", "three_phase": True},
        {"eta_max": st.floats(0.1, 2.0), "total_steps": st.integers(6, 40), "div_factor": _GAMMA},
    ),
    "cyclic": (
        cyclic_lr,
        {"mode": "exp_range"},
        {
            "base": _BASE,
            "max_value": st.floats(0.0, 3.0),
            "step_size_up": st.integers(1, 6),
            "gamma": st.floats(0.8, 1.0),
        },
    ),
    "cyclic_tri2": (
        cyclic_lr,
        {"mode": "triangular2", "step_size_down": 3},
        {"base": _BASE, "max_value": st.floats(0.0, 3.0)},
    ),
    "lambda": (lambda_lr, {"fn": lambda k: 0.95**k}, {"base": _BASE, "end": _LEN}),
    "warmup_cosine": (
        warmup_cosine,
        {},
        {
            "base": _BASE,
            "warmup_steps": st.integers(1, 10),
            "total_steps": st.integers(11, 40),
            "start_factor": _FRAC,
            "eta_min": _ETA,
        },
    ),
}


@st.composite
def per_member(draw: st.DrawFn, family: str, n: int) -> tuple[Schedule, list[Schedule]]:
    """A schedule with random per-member values and, built apart, its n plain members."""
    builder, fixed, args = FAMILIES[family]
    vector_kwargs: dict[str, Any] = dict(fixed)
    member_kwargs: list[dict[str, Any]] = [dict(fixed) for _ in range(n)]
    for name, strategy in args.items():
        if draw(st.booleans()):  # per member
            values = [draw(strategy) for _ in range(n)]
            as_tensor = draw(st.booleans())
            dtype = torch.int64 if isinstance(values[0], int) else F64
            vector_kwargs[name] = torch.tensor(values, dtype=dtype) if as_tensor else values
            for i in range(n):
                member_kwargs[i][name] = values[i]
        else:  # shared by all members
            value = draw(strategy)
            vector_kwargs[name] = value
            for i in range(n):
                member_kwargs[i][name] = value
    try:
        plain = [builder(**kw) for kw in member_kwargs]
    except ValueError:
        assume(False)  # e.g. onecycle with pct_start * total_steps == 1
    return builder(**vector_kwargs), plain


_STEPS = st.lists(st.integers(0, 120), min_size=1, max_size=30)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@settings(max_examples=30, deadline=None)
@given(data=st.data(), n=st.integers(1, 6), steps=_STEPS)
def test_each_column_is_the_members_plain_schedule(family, data, n, steps):
    schedule, plain = data.draw(per_member(family, n))
    assert members(schedule) == schedule.members == n or (
        # every argument drawn shared: an ordinary schedule
        members(schedule) is None and all(p == plain[0] for p in plain)
    )
    n_out = members(schedule)
    if n_out is None:
        return
    t = torch.tensor(steps)
    curve = schedule(torch.arange(121))
    some = schedule(t)
    assert curve.shape == (121, n) and some.shape == (len(steps), n)
    for i, member in enumerate(plain):
        assert_same_bits(curve[:, i], member(torch.arange(121)))
        assert_same_bits(some[:, i], member(t))
        assert schedule.member(i)(t).tolist() == member(t).tolist()
    for step in steps[:4]:
        one = schedule(torch.tensor(step))
        assert one.shape == (n,)
        assert_same_bits(one, torch.stack([m(torch.tensor(step)) for m in plain]))
        assert schedule(step).tolist() == [m(step) for m in plain]


@settings(max_examples=40, deadline=None)
@given(
    data=st.data(),
    n=st.integers(1, 5),
    epoch_length=st.integers(2, 6),
    steps=st.lists(st.integers(0, 200), min_size=1, max_size=20),
)
def test_lists_of_per_member_items_chain_recursively(data, n, epoch_length, steps):
    """mmengine's recursion (a replayed table, then closed forms) member by member."""
    vec = st.lists(st.floats(0.05, 1.0), min_size=n, max_size=n)
    base = data.draw(vec)
    start = data.draw(vec)
    gamma = data.draw(st.lists(st.floats(0.1, 0.9), min_size=n, max_size=n))
    eta = data.draw(st.lists(st.floats(0.0, 0.01), min_size=n, max_size=n))
    warm = data.draw(st.lists(st.integers(1, 12), min_size=n, max_size=n))

    def items(b, s, g, e, w):
        return schedule_list(
            [
                linear_lr(start_factor=s, end=w),  # overlaps the multistep: they multiply
                multistep_lr(milestones=[1, 3], gamma=g, by_epoch=True, end=20),
                cosine_annealing_lr(eta_min=e, T_max=7, begin=4, end=11, by_epoch=True),
            ],
            base=b,
            epoch_length=epoch_length,
        )

    schedule = items(base, start, torch.tensor(gamma, dtype=F64), eta, warm)
    assert schedule.members == n
    t = torch.tensor(steps)
    out = schedule(t)
    for i in range(n):
        plain = items(base[i], start[i], gamma[i], eta[i], warm[i])
        assert_same_bits(out[:, i], plain(t))


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 4),
    data=st.data(),
    steps=st.lists(st.integers(0, 300), min_size=1, max_size=20),
)
def test_from_mmengine_per_member_configs(n, data, steps):
    eta = data.draw(st.lists(st.floats(0.0, 0.01), min_size=n, max_size=n))
    t_max = data.draw(st.lists(st.integers(1, 8), min_size=n, max_size=n))
    lr = data.draw(st.lists(st.floats(0.01, 1.0), min_size=n, max_size=n))
    ends = data.draw(st.lists(st.integers(2, 30), min_size=n, max_size=n))

    def cfg(e, t, end):
        return [
            dict(type="LinearLR", start_factor=0.01, by_epoch=False, begin=0, end=end),
            dict(type="CosineAnnealingLR", T_max=t, eta_min=e, begin=1, end=9,
                 by_epoch=True, convert_to_iter_based=True),
        ]  # fmt: skip

    schedule = from_mmengine(cfg(eta, t_max, ends), base=lr, epoch_length=10, max_epochs=9)
    assert schedule.members == n
    out = schedule(torch.tensor(steps))
    for i in range(n):
        plain = from_mmengine(cfg(eta[i], t_max[i], ends[i]), base=lr[i], epoch_length=10)
        assert_same_bits(out[:, i], plain(torch.tensor(steps)))


@settings(max_examples=30, deadline=None)
@given(
    gammas=st.lists(st.floats(0.05, 1.5), min_size=17, max_size=40),
    step=st.integers(0, 200),
    family=st.sampled_from(["step", "exponential", "cyclic"]),
)
def test_many_members_at_one_step_match_bitwise(gammas, step, family):
    """At a 0-d step (the transforms' counter) the N member values form one row of N:
    with N above the SIMD width, pow would run in vector lanes where the plain schedule's
    0-d evaluation runs the scalar loop; ``member_pow`` keeps each member on the scalar
    loop's bits."""

    def build(gamma):
        if family == "step":
            return step_lr(0.5, step_size=3, gamma=gamma)
        if family == "exponential":
            return exponential_lr(0.5, gamma=gamma)
        return cyclic_lr(0.5, max_value=2.0, step_size_up=4, mode="exp_range", gamma=gamma)

    got = build(gammas)(torch.tensor(step))
    want = torch.stack([build(g)(torch.tensor(step)) for g in gammas])
    assert_same_bits(got, want)


# ------------------------------------------------------------------------------ shapes


def test_shapes_of_steps():
    s = cosine_annealing_lr([0.1, 0.2, 0.3], T_max=10)
    assert s(3).shape == (3,) and s(3).dtype == F64
    assert s(torch.tensor(3)).shape == (3,)
    assert s(torch.arange(7)).shape == (7, 3)
    assert s(torch.arange(0)).shape == (0, 3)
    assert s(torch.tensor([5])).shape == (1, 3)
    one = cosine_annealing_lr([0.1], T_max=10)
    assert one.members == 1 and one(torch.arange(4)).shape == (4, 1)


def test_mixed_scalars_and_vectors_and_tensor_inputs():
    a = step_lr(torch.tensor([1.0, 2.0], dtype=F64), step_size=2, gamma=0.5)
    b = step_lr(1.0, step_size=torch.tensor([2, 3]), gamma=[0.5, 0.5])
    assert a(torch.arange(5)).tolist() == [[1, 2], [1, 2], [0.5, 1], [0.5, 1], [0.25, 0.5]]
    assert b(torch.arange(4)).tolist() == [[1, 1], [1, 1], [0.5, 1], [0.5, 0.5]]
    # float32 member values are widened exactly, as a float32 number would be
    c = constant_lr(torch.tensor([0.5, 0.25]), factor=0.5, end=3)
    assert c(0).tolist() == [0.25, 0.125]


def test_shared_values_give_an_ordinary_schedule():
    s = step_lr(0.1, step_size=2, gamma=0.5)
    assert s.members is None and members(s) is None
    assert isinstance(s(3), float) and s(torch.arange(3)).shape == (3,)


def test_results_are_fresh_tensors():
    """No result aliases a cached constant: writing into one leaves the schedule intact."""
    s = as_schedule([0.1, 0.2])
    first = s(torch.tensor(0))
    first.fill_(7.0)
    assert s(torch.tensor(0)).tolist() == [0.1, 0.2]
    curve = s(torch.arange(1))
    curve.fill_(7.0)
    assert s(torch.arange(1)).tolist() == [[0.1, 0.2]]


def test_members_differing_in_lengths_run_in_groups_in_member_order():
    lengths = [5, 9, 5, 2]
    s = cosine_annealing_lr(1.0, T_max=lengths, eta_min=[0.0, 0.1, 0.2, 0.3])
    out = s(torch.arange(12))
    for i, t_max in enumerate(lengths):
        plain = cosine_annealing_lr(1.0, T_max=t_max, eta_min=[0.0, 0.1, 0.2, 0.3][i])
        assert_same_bits(out[:, i], plain(torch.arange(12)))


def test_constant_schedules_and_with_base():
    s = as_schedule(torch.tensor([0.1, 0.2, 0.3], dtype=F64))
    assert s.members == 3
    assert s(torch.arange(2)).tolist() == [[0.1, 0.2, 0.3]] * 2
    w = linear_lr(start_factor=0.5, end=3).with_base([1.0, 2.0])
    assert w(0).tolist() == [0.5, 1.0]


def test_pieces_take_member_values_and_convert_to_iterations():
    piece = CosineAnnealing(T_max=[2, 3], eta_min=0.0, end=[2, 3], by_epoch=True)
    assert piece.members == 2 and piece.vector_fields() == ("end", "T_max")
    assert piece.member(1) == CosineAnnealing(T_max=3, eta_min=0.0, end=3, by_epoch=True)
    converted = piece.to_iter_based(10)
    assert converted.T_max == (20, 30) and converted.end == (20, 30)
    assert Piece.join([piece.member(0), piece.member(1)], ["end", "T_max"]) == piece


def test_bounds_is_the_hull_over_members():
    s = linear_lr([1.0, 2.0], start_factor=[0.5, 0.25], end=4)
    assert s.bounds() == (0.5, 2.0)
    with pytest.raises(ValueError, match=r"has 2 .*member\(i\)"):
        s.windows()


def test_members_function():
    assert members(0.1) is None and members(None) is None
    assert members([0.1, 0.2]) == 2 and members((1, 2, 3)) == 3
    assert members(torch.ones(5)) == 5 and members(torch.tensor(1.0)) is None
    assert members(Linear(start_factor=[0.1, 0.2])) == 2
    assert members(lambda step: 0.1) is None
    with pytest.raises(ValueError, match="1-d tensor"):
        members(torch.ones(2, 2))
    assert functrain.schedules.members is members


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_steps_match_the_cpu_values_per_member():
    s = warmup_cosine([0.1, 0.2, 0.3], warmup_steps=[2, 5, 2], total_steps=30, eta_min=1e-3)
    t = torch.arange(40)
    got = s(t.cuda())
    assert got.device.type == "cuda" and got.shape == (40, 3)
    torch.testing.assert_close(got.cpu(), s(t), rtol=1e-14, atol=0)


# ------------------------------------------------------------------------------ errors


def test_lengths_that_differ_name_both_arguments_and_sizes():
    with pytest.raises(ValueError, match=r"step_lr: `base` has 3 members but `gamma` has 2"):
        step_lr([0.1, 0.2, 0.3], step_size=2, gamma=[0.5, 0.1])
    with pytest.raises(ValueError, match=r"`warmup_steps` has 2 members but `eta_min` has 3"):
        warmup_cosine(0.1, warmup_steps=[1, 2], total_steps=10, eta_min=[0.0, 0.1, 0.2])
    with pytest.raises(ValueError, match=r"`base` has 2 members but `pieces\[0\]` \(Step\) has 3"):
        Schedule((Step(step_size=1, gamma=[0.1, 0.2, 0.3]),), base=[1.0, 2.0])
    with pytest.raises(ValueError, match=r"Linear: `end` has 3 members but `start_factor` has 2"):
        Linear(start_factor=[0.1, 0.2], end=[3, 4, 5])


def test_each_member_is_checked_as_the_scalar_naming_its_index():
    with pytest.raises(ValueError, match=r"Linear: `start_factor\[1\]` must be in \(0, 1\]"):
        linear_lr(1.0, start_factor=[0.5, 1.5])
    with pytest.raises(ValueError, match=r"Step: `gamma\[2\]` must be in \[0, inf\], got -1.0"):
        step_lr(1.0, step_size=1, gamma=[0.1, 0.2, -1.0])
    with pytest.raises(ValueError, match=r"`base\[1\]` must be finite, got inf"):
        cosine_annealing_lr([0.1, math.inf], T_max=3)
    with pytest.raises(ValueError, match=r"`end\[1\]` must be larger than `begin`"):
        linear_lr(1.0, end=[3, 0])
    with pytest.raises(ValueError, match=r"`T_max\[0\]` must be > 0"):
        cosine_annealing_lr(1.0, T_max=[0, 3])
    with pytest.raises(ValueError, match=r"`total_steps\[1\]` \(3\) must exceed `warmup_steps`"):
        warmup_cosine(1.0, warmup_steps=3, total_steps=[9, 3])
    with pytest.raises(ValueError, match=r"`eta_min\[0\]` must be a real number"):
        poly_lr(1.0, eta_min=["x", 0.1])


def test_bad_vectors_are_named():
    with pytest.raises(ValueError, match=r"`gamma` per member must be a 1-d tensor, got shape"):
        step_lr(1.0, step_size=1, gamma=torch.ones(2, 2))
    with pytest.raises(ValueError, match=r"`base` has no members"):
        as_schedule([])
    with pytest.raises(ValueError, match=r"schedule_list: `items\[0\]` has base="):
        schedule_list([step_lr([1.0, 2.0], step_size=1)], base=[1.0, 3.0])


def test_mmengine_configs_name_the_member():
    cfg = dict(type="CosineAnnealingLR", T_max=[4, 0], eta_min=0.0, by_epoch=False)
    with pytest.raises(ValueError, match=r"CosineAnnealingLR: .*`T_max\[1\]` must be > 0"):
        from_mmengine(cfg, base=0.1)
    cfg = dict(type="StepLR", step_size=2, gamma=[0.1, 0.2], end=[3, 4, 5])
    with pytest.raises(ValueError, match=r"StepLR: `end` has 3 members but `gamma` has 2"):
        from_mmengine(cfg, base=0.1)


def test_docstring_examples_of_the_members_module_run():
    import doctest

    from functrain.schedules import _members

    result = doctest.testmod(_members, extraglobs={"torch": torch})
    assert result.attempted > 0 and result.failed == 0


def test_readme_example_gives_the_members_values():
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.search(r"## Schedules\n.*?```python\n(.*?)```", readme, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    sweep = namespace["sweep"]
    assert sweep.members == 3 and sweep(torch.arange(1000)).shape == (1000, 3)
    for i, (base, warm) in enumerate([(1e-3, 100), (3e-3, 200), (1e-2, 100)]):
        plain = warmup_cosine(base, warmup_steps=warm, total_steps=1000)
        assert_same_bits(sweep(torch.arange(1000))[:, i], plain(torch.arange(1000)))


def test_package_docstring_example_runs():
    import doctest

    import functrain.schedules as package

    result = doctest.testmod(package)
    assert result.attempted > 0 and result.failed == 0


class _RecordOps(torch.utils._python_dispatch.TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_tensor_steps_never_read_a_value_to_the_host(family):
    """No `.item()` / `float(t)` (aten._local_scalar_dense) when a step is a tensor."""
    builder, fixed, args = FAMILIES[family]
    examples = {
        "base": [0.1, 0.2, 0.3],
        "eta_max": [0.5, 1.0, 2.0],
        "div_factor": [2.0, 4.0, 25.0],
        "gamma": [0.9, 0.95, 0.8],
        "eta_min": [0.0, 1e-3, 1e-2],
        "eta_min_ratio": [0.0, 0.1, 0.2],
        "max_value": [1.0, 2.0, 3.0],
        "start_factor": [0.1, 0.2, 0.5],
        "end": [5, 9, 20],
        "T_max": [4, 7, 4],
        "steps": [3, 5, 3],
        "step_size": [2, 3, 2],
        "step_size_up": [2, 3, 4],
        "total_steps": [10, 20, 30],
        "warmup_steps": [2, 3, 2],
    }
    given_args = {k: v for k, v in examples.items() if k in args}
    schedule = builder(**fixed, **given_args)
    assert schedule.members == 3
    with _RecordOps() as rec:
        schedule(torch.tensor(17))
        schedule(torch.arange(50))
    assert rec.ops and not any("_local_scalar_dense" in op for op in rec.ops)
