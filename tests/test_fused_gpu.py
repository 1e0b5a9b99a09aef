"""torch's fused CUDA kernels driven by functrain with scheduled (float64) learning rates:
the same parameters as torch.optim(fused=True) with the lr set per step. Skipped without CUDA."""

from __future__ import annotations

import pytest
import torch

import functrain as ft
from functrain.schedules import cosine_annealing_lr

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

STEPS = 20


def cases():
    lr = cosine_annealing_lr(0.05, T_max=STEPS, eta_min=1e-3)
    return {
        "adamw": (ft.adamw(lr=lr, weight_decay=0.01), torch.optim.AdamW, dict(weight_decay=0.01)),
        "adam": (ft.adam(lr=lr), torch.optim.Adam, {}),
        "sgd": (ft.sgd(lr=lr, momentum=0.9), torch.optim.SGD, dict(momentum=0.9)),
        "adagrad": (ft.adagrad(lr=lr), torch.optim.Adagrad, {}),
    }, lr


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd", "adagrad"])
def test_fused_cuda_kernels_take_scheduled_lr(name):
    table, lr = cases()
    tx, torch_cls, kwargs = table[name]
    gen = torch.Generator(device="cuda").manual_seed(0)
    shapes = [(64, 32), (32,), (3, 3, 8, 8), ()]
    params = {f"p{i}": torch.randn(s, device="cuda", generator=gen) for i, s in enumerate(shapes)}
    grads = [
        {k: torch.randn(v.shape, device="cuda", generator=gen) for k, v in params.items()}
        for _ in range(STEPS)
    ]
    leaves = [v.clone().requires_grad_(True) for v in params.values()]
    # torch has no fused CUDA Adagrad: compare with its foreach implementation there.
    impl = dict(foreach=True) if name == "adagrad" else dict(fused=True)
    opt = torch_cls(leaves, lr=float(lr(0)), **impl, **kwargs)
    state = tx.init(params)
    ours = {k: v.clone() for k, v in params.items()}
    for step in range(STEPS):
        for group in opt.param_groups:
            group["lr"] = float(lr(step))
        for leaf, g in zip(leaves, grads[step].values(), strict=True):
            leaf.grad = g.clone()
        opt.step()
        ours, state = ft.apply_gradients(tx, ours, grads[step], state, donate=True, fused=True)
    for (key, mine), ref in zip(ours.items(), leaves, strict=True):
        scale = ref.detach().abs().max().clamp_min(1e-12)
        assert ((mine - ref.detach()).abs().max() / scale).item() <= 1e-6, key
