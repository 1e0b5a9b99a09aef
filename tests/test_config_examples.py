"""Every config in examples/configs loads and runs through the command line: ``functrain
train`` (train, validate, checkpoint, log, test), ``functrain explain`` and ``functrain
schedule --plot``, each with what the config asks for (kept checkpoints, validation epochs,
dynamic intervals, the user's hook output, per-parameter lr / decay).

The runs are shortened with ``--cfg-options`` (one epoch, or a larger batch where the
epochs matter). That they give mmengine's numbers is tests/test_config_mmengine.py's job.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from functrain.cli import main
from functrain.config.file import load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "examples" / "configs"
NAMES = sorted(p.name for p in CONFIGS.glob("digits_*.py"))
PNG = b"\x89PNG\r\n\x1a\n"

# --cfg-options per config: one epoch, except where the config is about its epochs (then
# 10 iterations per epoch) or about its iterations (250, in seconds).
SHORTEN = {
    "digits_checkpoint.py": ["train_dataloader.batch_size=128"],
    "digits_epoch_val.py": ["train_dataloader.batch_size=128"],
    "digits_momentum_cosine.py": ["train_dataloader.batch_size=128"],
    "digits_iter_dynamic.py": [],
}


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    # custom_imports names 'examples.configs.my_project...', importable from the repository
    # root (examples/configs/README.md: `python -m functrain.cli` there, or PYTHONPATH=.).
    monkeypatch.syspath_prepend(str(ROOT))
    yield
    torch.set_num_threads(threads)


def train(name: str, work_dir: Path, capsys, extra: list[str] | None = None) -> str:
    options = SHORTEN.get(name, ["train_cfg.max_epochs=1"]) + (extra or [])
    argv = ["train", str(CONFIGS / name), "--work-dir", str(work_dir), "--device", "cpu"]
    if options:
        argv += ["--cfg-options", *options]
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert f"outputs (logs, checkpoints, plots) in {work_dir}" in out
    return out


def scalars(work_dir: Path) -> list[dict]:
    (log_dir,) = [p for p in work_dir.iterdir() if p.is_dir()]
    assert (log_dir / f"{log_dir.name}.log").stat().st_size > 0
    return [json.loads(line) for line in (log_dir / "scalars.json").read_text().splitlines()]


def val_records(records: list[dict]) -> list[dict]:
    return [r for r in records if "accuracy" in r]


@pytest.mark.parametrize("name", NAMES)
def test_config_trains_from_the_command_line(name, tmp_path, capsys):
    cfg = load_config(CONFIGS / name)
    for key in ("model", "train_dataloader", "optim_wrapper", "train_cfg", "default_hooks"):
        assert key in cfg, key
    assert cfg["randomness"] == {"seed": 0}
    logger = cfg["default_hooks"]["logger"]
    assert (logger["type"], logger["interval"]) == ("LoggerHook", 50)  # seed block 21

    work_dir = tmp_path / "work"
    train(name, work_dir, capsys)
    pointer = (work_dir / "last_checkpoint").read_text().strip()
    assert Path(pointer).is_file() and Path(pointer).parent == work_dir
    checkpoint = torch.load(pointer, weights_only=False)
    assert {"params", "buffers", "opt_state"} <= set(checkpoint["state"])
    records = scalars(work_dir)
    assert any("loss" in r and "lr" in r for r in records)
    assert val_records(records)


def test_checkpoint_config_keeps_three_with_the_optimizer(tmp_path, capsys):
    work_dir = tmp_path / "work"
    train("digits_checkpoint.py", work_dir, capsys)
    kept = sorted(p.name for p in work_dir.glob("*.pth"))
    assert kept == ["epoch_3.pth", "epoch_4.pth", "epoch_5.pth"]  # max_keep_ckpts=3 of 5
    assert "opt_state" in torch.load(work_dir / "epoch_5.pth", weights_only=False)["state"]


def test_epoch_val_config_validates_after_epochs_2_4_and_5(tmp_path, capsys):
    work_dir = tmp_path / "work"
    train("digits_epoch_val.py", work_dir, capsys)
    assert [r["step"] for r in val_records(scalars(work_dir))] == [2, 4, 5]


def test_iter_config_validates_and_saves_at_its_dynamic_intervals(tmp_path, capsys):
    cfg = load_config(CONFIGS / "digits_iter_dynamic.py")
    assert cfg["train_cfg"]["dynamic_intervals"] == [(201, 250)]  # the seed's formula
    assert cfg["train_dataloader"]["sampler"]["type"] == "InfiniteSampler"
    work_dir = tmp_path / "work"
    out = train("digits_iter_dynamic.py", work_dir, capsys)
    assert "250 iterations" in out
    # mmengine's rule (tests/test_config_mmengine.py checks the events against it): the
    # interval switches at milestone 201 already after iteration 200
    assert [r["step"] for r in val_records(scalars(work_dir))] == [100, 250]
    assert sorted(p.name for p in work_dir.glob("*.pth")) == [
        "iter_100.pth",
        "iter_200.pth",
        "iter_250.pth",
    ]


def test_custom_config_uses_the_users_optimizer_and_hook(tmp_path, capsys):
    work_dir = tmp_path / "work"
    train("digits_custom.py", work_dir, capsys)
    lines = [json.loads(s) for s in (work_dir / "my_hook.jsonl").read_text().splitlines()]
    # MyHook(a=10): iterations 10, 20, 30, 40 of the 40 in one epoch, then the epoch's end
    assert [r["iter"] for r in lines] == [10, 20, 30, 40, 40]
    assert lines[-1] == {"epoch_end": 1, "iter": 40}
    assert lines[0]["momentum"] == pytest.approx(0.9)  # MyOptimizer's a
    assert all(r["loss"] > 0 for r in lines[:-1])


def test_seed_literal_delete_snippet_is_rejected_with_the_reason(tmp_path, capsys):
    # The seed's `optim_wrapper = dict(_delete_=True, clip_grad=...)` drops the optimizer:
    # a one-line error naming it, not a traceback (digits_sgd_clip.py repeats it instead).
    config = tmp_path / "seed_block_8.py"
    config.write_text(
        f"_base_ = [{str(CONFIGS / 'digits_multistep_1x.py')!r}]\n"
        "optim_wrapper = dict(_delete_=True, clip_grad=dict(max_norm=35, norm_type=2))\n"
    )
    rc = main(["train", str(config), "--work-dir", str(tmp_path / "w"), "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1
    assert "optim_wrapper" in err and "optimizer" in err and "_delete_" in err


def test_default_1x_config_learns(tmp_path, capsys):
    work_dir = tmp_path / "work"
    argv = ["train", str(CONFIGS / "digits_multistep_1x.py"), "--work-dir", str(work_dir)]
    assert main([*argv, "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    accuracy = float(re.search(r"last validation: accuracy ([0-9.]+)", out).group(1))
    assert accuracy > 0.8  # 4 epochs; chance is 0.1


# -- explain ---------------------------------------------------------------------------------

ROW = re.compile(r"^\s+(\S+)\s+\(.*?\)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)$")


def explain(name: str, capsys) -> tuple[str, dict[str, tuple[float | None, float | None]]]:
    assert main(["explain", str(CONFIGS / name)]) == 0
    out = capsys.readouterr().out
    rows = {
        m[1]: (number(m[2]), number(m[3])) for line in out.splitlines() if (m := ROW.match(line))
    }
    return out, rows


def number(text: str) -> float | None:
    return None if text == "-" else float(text)  # "-": the optimizer has no such value


@pytest.mark.parametrize("name", NAMES)
def test_config_explains(name, capsys):
    from functrain.zoo import DigitsNet

    out, rows = explain(name, capsys)
    assert "transform: chain(" in out and "schedules (values in force" in out
    assert set(rows) == {n for n, _ in DigitsNet().named_parameters()}


def test_explain_shows_the_paramwise_lr_and_decay(capsys):
    _, rows = explain("digits_adamw.py", capsys)
    assert rows["head.2.weight"] == (0.005, 0.05)
    assert rows["backbone.0.weight"] == (0.0005, 0.05)  # custom_keys backbone lr_mult=0.1
    # mmengine's precedence: a custom key decides the decay of what it matches, so the
    # seed's norm_decay_mult=0 does not reach the BatchNorms inside `backbone`.
    assert rows["backbone.1.weight"] == (0.0005, 0.05)


def test_explain_shows_the_custom_constructor(capsys):
    _, rows = explain("digits_custom_constructor.py", capsys)
    assert rows["backbone.1.weight"] == (0.02, 0.0)  # BatchNorm: no weight decay
    assert rows["backbone.7.bias"] == (0.02, 0.0)
    assert rows["backbone.0.weight"] == (0.02, 0.0001)
    assert rows["head.2.bias"] == (0.02, 0.0001)


# -- schedule --plot -------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_config_schedule_plots(name, tmp_path, capsys):
    out_png = tmp_path / "out.png"
    assert main(["schedule", str(CONFIGS / name), "--plot", str(out_png)]) == 0
    printed = capsys.readouterr().out
    if name == "digits_momentum_cosine.py":  # one plot per scheduled hyperparameter
        files = [tmp_path / "out_lr.png", tmp_path / "out_momentum.png"]
    else:
        files = [out_png]
    assert sorted(tmp_path.iterdir()) == sorted(files)
    for f in files:
        assert f.read_bytes()[:8] == PNG
        assert str(f) in printed
