"""``functrain sweep``: member tables, bad input, and member i of a sweep against ``functrain
train`` with member i's settings (issue 14, items 2-4).

Parity is checked on the digits SGD config (``digits_sgd_clip.py``, one or three epochs):
the members' forward/backward runs vmapped (other convolution kernels than the plain run),
so gradients differ in the last bits (float32, ~1e-7 relative); SGD with momentum is linear
in the gradient, so over 40-120 steps the parameters stay within ``PARAM_TOL`` of the leaf's
scale and the per-iteration losses within ``LOSS_TOL`` (1e-6); the learning rates are computed by
the same schedule code from the same numbers (one per member), within 1e-12. A real mistake
(another member's lr, a shared clip norm, a member trained after it stopped) moves values by
a sizeable fraction of the lr per step.

Not Adam: the digits CNN's convolution biases feed BatchNorm, so their true gradient is 0
and the computed one is rounding noise, which Adam divides by its own square root (a full
``±lr`` step either way): two runs that differ in the last bit of such a gradient part by
``lr`` per step on those biases, a property of the model and Adam, not of the sweep.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
import torch

import functrain as ft
from functrain.cli import main
from functrain.config.build import build_runner
from functrain.config.config_dict import Config
from functrain.config.errors import ConfigError
from functrain.sweep import (
    check_memory,
    member_config,
    parse_grid_option,
    parse_seeds,
    plan_sweep,
    run_sweep,
)

ROOT = Path(__file__).resolve().parent.parent
SGD = str(ROOT / "examples/configs/digits_sgd_clip.py")
ADAMW = str(ROOT / "examples/configs/digits_adamw.py")
LOSS_TOL = 1e-6
PARAM_TOL = 1e-5


def _cfg(path: str, *options: str) -> dict[str, Any]:
    return Config.fromfile(path, list(options) or None).to_dict()


# -- member tables -----------------------------------------------------------------------------


def test_member_order_is_grid_product_then_seeds() -> None:
    cfg = _cfg(ADAMW)
    cfg["sweep"] = dict(grid={"optim_wrapper.optimizer.lr": [1e-3, 1e-2]}, seeds=[0, 1])
    plan = plan_sweep(cfg, {"optim_wrapper.optimizer.weight_decay": [0, 0.05]})
    assert [(m.settings["optim_wrapper.optimizer.lr"],
             m.settings["optim_wrapper.optimizer.weight_decay"], m.seed)
            for m in plan.members] == [
        (1e-3, 0, 0), (1e-3, 0, 1), (1e-3, 0.05, 0), (1e-3, 0.05, 1),
        (1e-2, 0, 0), (1e-2, 0, 1), (1e-2, 0.05, 0), (1e-2, 0.05, 1),
    ]  # fmt: skip
    assert plan.members[5].label() == "lr=0.01, weight_decay=0, seed=1"
    assert plan.vector_keys == (
        "optim_wrapper.optimizer.lr",
        "optim_wrapper.optimizer.weight_decay",
    )
    text = plan.explain()
    assert "8 members trained together" in text and "randomness.seed" in text


def test_command_line_grid_replaces_config_values_and_parses() -> None:
    assert parse_grid_option("optim_wrapper.optimizer.betas=(0.9,0.999),(0.95,0.99)") == (
        "optim_wrapper.optimizer.betas", [(0.9, 0.999), (0.95, 0.99)])  # fmt: skip
    assert parse_grid_option("optim_wrapper.optimizer.type=SGD,Adam")[1] == ["SGD", "Adam"]
    assert parse_seeds("0-2,7") == [0, 1, 2, 7]
    cfg = _cfg(ADAMW)
    cfg["sweep"] = dict(grid={"optim_wrapper.optimizer.lr": [1e-3, 1e-2]})
    plan = plan_sweep(cfg, {"optim_wrapper.optimizer.lr": [5e-3]})
    assert [m.settings for m in plan.members] == [{"optim_wrapper.optimizer.lr": 5e-3}]


def test_member_config_sets_the_members_values() -> None:
    cfg = _cfg(SGD)
    plan = plan_sweep(cfg, {"param_scheduler[0].start_factor": [0.1, 0.5]}, seeds=[3])
    one = member_config(cfg, plan.members[1])
    assert one["param_scheduler"][0]["start_factor"] == 0.5
    assert one["randomness"]["seed"] == 3 and "sweep" not in one
    assert cfg["param_scheduler"][0]["start_factor"] == 0.001  # the input is untouched


def test_groups_split_keys_that_cannot_vary_in_one_process() -> None:
    cfg = _cfg(SGD)
    grid = {"train_dataloader.batch_size": [16, 32], "optim_wrapper.optimizer.lr": [0.01, 0.02]}
    plan = plan_sweep(cfg, grid, groups=True)
    assert plan.group_keys == ("train_dataloader.batch_size",)
    assert [[m.index for m in g] for g in plan.groups()] == [[0, 1], [2, 3]]
    assert "in 2 groups" in plan.explain()


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--grid", "optim_wrapper.optimizer.lrr=0.1,0.2"],
         "optim_wrapper.optimizer.lrr: the config has no such key; did you mean "
         "'optim_wrapper.optimizer.lr'"),
        (["--grid", "optim_wrapper.optimizer.lr=0.1,fast"],
         "optim_wrapper.optimizer.lr: sweep value 'fast' (str) is not a number"),
        (["--grid", "optim_wrapper.optimizer.betas=0.9,0.95"], "is not a sequence of 2"),
        ([], "sweep: the grid is empty"),
        (["--grid", "optim_wrapper.optimizer.lr="], "gives no values"),
        (["--grid", "model.width=8,16"],
         "model.width: cannot vary inside one process: the model architecture"),
        (["--grid", "optim_wrapper.optimizer.type=SGD,AdamW"], "the optimizer type"),
        (["--grid", "train_dataloader.batch_size=16,32"], "the batch size"),
        (["--grid", "optim_wrapper.paramwise_cfg.norm_decay_mult=0,1"], "paramwise multipliers"),
        (["--seeds", "0,x"], "--seeds: expected ints"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_status_2(
    args: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = SGD if "betas" not in " ".join(args) else ADAMW
    if "paramwise" in " ".join(args):
        config = ADAMW
    assert main(["sweep", config, "--explain", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err, err


def test_too_many_members_are_refused_before_allocating(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"3 members need about .* each: parameters"):
        check_memory(per_member=2**30, members=3, available=2**31, device="cpu")
    cfg = _cfg(SGD, "train_cfg.max_epochs=1")
    plan = plan_sweep(cfg, {"optim_wrapper.optimizer.lr": [0.01, 0.02]})
    with pytest.raises(ConfigError, match=r"2 members need about .* at most 0 members fit"):
        run_sweep(cfg, plan, work_dir=tmp_path, device="cpu", progress=None, available=1000)
    assert not list(tmp_path.glob("*.pth"))  # nothing trained


# -- parity with functrain train -----------------------------------------------------------------


def _record(runner: Any, n: int | None) -> list[tuple[list[float], list[float]]]:
    """Wrap the runner's train step to record (lr, loss) per iteration, per member."""
    log: list[tuple[list[float], list[float]]] = []
    step = runner.train_step

    def recording(state: Any, batch: Any) -> Any:
        state, metrics = step(state, batch)
        lr = ft.values_in_force(state.opt_state)["lr"]
        loss = metrics["loss"]
        if n is None:
            lr, loss = lr.reshape(1), loss.reshape(1)
        log.append((lr.double().expand(n or 1).tolist(), loss.double().tolist()))
        return state, metrics

    runner.train_step = recording
    return log


def _check_member_parity(cfg: dict[str, Any], plan: Any, tmp_path: Path) -> None:
    from functrain.sweep import build_ensemble_runner

    n = len(plan.members)
    runner, recorder, _ = build_ensemble_runner(
        cfg, plan, plan.members, work_dir=tmp_path / "sweep", device="cpu", progress=None
    )
    log = _record(runner, n)
    state = runner.train()
    curves = recorder.curves
    for i, member in enumerate(plan.members):
        plain = build_runner(member_config(cfg, member), work_dir=tmp_path / f"m{i}", device="cpu")
        ref = _record(plain.runner, None)
        ref_state = plain.runner.train()
        assert len(ref) == len(log), f"member {i}: {len(ref)} iterations vs {len(log)}"
        for it, ((lr, loss), (lr_ref, loss_ref)) in enumerate(zip(log, ref, strict=True)):
            assert lr[i] == pytest.approx(lr_ref[0], rel=1e-12), (i, it)
            assert loss[i] == pytest.approx(loss_ref[0], rel=LOSS_TOL), (i, it)
        one = ft.member_state(state, i)
        for k, p in ref_state.params.items():
            scale = p.abs().max().clamp_min(1e-12)
            assert float((one.params[k] - p).abs().max() / scale) < PARAM_TOL, (i, k)
        ref_metrics = plain.runner.last_val_metrics
        assert curves[-1][1]["accuracy"][i] == pytest.approx(ref_metrics["accuracy"], abs=1e-6)


def test_members_equal_their_own_train_runs(tmp_path: Path) -> None:
    cfg = _cfg(SGD, "train_cfg.max_epochs=1")
    grid = {"optim_wrapper.optimizer.lr": [0.01, 0.04],
            "param_scheduler[0].start_factor": [0.001, 0.3],
            "optim_wrapper.clip_grad.max_norm": [0.5]}  # fmt: skip
    plan = plan_sweep(cfg, grid)
    assert len(plan.members) == 4
    _check_member_parity(cfg, plan, tmp_path)


def test_members_with_their_own_seeds_and_decay(tmp_path: Path) -> None:
    # Seeds change the members' initial models (the data order is the first seed's: the
    # reference runs therefore use seed 0's data order, i.e. the config's own seed 0).
    cfg = _cfg(SGD, "train_cfg.max_epochs=1")
    plan = plan_sweep(cfg, {"optim_wrapper.optimizer.weight_decay": [0.0, 0.01]}, seeds=[0])
    _check_member_parity(cfg, plan, tmp_path)
    built = build_runner(member_config(cfg, attrs_seed(plan.members[0], 5)), device="cpu",
                         work_dir=tmp_path / "seed5")  # fmt: skip
    from functrain.config.build import build_model
    from functrain.ensembles import init_members

    params, _, _ = init_members(lambda: build_model(cfg, "cpu"), [5])
    for k, p in built.runner.state.params.items():
        assert torch.equal(params[k][0], p)  # the same constructor draws: bitwise


def attrs_seed(member: Any, seed: int) -> Any:
    import attrs

    return attrs.evolve(member, seed=seed)


def test_members_stopping_early_equal_their_runs(tmp_path: Path) -> None:
    # EarlyStopping once validation accuracy reaches 0.15: the fast member stops after its
    # first epoch (frozen in the sweep, ended in its own run), the slow one trains 2 epochs.
    # Batches of 128 without warmup keep this to 20 steps: over longer runs the members'
    # last-bit differences (vmapped convolutions) grow with the training dynamics, past
    # PARAM_TOL after 80 steps with ATEN_CPU_CAPABILITY=default (1.5e-4; 1e-6 with avx2).
    cfg = _cfg(SGD, "train_cfg.max_epochs=2", "train_dataloader.batch_size=128")
    cfg["param_scheduler"] = []
    cfg["custom_hooks"] = [
        dict(type="EarlyStoppingHook", monitor="accuracy", stopping_threshold=0.15)
    ]
    plan = plan_sweep(cfg, {"optim_wrapper.optimizer.lr": [0.002, 0.1]})
    from functrain.sweep import build_ensemble_runner

    runner, recorder, _ = build_ensemble_runner(
        cfg, plan, plan.members, work_dir=tmp_path / "sweep", device="cpu", progress=None
    )
    state = runner.train()
    stopped = []
    for i, member in enumerate(plan.members):
        plain = build_runner(member_config(cfg, member), work_dir=tmp_path / f"m{i}", device="cpu")
        ref = plain.runner.train()
        stopped.append(ref.epoch)
        one = ft.member_state(state, i)
        for k, p in ref.params.items():
            scale = p.abs().max().clamp_min(1e-12)
            assert float((one.params[k] - p).abs().max() / scale) < PARAM_TOL, (i, k)
    assert stopped[1] < stopped[0] == 2, stopped  # one member did stop early


# -- the command -------------------------------------------------------------------------------


def test_sweep_command_writes_results_and_exports_a_member(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / "sweep"
    args = ["sweep", SGD, "--grid", "optim_wrapper.optimizer.lr=0.01,0.03", "--seeds", "0,1",
            "--work-dir", str(work), "--cfg-options", "train_cfg.max_epochs=1"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "sweep: epoch 1/1" in out and "final accuracy" in out
    rows = list(csv.DictReader(open(work / "results.csv")))
    assert [r["member"] for r in rows] == ["0", "1", "2", "3"]
    assert set(rows[0]) == {"member", "optim_wrapper.optimizer.lr", "randomness.seed",
                            "final_accuracy", "best_accuracy", "best_epoch"}  # fmt: skip
    assert (work / "sweep.png").stat().st_size > 0
    out_ckpt = tmp_path / "member3.pth"
    assert main(["export-member", str(work), "--member", "3", str(out_ckpt)]) == 0
    # load_from and --resume of a plain run with member 3's settings accept it.
    cfg = _cfg(SGD, "train_cfg.max_epochs=2", "optim_wrapper.optimizer.lr=0.03")
    cfg["randomness"] = dict(seed=1)
    built = build_runner(cfg, work_dir=tmp_path / "plain", load_from=str(out_ckpt), device="cpu")
    built.runner._load_or_resume()
    from functrain.checkpoint import load_checkpoint

    saved = load_checkpoint(work / "sweep_final.pth")["state"]["params"]
    for k, p in built.runner.state.params.items():
        assert torch.equal(p, saved[k][3])
    resume = ["train", SGD, "--work-dir", str(tmp_path / "resumed"), "--resume", str(out_ckpt),
              "--cfg-options", "train_cfg.max_epochs=2", "optim_wrapper.optimizer.lr=0.03",
              "randomness.seed=1"]  # fmt: skip
    assert main(resume) == 0
    assert "trained 2 epochs / 80 iterations" in capsys.readouterr().out
    assert main(["export-member", str(work), "--member", "9", str(out_ckpt)]) == 2


def test_groups_train_one_after_another(tmp_path: Path) -> None:
    cfg = _cfg(SGD, "train_cfg.max_epochs=1")
    grid = {"train_dataloader.batch_size": [32, 64], "optim_wrapper.optimizer.lr": [0.01, 0.03]}
    plan = plan_sweep(cfg, grid, groups=True)
    result = run_sweep(cfg, plan, work_dir=tmp_path / "sweep", device="cpu", progress=None,
                       plot=False)  # fmt: skip
    assert [r["train_dataloader.batch_size"] for r in result.rows] == [32, 32, 64, 64]
    assert (tmp_path / "sweep/group1/epoch_1.pth").is_file()
    from functrain.checkpoint import load_checkpoint

    saved = load_checkpoint(tmp_path / "sweep/group1_sweep_final.pth")["state"]["params"]
    plain = build_runner(member_config(cfg, plan.members[3]), work_dir=tmp_path / "m3",
                         device="cpu").runner  # fmt: skip
    ref = plain.train()
    assert ref.iteration == 20  # batch 64: the group's own loop length
    for k, p in ref.params.items():
        scale = p.abs().max().clamp_min(1e-12)
        assert float((saved[k][1] - p).abs().max() / scale) < PARAM_TOL, k
    assert result.rows[3]["final"] == pytest.approx(plain.last_val_metrics["accuracy"], abs=1e-6)


def test_readme_sweep_section_runs_as_written(capsys: pytest.CaptureFixture[str]) -> None:
    import re

    text = (ROOT / "README.md").read_text()
    section = re.search(r"\n## Sweeps\n(.*?)\n## ", text, re.S).group(1)
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict[str, Any] = {}
    exec(code, namespace)  # the config's sweep block
    cfg = {**_cfg(str(ROOT / "examples/configs/digits_demo.py")), "sweep": namespace["sweep"]}
    plan = plan_sweep(cfg)
    assert plan.members[3].label() == "lr=0.001, weight_decay=0.05, seed=1"  # as the text says
    explain = re.search(r"(functrain sweep \S+ --grid \S+ --explain)", section).group(1)
    assert main(explain.split()[1:]) == 0
    assert "2 members trained together" in capsys.readouterr().out


def test_ema_momentum_varies_per_member(tmp_path: Path) -> None:
    from functrain.callbacks import EMA
    from functrain.sweep import build_ensemble_runner

    cfg = _cfg(SGD, "train_cfg.max_epochs=1")
    cfg["custom_hooks"] = [dict(type="EMAHook", momentum=0.001)]
    plan = plan_sweep(cfg, {"custom_hooks[0].momentum": [0.001, 0.01]})
    assert plan.vector_keys == ("custom_hooks[0].momentum",)
    runner, _, _ = build_ensemble_runner(cfg, plan, plan.members, work_dir=tmp_path,
                                         device="cpu", progress=None)  # fmt: skip
    (ema,) = [cb for cb in runner.callbacks if isinstance(cb, EMA)]
    member = EMA(momentum=[0.001, 0.01])  # what the Runner README documents
    assert vars(ema).keys() == vars(member).keys()
    assert repr(ema.momentum) == repr(member.momentum)
