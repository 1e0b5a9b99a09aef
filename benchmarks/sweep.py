"""``functrain sweep`` over 8 learning rates vs 8 sequential ``functrain train`` runs.

The digits demo config (``examples/configs/digits_demo.py``: AdamW, clipping, warmup +
cosine, checkpoints and curves every epoch) with 8 learning rates, each side run as a user
would: subprocesses of the command line (process start, imports, data loading included),
the same epochs on both sides. Rounds interleave the two variants (sweep, then the 8 runs)
so that a busy shared machine slows both alike; the medians and their ratio are printed.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/sweep.py [--epochs 30] [--rounds 3] [--device cpu]

This is a benchmark, not a test: the ratio depends on the machine (target: the sweep at
least 3x faster on the project's 2-core CPU).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "examples/configs/digits_demo.py"
LRS = (1e-3, 2e-3, 3e-3, 5e-3, 7e-3, 1e-2, 2e-2, 3e-2)


def _run(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "functrain.cli", *args],
        check=True,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def sweep_once(work: Path, epochs: int, device: str) -> float:
    grid = "optim_wrapper.optimizer.lr=" + ",".join(map(str, LRS))
    return _run(["sweep", str(CONFIG), "--grid", grid, "--work-dir", str(work / "sweep"),
                 "--device", device, "--cfg-options", f"train_cfg.max_epochs={epochs}"])  # fmt: skip


def sequential_once(work: Path, epochs: int, device: str) -> float:
    return sum(
        _run(["train", str(CONFIG), "--work-dir", str(work / f"lr{i}"), "--device", device,
              "--cfg-options", f"optim_wrapper.optimizer.lr={lr}", f"train_cfg.max_epochs={epochs}"])
        for i, lr in enumerate(LRS)
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30, help="epochs per run (the demo's: 30)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args()
    sweeps, sequential = [], []
    for r in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            sweeps.append(sweep_once(Path(tmp), args.epochs, args.device))
            sequential.append(sequential_once(Path(tmp), args.epochs, args.device))
        print(f"round {r + 1}: sweep {sweeps[-1]:.1f} s, 8 x train {sequential[-1]:.1f} s, "
              f"ratio {sequential[-1] / sweeps[-1]:.2f}x", flush=True)  # fmt: skip
    s, q = statistics.median(sweeps), statistics.median(sequential)
    print(f"digits demo, {len(LRS)} learning rates, {args.epochs} epochs, {args.device}, "
          f"median of {args.rounds} rounds:")  # fmt: skip
    print(f"  functrain sweep:            {s:8.1f} s")
    print(f"  8 x functrain train:        {q:8.1f} s")
    print(f"  sweep faster by:            {q / s:8.2f}x (target >= 3x)")


if __name__ == "__main__":
    main()
