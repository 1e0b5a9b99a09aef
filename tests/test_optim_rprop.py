"""Rprop parity with torch.optim.Rprop over 100 steps, on every path (see check_parity)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tests.test_optimizers_torch import check_parity
from tests.test_parity_torch import clips, dtypes


@given(
    lr=st.sampled_from([1e-3, 1e-2, 0.1]),
    etas=st.sampled_from([(0.5, 1.2), (0.3, 1.5), (0.9, 1.01)]),
    step_sizes=st.sampled_from([(1e-6, 50.0), (1e-3, 0.05), (0.0, 1.0)]),
    maximize=st.booleans(),
    clip=clips,
    dtype=dtypes,
    seed=st.integers(0, 2**16),
)
def test_rprop_parity(lr, etas, step_sizes, maximize, clip, dtype, seed):
    kw = dict(lr=lr, etas=etas, step_sizes=step_sizes, maximize=maximize)
    check_parity("rprop", kw, clip, dtype, seed, fused_bitwise_with_torch=True)
