"""Train an MLP on scikit-learn's digits with functrain's loop: logging, validation every epoch,
checkpoints (periodic, best, last) and a curves plot.

The handwritten-digits set (1797 8x8 images, 10 classes) ships inside scikit-learn, so
nothing is downloaded. The model has BatchNorm (its running statistics are threaded through
the functional train step) and dropout; the optimizer is ``chain(clip(1.0), adamw(lr=warmup +
cosine))``. Everything the run writes goes to ``--work-dir``: a text log and JSON-lines scalars
under a timestamped folder, ``epoch_N.pth`` checkpoints (the last 3 kept), the best-accuracy
checkpoint, ``last_checkpoint`` and ``curves.png``. Run it again with ``--resume`` (and more
``--epochs``) to continue from the last checkpoint.

Usage: python examples/train_digits.py [--work-dir DIR] [--epochs N] [--seed S] [--resume]
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from pathlib import Path

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, TensorDataset

import functrain as ft
from functrain.callbacks import EMA, CheckpointCallback, CurvesPlot, Logger
from functrain.loops import EpochBasedTrainLoop, Runner, TestLoop, ValLoop
from functrain.schedules import warmup_cosine
from functrain.state import TrainState
from functrain.step import make_eval_step, make_train_step


def datasets(seed: int) -> tuple[TensorDataset, TensorDataset, TensorDataset]:
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    x_train, x_rest, y_train, y_rest = train_test_split(
        x, y, test_size=0.3, random_state=seed, stratify=y
    )
    x_val, x_test, y_val, y_test = train_test_split(
        x_rest, y_rest, test_size=0.5, random_state=seed, stratify=y_rest
    )
    return (
        TensorDataset(x_train, y_train),
        TensorDataset(x_val, y_val),
        TensorDataset(x_test, y_test),
    )


def loss_fn(forward, batch):
    x, y = batch
    logits = forward(x)
    loss = torch.nn.functional.cross_entropy(logits, y)
    return loss, {"acc": (logits.argmax(-1) == y).float().mean()}


def metrics_fn(forward, batch):
    x, y = batch
    logits = forward(x)
    return {  # per-sample values: MeanMetrics averages them over the whole split
        "acc": (logits.argmax(-1) == y).float(),
        "loss": torch.nn.functional.cross_entropy(logits, y, reduction="none"),
    }


def main(
    work_dir: str | None = None,
    epochs: int = 20,
    seed: int = 0,
    batch_size: int = 64,
    resume: bool = False,
    quiet: bool = False,
    threads: int = 1,
) -> dict[str, float | str]:
    # A model this small gains nothing from intra-op threads, and on a busy machine each tiny
    # op can wait milliseconds for OpenMP workers.
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    train_set, val_set, test_set = datasets(seed)
    train_loader = DataLoader(
        train_set,
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    val_loader = DataLoader(val_set, batch_size=256)
    test_loader = DataLoader(test_set, batch_size=256)

    model = torch.nn.Sequential(
        torch.nn.Linear(64, 128),
        torch.nn.BatchNorm1d(128),
        torch.nn.ReLU(),
        torch.nn.Dropout(0.1),
        torch.nn.Linear(128, 10),
    )
    total = epochs * len(train_loader)
    lr = warmup_cosine(3e-3, warmup_steps=min(50, total - 1), total_steps=total, eta_min=1e-5)
    tx = ft.chain(ft.clip(1.0), ft.adamw(lr=lr, weight_decay=1e-4))

    callbacks = [EMA(momentum=0.05, begin_iter=len(train_loader))]
    if importlib.util.find_spec("matplotlib") is not None:
        callbacks.append(CurvesPlot())
    work_dir = work_dir or tempfile.mkdtemp(prefix="functrain-digits-")
    runner = Runner(
        state=TrainState.create(model, tx),
        train_step=make_train_step(model, loss_fn, tx),
        train_loop=EpochBasedTrainLoop(train_loader, max_epochs=epochs, val_interval=1),
        val_loop=ValLoop(val_loader, make_eval_step(model, metrics_fn)),
        test_loop=TestLoop(test_loader, make_eval_step(model, metrics_fn)),
        callbacks=callbacks,
        default_callbacks={
            "logger": Logger(interval=10),
            "checkpoint": CheckpointCallback(interval=1, max_keep_ckpts=3, save_best="acc"),
        },
        work_dir=work_dir,
        resume=resume,
        experiment_name="digits",
        log_level="WARNING" if quiet else "INFO",
    )
    start = time.perf_counter()
    state = runner.train()
    seconds = time.perf_counter() - start
    test = runner.test()  # with the EMA weights, as validation
    best = state.callbacks["checkpoint"].get("best_score", {}).get("acc", float("nan"))
    result: dict[str, float | str] = {
        "seconds": seconds,
        "best_val_acc": best,
        "val_acc": runner.last_val_metrics["acc"] if runner.last_val_metrics else float("nan"),
        "test_acc": test["acc"],
        "work_dir": str(work_dir),
    }
    files = sorted(p.name for p in Path(work_dir).iterdir())
    print(
        f"trained {state.epoch} epochs ({state.iteration} iterations) in {seconds:.1f}s: "
        f"best val accuracy {best:.4f}, test accuracy {test['acc']:.4f}\n"
        f"work dir {work_dir}: {', '.join(files)}"
    )
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", default=None, help="default: a new temporary directory")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    main(args.work_dir, args.epochs, args.seed, args.batch_size, args.resume, threads=args.threads)
