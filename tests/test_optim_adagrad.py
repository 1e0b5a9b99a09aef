"""Adagrad parity with torch.optim.Adagrad (foreach=False and fused=True) over 100 steps."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tests.test_optimizers_torch import check_parity
from tests.test_parity_torch import clips, dtypes


@given(
    lr=st.sampled_from([1e-3, 1e-2, 0.1]),
    lr_decay=st.sampled_from([0.0, 1e-3, 0.1]),
    weight_decay=st.sampled_from([0.0, 1e-4, 0.1]),
    initial_accumulator_value=st.sampled_from([0.0, 0.1]),
    eps=st.sampled_from([1e-10, 1e-3]),
    maximize=st.booleans(),
    clip=clips,
    dtype=dtypes,
    seed=st.integers(0, 2**16),
)
def test_adagrad_parity(
    lr, lr_decay, weight_decay, initial_accumulator_value, eps, maximize, clip, dtype, seed
):
    kw = dict(
        lr=lr,
        lr_decay=lr_decay,
        weight_decay=weight_decay,
        initial_accumulator_value=initial_accumulator_value,
        eps=eps,
        maximize=maximize,
    )
    # apply_gradients runs torch._fused_adagrad_, the kernel of Adagrad(fused=True): bitwise
    # the same without lr_decay. With lr_decay the decayed lr is computed in float64 before the
    # kernel (it is functrain's learning-rate schedule), where the kernel computes it itself:
    # an ulp of the step size apart at some steps.
    check_parity(
        "adagrad",
        kw,
        clip,
        dtype,
        seed,
        torch_fused=True,
        fused_bitwise_with_torch_fused=lr_decay == 0.0,
    )
