"""Pytree helpers: flatten once, name leaves by dotted path, group leaves for foreach math.

Every transform in a chain works on the same flat list of tensors. The tree is flattened
once per ``update`` by the outermost transform; the :class:`TreeInfo` that comes with the
leaves carries the tree structure, the dotted leaf paths (computed lazily and cached per
structure) and the leaf indices grouped by ``(device, dtype)``, which is how ``torch._foreach_*``
ops and torch's fused optimizer kernels want their inputs.

Custom pytree nodes (the optimizer state records) are registered in optree's ``"functrain"``
namespace; :func:`tree_map` is ``optree.tree_map`` in that namespace, so that moving a state
between devices is ``tree_map(lambda t: t.to("cuda"), state)``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import optree
import torch
from torch import Tensor

__all__ = [
    "NAMESPACE",
    "TreeInfo",
    "flatten",
    "flatten_like",
    "foreach_clone",
    "global_norm",
    "leaf_paths",
    "tree_map",
]

NAMESPACE = "functrain"

PyTree = Any


def tree_map(fn: Callable[..., Any], tree: PyTree, *rest: PyTree) -> PyTree:
    """Map ``fn`` over the leaves of ``tree`` (and ``rest``), seeing through functrain states.

    Args:
        fn: function applied to each leaf (one leaf from each tree).
        tree: any pytree, including functrain optimizer states.
        *rest: further trees with the same structure.

    Example:
        >>> state = tree_map(lambda t: t.to("cpu"), state)  # doctest: +SKIP
    """
    return optree.tree_map(fn, tree, *rest, namespace=NAMESPACE)


def _entry_str(entry: Any) -> str:
    return str(entry)


@functools.lru_cache(maxsize=128)
def leaf_paths(treespec: optree.PyTreeSpec) -> tuple[str, ...]:
    """Dotted path of every leaf of ``treespec``, in flattening order.

    A dict key or attribute is written as is and a sequence index as its number, so
    ``{"backbone": {"conv": {"weight": w}}}`` and ``dict(model.named_parameters())`` both
    name their leaf ``"backbone.conv.weight"``.
    """
    return tuple(".".join(_entry_str(e) for e in path) for path in treespec.paths())


@attrs.frozen
class TreeInfo:
    """What every transform of a chain needs to know about the flattened tree.

    Attributes:
        treespec: the optree structure, used to unflatten the result.
        groups: leaf indices grouped by ``(device, dtype)``, groups in order of first
            appearance; foreach ops and fused kernels run once per group.
        donate: whether the caller gave up the incoming updates and state, so that transforms
            may overwrite their buffers in place. Results are bitwise identical either way.
        multipliers: ``(lr_mult, decay_mult)`` of each group, or ``None`` (all 1). Set by a
            chain that contains :func:`functrain.mask_multipliers`, whose groups are then
            refined by multiplier values (like torch param groups); the learning-rate and
            weight-decay transforms read them.
        members: the size of the leading member axis every leaf carries when the tree
            holds stacked ensemble members (set by :func:`functrain.ensemble`), else
            ``None``. Transforms that reduce (a global norm, a trust ratio, a finiteness
            check) reduce per member when it is set.
    """

    treespec: optree.PyTreeSpec
    groups: tuple[tuple[int, ...], ...]
    donate: bool = False
    multipliers: tuple[tuple[float, float], ...] | None = None
    members: int | None = None

    def group_multipliers(self, group: int) -> tuple[float, float]:
        """``(lr_mult, decay_mult)`` of group number ``group``."""
        return (1.0, 1.0) if self.multipliers is None else self.multipliers[group]

    def with_multipliers(self, per_leaf: Sequence[tuple[float, float]]) -> TreeInfo:
        """This tree with its groups refined by each leaf's ``(lr_mult, decay_mult)``."""
        groups: dict[tuple[int, tuple[float, float]], list[int]] = {}
        for g, idx in enumerate(self.groups):
            for i in idx:
                groups.setdefault((g, tuple(per_leaf[i])), []).append(i)
        return attrs.evolve(
            self,
            groups=tuple(tuple(idx) for idx in groups.values()),
            multipliers=tuple(key[1] for key in groups),
        )

    @property
    def paths(self) -> tuple[str, ...]:
        """Dotted leaf paths, in flattening order."""
        return leaf_paths(self.treespec)

    @property
    def num_leaves(self) -> int:
        return self.treespec.num_leaves

    def unflatten(self, leaves: Sequence[Any]) -> PyTree:
        """Rebuild the tree from a flat list of leaves."""
        return optree.tree_unflatten(self.treespec, list(leaves))

    def split(self, xs: Sequence[Tensor]) -> list[list[Tensor]]:
        """Split a flat list (in leaf order) into one list per ``(device, dtype)`` group."""
        if len(self.groups) == 1:
            return [list(xs)]
        return [[xs[i] for i in idx] for idx in self.groups]

    def merge(self, per_group: Sequence[Sequence[Any]]) -> list[Any]:
        """Inverse of :meth:`split`: per-group lists back into one list in leaf order."""
        if len(self.groups) == 1:
            return list(per_group[0])
        out: list[Any] = [None] * self.num_leaves
        for idx, items in zip(self.groups, per_group, strict=True):
            for i, item in zip(idx, items, strict=True):
                out[i] = item
        return out

    def foreach(
        self, fn: Callable[..., Any], *lists: Sequence[Tensor], with_group: bool = False
    ) -> Any:
        """Apply ``fn`` once per ``(device, dtype)`` group and merge the results.

        ``fn`` receives one sub-list per input list (preceded by the group's number when
        ``with_group``) and returns a list, or a tuple of lists, each with one tensor per leaf
        of the group. The result has the same shape in leaf order. With a single group (the
        common case) this is just ``fn(*lists)``.
        """
        if len(self.groups) == 1:
            return fn(0, *lists) if with_group else fn(*lists)
        results = [
            fn(g, *parts) if with_group else fn(*parts)
            for g, parts in enumerate(zip(*(self.split(xs) for xs in lists), strict=True))
        ]
        if isinstance(results[0], tuple):
            return tuple(self.merge(r) for r in zip(*results, strict=True))
        return self.merge(results)


def _group_indices(leaves: Sequence[Tensor]) -> tuple[tuple[int, ...], ...]:
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, leaf in enumerate(leaves):
        groups.setdefault((leaf.device, leaf.dtype), []).append(i)
    return tuple(tuple(idx) for idx in groups.values())


def flatten(tree: PyTree, *, donate: bool = False) -> tuple[list[Tensor], TreeInfo]:
    """Flatten a pytree of tensors once, checking that every leaf is a tensor.

    Args:
        tree: a pytree (dicts, lists, tuples, namedtuples, functrain records) of tensors.
            ``None`` entries are empty subtrees, as in optree.
        donate: recorded in the returned :class:`TreeInfo` (see there).

    Returns:
        The leaves in flattening order and the :class:`TreeInfo` describing them.

    Raises:
        ValueError: a leaf is not a tensor, or is sparse; the message names its dotted path.

    Example:
        >>> leaves, info = flatten({"w": torch.ones(2), "b": torch.zeros(())})
        >>> info.paths
        ('b', 'w')
    """
    leaves, treespec = optree.tree_flatten(tree, namespace=NAMESPACE)
    _check_leaves(leaves, treespec)
    return leaves, TreeInfo(treespec, _group_indices(leaves), donate)


def _check_leaves(leaves: Sequence[Any], treespec: optree.PyTreeSpec) -> None:
    for i, leaf in enumerate(leaves):
        if not isinstance(leaf, Tensor):
            path = leaf_paths(treespec)[i]
            raise ValueError(
                f"leaf {path!r} is a {type(leaf).__name__}, not a torch.Tensor; "
                "every leaf of a parameter or update tree must be a tensor"
            )
        if leaf.layout != torch.strided:
            path = leaf_paths(treespec)[i]
            raise ValueError(
                f"leaf {path!r} is a {leaf.layout} tensor; functrain's transforms need dense "
                "tensors (for sparse gradients, densify them with .to_dense())"
            )


def flatten_like(
    tree: PyTree, info: TreeInfo, what: str = "params", against: str = "updates"
) -> list[Tensor]:
    """Flatten ``tree``, which must have the structure ``info`` describes.

    Args:
        tree: the tree to flatten.
        info: the structure it must have.
        what: what ``tree`` is, for the error message.
        against: what ``info`` was taken from, for the error message.

    Raises:
        ValueError: the structures differ; the message names the first differing leaf path.
    """
    leaves, treespec = optree.tree_flatten(tree, namespace=NAMESPACE)
    if treespec != info.treespec:
        raise ValueError(
            f"{what} tree does not match the {against} tree: "
            + describe_mismatch(leaf_paths(treespec), info.paths)
        )
    _check_leaves(leaves, treespec)
    return leaves


def describe_mismatch(got: Sequence[str], expected: Sequence[str]) -> str:
    """One line naming the first leaf path where two path lists differ."""
    missing = [p for p in expected if p not in set(got)]
    extra = [p for p in got if p not in set(expected)]
    parts = []
    if missing:
        parts.append(
            f"missing leaf {missing[0]!r}"
            + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    if extra:
        parts.append(
            f"unexpected leaf {extra[0]!r}"
            + (f" (+{len(extra) - 1} more)" if len(extra) > 1 else "")
        )
    if not parts:
        for i, (a, b) in enumerate(zip(got, expected, strict=False)):
            if a != b:
                parts.append(f"leaf {i} is {a!r}, expected {b!r}")
                break
        else:
            parts.append("same leaf paths but a different container structure")
    return f"{len(got)} leaves vs {len(expected)} expected; " + ", ".join(parts)


def foreach_clone(tensors: Sequence[Tensor]) -> list[Tensor]:
    """Bitwise copies of ``tensors`` in one foreach launch per call (``x * 1`` is exact)."""
    if not tensors:
        return []
    if _vmapping():
        return [t.clone() for t in tensors]
    return list(torch._foreach_mul(list(tensors), 1))


def _vmapping() -> bool:
    """``functrain.transforms.foreach.vmapping`` (this module sits below transforms): under
    ``torch.func.vmap`` foreach kernels have no batching rule, so the plain ops run per leaf."""
    if torch._C._functorch.peek_interpreter_stack() is None or torch.compiler.is_compiling():
        return False
    vmap = torch._C._functorch.TransformType.Vmap
    return any(i.key() == vmap for i in torch._C._functorch.get_interpreter_stack())


def global_norm(
    tensors: Sequence[Tensor], norm_type: float = 2.0, info: TreeInfo | None = None
) -> Tensor:
    """The norm of all ``tensors`` viewed as one vector, as ``clip_grad_norm_`` computes it.

    The per-tensor norms are taken with ``torch._foreach_norm`` once per ``(device, dtype)``
    group, stacked in group order on the first tensor's device and reduced with the same
    ``norm_type``; this is torch's own order of operations, so the result is bitwise the one
    ``torch.nn.utils.clip_grad_norm_`` computes. No host sync.

    Args:
        tensors: the tensors (typically gradients).
        norm_type: ``p`` of the p-norm; ``float("inf")`` for the max-norm.
        info: grouping of ``tensors``; computed when omitted.

    Example:
        >>> global_norm([torch.ones(3), torch.ones(1)])
        tensor(2.)
    """
    if not tensors:
        return torch.tensor(0.0)
    if info is None:
        info = TreeInfo(optree.tree_structure(list(tensors)), _group_indices(tensors))
    first_device = tensors[0].device
    norms: list[Tensor] = []
    for part in info.split(tensors):
        if _vmapping():
            norms.extend(torch.linalg.vector_norm(t, norm_type) for t in part)
        else:
            norms.extend(torch._foreach_norm(part, norm_type))
    return torch.linalg.vector_norm(torch.stack([n.to(first_device) for n in norms]), norm_type)
