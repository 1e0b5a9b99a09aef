"""Loop overhead: epoch time of functrain's Runner (default callbacks) vs a plain PyTorch loop.

Both train the same MLP (with BatchNorm) with AdamW on the same in-memory DataLoader; the
plain loop is ``zero_grad / forward / backward / torch.optim.AdamW.step`` with a
``loss.item()`` every 10 iterations (what its log line costs). functrain runs
``make_train_step`` (its default ``grad="auto"``, which is autograd here, +
``apply_gradients``) inside ``Runner`` + ``EpochBasedTrainLoop`` with the default callbacks
(timer, sampler seed, logger every 10 iterations; a checkpoint every epoch in the second
configuration; the third uses ``make_train_step(..., grad="func")``,
``torch.func.grad_and_value``, the same gradients bitwise). Epoch times
are medians over ``--epochs`` epochs after one warm-up epoch, in ``--rounds`` interleaved
rounds; the ratio printed is the median of the rounds' ratios.

Usage: python benchmarks/loop.py [--epochs N] [--rounds R] [--batch-size B] [--width W]

The compiled row runs ``make_train_step(..., compile=True)`` (forward, backward and AdamW
as one ``torch.compile``d program; ``--compile-mode``, default ``reduce-overhead`` on CUDA:
a CUDA graph); its compile time falls in the untimed warm-up epoch and is printed apart.
``--device cuda`` moves the model and each batch to the GPU (the loader stays on the CPU,
as in a real loop) and synchronizes before reading the clock.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

import functrain as ft
from functrain.callbacks import Callback
from functrain.loops import EpochBasedTrainLoop, Runner
from functrain.state import TrainState
from functrain.step import make_train_step

#: Set from --device in main().
DEVICE = torch.device("cpu")


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def make_model(width: int) -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Linear(256, width),
        torch.nn.BatchNorm1d(width),
        torch.nn.ReLU(),
        torch.nn.Linear(width, width),
        torch.nn.ReLU(),
        torch.nn.Linear(width, 10),
    )


def make_loader(n: int, batch_size: int) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 256, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return DataLoader(
        TensorDataset(x, y), batch_size=batch_size, shuffle=True, generator=g, drop_last=True
    )


def plain_epochs(loader: DataLoader, width: int, epochs: int) -> list[float]:
    torch.manual_seed(0)
    model = make_model(width).to(DEVICE)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    times = []
    for _ in range(epochs + 1):
        start = time.perf_counter()
        model.train()
        for i, (x, y) in enumerate(loader):
            x, y = x.to(DEVICE, non_blocking=True), y.to(DEVICE, non_blocking=True)
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            if (i + 1) % 10 == 0:
                loss.item()
        sync()
        times.append(time.perf_counter() - start)
    return times[1:]


class EpochStarts(Callback):
    """Records the time at each epoch start and at the end: epoch ``i`` lasts from its start to
    the next start, which includes ``after_train_epoch`` and any checkpoint written there."""

    priority = "HIGHEST"

    def __init__(self) -> None:
        self.marks: list[float] = []

    def before_train_epoch(self, runner, state):
        sync()
        self.marks.append(time.perf_counter())

    def after_train(self, runner, state):
        sync()
        self.marks.append(time.perf_counter())


def functrain_epochs(
    loader: DataLoader, width: int, epochs: int, checkpoint: bool, work_dir: str, grad: str = "auto"
) -> list[float]:
    torch.manual_seed(0)
    model = make_model(width).to(DEVICE)
    tx = ft.adamw(lr=1e-3)
    marks = EpochStarts()
    runner = Runner(
        state=TrainState.create(model, tx, device=DEVICE),
        train_step=make_train_step(model, loss_fn, tx, grad=grad),
        train_loop=EpochBasedTrainLoop(loader, max_epochs=epochs + 1),
        callbacks=[marks],
        default_callbacks={} if checkpoint else {"checkpoint": None},
        work_dir=work_dir,
        log_level="WARNING",
    )
    runner.train()
    return [b - a for a, b in zip(marks.marks[1:-1], marks.marks[2:], strict=True)]


def loss_fn(forward, batch):
    x, y = batch
    x, y = x.to(DEVICE, non_blocking=True), y.to(DEVICE, non_blocking=True)
    return torch.nn.functional.cross_entropy(forward(x), y)


def compiled_epochs(
    loader: DataLoader, width: int, epochs: int, work_dir: str, mode: bool | str
) -> tuple[list[float], float]:
    """``functrain_epochs`` without checkpoints, the step compiled: (epoch times, compile s)."""
    torch.manual_seed(0)
    model = make_model(width).to(DEVICE)
    tx = ft.adamw(lr=1e-3)
    step = make_train_step(model, loss_fn, tx, compile=mode)
    marks = EpochStarts()

    def moved_step(state, batch):
        # The batch reaches the program on the device (a CUDA graph takes no CPU inputs).
        x, y = batch
        return step(state, (x.to(DEVICE, non_blocking=True), y.to(DEVICE, non_blocking=True)))

    runner = Runner(
        state=TrainState.create(model, tx, device=DEVICE),
        train_step=moved_step,
        train_loop=EpochBasedTrainLoop(loader, max_epochs=epochs + 1),
        callbacks=[marks],
        default_callbacks={"checkpoint": None},
        work_dir=work_dir,
        log_level="WARNING",
    )
    runner.train()
    info = step.compile_info
    if info["mode"] != "fullgraph":
        print(f"note: the compiled step ran as {info['mode']!r}: {info['breaks']}")
    times = [b - a for a, b in zip(marks.marks[1:-1], marks.marks[2:], strict=True)]
    return times, info["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--samples", type=int, default=8192)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--compile-mode",
        default=None,
        help="torch.compile mode of the compiled row (default: reduce-overhead on CUDA)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    global DEVICE
    DEVICE = torch.device(args.device)
    mode = args.compile_mode or ("reduce-overhead" if DEVICE.type == "cuda" else True)
    compile_seconds: list[float] = []
    loader = make_loader(args.samples, args.batch_size)
    n = len(loader)
    # Interleaved rounds, so that load from other processes hits every configuration alike;
    # each ratio is the median of the per-round ratios of median epoch times.
    times: dict[str, list[float]] = {"plain": [], "ours": [], "ckpt": [], "func": []}
    with tempfile.TemporaryDirectory() as work_dir:
        for r in range(args.rounds):
            epoch_times, seconds = compiled_epochs(
                loader, args.width, args.epochs, f"{work_dir}/d{r}", mode
            )
            times.setdefault("compiled", []).append(statistics.median(epoch_times))
            compile_seconds.append(seconds)
            times["plain"].append(statistics.median(plain_epochs(loader, args.width, args.epochs)))
            times["ours"].append(
                statistics.median(
                    functrain_epochs(loader, args.width, args.epochs, False, f"{work_dir}/a{r}")
                )
            )
            times["ckpt"].append(
                statistics.median(
                    functrain_epochs(loader, args.width, args.epochs, True, f"{work_dir}/b{r}")
                )
            )
            times["func"].append(
                statistics.median(
                    functrain_epochs(
                        loader, args.width, args.epochs, False, f"{work_dir}/c{r}", "func"
                    )
                )
            )
    plain = statistics.median(times["plain"])

    def ratio(key: str) -> float:
        return statistics.median(o / p for o, p in zip(times[key], times["plain"], strict=True))

    print(
        f"MLP 256-{args.width}-{args.width}-10 with BatchNorm, AdamW, {n} iterations/epoch of "
        f"batch {args.batch_size}, {torch.get_num_threads()} thread(s), {args.rounds} rounds"
    )
    print(f"plain torch loop (torch.optim.AdamW)          {plain * 1e3:8.1f} ms/epoch")
    print(
        f"functrain Runner, no ckpt, compile={mode!r:<9} "
        f"{statistics.median(times['compiled']) * 1e3:8.1f} ms/epoch  "
        f"ratio {ratio('compiled'):.3f}  (compile {statistics.median(compile_seconds):.1f} s)"
    )
    print(
        f"functrain Runner, default callbacks, no ckpt   "
        f"{statistics.median(times['ours']) * 1e3:8.1f} ms/epoch  ratio {ratio('ours'):.3f}"
    )
    print(
        f"functrain Runner, default callbacks + ckpt     "
        f"{statistics.median(times['ckpt']) * 1e3:8.1f} ms/epoch  ratio {ratio('ckpt'):.3f}"
    )
    print(
        f"functrain Runner, no ckpt, grad='func'        "
        f"{statistics.median(times['func']) * 1e3:8.1f} ms/epoch  "
        f"ratio {ratio('func'):.3f}"
    )


if __name__ == "__main__":
    main()
