"""``torch.optim.SparseAdam``: not supported; :func:`sparse_adam` explains why and what to use.

torch's SparseAdam updates the moments and the parameter only at the indices present in a
*sparse* gradient (``nn.Embedding(sparse=True)``), a "lazy" Adam. functrain's transforms
work on dense tensors with ``torch._foreach_*`` ops and fused kernels, neither of which
takes sparse tensors, and a dense gradient carries no "present" mask (torch's SparseAdam
itself refuses dense gradients). Rather than an Adam that silently densifies, the name is
rejected with a clear error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from functrain.transforms.base import GradientTransformation
from functrain.transforms.optim_parts import refuse_members
from functrain.transforms.validation import check_betas, check_positive

__all__ = ["sparse_adam"]

Schedule = Callable[[Any], Any]


def sparse_adam(
    lr: float | Schedule = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    maximize: bool = False,
) -> GradientTransformation:
    """``torch.optim.SparseAdam`` is not supported: this always raises ``ValueError``.

    The arguments are checked first with torch's rules (``lr > 0``, ``eps > 0``, betas in
    ``[0, 1)``), so a misspelt config fails on the argument, then the error explains the
    choice: functrain's transforms are dense (foreach ops and fused kernels have no sparse
    form), and a dense gradient cannot say which rows were "present". Use ``adam`` /
    ``adamw`` with a dense gradient (``nn.Embedding(sparse=False)``): every row's moments
    then decay each step, where SparseAdam decays only the rows in the batch.

    Raises:
        ValueError: always.

    Example:
        >>> sparse_adam()  # doctest: +SKIP
        ValueError: SparseAdam is not supported ...
    """
    refuse_members(
        "SparseAdam",
        "functrain does not implement SparseAdam (its transforms are dense), in an ensemble or not",
        lr=lr,
        betas=betas,
        eps=eps,
    )
    if not callable(lr):
        check_positive("lr", lr)
    check_positive("eps", eps)
    check_betas(betas)
    raise ValueError(
        "SparseAdam is not supported by functrain: its transforms work on dense tensors "
        "(torch._foreach_* ops and fused kernels have no sparse form) and a dense gradient "
        "cannot mark which rows were present, so torch's lazy per-row update cannot be "
        "reproduced. Use adam(...) or adamw(...) with dense gradients "
        "(nn.Embedding(sparse=False)); note that Adam then decays every row's moments each "
        "step, where SparseAdam touches only the rows in the batch."
    )
