"""Adadelta parity with torch.optim.Adadelta over 100 steps, on every path (see check_parity)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tests.test_optimizers_torch import check_parity
from tests.test_parity_torch import clips, dtypes


@given(
    lr=st.sampled_from([0.1, 1.0]),
    rho=st.sampled_from([0.0, 0.5, 0.9, 0.99, 1.0]),
    eps=st.sampled_from([1e-6, 1e-3]),
    weight_decay=st.sampled_from([0.0, 1e-4, 0.1]),
    maximize=st.booleans(),
    clip=clips,
    dtype=dtypes,
    seed=st.integers(0, 2**16),
)
def test_adadelta_parity(lr, rho, eps, weight_decay, maximize, clip, dtype, seed):
    kw = dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize)
    check_parity("adadelta", kw, clip, dtype, seed, fused_bitwise_with_torch=True)
