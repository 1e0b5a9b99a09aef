"""Train a small MLP on scikit-learn's digits with a functrain chain.

The handwritten-digits set (1797 8x8 images, 10 classes) ships inside scikit-learn, so nothing
is downloaded. The optimizer is ``chain(clip(1.0), scale_by_adamw(...),
scale_by_learning_rate(warmup + cosine))``; the step is written out explicitly with
``torch.func``: gradients of a pure loss, then ``apply_gradients`` (torch's fused AdamW kernel,
in place).

Usage: python examples/quickstart.py [--epochs N] [--seed S]
"""

from __future__ import annotations

import argparse
import time

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import functrain as ft
from functrain.schedules import warmup_cosine


def load_data(seed: int) -> tuple[torch.Tensor, ...]:
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.2, random_state=seed, stratify=y
    )
    return x_train, x_test, y_train, y_test


def main(epochs: int = 30, seed: int = 0, batch_size: int = 64) -> dict[str, float]:
    torch.manual_seed(seed)
    x_train, x_test, y_train, y_test = load_data(seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    params = {k: v.detach() for k, v in model.named_parameters()}

    steps_per_epoch = -(-len(x_train) // batch_size)
    total = epochs * steps_per_epoch
    lr = warmup_cosine(3e-3, warmup_steps=min(50, total - 1), total_steps=total, eta_min=1e-5)
    tx = ft.chain(
        ft.clip(1.0),
        ft.scale_by_adamw(b1=0.9, b2=0.999, weight_decay=1e-4),
        ft.scale_by_learning_rate(lr),
    )
    state = tx.init(params)

    def loss_fn(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = torch.func.functional_call(model, p, (x,))
        return torch.nn.functional.cross_entropy(logits, y)

    grad_fn = torch.func.grad_and_value(loss_fn)

    def accuracy(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> float:
        with torch.no_grad():
            pred = torch.func.functional_call(model, p, (x,)).argmax(-1)
        return (pred == y).float().mean().item()

    print(f"functrain quickstart: digits, {len(x_train)} train / {len(x_test)} test, {tx!r}")
    start = time.perf_counter()
    for epoch in range(epochs):
        order = torch.randperm(len(x_train))
        losses = []
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            grads, loss = grad_fn(params, x_train[idx], y_train[idx])
            params, state = ft.apply_gradients(tx, params, grads, state, donate=True)
            losses.append(loss)
        if epoch % 5 == 4 or epoch == epochs - 1:
            # One host sync per report: the losses stayed on the device until now.
            mean_loss = torch.stack(losses).mean().item()
            grad_norm = state[0].norm.item()
            current_lr = state[2].lr.item()
            print(
                f"epoch {epoch + 1:3d}  loss {mean_loss:.4f}  lr {current_lr:.2e}  "
                f"grad_norm {grad_norm:.3f}  test_acc {accuracy(params, x_test, y_test):.4f}"
            )
    metrics = {
        "train_acc": accuracy(params, x_train, y_train),
        "test_acc": accuracy(params, x_test, y_test),
        "seconds": time.perf_counter() - start,
    }
    print(
        f"done in {metrics['seconds']:.1f}s: train accuracy {metrics['train_acc']:.4f}, "
        f"test accuracy {metrics['test_acc']:.4f}"
    )
    return metrics


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(epochs=args.epochs, seed=args.seed)
