"""The differentiable path: ``torch.func.grad`` of a validation loss through unrolled
clip + AdamW steps (meta-learning), functrain against torchopt and a hand-written AdamW.

What is measured: the time of one ``torch.func.grad(meta_loss)(params0)``, where
``meta_loss`` runs ``--steps`` (default 5) training steps of an MLP from ``params0`` (inner
gradients by ``torch.func.grad``, then global-norm clip + AdamW, pure: nothing mutated) and
returns the loss on a validation batch. Three implementations of the inner update:

- functrain: ``ft.chain(ft.clip_by_global_norm(max_norm), ft.adamw(...))``, ``tx.update``
  + ``ft.apply_updates`` (the pure path);
- torchopt 0.7.3's functional ``torchopt.chain(torchopt.clip.clip_grad_norm(max_norm),
  torchopt.adamw(...))`` with ``inplace=False`` (a benchmark reference, not a dependency of
  functrain: ``pip install torchopt==0.7.3``; without it the row is skipped with the reason);
- a hand-written pure AdamW + clip, one leaf at a time (the floor a user could write).

The gradients are checked first, in float64 (so that rounding differences are ~1e-13, far
below any difference in the mathematics): the max relative difference (max |a - b| over
max |b|, over all leaves) against the hand-written reference. torchopt computes its clip
coefficient under ``torch.no_grad`` from ``float(total_norm)``, so its meta-gradient treats
the coefficient as a constant: when the clip engages (it does here, by design) torchopt's
gradient differs from the exact one; it is compared with the hand-written reference with the
coefficient detached the same way and with torchopt's float32 bias corrections (``1 - b**t``
from an integer step tensor is computed in float32, a relative error up to ~6e-5 for
``b2 = 0.999``), and its distance from the exact gradient is printed too.
Then the timings, in float32 with one thread: ``--rounds`` interleaved rounds (each
implementation once per round, so load drifts hit all alike), the median per implementation
and its ratio to torchopt's.

Usage (from the repository root)::

    python benchmarks/meta.py [--steps 5] [--rounds 30] [--width 256] [--batch 128]

Timings are only meaningful on an otherwise idle machine (see README, Performance).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch import Tensor
from torch.func import functional_call

import functrain as ft

Params = dict[str, Tensor]
LR, BETAS, EPS, WD, MAX_NORM = 1e-2, (0.9, 0.999), 1e-8, 1e-2, 0.5


def make_problem(
    width: int, batch: int, dtype: torch.dtype
) -> tuple[Params, Callable[[Params], Tensor], Callable[[Params], Tensor]]:
    """An MLP (tanh: no exactly-zero gradient entries, whose sqrt(v) would have an infinite
    derivative), its initial parameters, and train / validation batches."""
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, width),
        torch.nn.Tanh(),
        torch.nn.Linear(width, width),
        torch.nn.Tanh(),
        torch.nn.Linear(width, 10),
    ).to(dtype)
    params = {k: v.detach() for k, v in model.named_parameters()}
    x, xv = (torch.randn(batch, 64, generator=gen, dtype=dtype) for _ in range(2))
    y, yv = (torch.randint(0, 10, (batch,), generator=gen) for _ in range(2))

    def loss(p: Params, inputs: Tensor, labels: Tensor) -> Tensor:
        return torch.nn.functional.cross_entropy(functional_call(model, p, (inputs,)), labels)

    return params, (lambda p: loss(p, x, y)), (lambda p: loss(p, xv, yv))


def functrain_steps(train_loss: Callable, steps: int) -> Callable[[Params], Params]:
    """``params0 -> params`` after ``steps`` pure functrain clip + AdamW steps."""
    tx = ft.chain(ft.clip_by_global_norm(MAX_NORM), ft.adamw(LR, BETAS, EPS, WD))

    def run(p: Params) -> Params:
        state = tx.init(p)
        for _ in range(steps):
            updates, state = tx.update(torch.func.grad(train_loss)(p), state, p)
            p = ft.apply_updates(p, updates)
        return p

    return run


def torchopt_steps(train_loss: Callable, steps: int) -> Callable[[Params], Params]:
    """``params0 -> params`` after ``steps`` torchopt clip + AdamW steps (``inplace=False``)."""
    import torchopt

    tx = torchopt.chain(
        torchopt.clip.clip_grad_norm(MAX_NORM),
        torchopt.adamw(LR, BETAS, EPS, WD),
    )

    def run(p: Params) -> Params:
        state = tx.init(p)
        for _ in range(steps):
            grads = torch.func.grad(train_loss)(p)
            updates, state = tx.update(grads, state, params=p, inplace=False)
            p = torchopt.apply_updates(p, updates, inplace=False)
        return p

    return run


def handwritten_steps(
    train_loss: Callable, steps: int, like_torchopt: bool = False
) -> Callable[[Params], Params]:
    """Pure clip_grad_norm_ + torch.optim.AdamW, leaf by leaf. ``like_torchopt`` does the two
    things torchopt 0.7.3 does differently: the clip coefficient is a constant for the
    derivative, and the bias corrections ``1 - b**t`` are computed in float32 (its step
    count is an integer tensor, and ``pow(float, int tensor)`` gives float32)."""
    b1, b2 = BETAS

    def correction(b: float, t: int) -> float:
        if like_torchopt:
            return float(1 - pow(b, torch.tensor(t)))
        return 1 - b**t

    def run(p: Params) -> Params:
        m = {k: torch.zeros_like(v) for k, v in p.items()}
        v2 = {k: torch.zeros_like(v) for k, v in p.items()}
        for t in range(1, steps + 1):
            g = torch.func.grad(train_loss)(p)
            norm = torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(x) for x in g.values()])
            )
            coef = torch.clamp(MAX_NORM / (norm + 1e-6), max=1.0)
            if like_torchopt:
                coef = coef.detach()
            new = {}
            for k in p:
                gk = g[k] * coef
                m[k] = b1 * m[k] + (1 - b1) * gk
                v2[k] = b2 * v2[k] + (1 - b2) * gk * gk
                denom = v2[k].sqrt() / correction(b2, t) ** 0.5 + EPS
                new[k] = p[k] * (1 - LR * WD) - (LR / correction(b1, t)) * m[k] / denom
            p = new
        return p

    return run


def meta_grad(run: Callable[[Params], Params], val_loss: Callable) -> Callable[[Params], Params]:
    """``params0 -> d val_loss(run(params0)) / d params0``."""
    return torch.func.grad(lambda p0: val_loss(run(p0)))


def rel_diff(a: Params, b: Params) -> float:
    """max |a - b| / max |b| over all leaves (one scale for the whole gradient)."""
    diff = max(float((a[k] - b[k]).abs().max()) for k in b)
    return diff / max(float(b[k].abs().max()) for k in b)


def main(argv: list[str] | None = None) -> int:
    """Check the three gradients, then time them and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    try:
        import torchopt  # noqa: F401
    except ImportError as err:
        torchopt_missing = f"skipped: torchopt not importable ({err}); pip install torchopt==0.7.3"
    else:
        torchopt_missing = None

    # 1. the gradients, in float64
    p0, train_loss, val_loss = make_problem(args.width, args.batch, torch.float64)
    exact = meta_grad(handwritten_steps(train_loss, args.steps), val_loss)(p0)
    detached = meta_grad(handwritten_steps(train_loss, args.steps, True), val_loss)(p0)
    got = meta_grad(functrain_steps(train_loss, args.steps), val_loss)(p0)
    print(f"meta-gradient through {args.steps} clip({MAX_NORM}) + AdamW steps, MLP 64-"
          f"{args.width}-{args.width}-10, batch {args.batch}; max relative difference (float64):")  # fmt: skip
    print(f"  functrain vs hand-written:                     {rel_diff(got, exact):.1e}")
    if torchopt_missing is None:
        topt = meta_grad(torchopt_steps(train_loss, args.steps), val_loss)(p0)
        print(f"  torchopt vs hand-written like torchopt:        {rel_diff(topt, detached):.1e}"
              "  (clip coefficient detached, float32 bias corrections)")  # fmt: skip
        print(f"  torchopt vs hand-written (exact):              {rel_diff(topt, exact):.1e}"
              "  (the two differences above)")  # fmt: skip
    print(f"  hand-written like torchopt vs exact:           {rel_diff(detached, exact):.1e}")

    # The same mathematics in float64 agrees to rounding (measured ~1e-14); 1e-10 leaves room
    # for other kernels while any difference in the computation (a detached term, a float32
    # constant) shows up as 1e-5 or more.
    bad = {"functrain": rel_diff(got, exact)}
    if torchopt_missing is None:
        bad["torchopt"] = rel_diff(topt, detached)
    bad = {k: v for k, v in bad.items() if not v <= 1e-10}
    if bad:
        print(f"meta.py: gradients differ from the reference by more than 1e-10: {bad}")
        return 1

    # 2. the timings, in float32
    p0, train_loss, val_loss = make_problem(args.width, args.batch, torch.float32)
    runs = {
        "functrain": meta_grad(functrain_steps(train_loss, args.steps), val_loss),
        "hand-written per-leaf": meta_grad(handwritten_steps(train_loss, args.steps), val_loss),
    }
    if torchopt_missing is None:
        runs["torchopt 0.7.3"] = meta_grad(torchopt_steps(train_loss, args.steps), val_loss)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for fn in runs.values():  # warm-up (first-call imports and allocations)
        fn(p0)
    for _ in range(args.rounds):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn(p0)
            times[name].append(time.perf_counter() - start)
    med = {name: statistics.median(t) for name, t in times.items()}
    print(f"\ntorch.func.grad time, float32, 1 thread, median of {args.rounds} interleaved rounds;"
          f" load {os.getloadavg()}")  # fmt: skip
    print(f"{'implementation':<24} {'ms':>8} {'vs torchopt':>12}")
    ref = med.get("torchopt 0.7.3")
    for name, t in med.items():
        ratio = f"{t / ref:>12.2f}" if ref else "           -"
        print(f"{name:<24} {t * 1e3:>8.2f} {ratio}")
    if torchopt_missing:
        print(f"{'torchopt 0.7.3':<24} {torchopt_missing}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
