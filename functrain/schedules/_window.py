"""The arguments every snake-case builder shares (the window), handled in one place.

Each builder (``step_lr``, ``cosine_annealing_lr``, ...) takes the base value, its
scheduler's own arguments, and the window as ``**window`` (:class:`Window`);
:func:`bind` checks the window's keys, builds the piece and binds it to the base value.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypedDict

from functrain.schedules._members import Ints, count_members, is_vector, vector_values
from functrain.schedules._piece import INF, Piece
from functrain.schedules._schedule import Schedule

__all__ = ["WINDOW_DEFAULTS", "Window", "bind"]


class Window(TypedDict, total=False):
    """The keyword arguments every builder takes besides its scheduler's own.

    Attributes:
        begin: first step of the window (default 0); one per member, or shared.
        end: the window's end, exclusive (default ``INF``: never ends); one per member,
            or shared.
        by_epoch: count ``begin``, ``end`` and the scheduler's periods in epochs
            (default False).
        epoch_length: iterations per epoch, to call a by-epoch schedule with iterations
            (default None).
    """

    begin: Ints
    end: Ints
    by_epoch: bool
    epoch_length: int | None


#: the defaults of :class:`Window`'s keys (mmengine's, with ``end=INF`` for "no end").
WINDOW_DEFAULTS: Mapping[str, Any] = {
    "begin": 0,
    "end": INF,
    "by_epoch": False,
    "epoch_length": None,
}


def bind(
    builder: str, cls: type[Piece], base: Any, window: Mapping[str, Any], **own: Any
) -> Schedule:
    """Build ``cls(**own)`` in ``window`` and bind it to ``base``: a builder's body.

    Args:
        builder: the builder's name, for the error on an unknown keyword argument.
        cls: the piece class.
        base: the base value (``None``: an unbound schedule for :func:`schedule_list`);
            like the piece's numbers and the window, it may hold one value per member.
        window: the builder's ``**window`` keyword arguments (see :class:`Window`).
        **own: the piece's own arguments.

    Returns:
        A one-piece :class:`Schedule`.

    Raises:
        TypeError: a key of ``window`` is not a :class:`Window` key (as Python does for
            an unexpected keyword argument).
        ValueError: per-member values of different lengths (naming both arguments).

    Example:
        >>> from functrain.schedules import Step
        >>> bind("step_lr", Step, 1.0, {"end": 5}, step_size=2)(4)
        0.010000000000000002
    """
    for key in window:
        if key not in WINDOW_DEFAULTS:
            raise TypeError(f"{builder}() got an unexpected keyword argument {key!r}")
    args = {**WINDOW_DEFAULTS, **window}
    # Check the lengths here, where the builder's argument names are known.
    per_member = {"base", "begin", "end", *cls.member_fields()}
    given = {"base": base, **own, "begin": args["begin"], "end": args["end"]}
    vectors = {
        name: vector_values(builder, name, value)
        for name, value in given.items()
        if name in per_member and is_vector(value)
    }
    count_members(builder, vectors)
    piece = cls(**own, begin=args["begin"], end=args["end"], by_epoch=args["by_epoch"])
    return Schedule((piece,), base=base, epoch_length=args["epoch_length"])
