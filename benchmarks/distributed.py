"""Data-parallel scaling on CPU: step time with 1 and 2 gloo processes, functrain vs torch DDP.

The same MLP trains on the same global batch (each of the 2 processes gets half of it), every
process with ``torch.set_num_threads(1)`` so that 1 process uses 1 core and 2 processes use 2.
Compared, in the same run and interleaved round-robin (load drifts on every row alike):

- ``functrain flat``: ``make_train_step(..., grad="autograd", distributed=True)``: one flat
  all-reduce per (device, dtype) after backward, then clip + AdamW (fused kernel);
- ``functrain buckets``: the same with ``bucket_cap_mb`` (DDP's default 25 MiB, which here
  holds the whole model, and a small cap giving several buckets overlapped with backward);
- ``functrain ZeRO-1``: ``shard_optimizer(chain(clip, adamw))`` (reduce-scatter, the optimizer
  on each rank's half as DTensors, a scalar all-reduce for the clip norm, all-gather of the
  parameters; with 1 process it is ``tx`` itself, without any collective);
- ``torch DDP``: ``DistributedDataParallel`` + ``clip_grad_norm_`` + ``AdamW(fused=True)``.

With 1 process every implementation still runs in a gloo group of one (the same code path),
so the ratio ``2 procs / 1 proc`` is the scaling of that path: 0.5 would be perfect (each
process computes half the batch), 1.0 no gain.

Usage: python benchmarks/distributed.py [--steps N] [--rounds R] [--batch B] [--width W]
"""

from __future__ import annotations

import argparse
import datetime
import os
import socket
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

IMPLS = (
    "functrain flat",
    "functrain buckets 25MB",
    "functrain buckets 0.25MB",
    "functrain ZeRO-1",
    "torch DDP",
)


def make_model(width: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(256, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, 10),
    )


def loss_fn(forward, batch):
    x, y = batch
    return nn.functional.cross_entropy(forward(x), y)


def builders(width: int):
    import functrain as ft
    from functrain.distributed.zero import shard_optimizer

    def tx():
        return ft.chain(ft.clip(1.0), ft.adamw(1e-3))

    def functrain_step(sharded=False, bucket=None):
        def build():
            model = make_model(width)
            t = shard_optimizer(tx()) if sharded else tx()
            state = ft.TrainState.create(model, t)
            step = ft.make_train_step(
                model,
                loss_fn,
                t,
                grad="autograd",
                distributed=None if sharded else True,
                bucket_cap_mb=bucket,
            )
            box = [state]

            def run(batch):
                box[0], metrics = step(box[0], batch)

            return run

        return build

    def ddp():
        model = make_model(width)
        wrapped = nn.parallel.DistributedDataParallel(model)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)

        def run(batch):
            loss = loss_fn(wrapped, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()

        return run

    return {
        "functrain flat": functrain_step(),
        "functrain buckets 25MB": functrain_step(bucket=25.0),
        "functrain buckets 0.25MB": functrain_step(bucket=0.25),
        "functrain ZeRO-1": functrain_step(sharded=True),
        "torch DDP": ddp,
    }


def worker(rank, world, init, args, out):
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=init,
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=120),
    )
    try:
        g = torch.Generator().manual_seed(0)
        share = args.batch // world
        data = [
            (
                torch.randn(args.batch, 256, generator=g),
                torch.randint(0, 10, (args.batch,), generator=g),
            )
            for _ in range(8)
        ]
        data = [
            (x[rank * share : (rank + 1) * share], y[rank * share : (rank + 1) * share])
            for x, y in data
        ]
        runs = {name: build() for name, build in builders(args.width).items()}
        times: dict[str, list[float]] = {name: [] for name in runs}
        for run in runs.values():  # warm-up
            for i in range(3):
                run(data[i % len(data)])
        for _ in range(args.rounds):
            for name, run in runs.items():
                dist.barrier()
                start = time.perf_counter()
                for i in range(args.steps):
                    run(data[i % len(data)])
                dist.barrier()
                times[name].append((time.perf_counter() - start) / args.steps * 1e3)
        if rank == 0:
            torch.save({k: statistics.median(v) for k, v in times.items()}, out)
    finally:
        dist.destroy_process_group()


def measure(world: int, args) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        out = os.path.join(tmp, "times.pt")
        mp.spawn(worker, args=(world, f"tcp://127.0.0.1:{port}", args, out), nprocs=world)
        return torch.load(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--width", type=int, default=512)
    args = parser.parse_args()
    params = sum(p.numel() for p in make_model(args.width).parameters())
    print(
        f"MLP 256-{args.width}-{args.width}-{args.width}-10 ({params / 1e6:.2f}M params), "
        f"global batch {args.batch}, {args.steps} steps x {args.rounds} rounds, 1 thread/process"
    )
    one = measure(1, args)
    two = measure(2, args)
    print(f"{'':28s}{'1 proc ms':>11s}{'2 procs ms':>12s}{'2/1':>7s}")
    for name in IMPLS:
        print(f"{name:28s}{one[name]:11.2f}{two[name]:12.2f}{two[name] / one[name]:7.2f}")


if __name__ == "__main__":
    main()
