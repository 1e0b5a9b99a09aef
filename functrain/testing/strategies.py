"""Hypothesis strategies: valid pieces, schedules, schedule lists and mmengine configs.

Both the piece strategies and the mmengine config strategy draw a scheduler's own
arguments from one table, :func:`family_arguments`; they differ only in the ranges
(:class:`ArgumentSpace`), because an mmengine run is counted in epochs and iterations.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import attrs
import torch  # noqa: F401 - the MMEngineCase doctest uses it
from hypothesis import strategies as st

from functrain import schedules as _schedules
from functrain.schedules import INF, OneCycle, Piece, Schedule, from_mmengine

# In the order they are defined.
__all__ = [
    "KINDS",
    "MMENGINE_KINDS",
    "PowerFn",
    "bases",
    "ArgumentSpace",
    "family_arguments",
    "pieces",
    "schedules",
    "schedule_lists",
    "MMEngineCase",
    "mmengine_cases",
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
MMENGINE_KINDS: tuple[str, ...] = KINDS[:9]


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


@attrs.frozen
class ArgumentSpace:
    """Where :func:`family_arguments` draws from: the bounds that depend on the caller.

    Attributes:
        horizon: bound on ``T_max`` and milestones, in the scheduler's unit.
        step_size: bound on StepLR's ``step_size``.
        period: bound on each CosineRestart period.
        gamma: upper end of Step / MultiStep ``gamma``.
        exp_gamma: upper end of ExponentialLR's ``gamma``.
        eta_ratio: upper end of CosineAnnealing's ``eta_min_ratio``.
        poly_eta: upper end of PolyLR's ``eta_min``.

    Example:
        >>> ArgumentSpace.for_pieces(40).horizon
        40
    """

    horizon: int
    step_size: int
    period: int
    gamma: float
    exp_gamma: float
    eta_ratio: float
    poly_eta: float

    @classmethod
    def for_pieces(cls, max_step: int) -> ArgumentSpace:
        """The space of :func:`pieces`: windows of at most ``max_step`` steps."""
        return cls(max(max_step, 1), 10, 15, 1.5, 1.1, 10.0, 1.0)

    @classmethod
    def for_mmengine(cls, horizon: int) -> ArgumentSpace:
        """The space of :func:`mmengine_cases`: a run of ``horizon`` scheduler steps."""
        half = max(horizon // 2, 1)
        return cls(max(horizon, 1), half, half, 1.2, 1.05, 5.0, 0.5)


@st.composite
def family_arguments(
    draw: Any, kind: str, space: ArgumentSpace, span: int, cycle_scale: int = 1
) -> dict[str, Any]:
    """A scheduler's own keyword arguments (window excluded); defaults are left out.

    Args:
        kind: the piece class name (one of :data:`KINDS`).
        space: the bounds (see :class:`ArgumentSpace`).
        span: ``end - begin`` of the window (``INF - begin`` when open-ended).
        cycle_scale: OneCycle's cycle is ``total_steps * cycle_scale`` iterations (the
            epoch length when an mmengine config converts to iterations).

    Example:
        >>> from hypothesis import given
        >>> @given(family_arguments("Step", ArgumentSpace.for_pieces(10), span=10))
        ... def test(kw): assert kw["step_size"] >= 1
    """
    if kind == "Constant":
        return {"factor": draw(_unit(0.05, 1.0))}
    if kind == "Linear":
        return {"start_factor": draw(_unit(0.01, 1.0)), "end_factor": draw(_unit(0.0, 1.0))}
    if kind == "Step":
        step_size = draw(st.integers(1, space.step_size))
        return {"step_size": step_size, "gamma": draw(_unit(0.1, space.gamma))}
    if kind == "MultiStep":
        milestones = sorted(draw(st.lists(st.integers(0, space.horizon), max_size=4)))
        return {"milestones": milestones, "gamma": draw(_unit(0.1, space.gamma))}
    if kind == "Exponential":
        return {"gamma": draw(_unit(0.8, space.exp_gamma))}
    if kind == "CosineAnnealing":
        out: dict[str, Any] = {}
        if span >= INF // 2 or draw(st.booleans()):  # an open window needs T_max
            out["T_max"] = draw(st.integers(1, space.horizon))
        eta = draw(st.sampled_from(["default", "abs", "ratio"]))
        if eta == "abs":
            out["eta_min"] = draw(_unit(0.0, 2.0))
        elif eta == "ratio":
            out["eta_min_ratio"] = draw(_unit(0.0, space.eta_ratio))
        return out
    if kind == "Poly":
        return {"eta_min": draw(_unit(0.0, space.poly_eta)), "power": draw(_unit(0.1, 3.0))}
    if kind == "OneCycle":
        total = draw(st.one_of(st.none(), st.integers(span, span + space.horizon)))
        cycle = (span if total is None else total) * cycle_scale
        out = {} if total is None else {"total_steps": total}
        # mmengine divides by pct_start * total_steps - 1.
        out["pct_start"] = draw(_unit(0.05, 0.95).filter(lambda p: float(p * cycle) - 1 != 0))
        out["eta_max"] = draw(_unit(0.01, 1.0))
        out["anneal_strategy"] = draw(st.sampled_from(["cos", "linear"]))
        out["div_factor"] = draw(_unit(2.0, 50.0))
        out["final_div_factor"] = draw(_unit(1.5, 1e4))
        out["three_phase"] = draw(st.booleans())
        return out
    if kind == "CosineRestart":
        periods = draw(st.lists(st.integers(1, space.period), min_size=1, max_size=3))
        n = len(periods)
        out = {"periods": periods}
        out["restart_weights"] = draw(st.lists(_unit(0.1, 1.0), min_size=n, max_size=n))
        eta_key = "eta_min" if draw(st.booleans()) else "eta_min_ratio"
        out[eta_key] = draw(_unit(0.0, 0.5))
        return out
    if kind == "Cyclic":
        down = draw(st.one_of(st.none(), st.integers(1, 10)))
        return {
            "max_value": draw(_unit(0.01, 2.0)),
            "step_size_up": draw(st.integers(1, 10)),
            "step_size_down": down,
            "mode": draw(st.sampled_from(["triangular", "triangular2", "exp_range"])),
            "gamma": draw(_unit(0.9, 1.0)),
        }
    if kind in ("Lambda", "Multiplicative"):
        lo = 0.8 if kind == "Lambda" else 0.9
        return {"fn": PowerFn(draw(_unit(lo, 1.0)))}
    raise ValueError(f"pieces: unknown kind {kind!r}; choose from {KINDS}")


@st.composite
def _piece(draw: Any, kind: str, max_step: int, by_epoch: bool, open_end: bool) -> Piece:
    finite = kind in ("Multiplicative", "OneCycle")
    begin = draw(st.integers(0, max(max_step // 2, 0)))
    if open_end and not finite and draw(st.booleans()):
        end = INF
    else:
        end = begin + draw(st.integers(1, max(max_step, 1)))
    space = ArgumentSpace.for_pieces(max_step)
    kwargs = draw(family_arguments(kind, space, span=end - begin))
    return getattr(_schedules, kind)(**kwargs, begin=begin, end=end, by_epoch=by_epoch)


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
        >>> from functrain.testing import check_finite
        >>> @given(schedules())
        ... def test(s): check_finite(s)
    """
    return _single_schedule(kinds, max_step).filter(_compiles)


@st.composite
def _single_schedule(draw: Any, kinds: Sequence[str] | None, max_step: int) -> Schedule:
    by_epoch = draw(st.booleans())
    length = draw(st.one_of(st.none(), st.integers(1, 5))) if by_epoch else None
    steps = max_step // 4 if length else max_step
    piece = draw(pieces(kinds, max_step=max(steps, 2), by_epoch=by_epoch))
    return Schedule((piece,), base=draw(bases()), epoch_length=length)


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
        >>> from functrain.testing import check_constant_outside_windows
        >>> @given(schedule_lists())
        ... def test(s): check_constant_outside_windows(s)
    """
    return _schedule_list(kinds, max_len, max_step).filter(_compiles)


@st.composite
def _schedule_list(draw: Any, kinds: Sequence[str] | None, max_len: int, max_step: int) -> Schedule:
    length = draw(st.one_of(st.none(), st.integers(1, 6)))
    n = draw(st.integers(1, max_len))
    out: list[Piece] = []
    for _ in range(n):
        by_epoch = length is not None and draw(st.booleans())
        steps = max(max_step // length, 2) if by_epoch and length else max_step
        out.append(draw(pieces(kinds, max_step=steps, by_epoch=by_epoch)))
    return Schedule(_one_onecycle(out), base=draw(bases()), epoch_length=length)


def _one_onecycle(items: list[Any], is_onecycle: Any = None) -> tuple[Any, ...]:
    """Drop every OneCycle after the first (mmengine supports one per optimizer)."""
    test = is_onecycle or (lambda p: isinstance(p, OneCycle))
    first = next((i for i, p in enumerate(items) if test(p)), None)
    return tuple(p for i, p in enumerate(items) if i == first or not test(p))


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
    space = ArgumentSpace.for_mmengine(horizon)
    scale = length if convert else 1
    cfg.update(draw(family_arguments(family, space, span=end - begin, cycle_scale=scale)))
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
        families = _one_onecycle(families, lambda f: f == "OneCycle")
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
