"""Conformance: functrain schedules against mmengine's (and torch's) real scheduler classes.

Every case drives the real scheduler objects with a dummy optimizer, stepping them as
mmengine's ParamSchedulerHook does, and records the value in force at each iteration.
The functrain schedule must give the same numbers within 1e-9 relative in float64
(plus the per-step round-off allowance of ``functrain.testing.assert_matches`` for
values computed by cancellation below ``eta_min``), in its vector and int forms.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from functrain.schedules import ReduceOnPlateau, cyclic_lr, lambda_lr, multiplicative_lr
from functrain.testing import (
    MMENGINE_KINDS,
    MMEngineCase,
    PowerFn,
    assert_matches,
    magnitude,
    mmengine_cases,
    mmengine_values,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _check(case: MMEngineCase, optimizer: str = "sgd") -> None:
    want = mmengine_values(
        list(case.configs),
        base=case.base,
        epoch_length=case.epoch_length,
        epochs=case.epochs,
        param=case.param,
        optimizer=optimizer,
    )
    schedule = case.schedule()
    n = case.epoch_length * case.epochs
    scale = magnitude(schedule, want)
    assert_matches(schedule(torch.arange(n)).tolist(), want, scale=scale, what=repr(case))
    assert_matches([schedule(t) for t in range(n)], want, scale=scale, what=f"{case!r} (int)")


@pytest.mark.parametrize("family", MMENGINE_KINDS)
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_each_scheduler_alone_matches_mmengine(family, data):
    """Every class, with every option drawn: by_epoch, convert_to_iter_based, begin > 0."""
    _check(data.draw(mmengine_cases([family], max_len=1)))


@settings(max_examples=100, deadline=None)
@given(mmengine_cases(max_len=3, max_epochs=8))
def test_scheduler_lists_match_mmengine(case):
    """Overlapping, disjoint and gapped windows, mixing by-epoch and by-iteration items."""
    _check(case)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_momentum_schedulers_match_mmengine(optimizer, data):
    """mmengine's *Momentum classes drive SGD's momentum or Adam's betas[0]."""
    _check(data.draw(mmengine_cases(param="momentum", max_len=2)), optimizer)


@settings(max_examples=20, deadline=None)
@given(
    family=st.sampled_from(["CosineAnnealing", "Linear", "Poly", "MultiStep"]),
    base=st.floats(1e-5, 1e-2),
    t_max=st.integers(1, 6),
)
def test_generic_param_scheduler_matches_mmengine(family, base, t_max):
    """*ParamScheduler with param_name, here for weight decay."""
    extra = {
        "CosineAnnealing": dict(T_max=t_max, eta_min=base / 10),
        "Linear": dict(start_factor=1 / (t_max + 1), end=t_max + 1),
        "Poly": dict(power=2.0, end=t_max + 1),
        "MultiStep": dict(milestones=[1, t_max]),
    }[family]
    cfg = dict(type=f"{family}ParamScheduler", param_name="weight_decay", **extra)
    want = []
    weight = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([weight], lr=0.1, weight_decay=base)
    from mmengine.registry import PARAM_SCHEDULERS

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sched = PARAM_SCHEDULERS.build(cfg, default_args=dict(optimizer=opt))
        for _ in range(10):
            want.append(opt.param_groups[0]["weight_decay"])
            opt.step()
            sched.step()
    case = MMEngineCase((cfg,), base, 1, 10, param="weight_decay")
    schedule = case.schedule()
    assert_matches(schedule(torch.arange(10)).tolist(), want, scale=magnitude(schedule, want))


def _torch_values(make, base: float, n: int) -> list[float]:
    weight = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([weight], lr=base, momentum=0.9)
    sched = make(opt)
    out = []
    for _ in range(n):
        out.append(float(opt.param_groups[0]["lr"]))
        opt.step()
        sched.step()
    return out


@settings(max_examples=30, deadline=None)
@given(
    base=st.floats(1e-4, 0.1),
    top=st.floats(0.1, 2.0),
    up=st.integers(1, 8),
    down=st.one_of(st.none(), st.integers(1, 8)),
    mode=st.sampled_from(["triangular", "triangular2", "exp_range"]),
    gamma=st.floats(0.8, 1.0),
)
def test_cyclic_matches_torch(base, top, up, down, mode, gamma):
    from torch.optim.lr_scheduler import CyclicLR

    def make(opt):
        return CyclicLR(
            opt, base_lr=base, max_lr=top, step_size_up=up, step_size_down=down, mode=mode,
            gamma=gamma, cycle_momentum=False,
        )  # fmt: skip

    want = _torch_values(make, base, 40)
    s = cyclic_lr(base, max_value=top, step_size_up=up, step_size_down=down, mode=mode, gamma=gamma)
    assert_matches(s(torch.arange(40)).tolist(), want, scale=top)
    assert_matches([s(t) for t in range(40)], want, scale=top)


@settings(max_examples=20, deadline=None)
@given(base=st.floats(1e-4, 1.0), gamma=st.floats(0.8, 1.0), n=st.integers(1, 30))
def test_lambda_and_multiplicative_match_torch(base, gamma, n):
    from torch.optim.lr_scheduler import LambdaLR, MultiplicativeLR

    fn = PowerFn(gamma)
    want = _torch_values(lambda opt: LambdaLR(opt, fn), base, n)
    assert_matches(lambda_lr(base, fn=fn)(torch.arange(n)).tolist(), want, scale=base)
    want = _torch_values(lambda opt: MultiplicativeLR(opt, fn), base, n)
    got = multiplicative_lr(base, fn=fn, end=n)(torch.arange(n)).tolist()
    assert_matches(got, want, scale=base)


@settings(max_examples=60, deadline=None)
@given(
    rule=st.sampled_from(["less", "greater"]),
    threshold_rule=st.sampled_from(["rel", "abs"]),
    threshold=st.floats(0.0, 0.2),
    factor=st.floats(0.0, 0.9),
    patience=st.integers(0, 3),
    cooldown=st.integers(0, 3),
    min_value=st.floats(0.0, 0.01),
    eps=st.sampled_from([0.0, 1e-8, 1e-3]),
    begin=st.integers(0, 3),
    span=st.one_of(st.none(), st.integers(1, 10)),
    val_interval=st.integers(1, 3),
    metrics=st.lists(st.floats(-10.0, 10.0), min_size=1, max_size=25),
)
def test_reduce_on_plateau_matches_mmengine(
    rule, threshold_rule, threshold, factor, patience, cooldown, min_value, eps, begin, span,
    val_interval, metrics,
):  # fmt: skip
    """The loop calls epoch_end after each training epoch and update after each validation."""
    from mmengine.optim.scheduler import ReduceOnPlateauLR

    kwargs = dict(
        monitor="acc", rule=rule, factor=factor, patience=patience, threshold=threshold,
        threshold_rule=threshold_rule, cooldown=cooldown, min_value=min_value, eps=eps,
        begin=begin,
    )  # fmt: skip
    if span is not None:
        kwargs["end"] = begin + span
    weight = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([weight], lr=0.1)
    reference = ReduceOnPlateauLR(opt, **kwargs)
    plateau = ReduceOnPlateau(**kwargs)
    state = plateau.init(0.1)
    for epoch, metric in enumerate(metrics):
        opt.step()
        reference.step()  # ParamSchedulerHook.after_train_epoch
        state = plateau.epoch_end(state)
        if (epoch + 1) % val_interval == 0:
            reference.step({"acc": metric})  # ParamSchedulerHook.after_val_epoch
            state = plateau.update(state, {"acc": metric})
        assert state.value == opt.param_groups[0]["lr"], f"epoch {epoch}"
        assert state.last_step == reference.last_step
