"""Time one training step of N ensemble members: stacked, N sequential torch loops, vmap.

N copies of a 64-128-128-10 MLP (ReLU), a batch of 64, cross-entropy, global-norm clipping
at 1.0 and AdamW with a learning rate per member (log-spaced from 1e-4 to 1e-2). Every
column is a full step: forward, backward, clip, update.

Columns:
  stacked     functrain.make_ensemble_train_step: one torch.func.vmap over the members of
              the forward, one backward pass, then one apply_gradients of
              ensemble(chain(clip(1.0), adamw(lr=<N values>)), N) on the stacked tree
  sequential  N separate models, each its own plain torch loop: zero_grad, forward,
              backward, clip_grad_norm_(1.0), torch.optim.AdamW(lr=lr_i).step() (torch's
              default implementation for the device)
  vmap        the same vmapped forward and backward, then torch.func.vmap over the members of
              an unbatched apply_gradients(chain(clip(1.0), adamw(lr)), ...) whose state
              holds each member's lr (set_hyperparam on the vmapped init)
  one lr      the stacked step with one lr shared by all members (not a sweep: what an
              ensemble of one configuration costs; torch's fused AdamW kernel runs)

Printed: the median ms per step of each column (rounds interleaved, so that drifting
machine load falls on every column alike) and the ratios sequential/stacked,
vmap/stacked and sequential/one lr.

Usage: python benchmarks/ensemble.py [--members 4 16 64] [--repeats R] [--device cuda]
       [--threads T] [--batch-per-member]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

import functrain as ft

BATCH, MAX_NORM = 64, 1.0


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10)
    )


def loss_fn(forward, batch):
    x, y = batch
    return nn.functional.cross_entropy(forward(x), y)


def member_lrs(n: int) -> Tensor:
    return torch.logspace(-4, -2, n, dtype=torch.float64)


def data(n: int, per_member: bool, device: torch.device) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(0)
    lead = (n,) if per_member else ()
    x = torch.randn(*lead, BATCH, 64, generator=gen)
    y = torch.randint(0, 10, (*lead, BATCH), generator=gen)
    return x.to(device), y.to(device)


def stacked_step(
    n: int, per_member: bool, device: torch.device, one_lr: bool = False
) -> Callable[[], None]:
    params, buffers, model = ft.init_members(mlp, range(n), device=device)
    lr = 1e-3 if one_lr else member_lrs(n)
    tx = ft.ensemble(ft.chain(ft.clip(MAX_NORM), ft.adamw(lr=lr)), n)
    state = ft.TrainState(params=params, buffers=buffers, opt_state=tx.init(params))
    step = ft.make_ensemble_train_step(model, loss_fn, tx, n, batch_per_member=per_member)
    batch = data(n, per_member, device)

    def run() -> None:
        nonlocal state
        state, _ = step(state, batch)

    return run


def sequential_step(n: int, per_member: bool, device: torch.device) -> Callable[[], None]:
    models, optimizers = [], []
    for i, lr in enumerate(member_lrs(n).tolist()):
        torch.manual_seed(i)
        model = mlp().to(device)
        models.append(model)
        optimizers.append(torch.optim.AdamW(model.parameters(), lr=lr))
    x, y = data(n, per_member, device)

    def run() -> None:
        for i, (model, opt) in enumerate(zip(models, optimizers, strict=True)):
            opt.zero_grad()
            xi, yi = (x[i], y[i]) if per_member else (x, y)
            nn.functional.cross_entropy(model(xi), yi).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM)
            opt.step()

    return run


def vmap_step(n: int, per_member: bool, device: torch.device) -> Callable[[], None] | str:
    """The vmap path, or why it cannot run (printed as "n/a")."""
    params, _, model = ft.init_members(mlp, range(n), device=device)
    tx = ft.chain(ft.clip(MAX_NORM), ft.adamw(lr=1e-3))
    batch = data(n, per_member, device)

    def member_loss(p: dict[str, Tensor], b: tuple[Tensor, Tensor]) -> Tensor:
        x, y = b
        return nn.functional.cross_entropy(torch.func.functional_call(model, p, (x,)), y)

    losses = torch.func.vmap(member_loss, in_dims=(0, 0 if per_member else None))

    def grads_fn(p: dict[str, Tensor], b: tuple[Tensor, Tensor]) -> tuple[list[Tensor], Tensor]:
        # What the stacked step does: one backward pass of the members' summed losses.
        leaves = {k: v.detach().requires_grad_(True) for k, v in p.items()}
        loss = losses(leaves, b)
        grads = torch.autograd.grad(loss.sum(), list(leaves.values()))
        return dict(zip(leaves, grads, strict=True)), loss.detach()

    update = torch.func.vmap(lambda p, g, s: ft.apply_gradients(tx, p, g, s))
    try:
        state = torch.func.vmap(tx.init)(params)
        # Each member's lr in its slice of the state: the vmapped update reads lr[i].
        state = ft.set_hyperparam(state, "lr", member_lrs(n).to(device))
        grads, _ = grads_fn(params, batch)
        update(params, grads, state)
    except Exception as err:  # the vmap work of issue 13 not in yet: say so, do not fail
        return f"{type(err).__name__}: {str(err).splitlines()[0][:100]}"

    def run() -> None:
        nonlocal params, state
        grads, _ = grads_fn(params, batch)
        params, state = update(params, grads, state)

    return run


def median_ms(
    rows: dict[str, Callable[[], None]], repeats: int, steps: int, device: torch.device
) -> dict[str, float]:
    """Median wall time per step of each row, rounds interleaved."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for fn in rows.values():
        for _ in range(3):
            fn()
    sync()
    times: dict[str, list[float]] = {label: [] for label in rows}
    for _ in range(repeats):
        for label, fn in rows.items():
            start = time.perf_counter()
            for _ in range(steps):
                fn()
            sync()
            times[label].append((time.perf_counter() - start) / steps)
    return {label: statistics.median(ts) * 1e3 for label, ts in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, nargs="+", default=[4, 16, 64])
    parser.add_argument("--repeats", type=int, default=15, help="interleaved rounds")
    parser.add_argument("--steps", type=int, default=5, help="steps per round and column")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--batch-per-member", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(
        f"ensemble step: N x MLP 64-128-128-10, batch {BATCH}"
        f"{' per member' if args.batch_per_member else ' shared'}, clip({MAX_NORM}) + AdamW "
        f"with a per-member lr; {device}, {torch.get_num_threads()} thread(s), torch "
        f"{torch.__version__}; median ms/step of {args.repeats} rounds x {args.steps} steps"
    )
    header = (
        f"{'N':>4}  {'stacked':>9}  {'sequential':>10}  {'vmap':>9}  {'one lr':>9}  "
        f"{'seq/stacked':>11}  {'vmap/stacked':>12}  {'seq/one lr':>10}"
    )
    print(header)
    notes = []
    for n in args.members:
        rows = {
            "stacked": stacked_step(n, args.batch_per_member, device),
            "sequential": sequential_step(n, args.batch_per_member, device),
            "one lr": stacked_step(n, args.batch_per_member, device, one_lr=True),
        }
        vmap = vmap_step(n, args.batch_per_member, device)
        if callable(vmap):
            rows["vmap"] = vmap
        else:
            notes.append(f"vmap n/a at N={n}: {vmap}")
        ms = median_ms(rows, args.repeats, args.steps, device)
        stacked, v = ms["stacked"], ms.get("vmap")
        vmap_ms = "n/a" if v is None else f"{v:.3f}"
        vmap_ratio = "n/a" if v is None else f"{v / stacked:.2f}x"
        print(
            f"{n:>4}  {stacked:9.3f}  {ms['sequential']:10.3f}  {vmap_ms:>9}  "
            f"{ms['one lr']:9.3f}  {ms['sequential'] / stacked:10.2f}x  {vmap_ratio:>12}  "
            f"{ms['sequential'] / ms['one lr']:9.2f}x"
        )
    for note in notes:
        print(note)


if __name__ == "__main__":
    main()
