"""Checkpoint files: weights_only round trips, atomic writes, corrupt / mismatching files."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import attrs
import optree
import pytest
import torch

import functrain as ft
from functrain.checkpoint import (
    CheckpointError,
    CheckpointMismatchError,
    atomic_save,
    load_checkpoint,
    register_record_class,
    restore_state,
    state_to_dict,
)
from functrain.schedules import ReduceOnPlateau
from functrain.state import TrainState, capture_rng

ROOT = Path(__file__).resolve().parents[1]


def model(width: int = 4) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(3, width), torch.nn.BatchNorm1d(width), torch.nn.Linear(width, 2)
    )


def trained_state(tx, width: int = 4) -> TrainState:
    m = model(width)
    state = TrainState.create(m, tx)
    grads = {k: torch.randn_like(v) for k, v in state.params.items()}
    params, opt_state = ft.apply_gradients(tx, state.params, grads, state.opt_state)
    return state.replace(
        params=params, opt_state=opt_state, iteration=7, epoch=2, rng=capture_rng()
    )


def write(state: TrainState, path: Path, save_optimizer: bool = True) -> Path:
    atomic_save(
        {
            "format": "functrain.checkpoint",
            "version": 1,
            "meta": {},
            "state": state_to_dict(state, save_optimizer=save_optimizer),
        },
        path,
    )
    return path


def assert_states_equal(a: TrainState, b: TrainState) -> None:
    la, ta = optree.tree_flatten(a, namespace="functrain")
    lb, tb = optree.tree_flatten(b, namespace="functrain")
    assert ta == tb
    for x, y in zip(la, lb, strict=True):
        if isinstance(x, torch.Tensor):
            assert x.dtype == y.dtype and x.device == y.device and torch.equal(x, y)
        else:
            assert x == y
    assert (a.iteration, a.epoch, a.rng) == (b.iteration, b.epoch, b.rng)


@pytest.mark.parametrize(
    "tx",
    [
        ft.chain(ft.clip(1.0), ft.adamw(lr=0.1, amsgrad=True)),
        ft.sgd(lr=0.1, momentum=0.9, nesterov=True),
        ft.chain(ft.clip_by_value(0.5), ft.adam(lr=0.1, betas=(0.8, 0.9))),
    ],
)
def test_roundtrip_is_exact_and_loads_with_weights_only(tmp_path, tx):
    state = trained_state(tx)
    state = state.with_callback_state("plateau", ReduceOnPlateau().init(0.1))
    path = write(state, tmp_path / "a.pth")
    raw = torch.load(path, weights_only=True)  # no class outside torch's allow-list
    assert raw["state"]["iteration"] == 7
    template = TrainState.create(model(), tx)  # fresh: SGD's momentum buffer is still None
    restored = restore_state(load_checkpoint(path), template, path=path)
    assert_states_equal(restored, state)
    assert restored.callbacks["plateau"] == state.callbacks["plateau"]


def test_truncated_file_is_a_clear_error(tmp_path):
    path = write(trained_state(ft.adam(lr=0.1)), tmp_path / "epoch_3.pth")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"epoch_3\.pth.*truncated or corrupt"):
        load_checkpoint(path)


def test_garbage_and_missing_files_are_clear_errors(tmp_path):
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(os.urandom(300))
    with pytest.raises(CheckpointError, match="garbage.pth"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="nope.pth.*does not exist"):
        load_checkpoint(tmp_path / "nope.pth")
    other = tmp_path / "other.pth"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(CheckpointError, match="not a functrain checkpoint"):
        load_checkpoint(other)


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {_Evil.target}",))


def test_a_checkpoint_cannot_run_code(tmp_path):
    _Evil.target = str(tmp_path / "pwned")
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        torch.save({"format": "functrain.checkpoint", "state": _Evil()}, f, pickle_module=pickle)
    with pytest.raises(CheckpointError, match="evil.pth"):
        load_checkpoint(path)
    assert not (tmp_path / "pwned").exists()


def test_record_classes_outside_functrain_must_be_registered(tmp_path):
    @attrs.frozen
    class MyState:
        count: torch.Tensor

    state = TrainState(params={"w": torch.ones(2)}, buffers={}, opt_state=MyState(torch.zeros(())))
    path = write(state, tmp_path / "mine.pth")
    with pytest.raises(CheckpointError, match="not a functrain class"):
        restore_state(load_checkpoint(path), state, path=path)
    register_record_class(MyState)
    restored = restore_state(load_checkpoint(path), state, path=path)
    assert isinstance(restored.opt_state, MyState)


def test_shape_mismatch_names_file_and_first_path(tmp_path):
    tx = ft.adam(lr=0.1)
    path = write(trained_state(tx, width=4), tmp_path / "w4.pth")
    template = TrainState.create(model(width=5), tx)
    with pytest.raises(CheckpointMismatchError) as info:
        restore_state(load_checkpoint(path), template, path=path)
    message = str(info.value)
    assert "w4.pth" in message and "params.0.weight" in message
    assert "(4, 3)" in message and "(5, 3)" in message


def test_missing_and_extra_keys_are_named(tmp_path):
    tx = ft.sgd(lr=0.1)
    state = trained_state(tx)
    path = write(
        state.replace(params={k: v for k, v in state.params.items() if k != "2.bias"}),
        tmp_path / "m.pth",
    )
    with pytest.raises(
        CheckpointMismatchError, match=r"m\.pth.*params\.2\.bias: missing in the file"
    ):
        restore_state(load_checkpoint(path), TrainState.create(model(), tx), path=path)
    extra = state.replace(buffers={**state.buffers, "9.running_var": torch.ones(3)})
    path = write(extra, tmp_path / "x.pth")
    with pytest.raises(
        CheckpointMismatchError, match=r"buffers\.9\.running_var: in the file but not"
    ):
        restore_state(load_checkpoint(path), TrainState.create(model(), tx), path=path)
    # non-strict loading of weights ignores the extra buffer
    loaded = restore_state(
        load_checkpoint(path),
        TrainState.create(model(), tx),
        path=path,
        load_optimizer=False,
        strict=False,
    )
    assert torch.equal(loaded.params["0.weight"], state.params["0.weight"])


def test_optimizer_mismatch_is_named(tmp_path):
    path = write(trained_state(ft.adam(lr=0.1)), tmp_path / "adam.pth")
    with pytest.raises(CheckpointMismatchError, match=r"adam\.pth.*optimizer: opt_state"):
        restore_state(
            load_checkpoint(path),
            TrainState.create(model(), ft.sgd(lr=0.1, momentum=0.9)),
            path=path,
        )
    weights_only = write(trained_state(ft.adam(lr=0.1)), tmp_path / "w.pth", save_optimizer=False)
    with pytest.raises(CheckpointError, match="no optimizer state"):
        restore_state(
            load_checkpoint(weights_only),
            TrainState.create(model(), ft.adam(lr=0.1)),
            path=weights_only,
        )


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "ckpt.pth"
    atomic_save({"v": torch.ones(3)}, path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_save({"v": torch.zeros(3), "x": Boom()}, path)
    assert torch.equal(torch.load(path, weights_only=True)["v"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pth"]  # no temp file left


CHILD = textwrap.dedent(
    """
    import io, sys, time, torch
    from torch.utils.data import DataLoader, TensorDataset
    import functrain as ft
    from functrain.callbacks import CheckpointCallback
    from functrain.loops import EpochBasedTrainLoop, Runner
    from functrain.state import TrainState
    from functrain.step import make_train_step

    work_dir, marker = sys.argv[1], sys.argv[2]
    real_save, saves = torch.save, [0]

    def slow_save(obj, f, *args, **kwargs):
        # The second checkpoint is written half, then the process waits to be killed.
        saves[0] += 1
        if saves[0] < 2:
            return real_save(obj, f, *args, **kwargs)
        buf = io.BytesIO()
        real_save(obj, buf)
        data = buf.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        open(marker, "w").write("half written")
        time.sleep(120)
        f.write(data[len(data) // 2 :])

    torch.save = slow_save
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))
    tx = ft.adam(lr=0.01)
    data = TensorDataset(torch.randn(16, 4), torch.randint(0, 2, (16,)))
    def loss_fn(forward, batch):
        return torch.nn.functional.cross_entropy(forward(batch[0]), batch[1])
    Runner(
        state=TrainState.create(model, tx),
        train_step=make_train_step(model, loss_fn, tx),
        train_loop=EpochBasedTrainLoop(DataLoader(data, batch_size=8), max_epochs=5),
        default_callbacks={"checkpoint": CheckpointCallback(interval=1, max_keep_ckpts=1)},
        work_dir=work_dir,
        log_level="WARNING",
    ).train()
    """
)


def test_sigkill_mid_save_leaves_the_previous_checkpoint_loadable(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    work_dir, marker = tmp_path / "work", tmp_path / "marker"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(work_dir), str(marker)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the child never reached its second save"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    # killed mid-write: the partial file is a temporary in the same directory
    partial = [p.name for p in work_dir.iterdir() if p.name.endswith(".tmp")]
    assert len(partial) == 1 and partial[0].startswith(".epoch_2.pth.")
    assert not (work_dir / "epoch_2.pth").exists()
    # The previous checkpoint is intact, still named by last_checkpoint, and resumable.
    assert (work_dir / "last_checkpoint").read_text() == str(work_dir / "epoch_1.pth")
    ckpt = load_checkpoint(work_dir / "epoch_1.pth")
    assert ckpt["meta"]["epoch"] == 1 and ckpt["state"]["iteration"] == 2
    # (max_keep_ckpts=1: the old file would only be deleted after the new one is written)


def test_load_from_loads_weights_only_and_val_runs(tmp_path):
    from functrain.loops import Runner, ValLoop
    from functrain.step import make_eval_step

    tx = ft.adam(lr=0.1)
    trained = trained_state(tx)
    path = write(trained, tmp_path / "trained.pth")
    m = model()
    fresh = TrainState.create(m, tx)
    x = torch.randn(5, 3)
    runner = Runner(
        state=fresh,
        val_loop=ValLoop([x], make_eval_step(m, lambda fwd, b: {"out": fwd(b).sum()})),
        load_from=path,
        default_callbacks=False,
        work_dir=tmp_path,
        log_level="WARNING",
    )
    metrics = runner.val()
    assert torch.equal(runner.state.params["0.weight"], trained.params["0.weight"])
    assert runner.state.iteration == 0  # counters and optimizer state are not loaded
    loaded_opt = optree.tree_leaves(runner.state.opt_state, namespace="functrain")
    fresh_opt = optree.tree_leaves(fresh.opt_state, namespace="functrain")
    assert all(torch.equal(a, b) for a, b in zip(loaded_opt, fresh_opt, strict=True))
    trained.load_into(m)
    m.eval()
    with torch.no_grad():
        assert metrics["out"] == pytest.approx(float(m(x).sum()), rel=1e-6)
