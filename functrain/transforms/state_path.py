"""Find, read and replace records inside an optimizer state: the one walker every helper
that looks into a state uses (like optax's ``tree_get`` / ``tree_set``).

An optimizer state is a tree of state records (attrs classes), tuples (a ``chain``), dicts
(a ``named_chain`` or ``partition``) and tensors. A :data:`Path` names one node of it as a
sequence of steps: ``("attr", field)`` into a record, ``("key", key)`` into a dict,
``("item", index)`` into a tuple or list. Static record fields (leaf paths, names) are not
part of the tree and are never entered.

Example:
    >>> state = chain(clip(1.0), sgd(0.1, momentum=0.9)).init(params)  # doctest: +SKIP
    >>> [path] = find(state, TraceState)  # doctest: +SKIP
    >>> get(state, path + (("attr", "momentum"),))  # doctest: +SKIP
    tensor(0.9000, dtype=torch.float64)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import attrs
from torch import Tensor

__all__ = [
    "Path",
    "Step",
    "children",
    "find",
    "find_one",
    "format_path",
    "get",
    "replace",
    "walk",
]

#: One step into a node: ``("attr", field)``, ``("key", dict key)`` or ``("item", index)``.
Step = tuple[str, Any]
#: Steps from the root of a state to one of its nodes; ``()`` is the root.
Path = tuple[Step, ...]

R = TypeVar("R")


def children(node: Any) -> Iterator[tuple[Step, Any]]:
    """The direct children of ``node`` with the step to each, in flattening order (record
    fields in declaration order without the static ones, dict entries, sequence items).
    Tensors, ``None`` and other leaves have none."""
    if isinstance(node, Tensor) or node is None:
        return
    if attrs.has(type(node)):
        for f in attrs.fields(type(node)):
            if not f.metadata.get("static", False):
                yield ("attr", f.name), getattr(node, f.name)
    elif isinstance(node, dict):
        for key, child in node.items():
            yield ("key", key), child
    elif isinstance(node, tuple | list):
        for i, child in enumerate(node):
            yield ("item", i), child


def walk(tree: Any, path: Path = ()) -> Iterator[tuple[Path, Any]]:
    """Every node of ``tree`` with its path, depth first (a node before its children)."""
    yield path, tree
    for step, child in children(tree):
        yield from walk(child, path + (step,))


def find(tree: Any, match: type | Callable[[Any], bool]) -> list[Path]:
    """Paths of the nodes that are instances of ``match`` (a class) or for which
    ``match(node)`` is true, depth first; a matching node's own children are not searched.

    Example:
        >>> find(((), {"a": 1}), lambda n: n == 1)
        [(('item', 1), ('key', 'a'))]
    """
    test: Callable[[Any], bool] = (
        (lambda node: isinstance(node, match)) if isinstance(match, type) else match
    )
    found: list[Path] = []

    def visit(node: Any, path: Path) -> None:
        if test(node):
            found.append(path)
            return
        for step, child in children(node):
            visit(child, path + (step,))

    visit(tree, ())
    return found


def find_one(tree: Any, record: type[R], who: str) -> R:
    """The one instance of ``record`` inside ``tree``.

    Raises:
        ValueError: there is none, or more than one (the message starts with ``who``, the
            caller's name, and lists the paths found).
    """
    paths = find(tree, record)
    if len(paths) != 1:
        where = f" at {[format_path(p) for p in paths]}" if paths else ""
        raise ValueError(
            f"{who}: expected an optimizer state holding exactly one {record.__name__}, "
            f"found {len(paths)}{where}"
        )
    return get(tree, paths[0])


def format_path(path: Path) -> str:
    """``path`` as ``"1/backbone/.inner"`` for messages: items and keys separated by ``/``,
    record fields as ``.field``."""
    return "/".join(f".{key}" if kind == "attr" else str(key) for kind, key in path) or "<root>"


def get(tree: Any, path: Path) -> Any:
    """The node of ``tree`` at ``path``."""
    for kind, key in path:
        tree = getattr(tree, key) if kind == "attr" else tree[key]
    return tree


def replace(tree: Any, path: Path, value: Any) -> Any:
    """A copy of ``tree`` with the node at ``path`` replaced by ``value``: the records,
    dicts and tuples on the path are rebuilt, everything else is shared; ``tree`` itself is
    not modified."""
    if not path:
        return value
    (kind, key), rest = path[0], path[1:]
    if kind == "attr":
        return attrs.evolve(tree, **{key: replace(getattr(tree, key), rest, value)})
    if kind == "key":
        return {**tree, key: replace(tree[key], rest, value)}
    items = list(tree)
    items[key] = replace(items[key], rest, value)
    return items if isinstance(tree, list) else tuple(items)
