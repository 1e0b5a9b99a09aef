"""The transform algebra: ``GradientTransformation``, ``chain``, ``identity``, ``apply_updates``.

A gradient transformation is a pair of pure functions, as in optax::

    state = tx.init(params)
    updates, state = tx.update(grads, state, params)
    params = apply_updates(params, updates)

Internally every built-in transform is written against *flat* lists of tensors (a
:class:`FlatTransform`): the outermost ``update`` flattens the tree once, every transform of
a chain works on the same list, and the result is unflattened once at the end. A user can
still build a ``GradientTransformation`` from two tree-level functions; ``chain`` adapts it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

import attrs
import optree
import torch.utils._pytree as torch_pytree
from torch import Tensor

from functrain.transforms import foreach as fe
from functrain.transforms.kernel_specs import MultiplierSpec
from functrain.tree import NAMESPACE, PyTree, TreeInfo, flatten, flatten_like

__all__ = [
    "EmptyState",
    "FlatTransform",
    "GradientTransformation",
    "apply_updates",
    "chain",
    "from_flat",
    "identity",
    "state_record",
    "stateless",
    "stateless_foreach",
    "stateless_with_tree_map",
]

State = Any
T = TypeVar("T")


def state_record(cls: type[T]) -> type[T]:
    """Make ``cls`` a frozen attrs record registered as an optree node (``"functrain"`` namespace)
    and as a node of torch's pytree (so ``torch.func.vmap`` and ``torch.compile`` see its
    tensors).

    Fields whose attrs metadata has ``static=True`` are stored in the tree structure rather
    than as children (for example the leaf paths a state was built for); every other field is
    a child, so ``tree_map`` reaches its tensors.

    Example:
        >>> @state_record
        ... class CountState:
        ...     count: torch.Tensor
    """
    cls = attrs.frozen(cls)
    fields = attrs.fields(cls)
    children = tuple(f.name for f in fields if not f.metadata.get("static", False))
    static = tuple(f.name for f in fields if f.metadata.get("static", False))

    def flatten_fn(obj: Any) -> tuple[tuple[Any, ...], tuple[Any, ...], tuple[str, ...]]:
        return (
            tuple(getattr(obj, n) for n in children),
            tuple(getattr(obj, n) for n in static),
            children,
        )

    def unflatten_fn(meta: tuple[Any, ...], values: Sequence[Any]) -> Any:
        return cls(
            **dict(zip(children, values, strict=True)), **dict(zip(static, meta, strict=True))
        )

    optree.register_pytree_node(cls, flatten_fn, unflatten_fn, namespace=NAMESPACE)
    _register_torch_pytree(cls, children, static)
    return cls


def _register_torch_pytree(cls: type, children: tuple[str, ...], static: tuple[str, ...]) -> None:
    """Make ``cls`` a node of torch's pytree too, so ``torch.func.vmap`` / ``grad`` /
    ``torch.compile`` / ``torch.export`` see through it.

    Children are the non-static fields; the context holds the static fields' values and where
    the ``None`` entries were. optree treats ``None`` as an empty subtree but torch's pytree
    as a leaf, and ``vmap`` refuses a ``None`` output, so a ``None`` field, or a ``None``
    entry of a tuple field (a per-leaf buffer that one leaf does not have), is kept in the
    structure, as optree does, rather than handed out as a leaf.
    """

    def flatten_fn(obj: Any) -> tuple[list[Any], tuple[tuple[Any, ...], tuple[Any, ...]]]:
        values, holes = [], []
        for name in children:
            value = getattr(obj, name)
            hole = _none_pattern(value)
            holes.append(hole)
            if hole is True:
                continue
            values.append(tuple(v for v in value if v is not None) if hole else value)
        return values, (tuple(getattr(obj, n) for n in static), tuple(holes))

    def flatten_with_keys_fn(obj: Any) -> tuple[list[tuple[Any, Any]], Any]:
        values, context = flatten_fn(obj)
        present = [n for n, hole in zip(children, context[1], strict=True) if hole is not True]
        keys = [torch_pytree.GetAttrKey(n) for n in present]
        return list(zip(keys, values, strict=True)), context

    def unflatten_fn(
        values: Iterable[Any], context: tuple[tuple[Any, ...], tuple[Any, ...]]
    ) -> Any:
        meta, holes = context
        it = iter(values)
        kwargs: dict[str, Any] = {}
        for name, hole in zip(children, holes, strict=True):
            if hole is True:
                kwargs[name] = None
            elif hole:
                entries = iter(next(it))
                kwargs[name] = tuple(None if none else next(entries) for none in hole)
            else:
                kwargs[name] = next(it)
        return cls(**kwargs, **dict(zip(static, meta, strict=True)))

    torch_pytree.register_pytree_node(
        cls,
        flatten_fn,
        unflatten_fn,
        serialized_type_name=f"{cls.__module__}.{cls.__qualname__}",
        to_dumpable_context=_context_to_json,
        from_dumpable_context=_context_from_json,
        flatten_with_keys_fn=flatten_with_keys_fn,
    )


def _context_to_json(value: Any) -> Any:
    """A torch pytree context as JSON that keeps tuples tuples (``torch.export.save``
    writes contexts as JSON, and a list would not compare equal to the original tuple)."""
    if isinstance(value, tuple):
        return {"tuple": [_context_to_json(v) for v in value]}
    if isinstance(value, list):
        return [_context_to_json(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(
        f"a state record's static field holds a {type(value).__name__}, which torch's "
        "pytree serialization (torch.export.save) cannot write; static fields must be "
        "numbers, strings, None or tuples / lists of them"
    )


def _context_from_json(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(_context_from_json(v) for v in value["tuple"])
    if isinstance(value, list):
        return [_context_from_json(v) for v in value]
    return value


def _none_pattern(value: Any) -> bool | tuple[bool, ...]:
    """``True`` for ``None``; for a tuple holding ``None`` entries, which entries are ``None``;
    else ``False`` (the field is a child as it is)."""
    if value is None:
        return True
    if type(value) is tuple and any(v is None for v in value):
        return tuple(v is None for v in value)
    return False


def static_field(**kwargs: Any) -> Any:
    """An attrs field kept in the tree structure of a state record, not as a child."""
    return attrs.field(metadata={"static": True}, **kwargs)


@state_record
class EmptyState:
    """State of a stateless transform."""


class FlatInit(Protocol):
    def __call__(self, params: list[Tensor], info: TreeInfo) -> State: ...


class FlatUpdate(Protocol):
    def __call__(
        self,
        updates: list[Tensor],
        state: State,
        params: list[Tensor] | None,
        info: TreeInfo,
        **extra: Any,
    ) -> tuple[list[Tensor], State]: ...


@attrs.frozen
class FlatTransform:
    """A transform over flat lists of tensors (one per leaf, in flattening order).

    Attributes:
        init: ``init(params, info) -> state``.
        update: ``update(updates, state, params, info, **extra) -> (updates, state)``; must
            not mutate its inputs unless ``info.donate`` is set, and must give bitwise the same
            values either way.
        name: a short name for reprs and error messages.
        fusion: what the fused fast path needs to know about this transform (see
            :mod:`functrain.transforms.fused_step`), or ``None`` when it has no fused form.
        parts: for a chain, its members (the fast path plans over them).
    """

    init: FlatInit = attrs.field(repr=False)
    update: FlatUpdate = attrs.field(repr=False)
    name: str = "transform"
    fusion: Any = attrs.field(default=None, repr=False)
    parts: tuple[FlatTransform, ...] = attrs.field(default=(), repr=False)


@attrs.frozen
class GradientTransformation:
    """A pure ``(init, update)`` pair over parameter pytrees, as in optax.

    Attributes:
        init: ``init(params) -> state``.
        update: ``update(updates, state, params=None, *, donate=False, **extra)
            -> (updates, state)``. Extra keyword arguments a transform does not use are ignored.
        flat: the flat-list implementation, when the transform has one (all built-in ones do);
            ``chain`` uses it so that the tree is flattened once per step.

    Unpacks like optax's NamedTuple: ``init, update = tx``.

    Example:
        >>> tx = chain(clip(1.0), adamw(lr=1e-3))
        >>> state = tx.init(params)  # doctest: +SKIP
        >>> updates, state = tx.update(grads, state, params)  # doctest: +SKIP
        >>> params = apply_updates(params, updates)  # doctest: +SKIP
    """

    init: Callable[..., State]
    update: Callable[..., tuple[PyTree, State]]
    flat: FlatTransform | None = attrs.field(default=None, repr=False)

    def __iter__(self) -> Iterator[Callable[..., Any]]:
        yield self.init
        yield self.update

    def __repr__(self) -> str:
        return f"GradientTransformation({self.flat.name if self.flat else 'user-defined'})"


def from_flat(flat: FlatTransform) -> GradientTransformation:
    """Wrap a :class:`FlatTransform` into a tree-level :class:`GradientTransformation`."""

    def init(params: PyTree) -> State:
        leaves, info = flatten(params)
        return flat.init(leaves, info)

    def update(
        updates: PyTree,
        state: State,
        params: PyTree | None = None,
        *,
        donate: bool = False,
        **extra: Any,
    ) -> tuple[PyTree, State]:
        leaves, info = flatten(updates, donate=donate)
        flat_params = None if params is None else flatten_like(params, info)
        new_leaves, new_state = flat.update(leaves, state, flat_params, info, **extra)
        return info.unflatten(new_leaves), new_state

    return GradientTransformation(init, update, flat)


def as_flat(tx: GradientTransformation) -> FlatTransform:
    """The flat form of ``tx``; a user-defined tree-level transform is adapted (one unflatten
    and flatten per call, the price of not having a flat form)."""
    if tx.flat is not None:
        return tx.flat
    if not isinstance(tx, GradientTransformation):
        raise TypeError(
            f"expected a GradientTransformation, got {type(tx).__name__}; "
            "build one with GradientTransformation(init, update)"
        )

    def init(params: list[Tensor], info: TreeInfo) -> State:
        return tx.init(info.unflatten(params))

    def update(
        updates: list[Tensor],
        state: State,
        params: list[Tensor] | None,
        info: TreeInfo,
        **extra: Any,
    ) -> tuple[list[Tensor], State]:
        tree_params = None if params is None else info.unflatten(params)
        new, state = tx.update(info.unflatten(updates), state, tree_params, **extra)
        return flatten_like(new, info, what="updates returned by a user transform"), state

    return FlatTransform(init, update, name=getattr(tx.update, "__name__", "user"))


def chain(*transforms: GradientTransformation) -> GradientTransformation:
    """Apply ``transforms`` one after another; the state is the tuple of their states.

    The tree is flattened once for the whole chain. A :func:`functrain.mask_multipliers`
    member gives the whole chain its per-parameter multipliers (the member spelling of
    :func:`functrain.with_multipliers`). A chain of torch's building blocks that
    torch has a fused kernel for (clip, weight decay, Adam/AdamW/SGD, learning rate) also runs
    as one fused kernel through :func:`functrain.apply_gradients`.

    Args:
        *transforms: the transforms, applied left to right.

    Example:
        >>> tx = chain(clip(1.0), scale_by_adam(), scale_by_learning_rate(1e-3))
    """
    parts = tuple(as_flat(t) for t in transforms)
    multipliers = chain_multipliers(parts)

    def init(params: list[Tensor], info: TreeInfo) -> tuple[State, ...]:
        if multipliers is not None:
            info = multipliers.apply(info)
        return tuple(p.init(params, info) for p in parts)

    def update(
        updates: list[Tensor],
        state: tuple[State, ...],
        params: list[Tensor] | None,
        info: TreeInfo,
        **extra: Any,
    ) -> tuple[list[Tensor], tuple[State, ...]]:
        if not isinstance(state, tuple) or len(state) != len(parts):
            raise ValueError(
                f"chain of {len(parts)} transforms got a state of type "
                f"{type(state).__name__}"
                + (f" with {len(state)} entries" if isinstance(state, tuple) else "")
                + "; pass the state returned by this chain's init/update"
            )
        if multipliers is not None:
            info = multipliers.apply(info)
        new_states = []
        for part, s in zip(parts, state, strict=True):
            updates, s = part.update(updates, s, params, info, **extra)
            new_states.append(s)
        return updates, tuple(new_states)

    name = "chain(" + ", ".join(p.name for p in parts) + ")"
    return from_flat(FlatTransform(init, update, name=name, parts=parts))


def chain_multipliers(parts: Sequence[FlatTransform]) -> MultiplierSpec | None:
    """The :func:`functrain.mask_multipliers` member of a chain's direct members, if any."""
    specs = [p.fusion for p in parts if isinstance(p.fusion, MultiplierSpec)]
    if len(specs) > 1:
        raise ValueError("a chain can hold one mask_multipliers; merge the mappings")
    return specs[0] if specs else None


def identity() -> GradientTransformation:
    """The transform that returns its updates unchanged (state: :class:`EmptyState`)."""
    return stateless_foreach(lambda updates, params: updates, name="identity")


def stateless_foreach(
    fn: Callable[..., list[Tensor]],
    *,
    name: str = "stateless",
    fusion: Any = None,
    with_multipliers: bool = False,
) -> GradientTransformation:
    """A stateless transform from a function over flat lists, called once per (device, dtype).

    ``fn(updates, params)`` receives the leaves of one ``(device, dtype)`` group as lists (so
    ``torch._foreach_*`` ops apply directly) and returns the new updates for that group. It
    must not modify its inputs. With ``with_multipliers`` it is called as
    ``fn(updates, params, (lr_mult, decay_mult))`` with the group's multipliers (see
    :func:`functrain.mask_multipliers`).

    Example:
        >>> double = stateless_foreach(lambda u, p: torch._foreach_mul(u, 2.0))
    """

    def init(params: list[Tensor], info: TreeInfo) -> EmptyState:
        return EmptyState()

    def update(
        updates: list[Tensor],
        state: EmptyState,
        params: list[Tensor] | None,
        info: TreeInfo,
        **extra: Any,
    ) -> tuple[list[Tensor], EmptyState]:
        def group(g: int, us: list[Tensor], ps: list[Tensor] | None = None) -> list[Tensor]:
            if with_multipliers:
                return fn(us, ps, info.group_multipliers(g))
            return fn(us, ps)

        if params is None:
            return info.foreach(group, updates, with_group=True), state
        return info.foreach(group, updates, params, with_group=True), state

    return from_flat(FlatTransform(init, update, name=name, fusion=fusion))


def stateless(
    fn: Callable[[PyTree, PyTree | None], PyTree], *, name: str = "stateless"
) -> GradientTransformation:
    """A stateless transform from a tree-level function ``fn(updates, params) -> updates``.

    Example:
        >>> negate = stateless(lambda u, p: tree_map(torch.neg, u))
    """

    def init(params: PyTree) -> EmptyState:
        return EmptyState()

    def update(
        updates: PyTree, state: EmptyState, params: PyTree | None = None, **extra: Any
    ) -> tuple[PyTree, EmptyState]:
        return fn(updates, params), state

    update.__name__ = name
    return GradientTransformation(init, update)


def stateless_with_tree_map(
    fn: Callable[[Tensor, Tensor | None], Tensor], *, name: str = "stateless"
) -> GradientTransformation:
    """A stateless transform applying ``fn(update, param) -> update`` to every leaf.

    Prefer :func:`stateless_foreach` on hot paths: this calls ``fn`` once per leaf.

    Example:
        >>> sign = stateless_with_tree_map(lambda u, p: torch.sign(u))
    """

    def per_group(updates: list[Tensor], params: list[Tensor] | None) -> list[Tensor]:
        if params is None:
            return [fn(u, None) for u in updates]
        return [fn(u, p) for u, p in zip(updates, params, strict=True)]

    return stateless_foreach(per_group, name=name)


def apply_updates(params: PyTree, updates: PyTree, *, donate: bool = False) -> PyTree:
    """Return ``params + updates`` leaf by leaf, in each parameter's dtype.

    Args:
        params: the parameter tree.
        updates: a tree with the same structure.
        donate: add in place into ``params`` (the caller gives up the old parameters).
            The values are bitwise the same either way.

    Example:
        >>> params = apply_updates(params, updates)  # doctest: +SKIP
    """
    p_leaves, info = flatten(params, donate=donate)
    u_leaves = flatten_like(updates, info, what="updates", against="params")
    return info.unflatten(add_updates(p_leaves, u_leaves, info))


def add_updates(params: list[Tensor], updates: list[Tensor], info: TreeInfo) -> list[Tensor]:
    """Flat ``params + updates`` in the parameters' dtypes, in place when ``info.donate``."""

    def add(ps: list[Tensor], us: list[Tensor]) -> list[Tensor]:
        us = [u if u.dtype == p.dtype else u.to(p.dtype) for p, u in zip(ps, us, strict=True)]
        return fe.add(ps, us, info.donate)

    return info.foreach(add, params, updates)
