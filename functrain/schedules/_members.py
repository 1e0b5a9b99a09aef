"""Per-member arguments: a sequence or 1-d tensor of length N in place of a number.

An ensemble of N members (or a sweep over N settings) gives a schedule one value per
member for any of its numeric arguments. This module recognises such arguments, turns
them into tuples of Python numbers (once, when the schedule is built), checks that their
lengths agree, and renames a member's error so that it names the member.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Union

import torch

__all__ = ["Floats", "Ints", "count_members", "is_vector", "name_member", "vector_values"]

#: a number, or one number per member (a sequence or a 1-d tensor of length N).
Floats = Union[float, Sequence[float], torch.Tensor]  # noqa: UP007 - used at runtime
#: an integer, or one integer per member.
Ints = Union[int, Sequence[int], torch.Tensor]  # noqa: UP007 - used at runtime


def is_vector(value: Any) -> bool:
    """True for a per-member value: a list/tuple (not a string) or a 1-d tensor.

    A 0-d tensor is not a vector (it is an ordinary, if unusual, number); a tensor of
    another rank is a vector and :func:`vector_values` rejects it by name.

    Example:
        >>> is_vector([0.1, 0.2]), is_vector(torch.ones(3)), is_vector(0.1)
        (True, True, False)
    """
    if isinstance(value, torch.Tensor):
        return value.dim() != 0
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


def vector_values(owner: str, name: str, value: Any) -> tuple[Any, ...]:
    """The members' values of a per-member argument, as a tuple of Python numbers.

    A tensor is read to the host here, when the schedule is built, so that evaluating
    the schedule never syncs.

    Args:
        owner: the class or function the argument belongs to (starts the message).
        name: the argument's name.
        value: a sequence or a 1-d tensor.

    Returns:
        The values (unchecked: the scalar checks run on each member).

    Example:
        >>> vector_values("Step", "gamma", torch.tensor([0.5, 0.25], dtype=torch.float64))
        (0.5, 0.25)
    """
    if isinstance(value, torch.Tensor):
        if value.dim() != 1:
            raise ValueError(
                f"{owner}: `{name}` per member must be a 1-d tensor, got shape {tuple(value.shape)}"
            )
        if value.dtype == torch.bool or value.is_complex():
            raise ValueError(f"{owner}: `{name}` must hold real numbers, got {value.dtype}")
        values: tuple[Any, ...] = tuple(value.detach().cpu().tolist())
    else:
        values = tuple(value)
    if not values:
        raise ValueError(f"{owner}: `{name}` has no members (an empty sequence)")
    return values


def count_members(owner: str, named: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> int | None:
    """The common length of the per-member values among ``named``; None if there are none.

    Args:
        owner: the class or function (starts the message).
        named: argument name -> value (tuples of member values are vectors; other
            values are shared by all members).

    Raises:
        ValueError: two vectors differ in length (the message names both and their sizes).

    Example:
        >>> count_members("step_lr", {"base": (0.1, 0.2), "gamma": 0.5})
        2
    """
    items = named.items() if isinstance(named, Mapping) else named
    first: tuple[str, int] | None = None
    for name, value in items:
        if not isinstance(value, tuple):
            continue
        if first is None:
            first = (name, len(value))
        elif len(value) != first[1]:
            raise ValueError(
                f"{owner}: `{first[0]}` has {first[1]} members but `{name}` has {len(value)}; "
                "per-member values must all have the same length"
            )
    return None if first is None else first[1]


def name_member(message: str, fields: Iterable[str], index: int) -> str:
    """``message`` with each `` `field` `` of ``fields`` written `` `field[index]` ``.

    A member is checked by the scalar code, whose errors name the argument; this makes
    them name the member too.

    Example:
        >>> name_member("Linear: `end` must be larger than `begin`", ["end"], 3)
        'Linear: `end[3]` must be larger than `begin`'
    """
    for field in fields:
        message = re.sub(rf"`{re.escape(field)}`", f"`{field}[{index}]`", message)
    return message
