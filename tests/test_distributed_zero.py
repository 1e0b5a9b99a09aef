"""Sharded optimizer state (ZeRO-1) and DTensor parameters, on a spawned gloo world of 2.

One world runs every distributed check and saves what the tests compare:

- ``shard_optimizer(tx)`` trains like unsharded data parallelism with ``tx``: bitwise for
  Adam without a clip on the foreach path, 1e-6 relative with clip + AdamW/SGD(momentum) + multipliers + a
  schedule, also inside ``accumulate``; each rank holds half the optimizer-state bytes;
- the gathered state equals the unsharded run's state, re-sharding it gives back each rank's
  shard bitwise, and training on from either (sharded, or unsharded with the plain ``tx``)
  matches the uninterrupted run;
- DTensor parameters (Shard(0) / Shard(1) / Replicate on a 1-d mesh) through ``update`` +
  ``apply_updates`` and ``apply_gradients`` give the full-tensor results (1e-6 relative),
  the clip norm being the global one.
"""

from __future__ import annotations

import datetime
import io
import os
import socket

import optree
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import functrain as ft
from functrain.distributed.dtensor import (
    check_dtensor_support,
    enable_dtensor_kernels,
    full_tensor,
    is_dtensor,
)
from functrain.distributed.zero import (
    ShardedState,
    gather_optimizer_state,
    optimizer_state_bytes,
    shard_optimizer,
    shard_optimizer_state,
)
from functrain.schedules import cosine_annealing_lr

WORLD = 2
STEPS = 12
BATCH = 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_model() -> nn.Module:
    torch.manual_seed(0)
    # 3 outputs: the last bias (3 elements) splits 2 + 1 across the ranks.
    return nn.Sequential(nn.Linear(6, 10), nn.LayerNorm(10), nn.ReLU(), nn.Linear(10, 3))


def make_tx(model: nn.Module, kind: str):
    lr = cosine_annealing_lr(0.02, T_max=STEPS, eta_min=1e-4)
    mults = ft.paramwise_multipliers(
        model, dict(custom_keys={"3": dict(lr_mult=2.0)}, norm_decay_mult=0.0), weight_decay=0.05
    )
    if kind == "adam":
        return ft.adam(0.01)
    if kind == "adamw":
        return ft.chain(ft.clip(0.3), ft.adamw(lr, weight_decay=0.05), ft.mask_multipliers(mults))
    if kind == "sgd":
        return ft.chain(
            ft.clip(0.3), ft.sgd(lr, 0.9, weight_decay=0.05), ft.mask_multipliers(mults)
        )
    if kind == "acc":
        return ft.accumulate(ft.chain(ft.clip(0.3), ft.adamw(lr)), 2, max_iters=STEPS)
    raise AssertionError(kind)


def batches():
    g = torch.Generator().manual_seed(3)
    return torch.randn(STEPS, BATCH, 6, generator=g), torch.randint(
        0, 3, (STEPS, BATCH), generator=g
    )


def loss_fn(forward, batch):
    x, y = batch
    return nn.functional.cross_entropy(forward(x), y)


def run(model, tx, rank, state=None, steps=range(STEPS), fused=None):
    state = ft.TrainState.create(model, tx) if state is None else state
    step = ft.make_train_step(model, loss_fn, tx, fused=fused)
    xs, ys = batches()
    share = BATCH // WORLD
    for i in steps:
        lo = rank * share
        state, _ = step(state, (xs[i, lo : lo + share], ys[i, lo : lo + share]))
    return state


def sharded_kind(kind, model):
    tx = make_tx(model, kind)
    if kind == "acc":  # accumulate locally, reduce-scatter on the stepping micro-batch
        lr = cosine_annealing_lr(0.02, T_max=STEPS, eta_min=1e-4)
        return ft.accumulate(shard_optimizer(ft.chain(ft.clip(0.3), ft.adamw(lr))), 2, STEPS)
    return shard_optimizer(tx)


def leaves(tree):
    return [
        full_tensor(t).clone() if isinstance(t, torch.Tensor) else t
        for t in optree.tree_leaves(tree, namespace="functrain")
    ]


def zero_checks(rank, out):
    model = make_model()
    for kind in ("adam", "adamw", "sgd", "acc"):
        # torch's fused CPU kernels round their vectorised body and scalar tail differently
        # (an ulp, now and then), so a chunk of a leaf may differ from the whole leaf there;
        # the foreach path (fused=False) is the same elementwise arithmetic on any chunk.
        fused = False if kind == "adam" else None
        plain = run(model, make_tx(model, kind), rank, fused=fused)
        sharded = run(model, sharded_kind(kind, model), rank, fused=fused)
        out[kind] = (plain.params, sharded.params)
        out[f"{kind}_bytes"] = (
            optimizer_state_bytes(plain.opt_state),
            optimizer_state_bytes(sharded.opt_state),
        )
        if kind in ("adamw", "sgd"):
            out[f"{kind}_plain_state"] = leaves(plain.opt_state)
            out[f"{kind}_gathered"] = leaves(gather_optimizer_state(sharded).opt_state)

    # Checkpoint round trip: stop after 5 steps, gather, re-shard (or load unsharded), go on.
    tx = sharded_kind("adamw", model)
    first = run(model, tx, rank, steps=range(5))
    buffer = io.BytesIO()  # a checkpoint file: what every rank reads back on resume
    torch.save(gather_optimizer_state(first), buffer)
    buffer.seek(0)
    portable = torch.load(buffer, weights_only=False)
    assert not any(is_dtensor(t) for t in optree.tree_leaves(portable, namespace="functrain"))
    fresh = ft.TrainState.create(model, tx)
    resumed = shard_optimizer_state(portable, fresh)

    def local(t):
        return t.to_local() if is_dtensor(t) else t

    out["reshard_equal"] = all(
        torch.equal(local(a), local(b))
        for a, b in zip(
            optree.tree_leaves(first.opt_state, namespace="functrain"),
            optree.tree_leaves(resumed.opt_state, namespace="functrain"),
            strict=True,
        )
        if isinstance(a, torch.Tensor)
    )
    resumed_params = {k: v.clone() for k, v in resumed.params.items()}  # the step donates
    out["resumed"] = run(model, tx, rank, state=resumed, steps=range(5, STEPS)).params
    portable = portable.replace(params=resumed_params)
    unsharded = run(model, make_tx(model, "adamw"), rank, state=portable, steps=range(5, STEPS))
    out["resumed_unsharded"] = unsharded.params

    # A state built before the process group (one rank) does not fit two ranks.
    single = ShardedState(make_tx(model, "adamw").init(ft.trainable_parameters(model)), (), 1)
    try:
        run(model, tx, rank, state=ft.TrainState.create(model, tx).replace(opt_state=single))
        out["world_error"] = None
    except ValueError as e:
        out["world_error"] = str(e)
    try:
        ft.apply_gradients(
            ft.chain(ft.clip(1.0), shard_optimizer(ft.adamw(0.1))),
            {"w": torch.ones(4)},
            {"w": torch.ones(4)},
            ft.chain(ft.clip(1.0), shard_optimizer(ft.adamw(0.1))).init({"w": torch.ones(4)}),
        )
        out["outside_error"] = None
    except ValueError as e:
        out["outside_error"] = str(e)


def dtensor_checks(rank, out):
    from torch.distributed.tensor import DeviceMesh, Replicate, Shard, distribute_tensor

    mesh = DeviceMesh("cpu", list(range(WORLD)))
    g = torch.Generator().manual_seed(5)
    full = {
        "w": torch.randn(6, 4, generator=g),
        "m": torch.randn(3, 4, generator=g),
        "b": torch.randn(5, generator=g),
        "s": torch.randn((), generator=g),
    }
    grads = [{k: torch.randn(v.shape, generator=g) for k, v in full.items()} for _ in range(4)]
    placements = {"w": [Shard(0)], "m": [Shard(1)], "b": [Replicate()], "s": [Replicate()]}

    def distribute(tree):
        return {k: distribute_tensor(v, mesh, placements[k]) for k, v in tree.items()}

    enable_dtensor_kernels()
    txs = {
        "adamw": lambda: ft.adamw(0.01, weight_decay=0.1),
        "sgd": lambda: ft.sgd(0.05, momentum=0.9, weight_decay=1e-3),
        "clip_adamw": lambda: ft.chain(ft.clip(0.5), ft.adamw(0.01)),
        "clip_sgd": lambda: ft.chain(ft.clip(0.5), ft.sgd(0.05, momentum=0.9)),
    }
    for name, make in txs.items():
        for path in ("update", "apply_gradients"):
            results = []
            for params, gs in ((full, grads), (distribute(full), [distribute(x) for x in grads])):
                tx = make()
                state = tx.init(params)
                for grad in gs:
                    if path == "update":
                        updates, state = tx.update(grad, state, params)
                        params = ft.apply_updates(params, updates)
                    else:
                        params, state = ft.apply_gradients(tx, params, grad, state)
                results.append(({k: full_tensor(v) for k, v in params.items()}, state))
            assert all(is_dtensor(v) for v in params.values())  # the DTensor run's params
            out[f"dtensor_{name}_{path}"] = (results[0][0], results[1][0])
            if name.startswith("clip"):
                out[f"dtensor_{name}_{path}_norm"] = (
                    results[0][1][0].norm,
                    full_tensor(results[1][1][0].norm),
                )


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
        zero_checks(rank, out)
        dtensor_checks(rank, out)
        torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out_dir = str(tmp_path_factory.mktemp("zero"))
    mp.spawn(worker, args=(free_port(), out_dir), nprocs=WORLD, join=True)
    return [torch.load(os.path.join(out_dir, f"rank{r}.pt")) for r in range(WORLD)]


def assert_rel(actual, expected, rtol=1e-6, what=""):
    for k in expected:
        a, e = actual[k], expected[k]
        err = (a - e).abs()
        scale = e.abs().max()
        assert bool((err <= rtol * (e.abs() + scale)).all()), (
            f"{what}: {k!r} differs by {err.max().item():.3g} (scale {scale.item():.3g})"
        )


@pytest.mark.parametrize("kind", ["adam", "adamw", "sgd", "acc"])
def test_sharded_equals_unsharded(world, kind):
    for rank in range(WORLD):
        plain, sharded = world[rank][kind]
        if kind == "adam":  # foreach path, no clip: every element sees the same operations
            assert all(torch.equal(plain[k], sharded[k]) for k in plain)
        else:
            assert_rel(sharded, plain, what=kind)
        assert all(torch.equal(sharded[k], world[0][kind][1][k]) for k in sharded)


@pytest.mark.parametrize("kind", ["adam", "adamw", "sgd"])
def test_per_rank_optimizer_state_bytes_halve(world, kind):
    model = make_model()
    numels = [p.numel() for p in model.parameters()]
    per_param = {"adam": 2, "adamw": 2, "sgd": 1}[kind]  # moments / momentum buffers
    for rank in range(WORLD):
        plain, sharded = world[rank][f"{kind}_bytes"]
        owned = sum(-(-n // WORLD) if rank == 0 else n - -(-n // WORLD) for n in numels)
        scalars = plain - per_param * 4 * sum(numels)  # counts, lr, clip norm: replicated
        assert sharded == per_param * 4 * owned + scalars
        # Half of the per-parameter state, up to one element per leaf (chunks of odd sizes).
        assert abs((sharded - scalars) - (plain - scalars) / 2) <= per_param * 4 * len(numels)


def test_gathered_state_equals_the_unsharded_state(world):
    for kind in ("adamw", "sgd"):
        plain, gathered = world[0][f"{kind}_plain_state"], world[0][f"{kind}_gathered"]
        assert len(plain) == len(gathered)
        for a, b in zip(plain, gathered, strict=True):
            if isinstance(a, torch.Tensor):
                assert a.shape == b.shape and a.dtype == b.dtype and not is_dtensor(b)
                assert torch.allclose(a.double(), b.double(), rtol=1e-5, atol=1e-7)
            else:
                assert a == b


def test_reshard_and_resume(world):
    for rank in range(WORLD):
        out = world[rank]
        assert out["reshard_equal"]
        _, uninterrupted = out["adamw"]
        assert all(torch.equal(out["resumed"][k], uninterrupted[k]) for k in uninterrupted)
        assert_rel(out["resumed_unsharded"], uninterrupted, what="resumed without sharding")


def test_errors(world):
    assert "built for 1 rank(s), but the process group has 2" in world[0]["world_error"]
    assert "must wrap the whole optimizer" in world[0]["outside_error"]
    for tx, name in [
        (ft.muon(0.02), "muon"),
        (ft.adafactor(), "adafactor"),
        (ft.loss_scaling(ft.adam(0.1)), "loss_scaling"),
        (ft.accumulate(ft.lbfgs(), 2), "lbfgs"),
    ]:
        with pytest.raises(ValueError, match=f"shard_optimizer cannot shard {name}"):
            shard_optimizer(tx)
    with pytest.raises(ValueError, match=r"adafactor \(scale_by_factored_rms\) does not support"):
        check_dtensor_support(ft.chain(ft.clip(1.0), ft.adafactor()))
    check_dtensor_support(ft.chain(ft.clip(1.0), ft.adamw(0.1)))


def test_single_process_is_the_wrapped_transform():
    params = {"w": torch.randn(5, 3), "b": torch.randn(3)}
    grads = [{k: torch.randn_like(v) for k, v in params.items()} for _ in range(3)]
    results = []
    for tx in (
        ft.chain(ft.clip(0.5), ft.adamw(0.01)),
        shard_optimizer(ft.chain(ft.clip(0.5), ft.adamw(0.01))),
    ):
        p, state = {k: v.clone() for k, v in params.items()}, tx.init(params)
        for g in grads:
            p, state = ft.apply_gradients(tx, p, g, state)
        results.append(p)
    assert all(torch.equal(results[0][k], results[1][k]) for k in params)


def test_single_process_update_is_the_wrapped_transform():
    # Through update (not apply_gradients), with and without params: in one process the
    # wrapper calls tx.update itself, so the same kernels run in the same order (exact).
    params = {"w": torch.randn(5, 3), "b": torch.randn(3)}
    grads = [{k: torch.randn_like(v) for k, v in params.items()} for _ in range(3)]

    def inner():
        return ft.chain(ft.clip(0.5), ft.sgd(0.1, momentum=0.9))

    for with_params in (True, False):
        results = []
        for tx in (inner(), shard_optimizer(inner())):
            p, state = {k: v.clone() for k, v in params.items()}, tx.init(params)
            for g in grads:
                updates, state = tx.update(g, state, p if with_params else None)
                p = ft.apply_updates(p, updates)
            results.append(p)
        assert all(torch.equal(results[0][k], results[1][k]) for k in params), with_params


@pytest.mark.parametrize("name", ["adamw", "sgd", "clip_adamw", "clip_sgd"])
@pytest.mark.parametrize("path", ["update", "apply_gradients"])
def test_dtensor_params_match_full_tensors(world, name, path):
    for rank in range(WORLD):
        expected, actual = world[rank][f"dtensor_{name}_{path}"]
        assert_rel(actual, expected, what=f"DTensor {name} {path}")
        if name.startswith("clip"):
            norm, dnorm = world[rank][f"dtensor_{name}_{path}_norm"]
            assert torch.allclose(norm, dnorm, rtol=1e-6)
