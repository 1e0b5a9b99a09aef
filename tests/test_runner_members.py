"""The Runner and its callbacks with N ensemble members (issue 14, item 1).

A 3-member ensemble of a small BatchNorm MLP (float64) trains through the Runner; member i
must give the numbers of an independent Runner run with member i's seed and learning rate.
The vmapped forward/backward runs other matmul kernels than the plain one, so the values
differ in the last bits: in float64 a gradient differs by ``delta <= 1e-15`` (relative),
which Adam turns into at most ``lr * delta / eps`` per step (a near-zero gradient divided
by ``sqrt(v) + eps``); over ``STEPS`` steps at the largest lr that is ``TOL`` below (about
1.5e-6; see tests/test_ensembles.py for the same bound). Any real mistake (another member's
slice, a shared clip norm, a member trained after it stopped) moves values by a sizeable
fraction of the lr. Where one tensor is compared with itself over time (a stopped member,
a resumed run) the comparison is bitwise: the same kernels compute the same values.
"""

from __future__ import annotations

import json
import math

import optree
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import functrain as ft
from functrain.callbacks import (
    EMA,
    Callback,
    CheckpointCallback,
    CurvesPlot,
    EarlyStopping,
    Logger,
    NonFiniteLossError,
)
from functrain.evaluators import MeanMetrics
from functrain.loops import EpochBasedTrainLoop, IterBasedTrainLoop, Runner, ValLoop

SEEDS = (3, 1, 4)
LRS = (1e-2, 3e-2, 1e-1)
N = len(SEEDS)
EPOCHS = 3
BATCHES = 5  # 40 samples, batch 8
STEPS = EPOCHS * BATCHES
TOL = STEPS * max(LRS) * 1e-15 / 1e-8  # see the module docstring; Adam's eps is 1e-8
LABELS = [f"lr={lr} seed={s}" for lr, s in zip(LRS, SEEDS, strict=True)]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_model(dtype=torch.float64) -> nn.Module:
    layers = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 2))
    return layers.to(dtype)


def data(dtype=torch.float64) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 6, generator=g, dtype=torch.float64).to(dtype)
    return TensorDataset(x, (x[:, 0] + 0.3 * x[:, 1] > 0).long())


def loss_fn(forward, batch):
    x, y = batch
    return nn.functional.cross_entropy(forward(x), y)


def metrics_fn(forward, batch):
    x, y = batch
    out = forward(x)
    return {
        "acc": (out.argmax(-1) == y).double(),
        "loss": nn.functional.cross_entropy(out, y, reduction="none"),
    }


def loaders(dtype=torch.float64) -> tuple[DataLoader, DataLoader]:
    ds = data(dtype)
    train = DataLoader(ds, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(3))
    return train, DataLoader(ds, batch_size=16)


def inner_tx(lr):
    return ft.chain(ft.clip(0.5), ft.adamw(lr=lr, weight_decay=0.01))


def ensemble_runner(
    work_dir,
    *,
    callbacks=(),
    defaults=None,
    epochs=EPOCHS,
    lrs=LRS,
    dtype=torch.float64,
    loop="epoch",
    **kw,
):
    n = len(lrs)
    params, buffers, model = ft.init_members(lambda: make_model(dtype), SEEDS[:n])
    tx = ft.ensemble(inner_tx(list(lrs)), n)
    state = ft.TrainState(params=params, buffers=buffers, opt_state=tx.init(params))
    train, val = loaders(dtype)
    kw.setdefault("member_labels", LABELS[:n])
    return Runner(
        state=state,
        train_step=ft.make_ensemble_train_step(model, loss_fn, tx, n),
        train_loop=EpochBasedTrainLoop(train, max_epochs=epochs)
        if loop == "epoch"
        else IterBasedTrainLoop(train, max_iters=epochs * BATCHES, val_interval=4),
        val_loop=ValLoop(val, ft.make_ensemble_eval_step(model, metrics_fn, n)),
        callbacks=list(callbacks),
        default_callbacks={"checkpoint": None, **(defaults or {})},
        work_dir=work_dir,
        log_level="WARNING",
        **kw,
    )


def plain_runner(
    work_dir, i, *, callbacks=(), defaults=None, epochs=EPOCHS, dtype=torch.float64, **kw
):
    torch.manual_seed(SEEDS[i])
    model = make_model(dtype)
    tx = inner_tx(LRS[i])
    train, val = loaders(dtype)
    return Runner(
        state=ft.TrainState.create(model, tx),
        train_step=ft.make_train_step(model, loss_fn, tx),
        train_loop=EpochBasedTrainLoop(train, max_epochs=epochs),
        val_loop=ValLoop(val, ft.make_eval_step(model, metrics_fn)),
        callbacks=list(callbacks),
        default_callbacks={"checkpoint": None, **(defaults or {})},
        work_dir=work_dir,
        log_level="WARNING",
        **kw,
    )


class RecordVal(Callback):
    """Keeps each validation's metrics and a copy of the params (after the step count)."""

    priority = "LOWEST"

    def __init__(self):
        self.metrics = []
        self.params = []

    def after_val_epoch(self, runner, state, metrics=None):
        self.metrics.append(dict(metrics))
        self.params.append({k: v.clone() for k, v in state.params.items()})


def close(a, b, tol=TOL):
    """|a - b| <= tol * max(1, |b|), elementwise (the bound of the module docstring)."""
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return bool(((a - b).abs() <= tol * b.abs().clamp_min(1.0)).all())


def test_members_detected_from_the_state_and_labels_checked(tmp_path):
    runner = ensemble_runner(tmp_path)
    assert runner.members == N and runner.member_labels == LABELS
    assert plain_runner(tmp_path / "p", 0).members is None
    with pytest.raises(ValueError, match="ensemble of 3 members"):
        ensemble_runner(tmp_path, members=2)
    with pytest.raises(ValueError, match="member_labels must be 3 strings"):
        ensemble_runner(tmp_path, member_labels=["a", "b"])
    with pytest.raises(ValueError, match="has no members"):
        plain_runner(tmp_path / "p", 0, member_labels=["a"])


def test_logs_and_validation_metrics_per_member_equal_independent_runs(tmp_path):
    rec = RecordVal()
    runner = ensemble_runner(tmp_path / "ens", callbacks=[rec], defaults={"logger": Logger(2)})
    final = runner.train()
    lines = [json.loads(s) for s in (runner.log_dir / "scalars.json").read_text().splitlines()]
    train = [r for r in lines if "iter" in r]
    val = [r for r in lines if "iter" not in r]
    for key in ("loss", "lr", "grad_norm"):
        assert all(f"{key}/{i}" in r for r in train for i in range(N)), key
    assert len(val) == EPOCHS and all(
        f"acc/{i}" in r and f"loss/{i}" in r for r in val for i in range(N)
    )
    # One terminal line per log point, naming the best member by its label.
    text = next(runner.log_dir.glob("*.log")).read_text()
    assert "loss[min/med/max]:" in text and "best: #" in text and "lr=0.1 seed=4" in text

    for i in range(N):
        ref_rec = RecordVal()
        ref = plain_runner(
            tmp_path / f"m{i}", i, callbacks=[ref_rec], defaults={"logger": Logger(2)}
        )
        ref_final = ref.train()
        ref_lines = [json.loads(s) for s in (ref.log_dir / "scalars.json").read_text().splitlines()]
        ref_train = [r for r in ref_lines if "iter" in r]
        assert [r["iter"] for r in ref_train] == [r["iter"] for r in train]
        # The logged lr is the same number; the losses within TOL.
        assert [r["lr"] for r in ref_train] == [r[f"lr/{i}"] for r in train]
        assert close([r[f"loss/{i}"] for r in train], [r["loss"] for r in ref_train])
        for got, want in zip(rec.metrics, ref_rec.metrics, strict=True):
            assert got[f"acc/{i}"] == want["acc"]  # 0/1 values averaged: exact
            assert close(got[f"loss/{i}"], want["loss"])
        for k, v in ref_final.params.items():
            assert close(final.params[k][i], v), k


class StopMemberAt(Callback):
    """Stops member ``member`` after iteration ``at`` (a deterministic EarlyStopping)."""

    def __init__(self, member, at):
        self.member, self.at = member, at
        self.frozen = None

    def after_train_iter(self, runner, state, batch_idx, data_batch=None, outputs=None):
        if runner.iter == self.at:
            self.frozen = ft.tree_map(
                lambda t: t[self.member].clone() if t.dim() and t.shape[0] == N else t.clone(),
                (state.params, state.buffers, state.opt_state.inner),
            )
            return ft.stop_members(state, [self.member], N)
        return None


def test_a_stopped_member_is_frozen_bitwise_while_the_others_train_on(tmp_path):
    stop = StopMemberAt(1, at=6)
    final = ensemble_runner(tmp_path / "ens", callbacks=[stop]).train()
    assert ft.stopped_members(final) == [1]
    after = ft.tree_map(
        lambda t: t[1] if t.dim() and t.shape[0] == N else t,
        (final.params, final.buffers, final.opt_state.inner),
    )
    a, _ = optree.tree_flatten(stop.frozen, namespace="functrain")
    b, _ = optree.tree_flatten(after, namespace="functrain")
    compared = 0
    for x, y in zip(a, b, strict=True):
        # 0-d leaves are shared by all members (the step counters advance while any member
        # trains, as documented); every leaf with the member axis is frozen bitwise.
        if isinstance(x, torch.Tensor) and x.dim() > 0:
            assert torch.equal(x, y)
            compared += 1
    assert compared >= 12  # params, BatchNorm buffers, clip norm, Adam moments, lr
    # The others equal their independent runs.
    for i in (0, 2):
        ref = plain_runner(tmp_path / f"m{i}", i).train()
        for k, v in ref.params.items():
            assert close(final.params[k][i], v), (i, k)


def test_early_stopping_per_member(tmp_path):
    """Val losses per validation (members 0/1/2): [0.546, 0.455, 0.183], [0.430, 0.296,
    0.114], [0.336, 0.200, 0.063], ...: with a threshold of 0.35, member 2 stops after
    epoch 1, member 1 after epoch 2, member 0 after epoch 3, and then the run ends (before
    max_epochs=4). A stopped member's params stay bitwise as they were when it stopped."""
    rec = RecordVal()
    es = EarlyStopping(monitor="loss", stopping_threshold=0.35)
    final = ensemble_runner(tmp_path / "ens", callbacks=[es, rec], epochs=4).train()
    losses = [[m[f"loss/{i}"] for i in range(N)] for m in rec.metrics]
    assert [next(e for e, row in enumerate(losses) if row[i] < 0.35) for i in range(N)] == [2, 1, 0]
    assert final.epoch == 3 and len(rec.metrics) == 3
    assert ft.stopped_members(final) == [0, 1, 2]
    for member, stopped_at in ((2, 0), (1, 1), (0, 2)):
        for k, v in final.params.items():
            assert torch.equal(v[member], rec.params[stopped_at][k][member]), (member, k)
    # Each member equals its own plain run, which EarlyStopping ends at the same epoch.
    for i, epochs in ((2, 1), (0, 3)):
        es_i = EarlyStopping(monitor="loss", stopping_threshold=0.35)
        ref = plain_runner(tmp_path / f"m{i}", i, callbacks=[es_i], epochs=4).train()
        assert ref.epoch == epochs
        for k, v in ref.params.items():
            assert close(final.params[k][i], v), (i, k)
    # Everyone passing the threshold at once ends the run after the first validation.
    es = EarlyStopping(monitor="loss", stopping_threshold=10.0)
    all_stop = ensemble_runner(tmp_path / "all", callbacks=[es], epochs=4).train()
    assert all_stop.epoch == 1 and ft.stopped_members(all_stop) == [0, 1, 2]


def test_best_checkpoints_per_member_load_in_a_plain_run(tmp_path):
    rec = RecordVal()
    ckpt = CheckpointCallback(interval=1, save_best="loss")  # rule inferred: less
    f32 = torch.float32  # see test_resume_is_bitwise
    runner = ensemble_runner(
        tmp_path / "ens", callbacks=[rec], defaults={"checkpoint": ckpt}, dtype=f32
    )
    runner.train()
    bests = sorted(p.name for p in (tmp_path / "ens").glob("best_*.pth"))
    assert bests == [f"best_loss_member{i}_epoch_{EPOCHS}.pth" for i in range(N)]  # losses fall
    for i in range(N):
        path = tmp_path / "ens" / bests[i]
        assert ft.load_checkpoint(path)["meta"]["member"] == i
        loaded = plain_runner(tmp_path / f"load{i}", i, load_from=path, dtype=f32)
        loaded._load_or_resume()
        for k, v in loaded.state.params.items():
            assert torch.equal(v, rec.params[-1][k][i]), k
        resumed = plain_runner(tmp_path / f"res{i}", i, resume=path, epochs=EPOCHS + 1, dtype=f32)
        resumed._load_or_resume()
        assert resumed.state.epoch == EPOCHS
        assert torch.equal(resumed.state.params["0.weight"], rec.params[-1]["0.weight"][i])
        assert resumed.train().epoch == EPOCHS + 1  # and trains on as a plain run
    # members="best": one file, of the member with the best score.
    ckpt = CheckpointCallback(interval=-1, save_best="acc", members="best", save_last=False)
    runner = ensemble_runner(
        tmp_path / "best", callbacks=[rec2 := RecordVal()], defaults={"checkpoint": ckpt}
    )
    runner.train()
    (only,) = (tmp_path / "best").glob("best_acc_*.pth")
    member = ft.load_checkpoint(only)["meta"]["member"]
    accs = [[m[f"acc/{i}"] for i in range(N)] for m in rec2.metrics]
    best_epoch = max(range(EPOCHS), key=lambda e: (max(accs[e]), -e))
    assert accs[best_epoch][member] == max(accs[best_epoch])
    assert only.name == f"best_acc_epoch_{best_epoch + 1}.pth"


def test_ema_per_member_momentum_equals_each_members_ema(tmp_path):
    moms = [0.1, 0.2, 0.3]
    final = ensemble_runner(tmp_path / "ens", callbacks=[EMA(momentum=moms)]).train()
    for i in range(N):
        ref = plain_runner(tmp_path / f"m{i}", i, callbacks=[EMA(momentum=moms[i])]).train()
        for k, v in ref.callbacks["ema"]["params"].items():
            assert close(final.callbacks["ema"]["params"][k][i], v), k
    with pytest.raises(ValueError, match="momentum has 2 values"):
        ensemble_runner(tmp_path / "bad", callbacks=[EMA(momentum=[0.1, 0.2])]).train()


class Crash(Exception):
    pass


class CrashAt(Callback):
    priority = "LOWEST"

    def __init__(self, at):
        self.at = at

    def before_train_iter(self, runner, state, batch_idx, data_batch=None):
        if runner.iter == self.at:
            raise Crash


@pytest.mark.parametrize("loop", ["epoch", "iter"])
def test_resume_is_bitwise(tmp_path, loop):
    """Interrupted after iteration 8 (a member stopped at 3, EMA per member, best and
    periodic checkpoints) and resumed: the same state, bitwise, as the uninterrupted run.
    float32: functrain's clip records its norm as a float32 tensor at init whatever the
    params' dtype, so a float64 state does not fit its own fresh template on resume (a
    plain run's too; reported, not this test's subject)."""

    def build(work_dir, crash=None, resume=False):
        cbs = [StopMemberAt(0, at=3), EMA(momentum=[0.1, 0.2, 0.3])]
        if crash is not None:
            cbs.append(CrashAt(crash))
        ckpt = CheckpointCallback(interval=1, by_epoch=False, save_best="acc")
        return ensemble_runner(
            work_dir,
            callbacks=cbs,
            defaults={"checkpoint": ckpt},
            resume=resume,
            dtype=torch.float32,
            loop=loop,
        )

    reference = build(tmp_path / "ref").train()
    with pytest.raises(Crash):
        build(tmp_path / "run", crash=8).train()
    resumed = build(tmp_path / "run", resume=True).train()
    assert (resumed.iteration, resumed.epoch) == (reference.iteration, reference.epoch)
    tree = lambda s: (s.params, s.buffers, s.opt_state, s.callbacks)  # noqa: E731
    a, sa = optree.tree_flatten(tree(resumed), namespace="functrain")
    b, sb = optree.tree_flatten(tree(reference), namespace="functrain")
    assert sa == sb
    for x, y in zip(a, b, strict=True):
        if isinstance(x, torch.Tensor):
            assert x.dtype == y.dtype and torch.equal(x, y)
        elif isinstance(x, str):  # checkpoint paths: the same names in the other work_dir
            assert x.replace(str(tmp_path / "run"), str(tmp_path / "ref")) == y
        else:
            assert x == y


def test_curves_plot_draws_one_curve_per_member(tmp_path):
    plot = CurvesPlot()
    runner = ensemble_runner(tmp_path, callbacks=[plot], defaults={"logger": Logger(2)})
    runner.train()
    assert (tmp_path / "curves.png").is_file()
    titles = [t for t, _, _ in plot.panels]
    assert titles == ["train loss", "learning rate", "val acc", "val loss"]
    for _, series, _ in plot.panels:
        assert [label for label, _, _ in series] == LABELS
    # The drawn values are the logged ones.
    val = [r for r in runner.log_records if r["mode"] == "val"]
    _, acc_series, _ = plot.panels[2]
    assert acc_series[2][2] == [r["acc/2"] for r in val]


def test_terminate_on_nan_stops_only_the_diverging_member(tmp_path):
    def runner_with(lrs, work_dir):
        # SGD with a huge lr makes that member's loss overflow to inf / nan within steps.
        params, buffers, model = ft.init_members(make_model, SEEDS)
        tx = ft.ensemble(ft.sgd(lr=list(lrs)), N)
        state = ft.TrainState(params=params, buffers=buffers, opt_state=tx.init(params))
        train, val = loaders()
        return Runner(
            state=state,
            train_step=ft.make_ensemble_train_step(model, loss_fn, tx, N),
            train_loop=EpochBasedTrainLoop(train, max_epochs=2),
            val_loop=ValLoop(val, ft.make_ensemble_eval_step(model, metrics_fn, N)),
            default_callbacks={"checkpoint": None},
            work_dir=work_dir,
            log_level="ERROR",
        )

    final = runner_with([0.01, 1e300, 0.01], tmp_path / "one").train()
    assert ft.stopped_members(final) == [1]
    assert all(torch.isfinite(v[[0, 2]]).all() for v in final.params.values())
    with pytest.raises(NonFiniteLossError):
        runner_with([1e300] * N, tmp_path / "all").train()


def test_mean_metrics_per_member():
    m = MeanMetrics(members=2)
    m.process({"acc": torch.tensor([[1.0, 0.0], [1.0, 1.0]]), "l": torch.tensor([1.0, 2.0])})
    m.process({"acc": torch.tensor([[1.0], [0.0]]), "l": torch.tensor([3.0, 2.0])})
    got = m.evaluate()
    assert got == {"acc/0": 2 / 3, "acc/1": 2 / 3, "l/0": 2.0, "l/1": 2.0}
    assert math.isclose(got["acc/0"], 2 / 3)
    with pytest.raises(ValueError, match="leading member axis of 2"):
        m.process({"acc": torch.ones(3)})


def test_reduce_on_plateau_per_member(tmp_path):
    """One plateau per member on its own val loss (threshold 0.3 relative: members stop
    "improving" at different epochs), the lr written per member; each member equals its
    own run with the same callback (lrs per epoch exactly, params within TOL)."""
    from functrain.callbacks import ReduceOnPlateauCallback
    from functrain.schedules import ReduceOnPlateau

    def plateau():
        return ReduceOnPlateauCallback(
            ReduceOnPlateau(monitor="loss", patience=0, factor=0.5, threshold=0.3)
        )

    class RecordLr(Callback):
        def __init__(self):
            self.lrs = []

        def after_train_epoch(self, runner, state):
            self.lrs.append(ft.values_in_force(state.opt_state)["lr"].tolist())

    rec = RecordLr()
    final = ensemble_runner(tmp_path / "ens", callbacks=[plateau(), rec], epochs=4).train()
    assert len({tuple(r) for r in rec.lrs}) > 1  # some member's lr was reduced
    for i in range(N):
        ref_rec = RecordLr()
        ref = plain_runner(tmp_path / f"m{i}", i, callbacks=[plateau(), ref_rec], epochs=4)
        ref_final = ref.train()
        assert [r[i] for r in rec.lrs] == ref_rec.lrs
        for k, v in ref_final.params.items():
            assert close(final.params[k][i], v), (i, k)
    # A scalar lr shared by the members cannot take N values: refused before training.
    with pytest.raises(ValueError, match="one value per member"):
        params, buffers, model = ft.init_members(make_model, SEEDS)
        tx = ft.ensemble(inner_tx(0.01), N)
        state = ft.TrainState(params=params, buffers=buffers, opt_state=tx.init(params))
        train, val = loaders()
        Runner(
            state=state,
            train_step=ft.make_ensemble_train_step(model, loss_fn, tx, N),
            train_loop=EpochBasedTrainLoop(train, max_epochs=1),
            val_loop=ValLoop(val, ft.make_ensemble_eval_step(model, metrics_fn, N)),
            callbacks=[plateau()],
            default_callbacks={"checkpoint": None},
            work_dir=tmp_path / "scalar",
            log_level="WARNING",
        ).train()


def test_readme_runner_with_members_runs_as_written(tmp_path, monkeypatch):
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    first = re.search(r"## Ensembles and sweeps\n.*?```python\n(.*?)```", text, re.S).group(1)
    runner = re.search(r"### Runner with members\n.*?```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme"}
    exec(compile(first + runner, "README.md", "exec"), namespace)
    metrics = namespace["runner"].last_val_metrics
    assert sorted(metrics) == [f"acc/{i}" for i in range(4)]
    assert (namespace["runner"].work_dir / "curves.png").is_file()


def test_the_masked_step_reads_nothing_to_the_host():
    """A stopped member costs no host sync: the step with an active_members mask runs no
    aten._local_scalar_dense (what .item() / float(t) / bool(t) dispatch to)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    params, buffers, model = ft.init_members(make_model, SEEDS)
    tx = ft.ensemble(inner_tx(list(LRS)), N)
    state = ft.TrainState(params=params, buffers=buffers, opt_state=tx.init(params))
    state = ft.stop_members(state, [1], N)
    step = ft.make_ensemble_train_step(model, loss_fn, tx, N)
    batch = next(iter(loaders()[0]))
    before = state.params["0.weight"][1].clone()
    with Record() as rec:
        state, _ = step(state, batch)
    assert rec.ops and not any("_local_scalar_dense" in op for op in rec.ops)
    assert torch.equal(state.params["0.weight"][1], before)


def test_a_members_best_checkpoint_holds_its_ema_as_a_plain_run_writes_it(tmp_path):
    """With EMA(swap_checkpoint=True) a plain run's checkpoint holds the average as params
    and the raw weights in the EMA state; a member's best checkpoint does the same with
    its slices, so a plain run with EMA resumes it (raw weights back, average kept) and
    load_from gives the average."""
    f32 = torch.float32  # see test_resume_is_bitwise
    moms = [0.1, 0.2, 0.3]
    rec = RecordVal()
    ckpt = CheckpointCallback(interval=-1, save_best="loss", save_last=False)
    runner = ensemble_runner(
        tmp_path / "ens",
        callbacks=[EMA(momentum=moms), rec],
        defaults={"checkpoint": ckpt},
        dtype=f32,
    )
    final = runner.train()
    i = 1
    path = tmp_path / "ens" / f"best_loss_member{i}_epoch_{EPOCHS}.pth"
    raw = {k: v[i] for k, v in final.params.items()}
    avg = {k: v[i] for k, v in final.callbacks["ema"]["params"].items()}
    assert not torch.equal(raw["0.weight"], avg["0.weight"])
    plain = plain_runner(
        tmp_path / "res", i, callbacks=[EMA(momentum=moms[i])], resume=path, dtype=f32
    )
    plain._load_or_resume()
    assert set(plain.state.callbacks) == {"ema"}
    for k in raw:
        assert torch.equal(plain.state.params[k], raw[k])
        assert torch.equal(plain.state.callbacks["ema"]["params"][k], avg[k])
    loaded = plain_runner(tmp_path / "load", i, load_from=path, dtype=f32)
    loaded._load_or_resume()
    for k in avg:
        assert torch.equal(loaded.state.params[k], avg[k])
