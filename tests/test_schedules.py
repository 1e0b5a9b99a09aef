"""Schedules: the call contract, mmengine's published test vectors, the seed's configs, errors."""

from __future__ import annotations

import math
import pickle
import runpy
from pathlib import Path

import attrs
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from functrain.schedules import (
    INF,
    Constant,
    CosineAnnealing,
    CosineRestart,
    Cyclic,
    Exponential,
    Linear,
    Multiplicative,
    MultiStep,
    OneCycle,
    Poly,
    ReduceOnPlateau,
    Schedule,
    Step,
    as_schedule,
    constant_lr,
    cosine_annealing_lr,
    cosine_restart_lr,
    exponential_lr,
    from_mmengine,
    linear_lr,
    linear_warmup,
    mmengine_target,
    multistep_lr,
    onecycle_lr,
    piece_from_mmengine,
    poly_lr,
    schedule_list,
    step_lr,
    warmup_cosine,
)
from functrain.testing import assert_matches, magnitude, mmengine_values

# Importing mmengine (the reference) triggers torch.jit deprecation warnings.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

ROOT = Path(__file__).resolve().parents[1]
LR = 0.05  # the learning rate of mmengine's scheduler tests


def curve(schedule: Schedule, n: int) -> list[float]:
    return schedule(torch.arange(n)).tolist()


def assert_values(got: list[float], want: list[float], atol: float = 0.0, rel: float = 1e-12):
    assert len(got) == len(want)
    for t, (a, b) in enumerate(zip(got, want, strict=True)):
        assert abs(a - b) <= atol + rel * abs(b), f"step {t}: {a} != {b}"


# ----------------------------------------------------------------------------- call contract


def test_int_step_returns_python_float():
    s = cosine_annealing_lr(0.1, T_max=10, eta_min=0.001)
    value = s(3)
    assert type(value) is float
    assert value == pytest.approx(0.001 + 0.099 * (1 + math.cos(math.pi * 3 / 10)) / 2, rel=1e-12)


def test_scalar_tensor_returns_0d_float64_on_same_device():
    s = schedule_list([linear_warmup(steps=5), cosine_annealing_lr(begin=5, end=20)], base=0.1)
    out = s(torch.tensor(7))
    assert out.dim() == 0 and out.dtype == torch.float64 and out.device == torch.device("cpu")
    assert float(out) == pytest.approx(s(7), rel=1e-12)


def test_vector_of_steps_gives_the_whole_curve():
    s = multistep_lr(1.0, milestones=[2, 4], gamma=0.5)
    out = s(torch.arange(6))
    assert out.dtype == torch.float64 and out.shape == (6,)
    assert out.tolist() == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]


def test_int32_and_unsorted_step_tensors_are_accepted():
    s = exponential_lr(1.0, gamma=0.5)
    assert s(torch.tensor([3, 0, 1], dtype=torch.int32)).tolist() == [0.125, 1.0, 0.5]


@pytest.mark.parametrize(
    "step, error",
    [
        (-1, ValueError),
        (True, TypeError),
        (1.5, TypeError),
        ("3", TypeError),
        (torch.tensor(1.0), ValueError),
        (torch.zeros(2, 2, dtype=torch.int64), ValueError),
    ],
)
def test_bad_steps_are_rejected(step, error):
    with pytest.raises(error, match="step"):
        linear_lr(0.1, end=5)(step)


def test_schedules_are_immutable_hashable_and_picklable():
    s = linear_lr(0.01, start_factor=0.1, end=500)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        s.base = 0.02  # type: ignore[misc]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        s.pieces[0].end = 3  # type: ignore[misc]
    assert s == linear_lr(0.01, start_factor=0.1, end=500)
    assert hash(s) == hash(linear_lr(0.01, start_factor=0.1, end=500))
    s(10)  # compiles and caches the evaluator
    back = pickle.loads(pickle.dumps(s))
    assert back == s and back(123) == s(123)


def test_repr_is_readable_and_omits_defaults():
    assert repr(linear_lr(0.01, start_factor=0.1, end=500)) == (
        "Schedule(base=0.01, pieces=[Linear(start_factor=0.1, end=500)])"
    )
    s = schedule_list(
        [linear_warmup(steps=500), multistep_lr(milestones=[8, 11], by_epoch=True, end=12)],
        base=0.02,
        epoch_length=1000,
    )
    assert repr(s) == (
        "Schedule(base=0.02, pieces=[Linear(start_factor=0.001, end=500), "
        "MultiStep(milestones=(8, 11), end=12, by_epoch=True)], epoch_length=1000)"
    )


def test_unbound_schedule_needs_a_base():
    s = linear_lr(start_factor=0.5, end=4)
    with pytest.raises(ValueError, match="base"):
        s(0)
    assert s.with_base(2.0)(0) == 1.0


def test_as_schedule_wraps_floats():
    s = as_schedule(0.3)
    assert s(0) == 0.3 and s(10**6) == 0.3 and s.pieces == ()
    assert as_schedule(s) is s


def test_by_epoch_schedule_on_iterations_changes_only_at_epoch_boundaries():
    s = step_lr(1.0, step_size=1, gamma=0.5, by_epoch=True, epoch_length=4)
    assert curve(s, 12) == [1.0] * 4 + [0.5] * 4 + [0.25] * 4
    # Without an epoch length the same pieces count epochs.
    assert curve(step_lr(1.0, step_size=1, gamma=0.5, by_epoch=True), 3) == [1.0, 0.5, 0.25]


def test_mixing_units_needs_an_epoch_length():
    with pytest.raises(ValueError, match="epoch_length"):
        schedule_list([linear_warmup(steps=5), multistep_lr(milestones=[1], by_epoch=True)], 1.0)


def test_schedule_list_checks_the_items():
    with pytest.raises(ValueError, match="base"):
        schedule_list([linear_lr(0.5, end=3)], base=1.0)
    with pytest.raises(ValueError, match="epoch_length"):
        schedule_list([linear_lr(epoch_length=3), step_lr(step_size=1, epoch_length=4)], 1.0)
    with pytest.raises(ValueError, match="items\\[1\\]"):
        schedule_list([linear_lr(), 0.5], base=1.0)  # type: ignore[list-item]
    # A one-cycle item ignores its base, so its default base is accepted.
    s = schedule_list([onecycle_lr(eta_max=1.0, total_steps=10, end=10)], base=0.3)
    assert s(0) == pytest.approx(1.0 / 25)


def test_pieces_and_builders_agree():
    a = schedule_list([Linear(start_factor=0.1, end=5), Poly(eta_min=0.01, begin=5, end=9)], 1.0)
    b = schedule_list(
        [linear_lr(start_factor=0.1, end=5), poly_lr(eta_min=0.01, begin=5, end=9)], 1.0
    )
    assert a == b and curve(a, 12) == curve(b, 12)


def test_zero_d_path_is_a_handful_of_ops_and_never_reads_a_value_back():
    """The optimizer calls schedule(count) every step: few kernels, no .item()/float()."""

    class Recorder(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    lr = 0.01
    seed = schedule_list(
        [
            CosineAnnealing(T_max=80, eta_min=lr * 10, end=80),
            CosineAnnealing(T_max=120, eta_min=lr * 1e-4, begin=80, end=200),
        ],
        base=lr,
    )
    # Budgets are regression guards a little above today's counts (32, 20, 18): an
    # open-ended cosine carries mmengine's restart branch; the seed list is a table
    # lookup before step 80 and a closed-form cosine after it.
    cases = {
        "open-ended cosine": (cosine_annealing_lr(lr, T_max=100, eta_min=1e-5), 36),
        "warmup+multistep": (
            schedule_list(
                [linear_warmup(steps=50), multistep_lr(milestones=[8, 11], by_epoch=True)],
                base=lr,
                epoch_length=100,
            ),
            24,
        ),
        "seed two-segment cosine (table + tail)": (seed, 22),
    }
    for name, (schedule, budget) in cases.items():
        count = torch.tensor(150)
        schedule(count)  # warm-up: builds and caches the evaluator
        with Recorder() as rec:
            out = schedule(count)
        assert out.dim() == 0 and out.dtype == torch.float64
        assert len(rec.ops) <= budget, f"{name}: {len(rec.ops)} ops: {rec.ops}"
        syncs = [op for op in rec.ops if "_local_scalar_dense" in op or "item" in op]
        assert not syncs, f"{name}: reads a value back to the host: {syncs}"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_scalar_step_performs_no_host_sync():
    device = torch.device("cuda")
    schedules = [
        cosine_annealing_lr(0.1, T_max=100, eta_min=1e-4),
        multistep_lr(0.1, milestones=[3, 6, 6], by_epoch=True, epoch_length=10),
        cosine_restart_lr(0.1, periods=[5, 7], restart_weights=[1, 0.5], eta_min=0.0),
        schedule_list(
            [linear_warmup(steps=30), cosine_annealing_lr(eta_min=1e-3, begin=10, end=200)],
            base=0.1,
        ),
    ]
    count = torch.tensor(57, device=device)
    for schedule in schedules:
        schedule(count)  # first call per device uploads constants once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        outs = [schedule(count) for schedule in schedules]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for schedule, out in zip(schedules, outs, strict=True):
        assert out.device.type == "cuda" and out.dim() == 0 and out.dtype == torch.float64
        assert float(out) == pytest.approx(schedule(57), rel=1e-12)


# ----------------------------------------------------------------------------- mmengine vectors
# The numbers below are the targets of mmengine's tests/test_optim/test_scheduler/
# test_lr_scheduler.py (lr = 0.05), evaluated by epoch.


def test_mmengine_vector_step():
    s = step_lr(LR, step_size=3, gamma=0.1, by_epoch=True)
    assert_values(curve(s, 10), [0.05] * 3 + [0.005] * 3 + [0.0005] * 3 + [0.00005])


def test_mmengine_vector_multistep():
    s = multistep_lr(LR, milestones=[2, 5, 9], gamma=0.1)
    assert_values(curve(s, 10), [0.05] * 2 + [0.005] * 3 + [0.0005] * 4 + [0.00005])


def test_mmengine_vector_constant():
    assert_values(curve(constant_lr(LR, factor=0.5, end=5), 10), [0.025] * 4 + [0.05] * 6)


def test_mmengine_vector_linear_and_its_begin():
    interp = [0.5 + i * 0.5 / 4 for i in range(4)]
    assert_values(
        curve(linear_lr(LR, start_factor=0.5, end=5), 10), [x * LR for x in interp] + [LR] * 6
    )
    assert_values(
        curve(linear_lr(LR, start_factor=0.5, begin=1, end=6), 10),
        [LR] + [x * LR for x in interp] + [LR] * 5,
    )


def test_mmengine_vector_exponential():
    assert_values(curve(exponential_lr(LR, gamma=0.9), 10), [LR * 0.9**x for x in range(10)])


def test_mmengine_vector_cosine():
    eta = 1e-10
    want = [eta + (LR - eta) * (1 + math.cos(math.pi * x / 10)) / 2 for x in range(12)]
    assert_values(curve(cosine_annealing_lr(LR, T_max=10, eta_min=eta), 12), want)
    assert CosineAnnealing(begin=5, end=100).period == 95  # mmengine's default T_max


def test_mmengine_vector_poly():
    want = [0.001 + (LR - 0.001) * (1 - i / 4) ** 0.9 for i in range(4)] + [0.001] * 6
    assert_values(curve(poly_lr(LR, power=0.9, eta_min=0.001, end=5), 10), want)


def test_mmengine_vector_cosine_restart():
    want = [0.05, 0.0426776, 0.025, 0.00732233, 0.025, 0.022612712, 0.01636271]
    want += [0.0086372, 0.0023872, 0.0023872]
    s = cosine_restart_lr(LR, periods=[4, 5], restart_weights=[1, 0.5], eta_min=0)
    assert_values(curve(s, 10), want, atol=1e-7)  # mmengine prints these rounded


def test_mmengine_vector_onecycle():
    s = onecycle_lr(eta_max=25, final_div_factor=2, total_steps=10, anneal_strategy="linear")
    assert_values(curve(s, 10), [1.0, 13.0, 25.0, 21.5, 18.0, 14.5, 11.0, 7.5, 4.0, 0.5])
    s = onecycle_lr(
        eta_max=25,
        div_factor=25,
        total_steps=10,
        anneal_strategy="linear",
        pct_start=0.4,
        final_div_factor=4,
        three_phase=True,
    )
    assert_values(curve(s, 10), [1.0, 9.0, 17.0, 25.0, 17.0, 9.0, 1.0, 0.75, 0.5, 0.25])

    def cos(start, end, pct):
        return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)

    want = [1.0, 13.0, 25.0, *(cos(25, 0.5, i / 7.0) for i in range(1, 7)), 0.5]
    s = onecycle_lr(eta_max=25, final_div_factor=2, total_steps=10)
    assert_values(curve(s, 10), want)


def test_mmengine_vector_overlapping_linear_and_multistep():
    s = schedule_list(
        [linear_lr(start_factor=0.5, end=5), multistep_lr(milestones=[3, 6, 9], gamma=0.1)], LR
    )
    want = [0.025, 0.03125, 0.0375, 0.004375, 0.005, 0.005, 0.0005, 0.0005, 0.0005, 5e-5]
    assert_values(curve(s, 10), want)


def test_mmengine_vector_linear_then_multistep_without_overlap():
    s = schedule_list(
        [
            linear_lr(start_factor=0.5, end=5),
            multistep_lr(milestones=[3, 6], gamma=0.1, begin=5, end=12),
        ],
        LR,
    )
    want = [0.025, 0.03125, 0.0375, 0.04375] + [0.05] * 4 + [0.005] * 3 + [0.0005]
    assert_values(curve(s, 12), want)


@pytest.mark.parametrize("gap", [0, 5])
def test_mmengine_vector_exponential_then_cosine(gap):
    eta = 1e-10
    first = [LR * 0.9**x for x in range(5)]
    second = [eta + (first[-1] - eta) * (1 + math.cos(math.pi * x / 5)) / 2 for x in range(5)]
    s = schedule_list(
        [
            exponential_lr(gamma=0.9, end=5),
            cosine_annealing_lr(T_max=5, eta_min=eta, begin=5 + gap, end=10 + gap),
        ],
        LR,
    )
    assert_values(curve(s, 10 + gap), first + [first[-1]] * gap + second)


def test_mmengine_vectors_convert_iter_based():
    def conv(cfg, length):
        return from_mmengine(dict(cfg, convert_to_iter_based=True), base=LR, epoch_length=length)

    s = conv(dict(type="StepLR", gamma=0.1, step_size=2), 7)
    assert_values(curve(s, 28), [0.05] * 14 + [0.005] * 14)
    s = conv(dict(type="MultiStepLR", gamma=0.1, milestones=[2, 5, 9]), 7)
    assert_values(curve(s, 70), [0.05] * 14 + [0.005] * 21 + [0.0005] * 28 + [0.00005] * 7)
    s = conv(dict(type="ConstantLR", factor=0.5, end=5), 7)
    assert_values(curve(s, 70), [0.025] * 34 + [0.05] * 36)
    iters = 5 * 11 - 1
    s = conv(dict(type="LinearLR", start_factor=0.5, end=5), 11)
    assert_values(curve(s, 110), [(0.5 + i * 0.5 / iters) * LR for i in range(iters)] + [LR] * 56)
    s = conv(dict(type="ExponentialLR", gamma=0.9), 7)
    assert_values(curve(s, 70), [LR * 0.9**x for x in range(70)], rel=1e-11)
    eta = 1e-10
    s = conv(dict(type="CosineAnnealingLR", T_max=10, eta_min=eta), 11)
    want = [eta + (LR - eta) * (1 + math.cos(math.pi * x / 10 / 11)) / 2 for x in range(132)]
    assert_values(curve(s, 132), want, rel=1e-11)
    s = conv(dict(type="PolyLR", power=0.9, eta_min=0.001, end=5), 11)
    want = [0.001 + (LR - 0.001) * (1 - i / iters) ** 0.9 for i in range(iters)] + [0.001] * 56
    assert_values(curve(s, 110), want, rel=1e-11)


@pytest.mark.parametrize(
    "rule, threshold_rule, threshold, monitor, metrics",
    [
        ("less", "rel", 0.01, "loss", [10.0, 9.0, 8.0, 7.0, 6.0, 6.0, 6.0, 6.0, 6.0, 6.0]),
        ("less", "abs", 0.9, "loss", [10.0, 9.0, 8.0, 7.0, 6.0, 6.0, 6.0, 6.0, 6.0, 6.0]),
        ("greater", "rel", 0.01, "bbox_mAP", [1.0, 2.0, 3.0, 4.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0]),
        ("greater", "abs", 0.9, "bbox_mAP", [1.0, 2.0, 3.0, 4.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0]),
    ],
)
def test_mmengine_vector_reduce_on_plateau(rule, threshold_rule, threshold, monitor, metrics):
    plateau = ReduceOnPlateau(
        monitor=monitor,
        rule=rule,
        factor=0.1,
        patience=2,
        threshold=threshold,
        threshold_rule=threshold_rule,
        cooldown=1,
    )
    for min_value, target in ((0.0, 0.005), (0.01, 0.01)):
        plateau = attrs.evolve(plateau, min_value=min_value)
        state, values = plateau.init(LR), []
        for metric in metrics:
            values.append(state.value)
            state = plateau.update(state, {monitor: metric})
        assert_values(values, [0.05] * 8 + [target] * 2)


# ----------------------------------------------------------------------------- seed configs

SEED_LR = 0.02
SEED_CYCLIC = [
    dict(type="CosineAnnealingLR", T_max=8, eta_min=SEED_LR * 10, begin=0, end=8,
         by_epoch=True, convert_to_iter_based=True),
    dict(type="CosineAnnealingLR", T_max=12, eta_min=SEED_LR * 1e-4, begin=8, end=20,
         by_epoch=True, convert_to_iter_based=True),
    dict(type="CosineAnnealingMomentum", T_max=8, eta_min=0.85 / 0.95, begin=0, end=8,
         by_epoch=True, convert_to_iter_based=True),
    dict(type="CosineAnnealingMomentum", T_max=12, eta_min=1, begin=8, end=20,
         by_epoch=True, convert_to_iter_based=True),
]  # fmt: skip
SEED_POLY = [dict(type="PolyLR", power=0.9, eta_min=1e-4, begin=0, end=8, by_epoch=True)]
SEED_COSINE = [
    dict(type="CosineAnnealingLR", T_max=8, eta_min=SEED_LR * 1e-5, begin=0, end=8, by_epoch=True)
]
SEED_1X = [
    dict(type="LinearLR", start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type="MultiStepLR", begin=0, end=12, by_epoch=True, milestones=[8, 11], gamma=0.1),
]


def _against_mmengine(configs, *, base, epoch_length, epochs, param="lr", optimizer="sgd"):
    want = mmengine_values(
        configs, base=base, epoch_length=epoch_length, epochs=epochs, param=param,
        optimizer=optimizer,
    )  # fmt: skip
    s = from_mmengine(configs, base=base, epoch_length=epoch_length, param=param)
    got = curve(s, epoch_length * epochs)
    assert_matches(got, want, scale=magnitude(s, want), what=str(configs))
    ints = [s(t) for t in range(0, epoch_length * epochs, 7)]
    assert_matches(ints, want[::7], scale=magnitude(s, want), what=f"{configs} (int form)")
    return s, got


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_seed_cyclic_lr_and_momentum_match_mmengine(optimizer):
    length = 50
    s, lrs = _against_mmengine(SEED_CYCLIC, base=SEED_LR, epoch_length=length, epochs=21)
    # The second segment starts from the last value the first one wrote (step 8L-1),
    # which is short of eta_min = lr * 10.
    boundary = 8 * length
    assert lrs[boundary] == lrs[boundary - 1]
    assert lrs[boundary] < SEED_LR * 10 * (1 - 1e-6)
    assert max(lrs) == lrs[boundary]
    _against_mmengine(
        SEED_CYCLIC, base=0.95, epoch_length=length, epochs=21, param="momentum",
        optimizer=optimizer,
    )  # fmt: skip


@pytest.mark.parametrize("configs", [SEED_POLY, SEED_COSINE, SEED_1X], ids=["poly", "cos", "1x"])
def test_seed_decay_policies_match_mmengine(configs):
    _against_mmengine(configs, base=SEED_LR, epoch_length=60, epochs=13)


def test_example_script_writes_pngs(tmp_path):
    module = runpy.run_path(str(ROOT / "examples" / "plot_schedules.py"))
    written = module["main"](tmp_path)
    assert len(written) == 3
    for path in written:
        assert path.parent == tmp_path and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "build, name",
    [
        (lambda: Linear(begin=5, end=5), "end"),
        (lambda: Step(step_size=1, begin=3, end=1), "end"),
        (lambda: Linear(begin=-1, end=5), "begin"),
        (lambda: Linear(begin=1.5, end=5), "begin"),
        (lambda: CosineAnnealing(T_max=0), "T_max"),
        (lambda: CosineAnnealing(T_max=-3), "T_max"),
        (lambda: Constant(factor=1.5), "factor"),
        (lambda: Constant(factor=-0.1), "factor"),
        (lambda: Constant(factor=0.0), "factor"),
        (lambda: Linear(start_factor=0.0), "start_factor"),
        (lambda: Linear(start_factor=1.2), "start_factor"),
        (lambda: Linear(end_factor=-0.1), "end_factor"),
        (lambda: MultiStep(milestones=(3, 2)), "milestones"),
        (lambda: MultiStep(milestones=(1, -2)), "milestones"),
        (lambda: CosineAnnealing(eta_min=0.1, eta_min_ratio=0.1), "eta_min"),
        (lambda: CosineRestart(periods=(3,), eta_min=0.0, eta_min_ratio=0.1), "eta_min"),
        (lambda: CosineRestart(periods=(3,)), "eta_min"),
        (lambda: CosineRestart(periods=(3, 4), restart_weights=(1.0,), eta_min=0), "restart_weights"),
        (lambda: CosineRestart(periods=(0,), eta_min=0), "periods"),
        (lambda: Step(step_size=0), "step_size"),
        (lambda: Step(), "step_size"),
        (lambda: Exponential(gamma=-0.5), "gamma"),
        (lambda: Poly(power=-1.0), "power"),
        (lambda: Poly(eta_min=math.nan), "eta_min"),
        (lambda: OneCycle(eta_max=1.0, total_steps=10, pct_start=1.5), "pct_start"),
        (lambda: OneCycle(eta_max=1.0, total_steps=10, pct_start=0.1), "pct_start"),
        (lambda: OneCycle(eta_max=1.0, total_steps=10, anneal_strategy="exp"), "anneal_strategy"),
        (lambda: OneCycle(eta_max=1.0, total_steps=0), "total_steps"),
        (lambda: Cyclic(max_value=1.0, mode="sawtooth"), "mode"),
        (lambda: Multiplicative(fn=lambda k: 0.9), "end"),
        (lambda: Schedule((), base=math.inf), "base"),
        (lambda: Schedule((), base=1.0, epoch_length=0), "epoch_length"),
        (lambda: Schedule((OneCycle(eta_max=1.0, end=5), OneCycle(eta_max=1.0, end=5)), base=1.0),
         "OneCycle"),
        (lambda: warmup_cosine(1.0, warmup_steps=10, total_steps=10), "total_steps"),
        (lambda: ReduceOnPlateau(factor=1.0), "factor"),
        (lambda: ReduceOnPlateau(rule="lower"), "rule"),
        (lambda: ReduceOnPlateau(threshold_rule="relative"), "threshold_rule"),
        (lambda: ReduceOnPlateau(threshold=-1.0), "threshold"),
        (lambda: ReduceOnPlateau(begin=10, end=5), "end"),
    ],
)  # fmt: skip
def test_bad_arguments_raise_value_error_naming_them(build, name):
    with pytest.raises(ValueError, match=name):
        build()


def test_start_factor_zero_is_rejected_where_mmengine_divides_by_zero():
    from mmengine.optim.scheduler import LinearLR

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = LinearLR(opt, start_factor=0, end=10, by_epoch=False)
    opt.step()
    with pytest.raises(ZeroDivisionError):
        sched.step()
    with pytest.raises(ValueError, match="start_factor.*ZeroDivisionError"):
        linear_lr(0.1, start_factor=0, end=10)
    with pytest.raises(ValueError, match=r"param_scheduler\[0\].*start_factor"):
        from_mmengine([dict(type="LinearLR", start_factor=0, end=10)], base=0.1)


def test_open_ended_overlapping_affine_pieces_are_rejected_with_advice():
    s = schedule_list(
        [exponential_lr(gamma=0.9), cosine_annealing_lr(T_max=10, eta_min=0.01)], base=0.1
    )
    with pytest.raises(ValueError, match="finite `end`"):
        s(0)


# ----------------------------------------------------------------------------- configs


@pytest.mark.parametrize(
    "cfg, message",
    [
        (dict(type="CosineAnealingLR", T_max=8), "did you mean 'CosineAnnealingLR'"),
        (dict(type="MultiStepLR", milestone=[8, 11]), "did you mean 'milestones'"),
        (dict(type="CosineAnnealingLR", Tmax=8), "did you mean 'T_max'"),
        (dict(type="PolyLR", eta_minimum=0.0), "'eta_min'"),
        (dict(T_max=8), "missing key 'type'"),
        (dict(type="StepLR", step_size=1, convert_to_iter_based=True), "epoch_length"),
        (dict(type="StepLR", step_size=1, by_epoch=False, convert_to_iter_based=True), "by_epoch"),
        (dict(type="StepLR", step_size=1, last_step=3), "last_step"),
        (dict(type="ReduceOnPlateauLR"), "ReduceOnPlateau.from_mmengine"),
        (dict(type="LinearParamScheduler", start_factor=0.5), "param_name"),
    ],
)
def test_config_errors_name_the_key_and_suggest(cfg, message):
    with pytest.raises(ValueError, match=message):
        from_mmengine([cfg], base=0.1)


def test_config_lists_with_several_hyperparameters_need_param():
    with pytest.raises(ValueError, match="param"):
        from_mmengine(SEED_CYCLIC, base=0.1, epoch_length=10)
    assert mmengine_target(SEED_CYCLIC[2]) == "momentum"
    lr = from_mmengine(SEED_CYCLIC, base=0.1, epoch_length=10, param="lr")
    assert len(lr.pieces) == 2 and lr.epoch_length == 10
    wd = from_mmengine(SEED_CYCLIC, base=0.1, epoch_length=10, param="weight_decay")
    assert wd.pieces == () and wd(100) == 0.1


def test_config_generic_param_scheduler_and_runner_default_end():
    cfg = dict(type="CosineAnnealingParamScheduler", param_name="weight_decay", T_max=4)
    assert mmengine_target(cfg) == "weight_decay"
    s = from_mmengine(cfg, base=1e-4, param="weight_decay", max_epochs=4)
    assert s.pieces == (CosineAnnealing(T_max=4, end=4, by_epoch=True),)
    iters = piece_from_mmengine(dict(type="LinearLR", by_epoch=False), max_iters=300)
    assert iters.end == 300


def test_config_skips_plateau_on_request():
    cfgs = [dict(type="LinearLR", start_factor=0.1, by_epoch=False, end=10),
            dict(type="ReduceOnPlateauLR", monitor="loss", patience=3)]  # fmt: skip
    s = from_mmengine(cfgs, base=0.1, ignore_plateau=True)
    assert len(s.pieces) == 1
    plateau = ReduceOnPlateau.from_mmengine(cfgs[1])
    assert plateau.patience == 3 and plateau.monitor == "loss"
    with pytest.raises(ValueError, match="did you mean 'patience'"):
        ReduceOnPlateau.from_mmengine(dict(type="ReduceOnPlateauLR", patiance=3))


def test_convert_to_iter_based_truncates_like_mmengine():
    piece = piece_from_mmengine(
        dict(type="MultiStepLR", milestones=[1, 2], begin=0.5, end=2.5, convert_to_iter_based=True),
        epoch_length=3,
    )
    assert piece == MultiStep(milestones=(3, 6), begin=1, end=7)


# ----------------------------------------------------------------------------- plateau


def test_plateau_is_functional_and_honours_the_epoch_window():
    plateau = ReduceOnPlateau(patience=0, factor=0.5, begin=2, end=4)
    state = plateau.init(1.0)
    first = plateau.update(state, {"loss": 1.0})
    assert first is state  # before `begin` finished epochs nothing is counted
    for _ in range(2):
        state = plateau.epoch_end(state)
    start = state
    state = plateau.update(state, torch.tensor(1.0))
    state = plateau.update(state, 1.0)
    assert start.value == 1.0 and state.value == 0.5 and state.last_step == 1
    for _ in range(2):
        state = plateau.epoch_end(state)
    assert plateau.update(state, 0.1) is state  # epochs >= end: ignored
    with pytest.raises(KeyError, match="monitor"):
        plateau.update(start, {"acc": 1.0})


def test_plateau_min_value_and_eps():
    plateau = ReduceOnPlateau(patience=0, factor=0.1, min_value=0.3, eps=0.05)
    state = plateau.init(1.0)
    values = []
    for _ in range(4):
        state = plateau.update(state, 5.0)
        values.append(state.value)
    # 1.0 -> max(0.1, 0.3) = 0.3; then 0.3 - max(0.03, 0.3) = 0 < eps: unchanged.
    assert values == [1.0, 0.3, 0.3, 0.3]


def test_onecycle_holds_its_last_value_where_mmengine_raises():
    from mmengine.optim.scheduler import OneCycleLR

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = OneCycleLR(opt, eta_max=1.0, total_steps=5, by_epoch=False)
    for _ in range(5):
        opt.step()
        sched.step()
    opt.step()
    with pytest.raises(ValueError, match="total steps"):
        sched.step()
    s = onecycle_lr(eta_max=1.0, total_steps=5)
    assert s(4) == pytest.approx(1.0 / 25 / 1e4) and s(5) == s(4) == s(10**6)


def test_end_defaults_to_mmengine_inf():
    assert Linear().end == INF == int(1e9)
    s = linear_lr(1.0, start_factor=0.5)
    assert s(10**6) == pytest.approx(0.5 + 0.5 * 10**6 / (INF - 1), rel=1e-12)
