"""functrain against its peer: ``runner.train()`` time of mmengine 0.10.7's ``Runner`` and of
functrain's (what ``functrain train CONFIG`` runs) on every example config.

What is measured: the wall time (``--clock cpu``: the worker's CPU time) of
``runner.train()`` (the training loop, including the lazy
setup each runner does inside ``train()``; process start, imports and the runner's
construction are excluded), training only. Both sides get the same config with the same
overrides: ``train_cfg.max_epochs = --epochs`` (an iteration-based config gets ``max_iters =
--epochs`` x the iterations of one epoch), no validation (``val_dataloader`` / ``val_cfg`` /
``val_evaluator`` set to ``None``, which both runners read as "no validation loop"), no
checkpoints (``default_hooks.checkpoint = None``), ``log_level = 'WARNING'``; the logger and
timer hooks stay as the config has them. The mmengine side is run the way
``tests/test_config_mmengine.py`` runs it (this script imports that module for mmengine's
versions of ``DigitsNet``, ``Digits``, ``MyOptimizer``, ...), with mmengine's 2 s sleep on
restarting an ``InfiniteSampler`` iterator patched out, and, unless ``--fused``, torch's
default (foreach) optimizer kernels, which is what a user of the config gets; ``--fused``
gives it ``fused=True`` as in the parity test.

One cost sits on one side only: mmengine's ``train()`` builds its ``torch.optim`` optimizer,
whose ``add_param_group`` (wrapped by ``torch._disable_dynamo``) imports ``torch._dynamo``,
about 1.5 s on this project's CPU machine; functrain's default step (``grad="auto"``, the
fused or foreach update) never imports it. That is each runner's own startup and is counted
by default; ``--warm-imports`` imports ``torch._dynamo`` in both workers before the runner is
built, which leaves the per-iteration costs to compare.

Every run is a fresh subprocess (``OMP_NUM_THREADS=1``, ``torch.set_num_threads(1)``), so
neither side inherits the other's allocator, caches or registries; the rounds alternate
mmengine, functrain, mmengine, ... and the table prints each side's median over the rounds
and ``ratio = functrain / mmengine`` (below 1: functrain is faster). Configs that mmengine
cannot run (functrain-only hooks or visualizers) are listed as skipped with the reason.

Usage (from the repository root)::

    python benchmarks/peer.py [--epochs 20] [--rounds 5] [--configs digits_adamw ...] [--fused]
                              [--warm-imports] [--clock wall|cpu]

Wall timings are only meaningful on an otherwise idle machine (see README, Performance); on a
shared one, ``--clock cpu`` is steadier (the runs are single-threaded, so CPU time is the
wall time an idle machine would show, up to cache and memory-bandwidth contention).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "examples" / "configs"

# Configs mmengine 0.10.7 cannot run, and why.
SKIPPED = {
    "digits_demo": "custom hook CurvesPlot is functrain-only",
    "digits_visualization": "DetVisualizationHook / DetLocalVisualizer need mmdet (functrain"
    " provides its own)",
}
# Configs that run, with a difference between the sides worth reading next to the ratio.
NOTES = {
    "digits_custom": "MyHook: functrain's reads lr/loss every 10 iters, mmengine's stand-in is a"
    " no-op; MyOptimizer: a for-loop torch optimizer on the mmengine side",
}


def _config(name: str, epochs: int) -> dict[str, Any]:
    """The config ``name`` with the benchmark's overrides (module docstring), as a plain dict."""
    from functrain.config.build import to_plain
    from functrain.config.file import load_config

    cfg = to_plain(load_config(CONFIGS / f"{name}.py"))
    cfg["log_level"] = "WARNING"
    for key in ("val_dataloader", "val_cfg", "val_evaluator"):
        cfg[key] = None
    cfg["default_hooks"]["checkpoint"] = None
    train_cfg = cfg["train_cfg"]
    train_cfg.pop("val_interval", None)
    train_cfg.pop("val_begin", None)
    train_cfg.pop("dynamic_intervals", None)
    if train_cfg.get("type") == "IterBasedTrainLoop":
        loader = cfg["train_dataloader"]
        from functrain.zoo import Digits

        per_epoch = -(-len(Digits(loader["dataset"].get("split", "train"))) // loader["batch_size"])
        train_cfg["max_iters"] = epochs * per_epoch
    else:
        train_cfg["max_epochs"] = epochs
    return cfg


def _worker(side: str, name: str, epochs: int, fused: bool, warm: bool = False) -> dict[str, float]:
    """One timed ``runner.train()`` of ``side`` ('mmengine' or 'functrain') on config ``name``,
    in this process; returns ``{"wall": seconds, "cpu": this process's CPU seconds}``."""
    import torch

    torch.set_num_threads(1)
    if warm:
        import torch._dynamo  # noqa: F401  (see --warm-imports in the module docstring)
    sys.path.insert(0, str(ROOT))  # custom_imports name examples.configs.my_project...
    cfg = _config(name, epochs)
    with tempfile.TemporaryDirectory() as work_dir:
        if side == "mmengine":
            sys.path.insert(0, str(ROOT / "tests"))
            import mmengine.runner.loops
            import test_config_mmengine as parity  # registers mmengine's twins of the names
            from mmengine.config import Config as MMConfig
            from mmengine.runner import Runner as MMRunner

            mmengine.runner.loops.time.sleep = lambda s: None  # see module docstring
            cfg["work_dir"] = work_dir
            cfg["default_scope"] = None
            cfg.pop("custom_imports", None)
            optimizer = cfg["optim_wrapper"]["optimizer"]
            if fused and optimizer["type"] in parity.FUSED:
                optimizer["fused"] = True
            runner = MMRunner.from_cfg(MMConfig(cfg))
        else:
            from functrain.config import build_runner

            runner = build_runner(cfg, work_dir=work_dir, device="cpu").runner
        start, cpu = time.perf_counter(), time.process_time()
        runner.train()
        return {"wall": time.perf_counter() - start, "cpu": time.process_time() - cpu}


def _run(
    side: str, name: str, epochs: int, fused: bool, warm: bool = False, clock: str = "wall"
) -> float:
    """``_worker`` in a fresh subprocess with one OpenMP thread; its ``clock`` seconds."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    argv = [sys.executable, __file__, "--worker", side, name, "--epochs", str(epochs)]
    out = subprocess.run(
        argv + (["--fused"] if fused else []) + (["--warm-imports"] if warm else []),
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{side} on {name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])[clock]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--configs", nargs="+", help="config names (default: all)")
    parser.add_argument("--fused", action="store_true", help="fused=True on the mmengine side")
    parser.add_argument(
        "--warm-imports",
        action="store_true",
        help="import torch._dynamo in both workers before timing (mmengine's optimizer "
        "imports it inside train(); functrain does not)",
    )
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: elapsed time (default); cpu: the worker's CPU time (time.process_time), "
        "which other processes on a shared machine disturb far less",
    )
    parser.add_argument("--worker", nargs=2, metavar=("SIDE", "CONFIG"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(*args.worker, args.epochs, args.fused, args.warm_imports)))
        return 0

    available = sorted(p.stem for p in CONFIGS.glob("digits_*.py"))
    names = args.configs or available
    unknown = sorted(set(names) - set(available))
    if unknown:
        parser.error(f"unknown config(s) {unknown}; choose from {available}")
    print(
        f"runner.train(), {args.epochs} epochs, training only; median of {args.rounds} rounds "
        f"(mmengine {'fused' if args.fused else 'default'} kernels"
        f"{'; torch._dynamo imported beforehand' if args.warm_imports else ''}); "
        f"{args.clock} clock; load {os.getloadavg()}"
    )
    print(f"{'config':<28} {'mmengine s':>10} {'functrain s':>11} {'ratio':>6}")
    for name in names:
        if name in SKIPPED:
            print(f"{name:<28} skipped: {SKIPPED[name]}")
            continue
        times: dict[str, list[float]] = {"mmengine": [], "functrain": []}
        for _ in range(args.rounds):
            for side in times:  # alternating: mmengine, functrain, mmengine, ...
                times[side].append(
                    _run(side, name, args.epochs, args.fused, args.warm_imports, args.clock)
                )
        mm, ft = (statistics.median(times[s]) for s in ("mmengine", "functrain"))
        note = f"  ({NOTES[name]})" if name in NOTES else ""
        print(f"{name:<28} {mm:>10.3f} {ft:>11.3f} {ft / mm:>6.2f}{note}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
