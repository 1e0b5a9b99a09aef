"""``ConfigError`` and ``ConfigFileError``, and the helpers that word them: the key path
of the mistake, the closest valid names, one line per message."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "ConfigError",
    "ConfigFileError",
    "MemberValues",
    "check_allowed",
    "check_number",
    "error_text",
    "named_key",
    "suggest",
]


class ConfigError(ValueError):
    """A config that cannot be built. ``path`` is the offending key path (``a.b.c``);
    ``str(err)`` is ``"<path>: <reason>"`` on one line (the command line prints it as is)."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        message = " ".join(str(message).split())  # one line, whatever the source said
        self.reason = message
        super().__init__(f"{path}: {message}" if path else message)


class ConfigFileError(ValueError):
    """A config file or a ``--cfg-options`` item cannot be used: bad ``_base_``, a cycle,
    duplicate keys among bases, unsupported syntax, an exception raised while the file ran, a
    malformed option, an option path through a non-container or past the end of a list, or a
    misspelled top-level key. The message names the file (and line) or the option.

    Missing files raise ``FileNotFoundError`` and invalid Python ``SyntaxError`` instead,
    both naming the file."""


def suggest(word: str, candidates: Any, cutoff: float = 0.6) -> str:
    """``"; did you mean 'x'?"`` for the closest candidates (case-insensitive match first),
    or ``""``."""
    names = [str(c) for c in candidates]
    same = [c for c in names if c.lower() == str(word).lower()]
    close = same or difflib.get_close_matches(str(word), names, n=3, cutoff=cutoff)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def error_text(err: BaseException) -> str:
    """An exception's message on one line (a ``KeyError``'s without the quotes ``str``
    adds)."""
    text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    return " ".join(str(text).split())


def named_key(text: str, keys: Iterable[str]) -> str | None:
    """The key of ``keys`` an error message is about: ``"Invalid lr: ..."``, ``"momentum
    must be ..."``, ``"`T_max` must ..."``, ``"max_epochs must be ..."``; ``None`` when it
    names none at its start."""
    match = re.match(r"(?:Invalid |`)?(\w+)`?(?:\[\d+\])?(?::| must| should| needs)", text)
    return match.group(1) if match and match.group(1) in set(keys) else None


def check_allowed(path: str, cfg: Mapping[str, Any], allowed: Sequence[str], what: str) -> None:
    """:class:`ConfigError` at ``path.<key>`` for the first key of ``cfg`` not in ``allowed``,
    with the closest allowed names and the full list."""
    for key in cfg:
        if key not in allowed:
            raise ConfigError(
                f"{path}.{key}",
                f"unknown key {key!r} for {what}{suggest(key, allowed)} "
                f"(accepted: {', '.join(allowed)})",
            )


class MemberValues(list):  # type: ignore[type-arg]
    """One value per ensemble member, put in a config by a sweep (:mod:`functrain.sweep`)
    where a number stood: the checks below accept it when every element passes, and the
    transforms and schedules take it as a per-member vector. An ordinary list in a config
    is still an error where a number is expected."""


def check_number(path: str, value: Any, *, positive: bool = False, integer: bool = False) -> Any:
    """``value`` itself if it is a number (an int when ``integer``; ``> 0`` when ``positive``),
    else :class:`ConfigError` at ``path``. Booleans are not numbers here. A
    :class:`MemberValues` passes when each of its elements does (``path[i]`` names the first
    that does not)."""
    if isinstance(value, MemberValues):
        for i, v in enumerate(value):
            check_number(f"{path}[member {i}]", v, positive=positive, integer=integer)
        return value
    kinds = int if integer else int | float
    if isinstance(value, bool) or not isinstance(value, kinds):
        kind = "an int" if integer else "a number"
        raise ConfigError(path, f"expected {kind}, got {value!r} ({type(value).__name__})")
    if positive and not value > 0:
        hint = " (1 means no accumulation)" if path.endswith("accumulative_counts") else ""
        raise ConfigError(path, f"must be > 0, got {value!r}{hint}")
    return value
