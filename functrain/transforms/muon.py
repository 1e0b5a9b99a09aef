"""Muon as ``torch.optim.Muon`` computes it, and a router for the leaves Muon does not take.

torch's Muon (Keller Jordan's, with torch's defaults) for a 2-d parameter::

    B     = lerp(B, G, 1 - momentum)                     (an EMA, torch's momentum buffer)
    M     = lerp(G, B, momentum) if nesterov else B
    O     = NS_k^{(a,b,c)}(M; eps)                        (Newton-Schulz, in bfloat16)
    param = param * (1 - lr * weight_decay) - lr * ratio(shape) * O

with ``ratio = sqrt(max(1, A/B))`` (``adjust_lr_fn=None``/``"original"``) or
``0.2 * sqrt(max(A, B))`` (``"match_rms_adamw"``) for an ``A x B`` parameter. As
``chain(scale_by_muon(...), scale_by_learning_rate(lr), add_decoupled_decay(lr,
weight_decay))``.

torch rejects parameters that are not 2-d and tells users to give them to another optimizer
(AdamW, say). :func:`muon` does the same unless given ``fallback=``: then the leaves Muon
takes (2-d ones by default, or those a ``mask`` selects) go to Muon and every other leaf to
``fallback``, through :func:`~functrain.transforms.combinators.partition`. That composition
(``muon``) is in :mod:`functrain.transforms.alias`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from functrain.transforms import foreach as fe
from functrain.transforms import optim_parts as parts
from functrain.transforms.base import (
    FlatTransform,
    GradientTransformation,
    from_flat,
    state_record,
    static_field,
)
from functrain.transforms.hyperparams import Schedule, in_force, initial_value, value_at
from functrain.transforms.members import PerMember, per_member
from functrain.transforms.validation import check_momentum, check_nonnegative
from functrain.tree import TreeInfo

# The alias is served by __getattr__ (end of module).
__all__ = ["MuonState", "is_matrix", "muon", "newton_schulz", "scale_by_muon"]  # noqa: F822

# Keller Jordan's constants, as torch.optim.Muon has them.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5
EPS = 1e-7

AdjustLr = str | None


def newton_schulz(
    grad: Tensor,
    ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
    ns_steps: int = NS_STEPS,
    eps: float = EPS,
    dtype: torch.dtype = torch.bfloat16,
) -> Tensor:
    """Approximate orthogonalisation of a 2-d ``grad`` by ``ns_steps`` quintic Newton-Schulz
    iterations, exactly as torch's ``_zeropower_via_newtonschulz`` (same ops, same order).

    ``X = G / max(||G||_F, eps)`` (transposed when tall), then ``k`` times
    ``A = X X^T; X = a X + (b A + c A A) X``. The result is ``U S' V^T`` with ``S'`` roughly
    uniform in (0.5, 1.5) rather than ``U V^T``. ``dtype`` is torch's ``bfloat16`` by
    default; ``torch.float64`` makes it differentiable to finite-difference precision.
    Never modifies ``grad``.
    """
    a, b, c = ns_coefficients
    x = grad.to(dtype)
    tall = grad.size(0) > grad.size(1)
    if tall:
        x = x.T
    # Out of place (torch divides in place into its own copy; same values).
    x = x / x.norm().clamp(min=eps)
    for _ in range(ns_steps):
        gram = x @ x.T
        gram_update = torch.addmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.addmm(x, gram_update, x, beta=a)
    return x.T if tall else x


def adjusted_ratio(adjust_lr_fn: AdjustLr, shape: Sequence[int]) -> float:
    """torch's ``_adjust_lr(1.0, adjust_lr_fn, shape)``: the learning-rate factor of a leaf."""
    rows, cols = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return math.sqrt(max(1, rows / cols))
    return 0.2 * math.sqrt(max(rows, cols))


@state_record
class MuonState:
    """State of :func:`scale_by_muon`.

    Attributes:
        count: number of steps taken (0-d int64); a scheduled momentum is evaluated here.
        momentum: the momentum in force, a 0-d float64 tensor.
        momentum_buffer: one EMA buffer per leaf (torch's ``momentum_buffer``).
        paths: dotted leaf paths the state was built for (static).
    """

    count: Tensor
    momentum: Tensor
    momentum_buffer: tuple[Tensor, ...]
    paths: tuple[str, ...] = static_field()


def _check_ns(
    ns_coefficients: Any, ns_steps: Any, eps: Any, adjust_lr_fn: Any
) -> tuple[float, float, float]:
    if (
        not isinstance(ns_coefficients, tuple | list)
        or len(ns_coefficients) != 3
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in ns_coefficients)
    ):
        raise ValueError(
            f"ns_coefficients must be a tuple of exactly 3 numbers, got {ns_coefficients!r}"
        )
    if isinstance(ns_steps, bool) or not isinstance(ns_steps, int) or not 0 <= ns_steps < 100:
        raise ValueError(
            f"Invalid ns_steps: {ns_steps!r}; the number of Newton-Schulz steps must be an "
            "integer in [0, 100)"
        )
    check_nonnegative("eps", eps)
    if adjust_lr_fn not in (None, "original", "match_rms_adamw"):
        raise ValueError(
            f"Invalid adjust_lr_fn: Adjust learning rate function {adjust_lr_fn!r} is not "
            "supported; use None, 'original' or 'match_rms_adamw'"
        )
    return tuple(float(v) for v in ns_coefficients)  # type: ignore[return-value]


def scale_by_muon(
    momentum: float | Schedule = 0.95,
    nesterov: bool = True,
    ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
    eps: float = EPS,
    ns_steps: int = NS_STEPS,
    adjust_lr_fn: AdjustLr = None,
    *,
    ns_dtype: torch.dtype = torch.bfloat16,
) -> GradientTransformation:
    """Muon's direction for 2-d leaves: ``ratio(shape) * NS(momentum(G))``, as torch.

    ``B = lerp(B, G, 1 - momentum)``; ``M = lerp(G, B, momentum)`` with ``nesterov``, else
    ``B``; the update is ``adjusted_ratio(adjust_lr_fn, shape) * newton_schulz(M)``, cast
    back to the leaf's dtype (exact from bfloat16). Follow it with
    ``scale_by_learning_rate(lr)``.

    Every leaf must be 2-d (``init`` raises ``ValueError`` naming the first that is not);
    use ``muon(..., fallback=...)`` or :func:`~functrain.transforms.combinators.partition`
    for the others. Under :func:`functrain.ensemble` each member's ``[A, B]`` slice of a
    ``[N, A, B]`` leaf is orthogonalised on its own, and ``momentum`` may be per member.

    Args:
        momentum: EMA factor >= 0 (torch's ``momentum``), or a schedule of the step.
        nesterov: use the Nesterov-style ``lerp(G, B, momentum)``.
        ns_coefficients: ``(a, b, c)`` of the quintic iteration.
        eps: lower bound of the Frobenius norm the input is divided by.
        ns_steps: Newton-Schulz iterations, in ``[0, 100)``.
        adjust_lr_fn: ``None``/``"original"`` (``sqrt(max(1, A/B))``) or
            ``"match_rms_adamw"`` (``0.2 * sqrt(max(A, B))``).
        ns_dtype: dtype of the iteration (torch: bfloat16). ``torch.float64`` or
            ``torch.float32`` is not torch's arithmetic but makes the update smooth enough
            to differentiate against finite differences.

    Example:
        >>> tx = chain(scale_by_muon(), scale_by_learning_rate(0.02))
    """
    check_momentum("momentum", momentum, allow_schedule=True)
    momentum = per_member("momentum", momentum)  # per-member values run as a schedule
    eps = per_member("eps", eps)
    # A per-member eps: each member matrix's floor, read once here (a CPU tensor, no sync).
    member_eps = eps.values.tolist() if isinstance(eps, PerMember) else None
    coefficients = _check_ns(
        ns_coefficients, ns_steps, eps if member_eps is None else 0.0, adjust_lr_fn
    )
    if member_eps is not None:
        check_nonnegative("eps", eps, allow_members=True)
        eps = 0.0
    eps = float(eps)

    def orthogonalise(x: Tensor, members: int | None) -> Tensor:
        if members is None:
            return newton_schulz(x, coefficients, ns_steps, eps, ns_dtype).to(x.dtype)
        # One member matrix at a time: the same 2-d kernels as a member's own run (a batched
        # matmul rounds differently, and an ulp of bfloat16 is 4e-3 of the update).
        floors = member_eps or [eps] * members
        return torch.stack(
            [
                newton_schulz(m, coefficients, ns_steps, e, ns_dtype)
                for m, e in zip(x.unbind(0), floors, strict=True)
            ]
        ).to(x.dtype)

    def init(params: list[Tensor], info: TreeInfo) -> MuonState:
        if member_eps is not None:
            parts.check_members(params, per_member("eps", member_eps))
        stacked = info.members is not None  # the member axis is not a matrix dim
        for path, p in zip(info.paths, params, strict=True):
            if p.dim() - stacked != 2:
                shape = tuple(p.shape[1:] if stacked else p.shape)
                raise ValueError(
                    f"Muon only supports 2D parameters whereas leaf {path!r} has size "
                    f"{shape}{' per member' if stacked else ''}; route the other leaves to "
                    "another transform with muon(..., fallback=adamw(...)) or partition"
                )
        device = params[0].device if params else torch.device("cpu")
        return MuonState(
            torch.zeros((), dtype=torch.int64, device=device),
            initial_value(momentum, device),
            parts.zeros(params),
            paths=info.paths,
        )

    def update(
        updates: list[Tensor],
        state: MuonState,
        params: list[Tensor] | None,
        info: TreeInfo,
        **extra: Any,
    ) -> tuple[list[Tensor], MuonState]:
        parts.check_state_paths("scale_by_muon", state.paths, info)
        donate = info.donate
        mom = value_at(momentum, state.count)

        def group(g: list[Tensor], b: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
            b = fe.lerp(b, g, 1 - mom, donate)
            m = fe.lerp(g, b, mom, False) if nesterov else b
            o = [orthogonalise(x, info.members) for x in m]
            stacked = info.members is not None
            ratios = [adjusted_ratio(adjust_lr_fn, x.shape[1:] if stacked else x.shape) for x in o]
            if any(r != 1.0 for r in ratios):
                # Shapes are static: a Python list of factors needs no host sync.
                o = fe.mul(o, ratios, False)
            return o, b

        out, buf = info.foreach(group, updates, list(state.momentum_buffer))
        return out, MuonState(
            state.count + 1, in_force(momentum, mom, state.momentum), tuple(buf), state.paths
        )

    name = (
        f"scale_by_muon(momentum={momentum!r}, nesterov={nesterov}, ns_steps={ns_steps}, "
        f"adjust_lr_fn={adjust_lr_fn!r})"
    )
    return from_flat(FlatTransform(init, update, name=name))


# --- routing -------------------------------------------------------------------------------

Mask = Callable[[str, Tensor], bool]


def is_matrix(path: str, leaf: Tensor) -> bool:
    """The default Muon mask: the leaf is 2-d (under :func:`functrain.ensemble` a mask sees
    one member's slice, so a stacked ``[N, A, B]`` leaf is a matrix)."""
    return leaf.dim() == 2


# The alias (its chain(...)) lives in alias.py, which imports this module.
__getattr__ = parts.reexport_alias(__name__, "muon")
