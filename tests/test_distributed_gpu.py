"""Data parallelism on the GPU with NCCL: a world of one process on the single GPU.

Skipped without CUDA (and NCCL). The process group is initialized here, in the test process,
through a FileStore in a temporary directory (no port needed), and destroyed at the end:

- a data-parallel step (gradients all-reduced over NCCL, flat or bucketed and overlapped
  with backward) gives bitwise the parameters of the plain step (one rank: the all-reduce
  of one contribution is the identity, and DDP's ``1 / world_size`` is 1), and so does the
  sharded optimizer wrapper;
- after warm-up, data-parallel steps make no host synchronisation
  (``torch.cuda.set_sync_debug_mode("error")`` raises on any).
"""

from __future__ import annotations

import datetime

import pytest
import torch
import torch.distributed as dist
from torch import nn

import functrain as ft
from functrain.distributed.zero import shard_optimizer
from functrain.schedules import cosine_annealing_lr

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or not dist.is_nccl_available(),
    reason="needs a CUDA GPU with NCCL",
)

STEPS = 8


@pytest.fixture(scope="module")
def nccl(tmp_path_factory):
    assert not dist.is_initialized(), "a process group is already initialized in this process"
    store = dist.FileStore(str(tmp_path_factory.mktemp("nccl") / "store"), 1)
    torch.cuda.set_device(0)
    dist.init_process_group(
        "nccl", store=store, rank=0, world_size=1, timeout=datetime.timedelta(seconds=60)
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.LayerNorm(64), nn.ReLU(), nn.Linear(64, 10)).cuda()


def make_tx(model: nn.Module):
    mults = ft.paramwise_multipliers(
        model, dict(custom_keys={"3": dict(lr_mult=2.0)}, norm_decay_mult=0.0), weight_decay=0.05
    )
    lr = cosine_annealing_lr(1e-2, T_max=STEPS, eta_min=1e-4)
    return ft.chain(ft.clip(1.0), ft.adamw(lr, weight_decay=0.05), ft.mask_multipliers(mults))


def loss_fn(forward, batch):
    x, y = batch
    return nn.functional.cross_entropy(forward(x), y)


def batches(n=STEPS):
    g = torch.Generator(device="cuda").manual_seed(1)
    return [
        (
            torch.randn(16, 32, device="cuda", generator=g),
            torch.randint(0, 10, (16,), device="cuda", generator=g),
        )
        for _ in range(n)
    ]


def train(tx_fn, **step_kwargs):
    model = make_model()
    tx = tx_fn(model)
    state = ft.TrainState.create(model, tx)
    step = ft.make_train_step(model, loss_fn, tx, **step_kwargs)
    for batch in batches():
        state, metrics = step(state, batch)
    assert metrics["loss"].is_cuda
    return state.params


def test_data_parallel_step_equals_plain_step(nccl):
    for grad in ("func", "autograd"):
        plain = train(make_tx, distributed=False, grad=grad)
        variants = {"flat": train(make_tx, distributed=True, grad=grad)}
        if grad == "autograd":
            variants["buckets"] = train(make_tx, distributed=True, grad=grad, bucket_cap_mb=0.004)
        variants["sharded"] = train(lambda m: shard_optimizer(make_tx(m)), grad=grad)
        for name, params in variants.items():
            for k in plain:
                diff = ((params[k] - plain[k]).abs().max() / plain[k].abs().max()).item()
                if name == "buckets":  # .grad accumulated by hooks vs torch.autograd.grad
                    assert diff <= 1e-6, f"{grad}/{name}: {k}"
                else:
                    assert torch.equal(params[k], plain[k]), f"{grad}/{name}: {k}"


@pytest.mark.parametrize("bucket_cap_mb", [None, 0.004])
def test_data_parallel_steps_make_no_host_sync(nccl, bucket_cap_mb):
    model = make_model()
    tx = make_tx(model)
    state = ft.TrainState.create(model, tx)
    step = ft.make_train_step(
        model, loss_fn, tx, distributed=True, grad="autograd", bucket_cap_mb=bucket_cap_mb
    )
    data = batches()
    for batch in data[:3]:  # warm-up: NCCL communicator, kernels, allocator
        state, _ = step(state, batch)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for batch in data[3:]:
            state, metrics = step(state, batch)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.isfinite(metrics["loss"]).item()
