"""Time one clip + AdamW step: functrain's paths against torch.optim, side by side.

Prints, for two parameter sets (ResNet-50's 161 shapes, 25.6M parameters; 1000 small tensors,
500 of 64x64 and 500 of 64), the median time of one step and its ratio to torch's fastest
configuration: ``clip_grad_norm_(foreach=True)`` then ``AdamW(fused=True).step()``.

Rows:
  torch fused / foreach / for-loop   clip_grad_norm_ + torch.optim.AdamW
  apply_gradients donate             functrain, fused kernel, writes in place (the loop's path)
  apply_gradients pure               functrain, fused kernel on fresh buffers
  update+apply_updates pure          functrain's differentiable foreach path
  update donate (fused=False)        the foreach path, in place
  packed donate (grads given flat)   params packed into one buffer per dtype (functrain.pack);
                                     the gradients arrive flat, as autograd produces them
                                     through layout.unpack(...)
  packed donate + pack(grads)        the same, packing per-leaf gradients with torch.cat first
  compiled donate AdamW / Lion / custom 3-transform chain
                                     functrain.compiled(tx) through apply_gradients(donate=True):
                                     per-leaf gradients packed by torch.cat, one program
  compiled pure AdamW                the same, pure (nothing written in place)

The compile time of each compiled row is printed under the table (--no-compiled skips them).
``--device cuda`` runs every row on the GPU (the clock is read after ``synchronize``) and
compiles the compiled rows with ``mode="reduce-overhead"`` (CUDA graphs; ``--compile-mode``
overrides).

Usage: python benchmarks/step.py [--repeats N] [--threads T] [--small-only] [--no-compiled]
       [--device cpu|cuda] [--compile-mode MODE]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shapes import resnet50_shapes, small_shapes  # noqa: E402

import functrain as ft  # noqa: E402

LR, WD, MAX_NORM = 1e-3, 1e-2, 1.0
#: Set from --device / --compile-mode in main().
DEVICE = torch.device("cpu")
COMPILE_MODE: str | None = None


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def randn(shape, gen: torch.Generator) -> torch.Tensor:
    """The same numbers on every device (drawn on the CPU)."""
    return torch.randn(shape, generator=gen).to(DEVICE)


def median_ms(
    rows: dict[str, Callable[[], object]], repeats: int, warmup: int = 3
) -> dict[str, float]:
    """Median wall time of each row, measured round-robin so that drifting machine load
    falls on every row alike."""
    for fn in rows.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {label: [] for label in rows}
    for _ in range(repeats):
        for label, fn in rows.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[label].append(time.perf_counter() - start)
    return {label: statistics.median(ts) * 1e3 for label, ts in times.items()}


def torch_step(shapes, **opt_kwargs) -> Callable[[], None]:
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(randn(s, gen)) for s in shapes]
    for p in params:
        p.grad = randn(p.shape, gen)
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=WD, **opt_kwargs)
    foreach = opt_kwargs.get("foreach", True) or opt_kwargs.get("fused", False)

    def step() -> None:
        torch.nn.utils.clip_grad_norm_(params, MAX_NORM, foreach=bool(foreach))
        opt.step()

    return step


def functrain_steps(shapes) -> dict[str, Callable[[], None]]:
    gen = torch.Generator().manual_seed(0)
    params = {f"p{i}": randn(s, gen) for i, s in enumerate(shapes)}
    grads = {k: randn(v.shape, gen) for k, v in params.items()}
    tx = ft.chain(ft.clip(MAX_NORM), ft.adamw(lr=LR, weight_decay=WD))
    box = {"params": params, "state": tx.init(params)}

    def donate() -> None:
        box["params"], box["state"] = ft.apply_gradients(
            tx, box["params"], grads, box["state"], donate=True
        )

    pure_state = tx.init(params)

    def pure() -> None:
        ft.apply_gradients(tx, params, grads, pure_state)

    def update_pure() -> None:
        updates, _ = tx.update(grads, pure_state, params)
        ft.apply_updates(params, updates)

    box2 = {"params": {k: v.clone() for k, v in params.items()}, "state": tx.init(params)}

    def update_donate() -> None:
        box2["params"], box2["state"] = ft.apply_gradients(
            tx, box2["params"], grads, box2["state"], donate=True, fused=False
        )

    packed, layout = ft.pack(params)
    flat_grads = layout.pack(grads)
    box3 = {"params": packed, "state": tx.init(packed)}

    def packed_donate() -> None:
        box3["params"], box3["state"] = ft.apply_gradients(
            tx, box3["params"], flat_grads, box3["state"], donate=True
        )

    def packed_with_packing() -> None:
        box3["params"], box3["state"] = ft.apply_gradients(
            tx, box3["params"], layout.pack(grads), box3["state"], donate=True
        )

    rows = {
        "apply_gradients donate": donate,
        "apply_gradients pure": pure,
        "update+apply_updates pure": update_pure,
        "update donate (fused=False)": update_donate,
        "packed donate (grads given flat)": packed_donate,
        "packed donate + pack(grads)": packed_with_packing,
    }
    return rows


def custom_chain() -> ft.GradientTransformation:
    """Three transforms no torch kernel covers: a user sign-agreement mask, momentum with a
    cosine-scheduled learning rate, and decoupled decay on matrices only."""

    def agree(u: list, p: list) -> list:
        # Keep the update where it points against the parameter, halve it elsewhere.
        keep = torch._foreach_mul(u, p)
        return [torch.where(k < 0, x, 0.5 * x) for k, x in zip(keep, u, strict=True)]

    return ft.chain(
        ft.clip(MAX_NORM),
        ft.stateless_foreach(agree, name="agree"),
        ft.trace(0.9),
        ft.masked(ft.add_decayed_weights(WD), lambda path, p: p.ndim > 1),
        ft.scale_by_learning_rate(ft.schedules.cosine_annealing_lr(LR, T_max=10_000)),
    )


def compiled_steps(
    shapes,
) -> tuple[dict[str, Callable[[], None]], dict[str, ft.GradientTransformation]]:
    gen = torch.Generator().manual_seed(0)
    params = {f"p{i}": randn(s, gen) for i, s in enumerate(shapes)}
    grads = {k: randn(v.shape, gen) for k, v in params.items()}
    mode = COMPILE_MODE
    txs = {
        "compiled donate AdamW": ft.compiled(
            ft.chain(ft.clip(MAX_NORM), ft.adamw(lr=LR, weight_decay=WD)), mode=mode
        ),
        "compiled donate Lion": ft.compiled(
            ft.chain(ft.clip(MAX_NORM), ft.lion(lr=LR, weight_decay=WD)), mode=mode
        ),
        "compiled donate custom 3-transform": ft.compiled(custom_chain(), mode=mode),
        "compiled pure AdamW": ft.compiled(
            ft.chain(ft.clip(MAX_NORM), ft.adamw(lr=LR, weight_decay=WD)), mode=mode
        ),
    }
    rows: dict[str, Callable[[], None]] = {}
    for label, tx in txs.items():
        donate = "donate" in label
        box = {"params": {k: v.clone() for k, v in params.items()}}
        box["state"] = tx.init(box["params"])

        def step(box=box, tx=tx, donate=donate) -> None:
            new_params, new_state = ft.apply_gradients(
                tx, box["params"], grads, box["state"], donate=donate
            )
            if donate:
                box["params"], box["state"] = new_params, new_state

        step()  # compiles
        rows[label] = step
    return rows, txs


def run(name: str, shapes, repeats: int, compiled: bool = True) -> None:
    n = sum(torch.Size(s).numel() for s in shapes)
    print(f"\n{name}: {len(shapes)} tensors, {n / 1e6:.1f}M parameters")
    rows = {
        "torch fused (baseline)": torch_step(shapes, fused=True),
        "torch foreach": torch_step(shapes, foreach=True),
        "torch for-loop": torch_step(shapes, foreach=False),
        **functrain_steps(shapes),
    }
    txs = {}
    if compiled:
        compiled_rows, txs = compiled_steps(shapes)
        rows.update(compiled_rows)
    results = median_ms(rows, repeats)
    base = results["torch fused (baseline)"]
    print(f"  {'configuration':36s} {'median ms':>10s} {'vs torch fused':>15s}")
    for label, ms in results.items():
        print(f"  {label:36s} {ms:10.2f} {ms / base:14.2f}x")
    for label, tx in txs.items():
        stats = ft.compile_stats(tx)
        how = "eager fallback" if stats["eager"] else f"{stats['compiles']} program(s)"
        print(f"  compile time, {label}: {stats['seconds']:.1f} s ({how})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--small-only", action="store_true", help="skip the ResNet-50 set")
    parser.add_argument("--no-compiled", action="store_true", help="skip the compiled rows")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--compile-mode", default=None, help="default: reduce-overhead on CUDA, else None"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    global DEVICE, COMPILE_MODE
    DEVICE = torch.device(args.device)
    COMPILE_MODE = args.compile_mode or ("reduce-overhead" if DEVICE.type == "cuda" else None)
    print(
        f"torch {torch.__version__}, {DEVICE}, {torch.get_num_threads()} threads, "
        f"clip({MAX_NORM}) + AdamW, compiled rows: mode={COMPILE_MODE!r}"
    )
    if not args.small_only:
        run("ResNet-50 shapes", resnet50_shapes(), args.repeats, not args.no_compiled)
    run("1000 small tensors", small_shapes(), args.repeats, not args.no_compiled)


if __name__ == "__main__":
    main()
