"""The loop under torch.distributed: 2 gloo processes spawned by each test (CPU only).

- only rank 0 writes logs, scalars, plots and checkpoints (every file operation under the
  work dir is recorded with an audit hook in each rank: rank 1 makes none), every rank
  agrees on the log directory, validation metrics are those of the whole validation set;
- a 2-process run interrupted mid-epoch / mid-stream and resumed ends bitwise where the
  uninterrupted 2-process run ends, on every rank (EpochBasedTrainLoop + DefaultSampler,
  IterBasedTrainLoop + InfiniteSampler, both with seed=None, per-rank dropout streams and a
  per-rank "sharded" state saved through ``state_for_checkpoint`` / ``state_from_checkpoint``);
- a rank that raises makes the other fail at once with a note naming it, not hang;
- ``setup_env`` / ``init_distributed`` honour mmengine's ``env_cfg`` keys and reject the rest.

The train step is ``make_train_step``'s data-parallel one (gradients averaged over the ranks).
"""

from __future__ import annotations

import datetime
import io
import json
import logging
import os
import shutil
import socket
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import optree
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset, default_collate

import functrain as ft
from functrain.callbacks import (
    EMA,
    Callback,
    CheckpointCallback,
    CurvesPlot,
    Logger,
    ProgressBar,
)
from functrain.checkpoint import load_checkpoint
from functrain.distributed import comm
from functrain.distributed.sampler import DefaultSampler, InfiniteSampler
from functrain.distributed.zero import (
    gather_optimizer_state,
    shard_optimizer,
    shard_optimizer_state,
)
from functrain.loops import (
    EpochBasedTrainLoop,
    IterBasedTrainLoop,
    Runner,
    ValLoop,
    find_latest_checkpoint,
)
from functrain.schedules import cosine_annealing_lr
from functrain.state import TrainState
from functrain.step import make_eval_step, make_train_step

WORLD = 2


# --------------------------------------------------------------------------------------------
# Spawning a world


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(
    scenario: str, rank: int, world: int, local_rank: int, port: int, out: str, kwargs: dict
) -> None:
    torch.set_num_threads(1)
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(local_rank),
    )
    code = 0
    try:
        result = SCENARIOS[scenario](rank, Path(out), **kwargs)
        torch.save(result, Path(out) / f"rank{rank}.pt")
    except BaseException:
        (Path(out) / f"rank{rank}.err").write_text(traceback.format_exc())
        code = 1
    finally:
        if dist.is_available() and dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:
                pass
    sys.exit(code)


def spawn(
    scenario: str,
    out: Path,
    deadline: float = 100.0,
    world: int = WORLD,
    local_ranks: list[int] | None = None,
    **kwargs,
):
    """Run ``scenario`` on ``world`` ranks; returns (exit codes, results, error texts,
    seconds)."""
    out.mkdir(parents=True, exist_ok=True)
    ctx = torch.multiprocessing.get_context("spawn")
    port = _free_port()
    local_ranks = local_ranks or list(range(world))
    procs = [
        ctx.Process(
            target=_worker, args=(scenario, r, world, local_ranks[r], port, str(out), kwargs)
        )
        for r in range(world)
    ]
    start = time.monotonic()
    for p in procs:
        p.start()
    for p in procs:
        p.join(max(0.0, deadline - (time.monotonic() - start)))
    seconds = time.monotonic() - start
    hung = [r for r, p in enumerate(procs) if p.is_alive()]
    for r in hung:
        procs[r].kill()
        procs[r].join()
    assert not hung, f"ranks {hung} still running after {deadline:.0f} s: a hang"
    results, errors = {}, {}
    for r in range(world):
        if (out / f"rank{r}.pt").exists():
            results[r] = torch.load(out / f"rank{r}.pt", weights_only=False)
        if (out / f"rank{r}.err").exists():
            errors[r] = (out / f"rank{r}.err").read_text()
    return [p.exitcode for p in procs], results, errors, seconds


def _ok(codes, errors):
    assert codes == [0] * len(codes), "\n\n".join(f"rank {r}:\n{t}" for r, t in errors.items())


# --------------------------------------------------------------------------------------------
# What the ranks run


def loss_fn(forward, batch):
    x, y = batch
    return F.cross_entropy(forward(x), y)


def dp_train_step(model, tx, fail_at=None, fused=None):
    """functrain's data-parallel train step (``make_train_step`` averages the gradients over
    the ranks when a process group of several ranks is initialized), which rank
    ``fail_at[0]`` makes raise at iteration ``fail_at[1]``, before its all-reduce."""
    step = make_train_step(model, loss_fn, tx, grad="autograd", fused=fused)
    if fail_at is None:
        return step

    def failing_step(state, batch):
        if state.iteration == fail_at[1] and dist.get_rank() == fail_at[0]:
            raise ValueError(f"rank {fail_at[0]} fails at iteration {fail_at[1]}")
        return step(state, batch)

    return failing_step


def metrics_fn(forward, batch):
    x, y = batch
    return {"acc": (forward(x).argmax(-1) == y).float()}


def data(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] - 0.3 * x[:, 2] > 0).long()
    return TensorDataset(x, y)


def make_model() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Dropout(0.25), torch.nn.Linear(16, 2)
    )


def _watch_writes(root: Path) -> list[tuple[str, str]]:
    """Record every file-system write under ``root`` made by this process."""
    events: list[tuple[str, str]] = []
    prefix = os.path.abspath(root) + os.sep
    mutating = ("os.mkdir", "os.rename", "os.remove", "os.rmdir", "shutil.rmtree", "os.truncate")

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                mode is None
                and isinstance(flags, int)
                and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
            )
        elif event == "os.rename":  # os.replace too: the destination is written
            for path in args[:2]:
                record(event, path)
            return
        elif event in mutating:
            path, writes = args[0], True
        else:
            return
        if writes:
            record(event, path)

    def record(event: str, path: object) -> None:
        if isinstance(path, str | bytes | os.PathLike):
            p = os.path.abspath(os.fsdecode(path))
            if p.startswith(prefix):
                events.append((event, p))

    sys.addaudithook(hook)
    return events


class RankEvaluator:
    def reset(self) -> None:
        self.batches = 0

    def process(self, outputs, data_batch) -> None:
        self.batches += 1

    def evaluate(self) -> dict[str, float]:
        return {"rank": float(comm.get_rank()), "batches": float(self.batches)}


def scenario_files(rank: int, out: Path) -> dict:
    """A 2-epoch run with every file-writing callback; returns what each rank did."""
    work = out / "work"
    writes = _watch_writes(work)
    env = comm.setup_env(
        dict(dist_cfg=dict(backend="gloo", timeout=60), mp_cfg=dict(opencv_num_threads=0)),
        launcher="pytorch",
    )
    torch.manual_seed(0)  # the same initial parameters on every rank
    model = make_model()
    torch.manual_seed(100 + rank)  # each rank its own dropout stream
    train_set, val_set = data(48, 0), data(23, 1)
    np.random.seed(rank)  # seed=None: only rank 0's draw may count
    sampler = DefaultSampler(train_set, seed=None)
    loader = DataLoader(train_set, batch_size=4, sampler=sampler)
    val_loader = DataLoader(
        val_set, batch_size=5, sampler=DefaultSampler(val_set, shuffle=False, round_up=False)
    )
    tx = ft.chain(ft.clip(1.0), ft.adamw(lr=0.02))
    bar_stream = io.StringIO()
    runner = Runner(
        state=TrainState.create(model, tx),
        train_step=dp_train_step(model, tx),
        train_loop=EpochBasedTrainLoop(loader, max_epochs=2),
        val_loop=ValLoop(val_loader, make_eval_step(model, metrics_fn)),
        callbacks=[CurvesPlot(), ProgressBar(stream=bar_stream, force=True)],
        default_callbacks={
            "logger": Logger(interval=2),
            "checkpoint": CheckpointCallback(interval=1, max_keep_ckpts=1, save_best="acc"),
        },
        work_dir=work,
    )
    state = runner.train()
    # An evaluator that only sees its own rank: every rank must act on rank 0's metrics.
    other = Runner(  # no work_dir: rank 0's new temporary directory on every rank
        state=state,
        val_loop=ValLoop(val_loader, make_eval_step(model, metrics_fn), RankEvaluator()),
        default_callbacks=False,
    )
    own_metrics = other.val()
    # A checkpoint rank 0 cannot write is an error on every rank (no rank waits forever).
    if rank == 0:
        (out / "blocker").write_text("a file where a directory should be")
    try:
        other.save_checkpoint(out / "blocker" / "x.pth")
    except Exception as e:
        save_error = f"{type(e).__name__}: {e}"
    else:
        save_error = None
    writes = list(writes)
    handlers = [(type(h).__name__, h.level) for h in runner.logger.handlers]  # a new logger
    runner._close_logger()
    full = make_eval_step(model, metrics_fn)(state, val_set.tensors)["acc"].double().mean()
    return {
        "env": (env.rank, env.world_size, env.local_rank, env.backend, env.distributed),
        "env_timestamp": env.timestamp,
        "timestamp": runner.timestamp,
        "log_dir": str(runner.log_dir),
        "writes": writes,
        "handlers": handlers,
        "val": runner.last_val_metrics,
        "own_metrics": own_metrics,
        "tmp_work_dir": str(other.work_dir),
        "save_error": save_error,
        "full_val_acc": float(full),
        "records": len([r for r in runner.log_records if r["mode"] in ("train", "val")]),
        "bar_draws": runner.callbacks.get("progress_bar").draws,
        "seed": sampler.seed,
        "params": {k: v.clone() for k, v in state.params.items()},
    }


class Crash(Exception):
    pass


class CrashAt(Callback):
    priority = "LOWEST"

    def __init__(self, at: int) -> None:
        self.at = at

    def before_train_iter(self, runner, state, batch_idx, data_batch=None):
        if runner.iter == self.at:
            raise Crash


class FakeShard(Callback):
    """Per-rank state that is not replicated (as a ZeRO-1 optimizer shard): rank r keeps its
    own slice; checkpoints hold the gathered whole."""

    def after_train_iter(self, runner, state, batch_idx, data_batch=None, outputs=None):
        shard = self.get_state(state)
        if shard is None:
            shard = torch.full((3,), float(comm.get_rank() + 1), device=outputs["loss"].device)
        return self.set_state(state, shard * 1.5 + outputs["loss"])


def gather_shards(state: TrainState) -> TrainState:
    shard = state.callbacks.get("fake_shard")
    if shard is None:
        return state
    parts = [torch.empty_like(shard) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, shard)
    callbacks = {k: v for k, v in state.callbacks.items() if k != "fake_shard"}
    return state.replace(callbacks={**callbacks, "fake_full": torch.stack(parts)})


def scatter_shards(loaded: TrainState, current: TrainState) -> TrainState:
    callbacks = dict(loaded.callbacks)
    full = callbacks.pop("fake_full", None)
    if full is not None:
        callbacks["fake_shard"] = full[dist.get_rank()].clone()
    return loaded.replace(callbacks=callbacks)


def _build_resumable(
    rank, work, loop, *, np_seed, torch_seed, crash_at=None, resume=False, device="cpu", zero=False
):
    torch.manual_seed(0)
    model = make_model()
    torch.manual_seed(torch_seed + 1000 * rank)
    if device != "cpu":
        torch.cuda.manual_seed(torch_seed + 1000 * rank)
    train_set, val_set = data(38, 2), data(17, 3)

    def collate(samples):
        return tuple(t.to(device) for t in default_collate(samples))

    np.random.seed(np_seed)
    if loop == "epoch":
        sampler = DefaultSampler(train_set, seed=None)  # 19 per rank: 5 batches, last of 3
        loader = DataLoader(train_set, batch_size=4, sampler=sampler, collate_fn=collate)
        train_loop = EpochBasedTrainLoop(loader, max_epochs=3)
    else:
        sampler = InfiniteSampler(train_set, seed=None)
        loader = DataLoader(train_set, batch_size=4, sampler=sampler, collate_fn=collate)
        train_loop = IterBasedTrainLoop(loader, max_iters=14, val_interval=4)
    val_loader = DataLoader(
        val_set,
        batch_size=4,
        sampler=DefaultSampler(val_set, shuffle=False, round_up=False),
        collate_fn=collate,
    )
    tx = ft.chain(ft.clip(0.5), ft.adamw(lr=cosine_annealing_lr(0.05, T_max=15)))
    to_checkpoint, from_checkpoint = gather_shards, scatter_shards
    if zero:  # ZeRO-1: each rank keeps the optimizer state of its shard; files hold it all
        tx = shard_optimizer(tx)

        def to_checkpoint(state):
            return gather_optimizer_state(gather_shards(state))

        def from_checkpoint(loaded, current):
            return shard_optimizer_state(scatter_shards(loaded, current), current)

    callbacks = [EMA(momentum=0.3, begin_iter=2), FakeShard()]
    if crash_at is not None:
        callbacks.append(CrashAt(crash_at))
    return Runner(
        state=TrainState.create(model, tx, device=device),
        # On CUDA (torch 2.11) torch's fused AdamW rejects functrain's float64 scheduled lr
        # ("expected scalar type Float but found Double"): the foreach path there.
        train_step=dp_train_step(model, tx, fused=None if device == "cpu" else False),
        train_loop=train_loop,
        val_loop=ValLoop(val_loader, make_eval_step(model, metrics_fn)),
        callbacks=callbacks,
        default_callbacks={
            "logger": Logger(interval=3),
            "checkpoint": CheckpointCallback(interval=1, by_epoch=False, max_keep_ckpts=2),
        },
        work_dir=work,
        resume=resume,
        log_level="WARNING",
        state_for_checkpoint=to_checkpoint,
        state_from_checkpoint=from_checkpoint,
        abort_on_error=False,  # the simulated crash must leave the group usable
    ), sampler


def _leaves(state: TrainState) -> list[tuple[str, torch.Tensor]]:
    """Tensor leaves by path; a DTensor (ZeRO's sharded optimizer state) as its local part,
    its path marked ``dtensor:``."""
    tree = (state.params, state.buffers, state.opt_state, state.callbacks)
    paths, values, _ = optree.tree_flatten_with_path(tree, namespace="functrain")
    out = []
    for p, v in zip(paths, values, strict=True):
        if hasattr(v, "to_local"):
            out.append((f"dtensor:{p}", v.to_local().clone()))
        elif torch.is_tensor(v):
            out.append((str(p), v.clone()))
    return out


def scenario_resume(
    rank: int,
    out: Path,
    loop: str,
    crash_at: int,
    device: str = "cpu",
    backend: str = "gloo",
    zero: bool = False,
) -> dict:
    comm.init_distributed("pytorch", backend=backend, timeout=60)
    full, _ = _build_resumable(
        rank, out / "full", loop, np_seed=0, torch_seed=1, device=device, zero=zero
    )
    expected = full.train()
    crashed, crashed_sampler = _build_resumable(
        rank,
        out / "crash",
        loop,
        np_seed=0,
        torch_seed=1,
        crash_at=crash_at,
        device=device,
        zero=zero,
    )
    try:
        crashed.train()
    except Crash:
        pass
    else:
        raise AssertionError("the crash did not happen")
    # Another process would draw other seeds: the checkpoint's must win.
    resumed, sampler = _build_resumable(
        rank, out / "crash", loop, np_seed=5, torch_seed=77, resume=True, device=device, zero=zero
    )
    seed_before = sampler.seed
    got = resumed.train()
    ckpt = load_checkpoint(find_latest_checkpoint(out / "crash"))
    ckpt_opt = [t for t in optree.tree_leaves(ckpt["state"]["opt_state"]) if torch.is_tensor(t)]
    return {
        "ckpt_opt": (
            sum(t.numel() for t in ckpt_opt),
            {type(t).__name__ for t in ckpt_opt},
            sum(v.numel() for v in got.params.values()),
        ),
        "expected": _leaves(expected),
        "got": _leaves(got),
        "counters": ((expected.iteration, expected.epoch), (got.iteration, got.epoch)),
        "seeds": (crashed_sampler.seed, seed_before, sampler.seed),
        "val": (full.last_val_metrics, resumed.last_val_metrics),
        "backend": str(dist.get_backend()),
        "devices": {str(v.device) for _, v in _leaves(got)},
    }


def scenario_fail(rank: int, out: Path) -> dict:
    comm.init_distributed("pytorch", backend="gloo", timeout=datetime.timedelta(seconds=10))
    torch.manual_seed(0)
    model = make_model()
    train_set = data(40, 0)
    tx = ft.adamw(lr=0.01)
    runner = Runner(
        state=TrainState.create(model, tx),
        train_step=dp_train_step(model, tx, fail_at=(1, 3)),
        train_loop=EpochBasedTrainLoop(
            DataLoader(train_set, batch_size=4, sampler=DefaultSampler(train_set, seed=0)),
            max_epochs=2,
        ),
        default_callbacks={"checkpoint": None},
        work_dir=out / "work",
        log_level="WARNING",
    )
    runner.train()
    return {"finished": True}


SCENARIOS = {"files": scenario_files, "resume": scenario_resume, "fail": scenario_fail}


# --------------------------------------------------------------------------------------------
# The tests


def test_only_rank0_writes(tmp_path):
    codes, res, errors, _ = spawn("files", tmp_path)
    _ok(codes, errors)
    r0, r1 = res[0], res[1]
    assert r0["env"] == (0, 2, 0, "gloo", True) and r1["env"] == (1, 2, 1, "gloo", True)
    # Rank 1 wrote nothing of its own, not even the log directory.
    assert r1["writes"] == []
    work = tmp_path / "work"
    on_disk = {str(p) for p in work.rglob("*") if p.is_file()}
    written = {p for _, p in r0["writes"]}
    assert on_disk <= written, on_disk - written
    names = {Path(p).name for p in on_disk}
    assert {"last_checkpoint", "epoch_2.pth", "curves.png", "scalars.json"} <= names
    assert any(n.startswith("best_acc_epoch_") for n in names)
    assert not [n for n in names if n.endswith(".tmp")]
    # One writer: every record once in the JSON lines.
    (scalars,) = work.rglob("scalars.json")
    lines = [json.loads(line) for line in scalars.read_text().splitlines()]
    assert len(lines) == r0["records"] == r1["records"] > 0
    (log,) = work.rglob("*.log")
    assert "Epoch(train) [2]" in log.read_text()
    # Every rank agrees on the names, from rank 0's clock.
    assert r0["timestamp"] == r1["timestamp"] and r0["log_dir"] == r1["log_dir"]
    assert r0["env_timestamp"] == r1["env_timestamp"]
    assert Path(r0["log_dir"]).name == r0["timestamp"] and Path(r0["log_dir"]).is_dir()
    # Other ranks: terminal warnings and errors only, no file.
    assert ("FileHandler", logging.INFO) in r0["handlers"]
    assert r1["handlers"] == [("StreamHandler", logging.WARNING)]
    assert r0["bar_draws"] > 0 and r1["bar_draws"] == 0
    # The same synced sampler seed, the same parameters (averaged gradients), and validation
    # metrics of the whole validation set (12 + 11 samples over the two ranks).
    assert r0["seed"] == r1["seed"]
    for name in r0["params"]:
        assert torch.equal(r0["params"][name], r1["params"][name]), name
    assert r0["val"] == r1["val"]
    assert r0["own_metrics"] == r1["own_metrics"] == {"rank": 0.0, "batches": 3.0}
    assert r0["tmp_work_dir"] == r1["tmp_work_dir"]
    shutil.rmtree(r0["tmp_work_dir"], ignore_errors=True)
    assert r0["save_error"].startswith("FileExistsError")
    assert r1["save_error"].startswith("RuntimeError: rank 0 failed to write checkpoint")
    assert "FileExistsError" in r1["save_error"]
    assert r0["val"]["acc"] == pytest.approx(r0["full_val_acc"], abs=1e-12)


@pytest.mark.parametrize(
    ("loop", "crash_at", "zero"), [("epoch", 7, False), ("iter", 6, False), ("epoch", 8, True)]
)
def test_resume_two_processes_is_bitwise(tmp_path, loop, crash_at, zero):
    """``zero``: a ZeRO-1 sharded optimizer state, saved whole through
    ``state_for_checkpoint`` and cut back into each rank's shard on resume."""
    codes, res, errors, _ = spawn("resume", tmp_path, loop=loop, crash_at=crash_at, zero=zero)
    _ok(codes, errors)
    _check_resume(res, zero)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("loop", "crash_at"), [("epoch", 7), ("iter", 6)])
def test_resume_on_cuda_is_bitwise(tmp_path, loop, crash_at):
    """On GPUs: NCCL with one GPU per rank; with a single GPU, two ranks that each see GPU 0
    as their LOCAL_RANK (two "nodes") over gloo, and a 1-rank NCCL run."""
    if torch.cuda.device_count() >= 2:
        runs = [("nccl", 2, [0, 1])]
    else:
        runs = [("gloo", 2, [0, 0]), (None, 1, [0])]
    for backend, world, local_ranks in runs:
        codes, res, errors, _ = spawn(
            "resume",
            tmp_path / f"{backend}{world}",
            world=world,
            local_ranks=local_ranks,
            loop=loop,
            crash_at=crash_at,
            device="cuda",
            backend=backend,
        )
        _ok(codes, errors)
        for r in res.values():
            assert r["backend"] == (backend or "nccl")
            assert {d.split(":")[0] for d in r["devices"]} == {"cuda"}
        _check_resume(res)


def _check_resume(res: dict, zero: bool = False) -> None:
    for rank in sorted(res):
        r = res[rank]
        assert r["counters"][0] == r["counters"][1]
        crashed_seed, drawn_seed, used_seed = r["seeds"]
        assert drawn_seed != crashed_seed and used_seed == crashed_seed
        expected, got = dict(r["expected"]), dict(r["got"])
        assert expected.keys() == got.keys()
        assert any("fake_shard" in k for k in got)
        # The file holds the whole optimizer state (Adam's two moments of every parameter),
        # as plain tensors, even where each rank keeps only its shard.
        opt_numel, opt_types, n_params = r["ckpt_opt"]
        assert opt_types == {"Tensor"} and opt_numel >= 2 * n_params
        sharded = [k for k in got if k.startswith("dtensor:")]
        assert bool(sharded) == zero
        if zero:
            local = sum(got[k].numel() for k in sharded)
            assert local < opt_numel * 0.75  # this rank holds about half of it
        for path, value in expected.items():
            assert torch.equal(got[path], value), (rank, path)
        assert r["val"][0] == r["val"][1]
    if len(res) < 2:
        return
    # The replicated part is the same on both ranks; the per-rank shard is not.
    e0, e1 = dict(res[0]["expected"]), dict(res[1]["expected"])
    for path in e0:
        if path.startswith("dtensor:"):
            continue  # ZeRO-1: each rank's own chunk, or a replicated small leaf
        same = torch.equal(e0[path], e1[path])
        assert same != ("fake_shard" in path), path


def test_failing_rank_stops_the_others(tmp_path):
    codes, res, errors, seconds = spawn("fail", tmp_path, deadline=60.0)
    assert res == {} and all(code != 0 for code in codes), (codes, errors)
    assert "ValueError: rank 1 fails at iteration 3" in errors[1]
    # Rank 0 was waiting in the all-reduce of iteration 3: it fails too, and says why.
    assert (
        "rank 0 stopped after rank 1 failed first with: ValueError: rank 1 fails at " in (errors[0])
    )
    assert seconds < 60


# --------------------------------------------------------------------------------------------
# Without a process group (this process)


def test_helpers_without_a_process_group():
    assert not comm.is_distributed()
    assert (comm.get_rank(), comm.get_world_size(), comm.get_local_rank()) == (0, 1, 0)
    assert comm.is_main_process()
    comm.barrier()
    obj = {"a": [1, 2]}
    assert comm.broadcast_object(obj) is obj
    assert comm.all_gather_object(obj) == [obj]
    assert comm.get_device() == torch.device("cpu") or torch.cuda.is_available()
    comm.abort_on_failure(RuntimeError("x"))  # nothing to abort
    assert comm.init_distributed("none") is False


def test_rank_queries_live_below_the_distributed_package():
    # The loops and callbacks take rank queries from functrain.ranks, a low-level module; it
    # must not pull in the distributed package (or anything above the tree layer).
    import subprocess

    code = (
        "import sys, functrain.ranks, functrain.callbacks.logger, functrain.loops; "
        "print(sorted(m for m in sys.modules if m.startswith('functrain.distributed')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]", out.stdout
    from functrain import ranks

    # functrain.distributed.comm re-exports the same functions (not copies).
    for name in ("get_rank", "get_world_size", "is_main_process", "broadcast_object"):
        assert getattr(comm, name) is getattr(ranks, name), name


@pytest.mark.parametrize(
    ("env_cfg", "launcher", "error", "match"),
    [
        (dict(cudnn_benchmrk=True), "none", ValueError, "'cudnn_benchmrk'; did you mean "),
        (dict(mp_cfg=dict(opencv_threads=0)), "none", ValueError, "env_cfg.mp_cfg key"),
        (dict(dist_cfg=dict(backend="gloo")), "slurm", ValueError, "'slurm' is not supported"),
        (None, "mpi", ValueError, r"supported: 'none', 'pytorch'"),
        (None, "pytorh", ValueError, "did you mean 'pytorch'"),
        (dict(dist_cfg=dict(timeout="30")), "none", TypeError, "dist_cfg=dict"),
        (dict(dist_cfg=dict(timeout=-1)), "none", ValueError, "must be positive"),
        (dict(dist_cfg=dict(init_backend="deepspeed")), "none", ValueError, "init_backend"),
        (dict(resource_limit="many"), "none", TypeError, "resource_limit"),
        (dict(mp_cfg=dict(mp_start_method="forkk")), "none", ValueError, "did you mean 'fork'"),
        ([("cudnn_benchmark", True)], "none", TypeError, "env_cfg must be a dict"),
    ],
)
def test_setup_env_rejects_clearly(env_cfg, launcher, error, match):
    with pytest.raises(error, match=match):
        comm.setup_env(env_cfg, launcher=launcher)


def test_pytorch_launcher_without_torchrun(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(RuntimeError, match=r"missing: RANK, WORLD_SIZE, .*torchrun"):
        comm.setup_env(dict(dist_cfg=dict(backend="gloo")), launcher="pytorch")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(RuntimeError, match="missing: MASTER_ADDR, MASTER_PORT"):
        comm.init_distributed("pytorch")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "1")
    with pytest.raises(ValueError, match="unknown distributed backend 'glo'; did you mean 'gloo'"):
        comm.init_distributed("pytorch", backend="glo")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="backend 'nccl' needs CUDA"):
            comm.init_distributed("pytorch", backend="nccl")
    assert not comm.is_distributed()


def test_setup_env_honours_mmengine_keys(monkeypatch):
    import resource

    import cv2
    import torch.multiprocessing as mp

    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    previous_method = mp.get_start_method(allow_none=True)
    threads = cv2.getNumThreads()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        info = comm.setup_env(
            dict(
                cudnn_benchmark=True,
                mp_cfg=dict(mp_start_method="spawn", opencv_num_threads=1),
                dist_cfg=dict(backend="nccl", timeout=1800),  # ignored for launcher 'none'
                resource_limit=soft + 1 if hard == resource.RLIM_INFINITY else hard,
            ),
            launcher="none",
        )
        assert torch.backends.cudnn.benchmark is True
        assert mp.get_start_method() == "spawn"
        assert cv2.getNumThreads() == 1
        new_soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        assert new_soft == (soft + 1 if hard == resource.RLIM_INFINITY else hard)
        assert (info.launcher, info.distributed, info.rank, info.world_size) == (
            "none",
            False,
            0,
            1,
        )
        assert info.backend is None and len(info.timestamp) == 15
    finally:
        mp.set_start_method(previous_method, force=True)
        cv2.setNumThreads(threads)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
