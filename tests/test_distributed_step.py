"""Data-parallel training steps on torch.distributed (gloo, 2 spawned CPU processes).

One world of two processes is spawned per module (spawning is the slow part) and runs every
distributed check; the tests compare what it saved with single-process runs made here:

- 2 ranks with half of each batch == 1 process with the whole batch after 20 steps (1e-6
  relative), with clip + AdamW/SGD(momentum) + paramwise multipliers + a cosine schedule, on
  the func and the bucketed-autograd gradient paths; the ranks stay bitwise identical;
- accumulation with ``average_gradients`` inside ``accumulate``: one all-reduce per optimizer
  step (DDP's ``no_sync``), same result as the full batch on one process;
- torch's DistributedDataParallel + clip_grad_norm_ + torch.optim.AdamW on the same model and
  data give the same parameters;
- broadcast_state, sync_buffers (against mmengine's ``all_reduce_params(op='mean')``, bitwise),
  the SyncBuffers callback's schedule and average_metrics.
"""

from __future__ import annotations

import datetime
import os
import socket

import optree
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import functrain as ft
from functrain.distributed.data_parallel import (
    SyncBuffers,
    average_gradients,
    average_metrics,
    broadcast_state,
    resolve_distributed,
    sync_buffers,
    syncs_gradients,
)
from functrain.schedules import cosine_annealing_lr

WORLD = 2
STEPS = 20
BATCH = 16
ACC = 3
PARAMWISE = dict(custom_keys={"3": dict(lr_mult=2.0)}, norm_decay_mult=0.0, bias_decay_mult=0.5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 12), nn.LayerNorm(12), nn.ReLU(), nn.Linear(12, 3))


def make_tx(model: nn.Module, opt: str, acc: int | None = None, sync_inside: bool = False):
    lr = cosine_annealing_lr(0.02, T_max=STEPS, eta_min=1e-4)
    core = ft.adamw(lr, weight_decay=0.05) if opt == "adamw" else ft.sgd(lr, 0.9, weight_decay=0.05)
    mults = ft.paramwise_multipliers(model, PARAMWISE, weight_decay=0.05)
    members = [ft.clip(0.5), core, ft.mask_multipliers(mults)]
    if sync_inside:
        members.insert(0, average_gradients())
    tx = ft.chain(*members)
    return ft.accumulate(tx, acc, max_iters=STEPS) if acc else tx


def data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(STEPS, BATCH, 6, generator=g), torch.randint(
        0, 3, (STEPS, BATCH), generator=g
    )


def loss_fn(forward, batch):
    x, y = batch
    return nn.functional.cross_entropy(forward(x), y)


def train(model, tx, rank, world, **step_kwargs):
    state = ft.TrainState.create(model, tx)
    step = ft.make_train_step(model, loss_fn, tx, **step_kwargs)
    xs, ys = data()
    share = BATCH // world
    for i in range(STEPS):
        lo = rank * share
        state, _ = step(state, (xs[i, lo : lo + share], ys[i, lo : lo + share]))
    return {k: v.clone() for k, v in state.params.items()}


class CountAllReduce:
    """Counts torch.distributed.all_reduce calls (patched in the worker process only)."""

    def __init__(self):
        self.calls = 0
        self.original = dist.all_reduce

    def __enter__(self):
        def counting(*args, **kwargs):
            self.calls += 1
            return self.original(*args, **kwargs)

        dist.all_reduce = counting
        return self

    def __exit__(self, *exc):
        dist.all_reduce = self.original


def ddp_run(rank, world):
    model = make_model()
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.AdamW(model.parameters(), lr=0.02, weight_decay=0.05)
    xs, ys = data()
    share = BATCH // world
    for i in range(STEPS):
        lo = rank * share
        loss = loss_fn(ddp, (xs[i, lo : lo + share], ys[i, lo : lo + share]))
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        opt.step()
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def flat_tensors(state):
    leaves = optree.tree_leaves(
        (state.params, state.buffers, state.opt_state), namespace="functrain"
    )
    return [t.clone() for t in leaves if isinstance(t, torch.Tensor)]


def bn_state(rank):
    model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5))
    model[0].weight.requires_grad_(False)  # a frozen parameter: in state.buffers, not synced
    state = ft.TrainState.create(model, ft.sgd(0.1))
    g = torch.Generator().manual_seed(10 + rank)
    buffers = dict(state.buffers)
    buffers["1.running_mean"] = torch.randn(5, generator=g)
    buffers["1.running_var"] = torch.rand(5, generator=g) + 0.5
    buffers["1.num_batches_tracked"] = torch.tensor(3 + 4 * rank)
    return model, state.replace(buffers=buffers)


def worker(rank, port, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        out = {}
        model = make_model()
        for opt in ("adamw", "sgd"):
            out[opt] = train(model, make_tx(model, opt), rank, WORLD)
        out["buckets"] = train(
            model, make_tx(model, "adamw"), rank, WORLD, grad="autograd", bucket_cap_mb=1e-4
        )
        with CountAllReduce() as count:
            out["acc_no_sync"] = train(model, make_tx(model, "adamw", ACC, True), rank, WORLD)
        out["acc_no_sync_calls"] = count.calls
        with CountAllReduce() as count:
            out["acc_every"] = train(model, make_tx(model, "adamw", ACC), rank, WORLD)
        out["acc_every_calls"] = count.calls
        out["plain_adamw"] = train(
            model, ft.chain(ft.clip(0.5), ft.adamw(0.02, weight_decay=0.05)), rank, WORLD
        )
        out["ddp"] = ddp_run(rank, WORLD)

        # broadcast_state: ranks start from different seeds and optimizer states.
        other = make_model(seed=rank)
        tx = ft.chain(ft.clip(0.5), ft.adamw(0.01))
        state = ft.TrainState.create(other, tx)
        step = ft.make_train_step(other, loss_fn, tx, distributed=False)
        state, _ = step(state, (torch.randn(4, 6) * (rank + 1), torch.tensor([0, 1, 2, rank])))
        out["before_broadcast"] = flat_tensors(state)
        out["after_broadcast"] = flat_tensors(broadcast_state(state))
        bad = nn.Linear(6, 3 + rank)
        try:
            broadcast_state(ft.TrainState.create(bad, ft.sgd(0.1)))
            out["mismatch_error"] = None
        except ValueError as e:
            out["mismatch_error"] = str(e)

        # sync_buffers vs mmengine's all_reduce_params(op="mean").
        from mmengine.dist import all_reduce_params

        bn_model, bstate = bn_state(rank)
        names = [n for n, _ in bn_model.named_buffers()]
        mine = sync_buffers(bstate, names)
        theirs = {n: bstate.buffers[n].clone() for n in names}
        all_reduce_params(list(theirs.values()), op="mean")
        out["sync_mine"] = {n: mine.buffers[n] for n in names}
        out["sync_mmengine"] = theirs
        out["sync_frozen"] = (bstate.buffers["0.weight"], mine.buffers["0.weight"])
        cb = SyncBuffers(bn_model)
        after_epoch = cb.after_train_epoch(None, bstate)
        skipped = cb.before_val_epoch(None, bstate)
        again = cb.before_val_epoch(None, bstate)
        out["callback"] = (
            after_epoch.buffers["1.running_mean"],
            skipped,
            again.buffers["1.running_mean"],
        )
        out["metrics"] = average_metrics({"loss": torch.tensor(float(rank)), "n": 3})
        torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out_dir = str(tmp_path_factory.mktemp("dp"))
    mp.spawn(worker, args=(free_port(), out_dir), nprocs=WORLD, join=True)
    return [torch.load(os.path.join(out_dir, f"rank{r}.pt")) for r in range(WORLD)]


def assert_rel(actual, expected, initial, rtol=1e-6, what=""):
    """Leafwise ``|a - e| <= rtol * (|e| + max(max|initial|, max|e|))`` (README's measure)."""
    for k in expected:
        a, e, p0 = actual[k], expected[k], initial[k]
        scale = torch.maximum(p0.abs().max(), e.abs().max())
        err = (a - e).abs()
        assert bool((err <= rtol * (e.abs() + scale)).all()), (
            f"{what}: {k!r} differs by {err.max().item():.3g} (scale {scale.item():.3g})"
        )


def initial_params():
    return {k: v.detach().clone() for k, v in make_model().named_parameters()}


@pytest.mark.parametrize("case,opt", [("adamw", "adamw"), ("sgd", "sgd"), ("buckets", "adamw")])
def test_two_ranks_with_half_batches_equal_one_process(world, case, opt):
    model = make_model()
    reference = train(model, make_tx(model, opt), 0, 1)
    assert_rel(world[0][case], reference, initial_params(), what=case)
    for k in reference:  # every rank took the same step
        assert torch.equal(world[0][case][k], world[1][case][k]), k
    moved = max((reference[k] - v).abs().max() for k, v in initial_params().items())
    assert moved > 1e-3  # the run did train


def test_accumulation_all_reduces_only_on_stepping_micro_batches(world):
    model = make_model()
    reference = train(model, make_tx(model, "adamw", ACC), 0, 1)
    for case in ("acc_no_sync", "acc_every"):
        assert_rel(world[0][case], reference, initial_params(), what=case)
        assert all(torch.equal(world[0][case][k], world[1][case][k]) for k in reference)
    windows = -(-STEPS // ACC)  # 6 full windows of 3 and a shortened one of 2
    assert world[0]["acc_no_sync_calls"] == windows == 7
    assert world[0]["acc_every_calls"] == STEPS


def test_matches_torch_distributed_data_parallel(world):
    assert_rel(world[0]["plain_adamw"], world[0]["ddp"], initial_params(), what="vs DDP")
    assert_rel(world[1]["plain_adamw"], world[1]["ddp"], initial_params(), what="vs DDP")


def test_broadcast_state_gives_every_rank_rank0s_tensors(world):
    before0, before1 = world[0]["before_broadcast"], world[1]["before_broadcast"]
    assert any(not torch.equal(a, b) for a, b in zip(before0, before1, strict=True))
    for a, b, c in zip(
        before0, world[0]["after_broadcast"], world[1]["after_broadcast"], strict=True
    ):
        assert torch.equal(a, b) and torch.equal(a, c)
        assert a.dtype == c.dtype and a.shape == c.shape


def test_broadcast_state_names_the_mismatching_tensor(world):
    for rank in range(WORLD):
        message = world[rank]["mismatch_error"]
        assert message == (
            "broadcast_state: tensor 'params.bias' is float32 of shape [4] on rank 1 but "
            "float32 of shape [3] on rank 0; every rank must build the same model and optimizer"
        )


def test_sync_buffers_matches_mmengine_all_reduce_params_mean(world):
    for rank in range(WORLD):
        mine, theirs = world[rank]["sync_mine"], world[rank]["sync_mmengine"]
        assert set(mine) == {"1.running_mean", "1.running_var", "1.num_batches_tracked"}
        for name in mine:
            assert mine[name].dtype == theirs[name].dtype
            assert torch.equal(mine[name], theirs[name]), name
        assert mine["1.num_batches_tracked"].item() == 5  # (3 + 7) / 2
        frozen_before, frozen_after = world[rank]["sync_frozen"]
        assert torch.equal(frozen_before, frozen_after)  # frozen params are not buffers
    assert torch.equal(
        world[0]["sync_mine"]["1.running_mean"], world[1]["sync_mine"]["1.running_mean"]
    )


def test_sync_buffers_callback_follows_mmengine_schedule(world):
    after_epoch, skipped, again = world[0]["callback"]
    assert torch.equal(after_epoch, world[0]["sync_mine"]["1.running_mean"])
    assert skipped is None  # synced at the end of the training epoch: not again before val
    assert torch.equal(again, after_epoch)  # no training epoch since: sync before val


def test_average_metrics(world):
    for rank in range(WORLD):
        metrics = world[rank]["metrics"]
        assert metrics["loss"].item() == 0.5 and metrics["n"] == 3


def test_without_a_process_group():
    assert resolve_distributed(None) is False
    model = make_model()
    with pytest.raises(RuntimeError, match="initialized torch.distributed process group"):
        ft.make_train_step(model, loss_fn, ft.sgd(0.1), distributed=True)
    with pytest.raises(ValueError, match="needs distributed=True"):
        ft.make_train_step(model, loss_fn, ft.sgd(0.1), grad="autograd", bucket_cap_mb=25)
    with pytest.raises(ValueError, match="distributed must be True, False or None"):
        ft.make_train_step(model, loss_fn, ft.sgd(0.1), distributed="yes")
    # average_gradients is the identity in a single process, so a chain with it trains alike.
    with_sync = train(model, make_tx(model, "sgd", sync_inside=True), 0, 1)
    without = train(model, make_tx(model, "sgd"), 0, 1)
    assert all(torch.equal(with_sync[k], without[k]) for k in without)
    assert syncs_gradients(ft.accumulate(ft.chain(average_gradients(), ft.sgd(0.1)), 2))
    assert not syncs_gradients(ft.chain(ft.clip(1.0), ft.sgd(0.1)))
