"""Property-based testing helpers for schedules (needs ``hypothesis``).

Strategies draw valid schedules, schedule lists and mmengine ``param_scheduler``
configs; checkers assert the properties every schedule must have and can be called on
your own schedules::

    from hypothesis import given
    from functrain import testing

    @given(testing.schedule_lists())
    def test_my_lists(schedule):
        testing.check_schedule(schedule)

:func:`mmengine_values` replays a config with mmengine's real schedulers (imported
lazily; ``pip install mmengine``) to compare numbers.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import attrs
import torch

try:
    from hypothesis import strategies as st
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError("functrain.testing needs hypothesis: pip install hypothesis") from err

from functrain.schedules import (
    INF,
    Constant,
    CosineAnnealing,
    CosineRestart,
    Cyclic,
    Exponential,
    Lambda,
    Linear,
    Multiplicative,
    MultiStep,
    OneCycle,
    Piece,
    Poly,
    Schedule,
    Step,
    from_mmengine,
)

__all__ = [
    "KINDS",
    "MMENGINE_KINDS",
    "MMEngineCase",
    "PowerFn",
    "bases",
    "check_bounds",
    "check_constant_outside_windows",
    "check_continuity",
    "check_finite",
    "check_forms_agree",
    "check_matches_recursion",
    "check_monotone",
    "check_schedule",
    "assert_matches",
    "magnitude",
    "mmengine_cases",
    "mmengine_values",
    "pieces",
    "schedule_lists",
    "schedules",
]

#: Piece kinds the strategies can draw, by class name.
KINDS: tuple[str, ...] = (
    "Constant",
    "Linear",
    "Step",
    "MultiStep",
    "Exponential",
    "CosineAnnealing",
    "Poly",
    "OneCycle",
    "CosineRestart",
    "Cyclic",
    "Lambda",
    "Multiplicative",
)

#: mmengine scheduler families (``<family>LR`` / ``<family>Momentum``) drawn by mmengine_cases.
MMENGINE_KINDS: tuple[str, ...] = (
    "Constant",
    "Linear",
    "Step",
    "MultiStep",
    "Exponential",
    "CosineAnnealing",
    "Poly",
    "OneCycle",
    "CosineRestart",
)

_REL = 1e-12  # int, 0-d and 1-d forms may round differently (vectorised vs scalar kernels)


@attrs.frozen
class PowerFn:
    """``k -> gamma ** k``: a picklable, printable function for Lambda/Multiplicative pieces.

    Works on Python ints and elementwise on tensors.

    Args:
        gamma: the base of the power.

    Example:
        >>> PowerFn(0.5)(3)
        0.125
    """

    gamma: float

    def __call__(self, k: Any) -> Any:
        return self.gamma**k


# ----------------------------------------------------------------------------- strategies


def bases(lo: float = 1e-4, hi: float = 10.0) -> st.SearchStrategy[float]:
    """Positive base values spread over several orders of magnitude.

    Args:
        lo: smallest value.
        hi: largest value.

    Example:
        >>> from hypothesis import given
        >>> @given(bases())
        ... def test(b): assert b > 0
    """
    return st.floats(math.log(lo), math.log(hi)).map(math.exp)


def _unit(lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False)


@st.composite
def _window(draw: Any, max_step: int, open_end: bool) -> tuple[int, int]:
    begin = draw(st.integers(0, max(max_step // 2, 0)))
    if open_end and draw(st.booleans()):
        return begin, INF
    return begin, begin + draw(st.integers(1, max(max_step, 1)))


@st.composite
def _piece(draw: Any, kind: str, max_step: int, by_epoch: bool, open_end: bool) -> Piece:
    finite = kind in ("Multiplicative", "OneCycle")
    begin, end = draw(_window(max_step, open_end and not finite))
    common = dict(begin=begin, end=end, by_epoch=by_epoch)
    if kind == "Constant":
        return Constant(factor=draw(_unit(0.05, 1.0)), **common)
    if kind == "Linear":
        return Linear(
            start_factor=draw(_unit(0.01, 1.0)), end_factor=draw(_unit(0.0, 1.0)), **common
        )
    if kind == "Step":
        return Step(step_size=draw(st.integers(1, 10)), gamma=draw(_unit(0.1, 1.5)), **common)
    if kind == "MultiStep":
        ms = sorted(draw(st.lists(st.integers(0, max_step), max_size=4)))
        return MultiStep(milestones=tuple(ms), gamma=draw(_unit(0.1, 1.5)), **common)
    if kind == "Exponential":
        return Exponential(gamma=draw(_unit(0.8, 1.1)), **common)
    if kind == "CosineAnnealing":
        t_max = draw(st.one_of(st.none(), st.integers(1, max(max_step, 1))))
        if t_max is None and end == INF:
            t_max = draw(st.integers(1, max(max_step, 1)))
        eta = draw(st.sampled_from(["default", "abs", "ratio"]))
        if eta == "abs":
            return CosineAnnealing(T_max=t_max, eta_min=draw(_unit(0.0, 2.0)), **common)
        if eta == "ratio":
            return CosineAnnealing(T_max=t_max, eta_min_ratio=draw(_unit(0.0, 10.0)), **common)
        return CosineAnnealing(T_max=t_max, **common)
    if kind == "Poly":
        return Poly(eta_min=draw(_unit(0.0, 1.0)), power=draw(_unit(0.1, 3.0)), **common)
    if kind == "OneCycle":
        span = end - begin
        total = draw(st.one_of(st.none(), st.integers(span, span + max_step)))
        cycle = span if total is None else total
        pct = draw(_unit(0.05, 0.95).filter(lambda p: float(p * cycle) - 1 != 0))
        return OneCycle(
            eta_max=draw(_unit(0.01, 1.0)),
            total_steps=total,
            pct_start=pct,
            anneal_strategy=draw(st.sampled_from(["cos", "linear"])),
            div_factor=draw(_unit(2.0, 50.0)),
            final_div_factor=draw(_unit(1.5, 1e4)),
            three_phase=draw(st.booleans()),
            **common,
        )
    if kind == "CosineRestart":
        periods = draw(st.lists(st.integers(1, 15), min_size=1, max_size=3))
        weights = draw(st.lists(_unit(0.1, 1.0), min_size=len(periods), max_size=len(periods)))
        if draw(st.booleans()):
            eta: dict[str, float] = {"eta_min": draw(_unit(0.0, 0.5))}
        else:
            eta = {"eta_min_ratio": draw(_unit(0.0, 0.5))}
        return CosineRestart(
            periods=tuple(periods), restart_weights=tuple(weights), **eta, **common
        )
    if kind == "Cyclic":
        down = draw(st.one_of(st.none(), st.integers(1, 10)))
        return Cyclic(
            max_value=draw(_unit(0.01, 2.0)),
            step_size_up=draw(st.integers(1, 10)),
            step_size_down=down,
            mode=draw(st.sampled_from(["triangular", "triangular2", "exp_range"])),
            gamma=draw(_unit(0.9, 1.0)),
            **common,
        )
    if kind == "Lambda":
        return Lambda(fn=PowerFn(draw(_unit(0.8, 1.0))), **common)
    if kind == "Multiplicative":
        return Multiplicative(fn=PowerFn(draw(_unit(0.9, 1.0))), **common)
    raise ValueError(f"pieces: unknown kind {kind!r}; choose from {KINDS}")


def pieces(
    kinds: Sequence[str] | None = None,
    *,
    max_step: int = 40,
    by_epoch: bool = False,
    open_end: bool = True,
) -> st.SearchStrategy[Piece]:
    """Valid pieces of the given kinds with small windows.

    Args:
        kinds: class names from :data:`KINDS` (default: all).
        max_step: windows start before ``max_step // 2`` and last at most ``max_step``.
        by_epoch: the pieces' unit.
        open_end: also draw ``end=INF`` where the kind allows it.

    Example:
        >>> from hypothesis import given
        >>> @given(pieces(["Linear", "Poly"]))
        ... def test(p): assert p.end > p.begin
    """
    chosen = tuple(KINDS if kinds is None else kinds)
    for kind in chosen:
        if kind not in KINDS:
            raise ValueError(f"pieces: unknown kind {kind!r}; choose from {KINDS}")
    return st.sampled_from(chosen).flatmap(lambda k: _piece(k, max_step, by_epoch, open_end))


def _compiles(schedule: Schedule) -> bool:
    try:
        schedule._program  # noqa: B018 - building the program validates the list
    except ValueError:
        return False
    return True


def schedules(
    kinds: Sequence[str] | None = None, *, max_step: int = 40
) -> st.SearchStrategy[Schedule]:
    """Single-piece schedules bound to a base value, counted in iterations or epochs.

    About a third are by-epoch pieces evaluated on an iteration counter (with an
    ``epoch_length``), so that epoch-boundary behaviour is exercised too.

    Args:
        kinds: piece kinds (default: all of :data:`KINDS`).
        max_step: window size bound, in the piece's unit.

    Example:
        >>> from hypothesis import given
        >>> @given(schedules())
        ... def test(s): check_finite(s)
    """

    @st.composite
    def build(draw: Any) -> Schedule:
        by_epoch = draw(st.booleans())
        length = draw(st.one_of(st.none(), st.integers(1, 5))) if by_epoch else None
        steps = max_step // 4 if length else max_step
        piece = draw(pieces(kinds, max_step=max(steps, 2), by_epoch=by_epoch))
        return Schedule((piece,), base=draw(bases()), epoch_length=length)

    return build().filter(_compiles)


def schedule_lists(
    kinds: Sequence[str] | None = None, *, max_len: int = 4, max_step: int = 40
) -> st.SearchStrategy[Schedule]:
    """Lists of 1 to ``max_len`` pieces with overlapping, disjoint and gapped windows.

    Some lists mix by-epoch and by-iteration pieces (with an ``epoch_length``); at most
    one OneCycle piece is drawn (mmengine does not support more). Lists that the
    schedule engine rejects (overlapping open-ended affine pieces) are filtered out.

    Args:
        kinds: piece kinds (default: all of :data:`KINDS`).
        max_len: most pieces in a list.
        max_step: window size bound, in iterations.

    Example:
        >>> from hypothesis import given
        >>> @given(schedule_lists())
        ... def test(s): check_constant_outside_windows(s)
    """

    @st.composite
    def build(draw: Any) -> Schedule:
        length = draw(st.one_of(st.none(), st.integers(1, 6)))
        n = draw(st.integers(1, max_len))
        out: list[Piece] = []
        for _ in range(n):
            by_epoch = length is not None and draw(st.booleans())
            steps = max(max_step // length, 2) if by_epoch and length else max_step
            out.append(draw(pieces(kinds, max_step=steps, by_epoch=by_epoch)))
        if sum(isinstance(p, OneCycle) for p in out) > 1:
            first = next(i for i, p in enumerate(out) if isinstance(p, OneCycle))
            out = [p for i, p in enumerate(out) if i == first or not isinstance(p, OneCycle)]
        return Schedule(tuple(out), base=draw(bases()), epoch_length=length)

    return build().filter(_compiles)


@attrs.frozen
class MMEngineCase:
    """An mmengine ``param_scheduler`` list with the run it is evaluated on.

    Attributes:
        configs: the scheduler dicts.
        base: initial value of the hyperparameter.
        epoch_length: iterations per epoch.
        epochs: epochs to run.
        param: ``'lr'`` or ``'momentum'``.

    Example:
        >>> case = MMEngineCase((dict(type='StepLR', step_size=1, gamma=0.5),), 1.0, 2, 2)
        >>> case.schedule()(torch.arange(4)).tolist()
        [1.0, 1.0, 0.5, 0.5]
    """

    configs: tuple[dict[str, Any], ...]
    base: float
    epoch_length: int
    epochs: int
    param: str = "lr"

    def schedule(self) -> Schedule:
        """The functrain schedule of this case (:func:`from_mmengine`, iteration counter)."""
        return from_mmengine(
            list(self.configs), base=self.base, epoch_length=self.epoch_length, param=self.param
        )


@st.composite
def _mm_config(draw: Any, family: str, suffix: str, length: int, epochs: int) -> dict[str, Any]:
    by_epoch = draw(st.booleans())
    convert = by_epoch and draw(st.booleans())
    unit = 1 if by_epoch else length
    horizon = epochs * unit
    cfg: dict[str, Any] = {"type": family + suffix, "by_epoch": by_epoch}
    if convert:
        cfg["convert_to_iter_based"] = True
    begin = draw(st.integers(0, max(horizon - 1, 0)))
    if begin:
        cfg["begin"] = begin
    open_end = family != "OneCycle" and draw(st.booleans())
    end = INF if open_end else begin + draw(st.integers(1, horizon + unit))
    if end != INF:
        cfg["end"] = end
    span = end - begin
    if family == "Constant":
        cfg["factor"] = draw(_unit(0.05, 1.0))
    elif family == "Linear":
        cfg["start_factor"] = draw(_unit(0.01, 1.0))
        cfg["end_factor"] = draw(_unit(0.0, 1.0))
    elif family == "Step":
        cfg["step_size"] = draw(st.integers(1, max(horizon // 2, 1)))
        cfg["gamma"] = draw(_unit(0.1, 1.2))
    elif family == "MultiStep":
        cfg["milestones"] = sorted(draw(st.lists(st.integers(0, horizon), max_size=4)))
        cfg["gamma"] = draw(_unit(0.1, 1.2))
    elif family == "Exponential":
        cfg["gamma"] = draw(_unit(0.8, 1.05))
    elif family == "CosineAnnealing":
        if open_end or draw(st.booleans()):
            cfg["T_max"] = draw(st.integers(1, max(horizon, 1)))
        eta = draw(st.sampled_from(["default", "abs", "ratio"]))
        if eta == "abs":
            cfg["eta_min"] = draw(_unit(0.0, 2.0))
        elif eta == "ratio":
            cfg["eta_min_ratio"] = draw(_unit(0.0, 5.0))
    elif family == "Poly":
        cfg["eta_min"] = draw(_unit(0.0, 0.5))
        cfg["power"] = draw(_unit(0.1, 3.0))
    elif family == "OneCycle":
        total = draw(st.one_of(st.none(), st.integers(span, span + horizon)))
        if total is not None:
            cfg["total_steps"] = total
        cycle = (span if total is None else total) * (length if convert else 1)
        cfg["pct_start"] = draw(_unit(0.05, 0.95).filter(lambda p: float(p * cycle) - 1 != 0))
        cfg["eta_max"] = draw(_unit(0.01, 1.0))
        cfg["anneal_strategy"] = draw(st.sampled_from(["cos", "linear"]))
        cfg["div_factor"] = draw(_unit(2.0, 50.0))
        cfg["final_div_factor"] = draw(_unit(1.5, 1e4))
        cfg["three_phase"] = draw(st.booleans())
    elif family == "CosineRestart":
        periods = draw(st.lists(st.integers(1, max(horizon // 2, 1)), min_size=1, max_size=3))
        cfg["periods"] = periods
        cfg["restart_weights"] = draw(
            st.lists(_unit(0.1, 1.0), min_size=len(periods), max_size=len(periods))
        )
        if draw(st.booleans()):
            cfg["eta_min"] = draw(_unit(0.0, 0.5))
        else:
            cfg["eta_min_ratio"] = draw(_unit(0.0, 0.5))
    return cfg


def mmengine_cases(
    kinds: Sequence[str] | None = None,
    *,
    param: str = "lr",
    max_len: int = 3,
    max_epochs: int = 6,
    max_epoch_length: int = 6,
) -> st.SearchStrategy[MMEngineCase]:
    """mmengine ``param_scheduler`` lists with a run length, for conformance tests.

    Draws every option combination: ``by_epoch`` on or off, ``convert_to_iter_based``,
    ``begin > 0``, open and closed ends, overlapping and disjoint windows, and every
    scheduler's own arguments (``eta_min`` or ``eta_min_ratio``, repeated milestones,
    three-phase one-cycle, ...). Lists that functrain rejects are filtered out.

    Args:
        kinds: scheduler families from :data:`MMENGINE_KINDS` (default: all).
        param: ``'lr'`` (``*LR`` types) or ``'momentum'`` (``*Momentum`` types).
        max_len: most schedulers per list.
        max_epochs: most epochs in the run.
        max_epoch_length: most iterations per epoch.

    Example:
        >>> from hypothesis import given
        >>> @given(mmengine_cases(["Poly"]))
        ... def test(case): assert case.configs[0]["type"] == "PolyLR"
    """
    chosen = tuple(MMENGINE_KINDS if kinds is None else kinds)
    if param == "momentum":
        chosen = tuple(k for k in chosen if k != "OneCycle")  # mmengine has no OneCycleMomentum
    suffix = {"lr": "LR", "momentum": "Momentum"}[param]

    @st.composite
    def build(draw: Any) -> MMEngineCase:
        length = draw(st.integers(1, max_epoch_length))
        epochs = draw(st.integers(1, max_epochs))
        n = draw(st.integers(1, max_len))
        families = draw(st.lists(st.sampled_from(chosen), min_size=n, max_size=n))
        if families.count("OneCycle") > 1:
            families = [
                f
                for i, f in enumerate(families)
                if f != "OneCycle" or i == families.index("OneCycle")
            ]
        configs = tuple(draw(_mm_config(f, suffix, length, epochs)) for f in families)
        lo, hi = (0.5, 0.99) if param == "momentum" else (1e-4, 1.0)
        base = draw(bases(lo, hi))
        return MMEngineCase(configs, base, length, epochs, param)

    def ok(case: MMEngineCase) -> bool:
        try:
            return _compiles(case.schedule())
        except ValueError:
            return False

    return build().filter(ok)


# ----------------------------------------------------------------------------- reference


def mmengine_values(
    configs: Sequence[dict[str, Any]],
    *,
    base: float,
    epoch_length: int,
    epochs: int,
    param: str = "lr",
    optimizer: str = "sgd",
) -> list[float]:
    """Run mmengine's real schedulers and record the value in force at every iteration.

    Builds the schedulers as mmengine's runner does (``PARAM_SCHEDULERS.build`` with the
    optimizer and ``epoch_length``), then steps them like ``ParamSchedulerHook``:
    iteration schedulers after every iteration, epoch schedulers after every epoch.

    Args:
        configs: the ``param_scheduler`` list.
        base: the optimizer's initial ``lr`` (or momentum / ``betas[0]``).
        epoch_length: iterations per epoch.
        epochs: epochs to run.
        param: ``'lr'`` or ``'momentum'``.
        optimizer: ``'sgd'`` or ``'adam'`` (momentum is then Adam's ``betas[0]``).

    Returns:
        ``epochs * epoch_length`` values, one per iteration.

    Example:
        >>> mmengine_values([dict(type='ExponentialLR', gamma=0.5, by_epoch=False)],
        ...                 base=1.0, epoch_length=3, epochs=1)
        [1.0, 0.5, 0.25]
    """
    import mmengine.optim  # noqa: F401 - registers the schedulers
    from mmengine.registry import PARAM_SCHEDULERS

    weight = torch.nn.Parameter(torch.zeros(1))
    if optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(
            [weight],
            lr=base if param == "lr" else 0.1,
            betas=(base if param == "momentum" else 0.9, 0.999),
        )
    else:
        opt = torch.optim.SGD(
            [weight],
            lr=base if param == "lr" else 0.1,
            momentum=base if param == "momentum" else 0.9,
        )

    def current() -> float:
        group = opt.param_groups[0]
        if param == "momentum" and optimizer == "adam":
            return float(group["betas"][0])
        return float(group[param])

    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        built = [
            PARAM_SCHEDULERS.build(
                dict(c), default_args=dict(optimizer=opt, epoch_length=epoch_length)
            )
            for c in configs
        ]
        for _ in range(epochs):
            for _ in range(epoch_length):
                out.append(current())
                opt.step()
                for sched in built:
                    if not sched.by_epoch:
                        sched.step()
            for sched in built:
                if sched.by_epoch:
                    sched.step()
    return out


# ----------------------------------------------------------------------------- checkers


def _steps(schedule: Schedule, steps: int | None) -> int:
    if steps is not None:
        return steps
    ends = [stop if stop < INF // 2 else first + 60 for first, stop in schedule.windows()]
    return min(max(ends, default=0) + 8, 4000)


def _close(a: float, b: float, rel: float) -> bool:
    return a == b or abs(a - b) <= rel * max(abs(a), abs(b))


def check_finite(schedule: Schedule, steps: int | None = None) -> None:
    """Assert all values over ``0 .. steps-1`` are finite.

    Args:
        schedule: the schedule.
        steps: how many steps (default: past the last finite window end).

    Example:
        >>> from functrain.schedules import poly_lr
        >>> check_finite(poly_lr(0.1, end=10))
    """
    n = _steps(schedule, steps)
    values = schedule(torch.arange(n))
    bad = (~torch.isfinite(values)).nonzero()
    assert bad.numel() == 0, f"{schedule!r}: non-finite value at step {int(bad[0])}"


def check_forms_agree(schedule: Schedule, steps: int | None = None, samples: int = 64) -> None:
    """Assert the int, 0-d tensor and 1-d tensor forms give the same values.

    Checks types too: a Python float for an int, a 0-d float64 tensor on the step's
    device for a 0-d tensor, and a float64 vector for a vector. Values may differ by
    rounding only (relative 1e-12): vectorised and scalar kernels round differently.

    Args:
        schedule: the schedule.
        steps: how many steps (default: past the last finite window end).
        samples: how many steps to check one by one (window edges are always included).

    Example:
        >>> from functrain.schedules import cosine_annealing_lr
        >>> check_forms_agree(cosine_annealing_lr(0.1, T_max=10))
    """
    n = _steps(schedule, steps)
    curve = schedule(torch.arange(n))
    assert curve.dtype == torch.float64 and curve.shape == (n,), f"{schedule!r}: bad curve"
    picks = {0, n - 1}
    for first, stop in schedule.windows():
        picks.update(t for t in (first - 1, first, first + 1, stop - 1, stop) if 0 <= t < n)
    stride = max(n // max(samples, 1), 1)
    picks.update(range(0, n, stride))
    for t in sorted(picks):
        as_int = schedule(t)
        assert type(as_int) is float, f"{schedule!r}: schedule({t}) is {type(as_int)}, not float"
        scalar = schedule(torch.tensor(t))
        assert scalar.dim() == 0 and scalar.dtype == torch.float64, f"{schedule!r}: bad 0-d result"
        want = float(curve[t])
        for got, form in ((as_int, "int"), (float(scalar), "0-d tensor")):
            assert _close(got, want, _REL), (
                f"{schedule!r}: step {t}: {form} form gives {got}, vector form gives {want}"
            )


def check_bounds(schedule: Schedule, steps: int | None = None) -> None:
    """Assert every value lies within :meth:`Schedule.bounds` (up to 1e-9 relative).

    Args:
        schedule: the schedule.
        steps: how many steps (default: past the last finite window end).

    Example:
        >>> from functrain.schedules import linear_lr
        >>> check_bounds(linear_lr(1.0, start_factor=0.1, end=10))
    """
    lo, hi = schedule.bounds()
    n = _steps(schedule, steps)
    values = schedule(torch.arange(n))
    # Round-off of the recursion (e.g. a linear factor ending at 0 gives -5e-17).
    slack = 1e-9 * magnitude(schedule) + 1e-9 * max(
        abs(lo) if math.isfinite(lo) else 0, abs(hi) if math.isfinite(hi) else 0
    )
    below = (values < lo - slack).nonzero()
    above = (values > hi + slack).nonzero()
    assert below.numel() == 0, (
        f"{schedule!r}: value {float(values[below[0]])} at step {int(below[0])} is below {lo}"
    )
    assert above.numel() == 0, (
        f"{schedule!r}: value {float(values[above[0]])} at step {int(above[0])} is above {hi}"
    )


def check_constant_outside_windows(schedule: Schedule, steps: int | None = None) -> None:
    """Assert the value changes only at steps where some piece updates it.

    Before the first update the value is the base value; between updates (gaps between
    windows, after the last window, and between the epoch boundaries of by-epoch
    pieces) it stays put.

    Args:
        schedule: the schedule.
        steps: how many steps (default: past the last finite window end).

    Example:
        >>> from functrain.schedules import linear_lr
        >>> check_constant_outside_windows(linear_lr(1.0, begin=3, end=6))
    """
    n = _steps(schedule, steps)
    values = schedule(torch.arange(n)).tolist()
    previous = schedule.base
    for t, value in enumerate(values):
        if not schedule.event_pieces(t):
            assert previous is not None and _close(value, previous, _REL), (
                f"{schedule!r}: value changes at step {t} ({previous} -> {value}) "
                "although no piece updates it there"
            )
        previous = value


def check_continuity(schedule: Schedule, steps: int | None = None) -> None:
    """Assert continuity where a piece starts with an identity step.

    Cosine, poly, exponential, step, multistep (no milestone at 0) and multiplicative
    pieces leave the value unchanged at their first step, so a window that starts
    alone continues from the last value before it: the seed's second cosine segment
    starts from the last value the first one wrote, not from its ``eta_min``.

    Args:
        schedule: the schedule.
        steps: how many steps (default: past the last finite window end).

    Example:
        >>> from functrain.schedules import schedule_list, linear_lr, cosine_annealing_lr
        >>> check_continuity(schedule_list([linear_lr(end=5),
        ...                                 cosine_annealing_lr(begin=5, end=20)], base=1.0))
    """
    n = _steps(schedule, steps)
    values = schedule(torch.arange(n)).tolist()
    for i, (piece, (first, _)) in enumerate(zip(schedule.pieces, schedule.windows(), strict=True)):
        if not (0 < first < n) or not piece._identity_at_start():
            continue
        if schedule.event_pieces(first) != [i]:
            continue
        assert _close(values[first], values[first - 1], _REL), (
            f"{schedule!r}: piece {i} ({piece!r}) starts at step {first} with "
            f"{values[first]} but the value before was {values[first - 1]}"
        )


def check_monotone(schedule: Schedule, steps: int | None = None) -> None:
    """Assert monotonicity where a piece's definition implies it.

    For every stretch of steps where a single piece updates the value, the values must
    follow the piece's direction (e.g. a cosine towards its ``eta_min`` before
    ``T_max``, a poly towards ``eta_min``, a linear factor from ``start_factor`` to
    ``end_factor``, a decay with ``gamma < 1`` downwards).

    Args:
        schedule: the schedule.
        steps: how many steps (default: past the last finite window end).

    Example:
        >>> from functrain.schedules import poly_lr
        >>> check_monotone(poly_lr(1.0, eta_min=0.1, end=20))
    """
    n = _steps(schedule, steps)
    values = schedule(torch.arange(n)).tolist()
    bases_ = schedule.piece_bases()
    owners = [schedule.event_pieces(t) for t in range(n)]
    t = 0
    while t < n:
        if len(owners[t]) != 1:
            t += 1
            continue
        (i,) = owners[t]
        stop = t
        while stop + 1 < n and owners[stop + 1] in ([], [i]):
            stop += 1
        piece = schedule.pieces[i]
        scale = schedule._events()[i][2]
        k_from = t // scale - piece.begin
        v_in = values[t - 1] if t > 0 else schedule.base
        assert v_in is not None
        direction = piece._direction(v_in, bases_[i], k_from)
        for a in range(t, stop):
            step = values[a + 1] - values[a]
            tol = _REL * max(abs(values[a]), abs(values[a + 1]))
            assert direction * step >= -tol or direction == 0, (
                f"{schedule!r}: piece {i} ({piece!r}) should be "
                f"{'non-decreasing' if direction > 0 else 'non-increasing'} from step {t}, "
                f"but goes {values[a]} -> {values[a + 1]} at step {a + 1}"
            )
        t = stop + 1


def magnitude(schedule: Schedule, values: Sequence[float] = ()) -> float:
    """The size of the quantities a schedule computes with: base, targets and values.

    Used to scale the absolute part of :func:`assert_matches`.

    Args:
        schedule: the schedule.
        values: values it produced (their largest magnitude counts too).

    Example:
        >>> from functrain.schedules import poly_lr
        >>> magnitude(poly_lr(0.1, eta_min=2.0))
        2.0
    """
    sizes = [abs(schedule.base or 0.0), *(abs(v) for v in values)]
    for piece, base in zip(schedule.pieces, schedule.piece_bases(), strict=True):
        sizes.extend(abs(level) for level in piece._levels(base) or ())
    return max(sizes)


def assert_matches(
    got: Sequence[float], want: Sequence[float], *, scale: float, rel: float = 1e-9, what: str = ""
) -> None:
    """Assert ``got[t]`` equals ``want[t]`` to ``rel`` relative, up to recursion round-off.

    mmengine computes ``eta_min + (v - eta_min) * r`` once per step, so a value far below
    ``eta_min`` carries an absolute round-off of about one ulp of ``scale`` per step; the
    tolerance is ``rel * |want| + 4 * eps * (t + 1) * scale``.

    Args:
        got: values to check.
        want: reference values.
        scale: magnitude of the quantities involved (see :func:`magnitude`).
        rel: relative tolerance.
        what: a label for the error message.

    Example:
        >>> assert_matches([1.0, 0.5], [1.0, 0.5 + 1e-12], scale=1.0)
    """
    assert len(got) == len(want), f"{what}: {len(got)} values, expected {len(want)}"
    eps = 2.220446049250313e-16
    for t, (a, b) in enumerate(zip(got, want, strict=True)):
        assert abs(a - b) <= rel * abs(b) + 4 * eps * (t + 1) * scale, (
            f"{what}: step {t}: got {a!r}, expected {b!r} (rel. error "
            f"{abs(a - b) / abs(b) if b else math.inf:.3g})"
        )


def check_matches_recursion(schedule: Schedule, steps: int | None = None) -> None:
    """Assert the closed forms agree with a step-by-step replay of mmengine's recursion.

    The replay applies each piece's mmengine update in mmengine's stepping order, in
    Python floats; the evaluated schedule must match it within 1e-9 relative (see
    :func:`assert_matches` for the round-off allowance).

    Args:
        schedule: the schedule.
        steps: how many steps (default: past the last finite window end).

    Example:
        >>> from functrain.schedules import cosine_annealing_lr
        >>> check_matches_recursion(cosine_annealing_lr(1.0, T_max=5, eta_min=0.1))
    """
    n = _steps(schedule, steps)
    replay = schedule._program._replay(n)
    values = schedule(torch.arange(n)).tolist()
    scale = magnitude(schedule, replay)
    assert_matches(values, replay, scale=scale, what=f"{schedule!r} vs. mmengine's recursion")


def check_schedule(schedule: Schedule, steps: int | None = None) -> None:
    """Run every checker of this module on ``schedule``.

    Args:
        schedule: the schedule.
        steps: how many steps (default: past the last finite window end).

    Example:
        >>> from functrain.schedules import warmup_cosine
        >>> check_schedule(warmup_cosine(0.1, warmup_steps=5, total_steps=50))
    """
    check_finite(schedule, steps)
    check_forms_agree(schedule, steps)
    check_bounds(schedule, steps)
    check_constant_outside_windows(schedule, steps)
    check_continuity(schedule, steps)
    check_monotone(schedule, steps)
    check_matches_recursion(schedule, steps)
