"""functrain's DefaultSampler / InfiniteSampler give mmengine 0.10.7's index sequences per rank.

mmengine's samplers read the rank and world size from ``mmengine.dist.get_dist_info``, which
the tests patch; functrain's take them from the process group or as arguments. Also: the
seed drawn for ``seed=None`` is mmengine's (``numpy.random.randint(2**31)``) and shared by
every rank (2 gloo processes), ``SamplerSeed`` drives ``set_epoch`` in the loop, and a run
with ``seed=None`` resumes bitwise (the checkpoint keeps the drawn seed) in both loops.
"""

from __future__ import annotations

import itertools
import os
import socket
import traceback
from pathlib import Path
from unittest import mock

import mmengine.dataset.sampler as mm_sampler
import numpy as np
import optree
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

import functrain as ft
from functrain.callbacks import Callback, CheckpointCallback
from functrain.distributed.sampler import DefaultSampler, InfiniteSampler
from functrain.loops import EpochBasedTrainLoop, IterBasedTrainLoop, Runner
from functrain.state import TrainState
from functrain.step import make_train_step


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def mm(cls, dataset, rank, world_size, **kwargs):
    """mmengine's sampler ``cls`` as rank ``rank`` of ``world_size``."""
    with mock.patch.object(mm_sampler, "get_dist_info", lambda: (rank, world_size)):
        return cls(dataset, **kwargs)


@st.composite
def placements(draw, min_len=1, max_len=60):
    n = draw(st.integers(min_len, max_len))
    world_size = draw(st.integers(1, 6))
    rank = draw(st.integers(0, world_size - 1))
    return n, rank, world_size


@settings(max_examples=300)
@given(
    placements(),
    st.integers(0, 2**31 - 1),
    st.lists(st.integers(0, 50), min_size=1, max_size=3),
    st.booleans(),
    st.booleans(),
)
def test_default_sampler_matches_mmengine(place, seed, epochs, shuffle, round_up):
    n, rank, world_size = place
    data = list(range(n))
    ours = DefaultSampler(
        data, shuffle=shuffle, seed=seed, round_up=round_up, rank=rank, world_size=world_size
    )
    ref = mm(
        mm_sampler.DefaultSampler, data, rank, world_size, shuffle=shuffle, seed=seed,
        round_up=round_up,
    )  # fmt: skip
    assert len(ours) == len(ref)
    for epoch in epochs:
        ours.set_epoch(epoch)
        ref.set_epoch(epoch)
        got, want = list(ours), list(ref)
        assert got == want, (epoch, got, want)
        assert len(got) == len(ours)


@settings(max_examples=40)
@given(placements(max_len=40), st.integers(0, 2**31 - 1), st.booleans(), st.integers(0, 9))
def test_default_sampler_ranks_cover_the_dataset(place, seed, round_up, epoch):
    """Together the ranks see every index once (round_up=False) or pad from the start."""
    n, _, world_size = place
    shares = []
    for rank in range(world_size):
        s = DefaultSampler(range(n), seed=seed, round_up=round_up, rank=rank, world_size=world_size)
        s.set_epoch(epoch)
        shares.append(list(s))
    flat = [i for share in shares for i in share]
    if round_up:
        assert len({len(share) for share in shares}) == 1
        assert set(flat) == set(range(n))
        assert len(flat) == -(-n // world_size) * world_size
    else:
        assert sorted(flat) == list(range(n))


@settings(max_examples=150)
@given(
    placements(max_len=30),
    st.integers(0, 2**31 - 1),
    st.booleans(),
    st.lists(st.integers(0, 70), min_size=1, max_size=3),
)
def test_infinite_sampler_matches_mmengine(place, seed, shuffle, takes):
    """The endless per-rank stream, and a second ``iter()`` continuing where the first
    stopped (mmengine keeps one stream per sampler)."""
    n, rank, world_size = place
    data = list(range(n))
    ours = InfiniteSampler(data, shuffle=shuffle, seed=seed, rank=rank, world_size=world_size)
    ref = mm(mm_sampler.InfiniteSampler, data, rank, world_size, shuffle=shuffle, seed=seed)
    assert len(ours) == len(ref) == n
    for k in takes:  # each take is a fresh iter() over the same sampler
        assert list(itertools.islice(iter(ours), k)) == list(itertools.islice(iter(ref), k))
    ours.set_epoch(5)  # a no-op, as mmengine's
    ref.set_epoch(5)
    assert list(itertools.islice(iter(ours), 7)) == list(itertools.islice(iter(ref), 7))


@settings(max_examples=20)
@given(st.integers(0, 2**32 - 1), st.integers(1, 30), st.booleans())
def test_seed_none_draws_mmengines_seed(np_seed, n, infinite):
    """Without a process group, ``seed=None`` draws ``numpy.random.randint(2**31)`` as
    mmengine's ``sync_random_seed``: same numpy state, same seed, same order."""
    np.random.seed(np_seed)
    if infinite:
        ours = InfiniteSampler(range(n), rank=0, world_size=1)
    else:
        ours = DefaultSampler(range(n), rank=0, world_size=1)
    np.random.seed(np_seed)
    cls = mm_sampler.InfiniteSampler if infinite else mm_sampler.DefaultSampler
    ref = mm(cls, range(n), 0, 1)
    assert ours.seed == ref.seed
    assert list(itertools.islice(iter(ours), 2 * n)) == list(itertools.islice(iter(ref), 2 * n))


def test_empty_dataset_is_empty_not_a_crash():
    # mmengine divides by zero (DefaultSampler, round_up) or loops forever (InfiniteSampler).
    assert list(DefaultSampler([], seed=0, rank=0, world_size=2)) == []
    assert list(InfiniteSampler([], seed=0, rank=1, world_size=2)) == []


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(rank=2, world_size=2), ValueError, r"rank 2 is not in \[0, world_size=2\)"),
        (dict(rank=-1, world_size=2), ValueError, "rank must be an integer >= 0"),
        (dict(rank=0, world_size=0), ValueError, "world_size must be an integer >= 1"),
        (dict(rank=0, world_size=1, seed=1.5), TypeError, "seed must be an int or None"),
    ],
)
def test_bad_arguments_name_the_parameter(kwargs, error, match):
    for cls in (DefaultSampler, InfiniteSampler):
        with pytest.raises(error, match=match):
            cls(range(4), **kwargs)


@pytest.mark.parametrize("mmengine", [False, True])
def test_epoch_loop_rejects_an_infinite_sampler(mmengine):
    data = list(range(8))
    if mmengine:
        sampler = mm(mm_sampler.InfiniteSampler, data, 0, 1, seed=0)
    else:
        sampler = InfiniteSampler(data, seed=0, rank=0, world_size=1)
    with pytest.raises(ValueError, match="InfiniteSampler, whose epochs never end"):
        EpochBasedTrainLoop(DataLoader(data, batch_size=2, sampler=sampler), max_epochs=1)


def test_state_dict_round_trip():
    a = DefaultSampler(range(10), seed=3, rank=0, world_size=1)
    a.set_epoch(4)
    b = DefaultSampler(range(10), seed=9, rank=0, world_size=1)
    b.load_state_dict(a.state_dict())
    assert list(a) == list(b)
    c = InfiniteSampler(range(10), seed=3, rank=0, world_size=1)
    d = InfiniteSampler(range(10), seed=9, rank=0, world_size=1)
    next(iter(d))
    d.load_state_dict(c.state_dict())  # restarts the stream with the saved seed
    assert list(itertools.islice(iter(c), 25)) == list(itertools.islice(iter(d), 25))


# --------------------------------------------------------------------------------------------
# In the loop (one process; the sampler plays rank 1 of 2)


class Record(Callback):
    def __init__(self) -> None:
        self.batches: list[tuple[int, list[int]]] = []

    def before_train_iter(self, runner, state, batch_idx, data_batch=None):
        self.batches.append((runner.epoch, data_batch[1].tolist()))


class Crash(Exception):
    pass


class CrashAt(Callback):
    priority = "LOWEST"

    def __init__(self, at: int) -> None:
        self.at = at

    def before_train_iter(self, runner, state, batch_idx, data_batch=None):
        if runner.iter == self.at:
            raise Crash


def build(tmp_path, loop, *, np_seed, callbacks=(), resume=False, max_epochs=3):
    n = 22
    torch.manual_seed(0)
    x = torch.randn(n, 5)
    ds = TensorDataset(x, torch.arange(n))  # the "label" is the index: batches show the order
    np.random.seed(np_seed)  # seed=None draws from numpy, as mmengine
    if loop == "epoch":
        sampler = DefaultSampler(ds, shuffle=True, seed=None, rank=1, world_size=2)
    else:
        sampler = InfiniteSampler(ds, shuffle=True, seed=None, rank=1, world_size=2)
    loader = DataLoader(ds, batch_size=3, sampler=sampler)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Dropout(0.3), torch.nn.Linear(8, 1))
    tx = ft.chain(ft.clip(1.0), ft.adamw(lr=0.05))

    def loss_fn(forward, batch):
        xb, idx = batch
        return (forward(xb).squeeze(-1) - idx.float() / n).pow(2).mean()

    train_loop = (
        EpochBasedTrainLoop(loader, max_epochs=max_epochs)
        if loop == "epoch"
        else IterBasedTrainLoop(loader, max_iters=14, val_interval=100)
    )
    runner = Runner(
        state=TrainState.create(model, tx),
        train_step=make_train_step(model, loss_fn, tx),
        train_loop=train_loop,
        callbacks=list(callbacks),
        default_callbacks={"checkpoint": CheckpointCallback(interval=1, by_epoch=False)},
        work_dir=tmp_path,
        resume=resume,
        log_level="WARNING",
    )
    return runner, sampler


def test_sampler_seed_callback_sets_the_epoch_order(tmp_path):
    record = Record()
    runner, sampler = build(tmp_path, "epoch", np_seed=1, callbacks=[record])
    runner.train()
    ref = mm(mm_sampler.DefaultSampler, range(22), 1, 2, shuffle=True, seed=sampler.seed)
    for epoch in range(3):
        ref.set_epoch(epoch)
        seen = [i for e, batch in record.batches if e == epoch for i in batch]
        assert seen == list(ref), epoch
    assert sampler.epoch == 2


@pytest.mark.parametrize("loop", ["epoch", "iter"])
def test_resume_with_a_drawn_seed_is_bitwise(tmp_path, loop):
    """seed=None: the resumed process draws another seed; the checkpoint's must win."""
    full, _ = build(tmp_path / "full", loop, np_seed=7)
    expected = full.train()
    crashed, sampler = build(tmp_path / "crash", loop, np_seed=7, callbacks=[CrashAt(8)])
    with pytest.raises(Crash):
        crashed.train()
    record = Record()
    resumed, new_sampler = build(
        tmp_path / "crash", loop, np_seed=8, callbacks=[record], resume=True
    )
    assert new_sampler.seed != sampler.seed
    torch.manual_seed(1234)  # the checkpoint's generator states must win over this too
    got = resumed.train()
    assert new_sampler.seed == sampler.seed
    assert got.iteration == expected.iteration and got.epoch == expected.epoch
    for name in expected.params:
        assert torch.equal(got.params[name], expected.params[name]), name
    flat_e = optree.tree_leaves(expected.opt_state, namespace="functrain")
    flat_g = optree.tree_leaves(got.opt_state, namespace="functrain")
    assert len(flat_e) == len(flat_g) > 0
    for a, b in zip(flat_e, flat_g, strict=True):
        assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
    # The batch after the crash is the one the uninterrupted run used there.
    assert record.batches[0][1] == _batches_of(full_sampler_seed=sampler.seed, loop=loop)[8]


def _batches_of(full_sampler_seed: int, loop: str) -> list[list[int]]:
    if loop == "epoch":
        ref = mm(mm_sampler.DefaultSampler, range(22), 1, 2, shuffle=True, seed=full_sampler_seed)
        out = []
        for epoch in range(3):
            ref.set_epoch(epoch)
            idx = list(ref)
            out += [idx[i : i + 3] for i in range(0, len(idx), 3)]
        return out
    ref = mm(mm_sampler.InfiniteSampler, range(22), 1, 2, shuffle=True, seed=full_sampler_seed)
    stream = iter(ref)
    return [[next(stream) for _ in range(3)] for _ in range(14)]


# --------------------------------------------------------------------------------------------
# seed=None under a real process group: every rank gets rank 0's seed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _seed_worker(rank: int, world_size: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
    )
    from functrain.distributed.comm import init_distributed

    try:
        init_distributed("pytorch", backend="gloo", timeout=30)
        np.random.seed(rank)  # different numpy states: only rank 0's draw may count
        d = DefaultSampler(range(11), seed=None, round_up=False)
        i = InfiniteSampler(range(11), seed=None)
        d.set_epoch(2)
        result = {
            "rank": (d.rank, d.world_size, i.rank, i.world_size),
            "seeds": (d.seed, i.seed),
            "default": list(d),
            "infinite": list(itertools.islice(iter(i), 12)),
        }
        torch.save(result, Path(out) / f"rank{rank}.pt")
    except BaseException:
        (Path(out) / f"rank{rank}.err").write_text(traceback.format_exc())
        raise
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def test_seed_none_is_synced_across_ranks(tmp_path):
    ctx = torch.multiprocessing.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_seed_worker, args=(r, 2, port, str(tmp_path))) for r in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    for p in procs:
        if p.is_alive():
            p.kill()
    errors = {p.name: (tmp_path / f"rank{r}.err") for r, p in enumerate(procs)}
    for name, err in errors.items():
        assert not err.exists(), f"{name}:\n{err.read_text()}"
    assert [p.exitcode for p in procs] == [0, 0]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert r0["rank"] == (0, 2, 0, 2) and r1["rank"] == (1, 2, 1, 2)
    np.random.seed(0)  # rank 0's draws, as mmengine's sync_random_seed
    drawn, drawn_inf = int(np.random.randint(2**31)), int(np.random.randint(2**31))
    assert r0["seeds"] == r1["seeds"] == (drawn, drawn_inf)
    for rank, res in ((0, r0), (1, r1)):
        ref = mm(mm_sampler.DefaultSampler, range(11), rank, 2, seed=drawn, round_up=False)
        ref.set_epoch(2)
        assert res["default"] == list(ref)
        ref_inf = mm(mm_sampler.InfiniteSampler, range(11), rank, 2, seed=drawn_inf)
        assert res["infinite"] == list(itertools.islice(iter(ref_inf), 12))
    assert sorted(r0["default"] + r1["default"]) == list(range(11))
