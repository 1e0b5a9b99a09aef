"""Small pieces shared by the loop and callback tests (a module, not a test file)."""

from __future__ import annotations

import torch


def loss_fn(forward, batch):
    """Cross-entropy of ``forward(x)`` against ``y``."""
    x, y = batch
    return torch.nn.functional.cross_entropy(forward(x), y)


def data(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` batches of 4 samples with 3 features and 2 classes (the same ones every call)."""
    g = torch.Generator().manual_seed(0)
    return [
        (torch.randn(4, 3, generator=g), torch.randint(0, 2, (4,), generator=g)) for _ in range(n)
    ]
