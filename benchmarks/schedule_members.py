"""Per-member schedules at the transforms' 0-d step: one vector schedule vs N plain ones.

For N in {4, 16, 64}: evaluating one schedule with per-member values at a 0-d step tensor
(what a transform does every step) against evaluating N plain schedules and stacking them
(the obvious alternative), and against one plain schedule. Rounds of the variants are
interleaved; medians are printed as ratios (absolute times are noisy on a shared machine).

    OMP_NUM_THREADS=1 python benchmarks/schedule_members.py [--device cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from functrain.schedules import Schedule, cosine_annealing_lr, step_lr, warmup_cosine


def families(n: int) -> dict[str, tuple[Callable[[object], Schedule], list[float]]]:
    """name -> (builder of one argument, the members' values of that argument)."""
    return {
        "warmup_cosine(base per member)": (
            lambda b: warmup_cosine(b, warmup_steps=100, total_steps=10_000, eta_min=1e-5),
            [1e-3 * (1 + i) for i in range(n)],
        ),
        "cosine(eta_min per member)": (
            lambda e: cosine_annealing_lr(0.1, T_max=1000, eta_min=e),
            [1e-5 * (1 + i) for i in range(n)],
        ),
        "step(gamma per member)": (
            lambda g: step_lr(1.0, step_size=30, gamma=g),
            [0.5 + 0.005 * i for i in range(n)],
        ),
    }


def timed(fn: Callable[[], object], device: torch.device, reps: int) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / reps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--reps", type=int, default=50)
    args = parser.parse_args()
    device = torch.device(args.device)
    step = torch.tensor(5_000, device=device)
    print(f"{'schedule':34} {'N':>3} {'N plain / vector':>17} {'vector / 1 plain':>17}")
    for n in (4, 16, 64):
        for name, (build, values) in families(n).items():
            vector = build(values)
            plain = [build(x) for x in values]
            one = plain[0]
            assert torch.equal(vector(step), torch.stack([p(step) for p in plain]))
            variants = {
                "vector": lambda v=vector: v(step),
                "plain": lambda ps=plain: torch.stack([p(step) for p in ps]),
                "one": lambda o=one: o(step),
            }
            times: dict[str, list[float]] = {k: [] for k in variants}
            for _ in range(args.rounds):
                for key, fn in variants.items():
                    times[key].append(timed(fn, device, args.reps))
            med = {k: statistics.median(v) for k, v in times.items()}
            print(
                f"{name:34} {n:>3} {med['plain'] / med['vector']:>16.1f}x "
                f"{med['vector'] / med['one']:>16.2f}x"
            )


if __name__ == "__main__":
    main()
