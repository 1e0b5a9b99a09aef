"""One step of every torch.optim optimizer functrain implements, against torch, side by side.

For each optimizer in ``functrain.TORCH_OPTIMIZERS`` that takes plain gradients (LBFGS needs a
closure, SparseAdam is rejected, Muon only takes matrices and is measured in its tests'
notes), prints the median time of ``apply_gradients(..., donate=True)`` on ResNet-50's 161
parameter shapes and its ratio to the same torch.optim class with ``foreach=True``, and with
``fused=True`` where torch has a fused kernel. Timing is round-robin over the rows.

Usage: python benchmarks/optimizers.py [--repeats N] [--threads T] [--small]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

import functrain as ft

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shapes import resnet50_shapes, small_shapes  # noqa: E402

SKIP = {"LBFGS", "SparseAdam", "Muon"}
FUSED = {"SGD", "Adam", "AdamW", "Adagrad"}


def timed(rows: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    for fn in rows.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in rows}
    for _ in range(repeats):
        for k, fn in rows.items():
            start = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - start)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def torch_row(cls: type, shapes, **kwargs) -> Callable[[], None]:
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)
    opt = cls(params, **kwargs)
    return opt.step


def functrain_row(factory, shapes) -> Callable[[], None]:
    gen = torch.Generator().manual_seed(0)
    params = {f"p{i}": torch.randn(s, generator=gen) for i, s in enumerate(shapes)}
    grads = {k: torch.randn(v.shape, generator=gen) for k, v in params.items()}
    tx = factory()
    box = {"p": params, "s": tx.init(params)}

    def step() -> None:
        box["p"], box["s"] = ft.apply_gradients(tx, box["p"], grads, box["s"], donate=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--small", action="store_true", help="1000 small tensors instead")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = small_shapes() if args.small else resnet50_shapes()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{'1000 small tensors' if args.small else 'ResNet-50 shapes'}, donating path"
    )
    print(
        f"  {'optimizer':12s} {'functrain ms':>12s} {'torch foreach':>14s} {'ratio':>6s} {'torch fused':>12s} {'ratio':>6s}"
    )
    for name, factory in ft.TORCH_OPTIMIZERS.items():
        if name in SKIP:
            continue
        cls = getattr(torch.optim, name)
        rows = {
            "functrain": functrain_row(factory, shapes),
            "foreach": torch_row(cls, shapes, foreach=True),
        }
        if name in FUSED:
            rows["fused"] = torch_row(cls, shapes, fused=True)
        ms = timed(rows, args.repeats)
        fused = (
            f"{ms['fused']:12.1f} {ms['functrain'] / ms['fused']:5.2f}x"
            if "fused" in ms
            else f"{'-':>12s} {'-':>6s}"
        )
        print(
            f"  {name:12s} {ms['functrain']:12.1f} {ms['foreach']:14.1f} "
            f"{ms['functrain'] / ms['foreach']:5.2f}x {fused}"
        )


if __name__ == "__main__":
    main()
