"""L-BFGS: parity with torch.optim.LBFGS, and exactly where the two differ.

functrain's ``lbfgs`` runs torch's step operation by operation on private copies of the
parameters, and returns ``updates = new - params`` (corrected so that ``params + updates``
lands on ``new`` wherever a float that does so exists). The one difference from torch is
therefore that rounding: torch keeps its iterate in the parameters, functrain hands back
``params + updates``, which differs by an ulp at entries where no exact update exists (an
entry whose magnitude grows past twice its old value with a sign change, say).

* test_lbfgs_bitwise_with_torch_rounded_like_apply_updates: a torch LBFGS whose parameters
  are re-rounded the same way after each ``step`` is matched BITWISE over 30 steps, for
  hypothesis-drawn options (fixed step and strong Wolfe, history sizes, tolerances, lr,
  float32/float64, value_fn or loss_fn, with or without the caller's loss).
  Bitwise on every machine: both sides run the same kernels on the same inputs in the same
  order (the loss, its gradient and every L-BFGS operation), so whatever kernels the machine
  picks, it picks them for both.
* test_lbfgs_close_to_plain_torch: against unmodified torch, float64. L-BFGS amplifies that
  ulp through its curvature pairs (``y = g_new - g_old`` cancels near convergence) and its
  host-side stopping tests (``ys > 1e-10``, ``|loss - prev_loss| < tolerance_change``, the
  Wolfe comparisons of nearly equal losses): how much depends on the problem, the options
  and the machine's kernels (ulp-level differences in the matmul and reductions move where
  the cancellation lands). Each case therefore runs only as many steps as stay away from
  that regime, where the amplification measured on three kernel sets (AVX-512, AVX2 and
  ``ATEN_CPU_CAPABILITY=default``, each with MKL / oneDNN restricted to match) and twelve
  seeds is small, and its tolerance is that measurement with a margin. There the number of
  function evaluations is robust too (no stopping test near its threshold: the counts
  agreed on every seed and kernel set) and is compared exactly. Beyond it, with torch's
  defaults (20 iterations per step to ``tolerance_change``), the two runs are not
  comparable: over 10 steps the iterates drift 3e-5 to 0.4 apart and the evaluation counts
  by a few, depending on the kernels. In float32 a flipped stopping test can change the
  number of iterations within a few steps; the bitwise test above is the float32 check.
"""

from __future__ import annotations

import optree
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import functrain as ft
from functrain.transforms.lbfgs import lbfgs
from tests.test_optimizers_extra import single_thread  # noqa: F401 (autouse fixture)


def classification_problem(dtype, seed, steps, n=32):
    """Softmax regression with L2, a fresh mini-batch each step (the loss moves)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(steps, n, 5, generator=gen, dtype=dtype)
    true_w = torch.randn(5, 3, generator=gen, dtype=dtype)
    y = (x @ true_w + 0.5 * torch.randn(steps, n, 3, generator=gen, dtype=dtype)).argmax(-1)
    p0 = {
        "w": 0.1 * torch.randn(5, 3, generator=gen, dtype=dtype),
        "b": torch.zeros(3, dtype=dtype),
    }

    def loss(p, i):
        logits = x[i] @ p["w"] + p["b"]
        return torch.nn.functional.cross_entropy(logits, y[i]) + 1e-2 * (p["w"] ** 2).sum()

    return p0, loss


def rounded_like_apply_updates(new, old):
    """``old + u`` with ``u`` chosen as ``lbfgs`` chooses it (the additive update form)."""
    u = new - old
    for _ in range(2):
        u = u + (new - (old + u))
    return old + u


def run_torch(kw, p0, loss, steps, reround):
    params = {k: torch.nn.Parameter(v.clone()) for k, v in p0.items()}
    # torch's flat vector follows its parameter list: use the tree's leaf order.
    leaves = optree.tree_leaves(params)
    opt = torch.optim.LBFGS(leaves, **kw)
    for i in range(steps):
        before = [p.detach().clone() for p in leaves]

        def closure(i=i):
            opt.zero_grad()
            value = loss(params, i)
            value.backward()
            return value

        opt.step(closure)
        if reround:
            with torch.no_grad():
                for p, old in zip(leaves, before, strict=True):
                    p.copy_(rounded_like_apply_updates(p.detach(), old))
    return {k: v.detach() for k, v in params.items()}, opt.state[leaves[0]]


def run_functrain(kw, p0, loss, steps, *, use_loss_fn=False, pass_loss=True, donate=False):
    tx = lbfgs(**kw)
    p = {k: v.clone() for k, v in p0.items()}
    state = tx.init(p)
    for i in range(steps):

        def value_fn(q, i=i):
            grads, value = torch.func.grad_and_value(lambda r: loss(r, i))(q)
            return value, grads

        value, grads = value_fn(p)
        extra = {"loss_fn": lambda q, i=i: loss(q, i)} if use_loss_fn else {"value_fn": value_fn}
        if pass_loss:
            extra["loss"] = value
        if donate:
            p, state = ft.apply_gradients(tx, p, grads, state, donate=True, fused=False, **extra)
        else:
            updates, state = tx.update(grads, state, p, **extra)
            p = ft.apply_updates(p, updates)
    return p, state


options = dict(
    lr=st.sampled_from([1.0, 0.5, 0.1]),
    max_iter=st.sampled_from([1, 4, 20]),
    history_size=st.sampled_from([1, 3, 100]),
    line_search_fn=st.sampled_from([None, "strong_wolfe"]),
    tolerance_change=st.sampled_from([1e-9, 1e-5]),
    tolerance_grad=st.sampled_from([1e-7, 1e-3]),
)


@given(
    **options,
    dtype=st.sampled_from([torch.float32, torch.float64]),
    use_loss_fn=st.booleans(),
    pass_loss=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_lbfgs_bitwise_with_torch_rounded_like_apply_updates(
    lr,
    max_iter,
    history_size,
    line_search_fn,
    tolerance_change,
    tolerance_grad,
    dtype,
    use_loss_fn,
    pass_loss,
    seed,
):
    kw = dict(
        lr=lr,
        max_iter=max_iter,
        history_size=history_size,
        line_search_fn=line_search_fn,
        tolerance_change=tolerance_change,
        tolerance_grad=tolerance_grad,
    )
    steps = 30
    p0, loss = classification_problem(dtype, seed, steps)
    expected, torch_state = run_torch(kw, p0, loss, steps, reround=True)
    ours, state = run_functrain(kw, p0, loss, steps, use_loss_fn=use_loss_fn, pass_loss=pass_loss)
    for k in p0:
        assert torch.equal(ours[k], expected[k]), f"leaf {k!r} differs from torch"
    assert int(state.func_evals) == torch_state["func_evals"]
    assert int(state.n_iter) == torch_state["n_iter"]
    assert len(state.old_dirs) == len(torch_state["old_dirs"])


@pytest.mark.parametrize(
    "kw, steps, rtol",
    [
        # 5 evaluations per step (max_iter), far from convergence: measured <= 3.2e-15 over
        # 10 steps on the three kernel sets (seed 0; up to 1.6e-12 on other seeds)
        (dict(lr=0.5, max_iter=5, history_size=3), 10, 1e-13),
        # measured <= 1.3e-11 on the three kernel sets (seed 0; up to 3e-11 on other seeds)
        (
            dict(lr=0.1, max_iter=7, history_size=2, line_search_fn="strong_wolfe"),
            10,
            1e-10,
        ),
        # torch's defaults, 20 iterations per step: each step runs to tolerance_change, and
        # from the 4th step on the history holds pairs from converged iterates, whose
        # cancellation amplifies an ulp ~100x per step (measured at 3 / 4 / 5 steps, worst
        # over 12 seeds and the three kernel sets: 2.3e-11 / 2.3e-9 / 5.6e-7). Three steps.
        (dict(line_search_fn="strong_wolfe"), 3, 1e-9),
        (dict(), 3, 1e-9),
    ],
)
def test_lbfgs_close_to_plain_torch(kw, steps, rtol):
    p0, loss = classification_problem(torch.float64, 0, steps, n=64)
    expected, torch_state = run_torch(kw, p0, loss, steps, reround=False)
    ours, state = run_functrain(kw, p0, loss, steps)
    for k in p0:
        err = ((ours[k] - expected[k]).abs().max() / expected[k].abs().max()).item()
        assert err <= rtol, f"leaf {k!r}: relative error {err:.3g} > {rtol:g}"
    # Robust in this range (see the module docstring): no stopping test is near its threshold.
    assert int(state.func_evals) == torch_state["func_evals"]
    assert int(state.n_iter) == torch_state["n_iter"]


def test_lbfgs_pure_and_donating_paths_are_bitwise_equal():
    kw = dict(lr=1.0, history_size=5, line_search_fn="strong_wolfe")
    p0, loss = classification_problem(torch.float32, 3, 10)
    pure, _ = run_functrain(kw, p0, loss, 10)
    donated, _ = run_functrain(kw, p0, loss, 10, donate=True)
    for k in p0:
        assert torch.equal(pure[k], donated[k])


def test_lbfgs_does_not_modify_its_inputs_and_records_the_loss():
    p0, loss = classification_problem(torch.float64, 0, 1)
    tx = lbfgs(line_search_fn="strong_wolfe")
    state = tx.init(p0)
    snapshot = optree.tree_map(torch.clone, p0)
    grads, value = torch.func.grad_and_value(lambda r: loss(r, 0))(p0)
    grads_snapshot = optree.tree_map(torch.clone, grads)
    _, new_state = tx.update(grads, state, p0, value_fn=lambda q: (loss(q, 0), grads), loss=value)
    for k in p0:
        assert torch.equal(p0[k], snapshot[k]) and torch.equal(grads[k], grads_snapshot[k])
    assert new_state.loss == value
    assert state.n_iter.item() == 0 and new_state.n_iter.item() > 0


def test_lbfgs_scheduled_lr_is_read_each_update():
    p0, loss = classification_problem(torch.float64, 0, 3)
    constant, _ = run_functrain(dict(lr=0.3, max_iter=3), p0, loss, 3)
    scheduled, state = run_functrain(dict(lr=lambda step: 0.3, max_iter=3), p0, loss, 3)
    for k in p0:
        assert torch.equal(constant[k], scheduled[k])
    assert state.lr.item() == 0.3 and state.count.item() == 3


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: lbfgs(lr=-1.0), "lr"),
        (lambda: lbfgs(max_iter=0), "max_iter"),
        (lambda: lbfgs(max_eval=0), "max_eval"),
        (lambda: lbfgs(history_size=0), "history_size"),
        (lambda: lbfgs(tolerance_grad=-1.0), "tolerance_grad"),
        (lambda: lbfgs(tolerance_change=-1.0), "tolerance_change"),
        (lambda: lbfgs(line_search_fn="armijo"), "line_search_fn"),
    ],
)
def test_lbfgs_invalid_hyperparameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_lbfgs_needs_a_closure_and_one_dtype():
    params = {"w": torch.ones(2)}
    tx = lbfgs()
    state = tx.init(params)
    with pytest.raises(ValueError, match="value_fn"):
        tx.update(params, state, params)
    with pytest.raises(ValueError, match="exactly one"):
        tx.update(
            params, state, params, value_fn=lambda p: (0.0, p), loss_fn=lambda p: p["w"].sum()
        )
    with pytest.raises(ValueError, match="one device with one dtype.*'w'"):
        tx.init({"a": torch.ones(2), "w": torch.ones(2, dtype=torch.float64)})
