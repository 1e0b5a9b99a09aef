"""ASGD parity with torch.optim.ASGD over 100 steps, on every path (see check_parity)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tests.test_optimizers_torch import check_parity
from tests.test_parity_torch import clips, dtypes


@given(
    lr=st.sampled_from([1e-3, 1e-2, 0.05]),
    lambd=st.sampled_from([1e-4, 1e-2]),
    alpha=st.sampled_from([0.5, 0.75, 1.0]),
    t0=st.sampled_from([0.0, 10.0, 50.5, 1e6]),
    weight_decay=st.sampled_from([0.0, 1e-4, 0.1]),
    maximize=st.booleans(),
    clip=clips,
    dtype=dtypes,
    seed=st.integers(0, 2**16),
)
def test_asgd_parity(lr, lambd, alpha, t0, weight_decay, maximize, clip, dtype, seed):
    kw = dict(lr=lr, lambd=lambd, alpha=alpha, t0=t0, weight_decay=weight_decay, maximize=maximize)
    check_parity("asgd", kw, clip, dtype, seed, fused_bitwise_with_torch=True)
