"""A learning-rate sweep in one process: 8 digits CNNs trained at once, one per learning rate.

The 8 members are ``functrain.zoo.DigitsNet`` models (convolutions with BatchNorm) built from
8 seeds, their tensors stacked along a leading member axis. One train step runs the forward
and backward pass of all members with ``torch.func.vmap`` (each member keeps its own
BatchNorm statistics) and one update with ``ensemble(chain(clip(1.0), adamw(lr=<8 values>)),
8)``: each member is clipped by its own gradient norm and stepped with its own learning rate,
log-spaced from 1e-4 to 1e-1. All members see the same batches. At the end the test accuracy
of every member is printed, and the best one is taken out as an ordinary ``nn.Module``.

Usage: python examples/ensemble_digits.py [--epochs N] [--members N] [--seed S]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import Tensor

import functrain as ft
from functrain.zoo import Digits, DigitsNet


def loss_fn(forward, batch):  # written for one member, as for make_train_step
    x, y = batch
    logits = forward(x)
    loss = torch.nn.functional.cross_entropy(logits, y)
    return loss, {"acc": (logits.argmax(-1) == y).float().mean()}


def accuracy(forward, batch):
    x, y = batch
    return (forward(x).argmax(-1) == y).float().mean()


def main(
    epochs: int = 8,
    members: int = 8,
    seed: int = 0,
    batch_size: int = 64,
    threads: int = 1,
    quiet: bool = False,
) -> dict[str, list[float] | float]:
    # Small convolutions gain nothing from intra-op threads on a busy machine.
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    train, test = Digits("train"), Digits("test")
    lrs = torch.logspace(-4, -1, members, dtype=torch.float64)
    seeds = [seed * 1000 + i for i in range(members)]

    params, buffers, model = ft.init_members(DigitsNet, seeds)
    tx = ft.ensemble(ft.chain(ft.clip(1.0), ft.adamw(lr=lrs, weight_decay=1e-4)), members)
    state = ft.TrainState(params=params, buffers=buffers, opt_state=tx.init(params))
    step = ft.make_ensemble_train_step(model, loss_fn, tx, members)
    evaluate = ft.make_ensemble_eval_step(model, accuracy, members)

    say = (lambda *a: None) if quiet else print
    say(f"ensemble_digits: {members} DigitsNet members, {len(train)} train / {len(test)} test")
    start = time.perf_counter()
    for epoch in range(epochs):
        order = torch.randperm(len(train))
        losses: list[Tensor] = []
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            state, metrics = step(state, (train.x[idx], train.y[idx]))
            losses.append(metrics["loss"])  # [members], left on the device
        # One host transfer per epoch: the mean loss of every member.
        mean = torch.stack(losses).mean(0).tolist()
        say(f"epoch {epoch + 1:2d}  loss per member " + " ".join(f"{v:.3f}" for v in mean))
    seconds = time.perf_counter() - start
    test_acc = evaluate(state, (test.x, test.y)).tolist()
    train_acc = evaluate(state, (train.x, train.y)).tolist()

    say(f"\n{'member':>6}  {'lr':>8}  {'train acc':>9}  {'test acc':>8}")
    for i in range(members):
        say(f"{i:>6}  {lrs[i].item():8.1e}  {train_acc[i]:9.4f}  {test_acc[i]:8.4f}")
    best = max(range(members), key=test_acc.__getitem__)
    # The best member as a plain module (strict load: every parameter and buffer).
    net = DigitsNet()
    net.load_state_dict(ft.member_state_dict(state, best, model))
    net.eval()
    with torch.no_grad():
        check = (net(test.x).argmax(-1) == test.y).float().mean().item()
    say(
        f"best: member {best} (lr {lrs[best].item():.1e}), test accuracy {check:.4f} as a "
        f"plain nn.Module; {epochs} epochs of {members} members in {seconds:.1f}s"
    )
    return {
        "lrs": lrs.tolist(),
        "train_acc": train_acc,
        "test_acc": test_acc,
        "best_module_test_acc": check,
        "seconds": seconds,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(epochs=args.epochs, members=args.members, seed=args.seed)
