"""RAdam parity with torch.optim.RAdam over 100 steps, on every path (see check_parity)."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.test_optimizers_torch import check_parity
from tests.test_parity_torch import clips, dtypes


@given(
    lr=st.sampled_from([1e-4, 1e-3, 0.05]),
    # (0.9, 0.6): rho_inf < 5, never rectified; (0.0, 0.99): rectified from step 6.
    betas=st.sampled_from([(0.9, 0.999), (0.5, 0.9), (0.0, 0.99), (0.9, 0.6)]),
    eps=st.sampled_from([1e-8, 1e-3]),
    weight_decay=st.sampled_from([0.0, 1e-4, 0.1]),
    decoupled_weight_decay=st.booleans(),
    maximize=st.booleans(),
    clip=clips,
    dtype=dtypes,
    seed=st.integers(0, 2**16),
)
def test_radam_parity(
    lr, betas, eps, weight_decay, decoupled_weight_decay, maximize, clip, dtype, seed
):
    kw = dict(
        lr=lr,
        betas=betas,
        eps=eps,
        weight_decay=weight_decay,
        decoupled_weight_decay=decoupled_weight_decay,
        maximize=maximize,
    )
    # float32 with a decoupled decay: torch rounds (1 - lr * weight_decay) to float32 (see
    # test_adamw_parity); update() applies the exact decay term.
    decoupled32 = dtype == torch.float32 and decoupled_weight_decay and weight_decay
    check_parity("radam", kw, clip, dtype, seed, update_rtol=2e-5 if decoupled32 else None)
