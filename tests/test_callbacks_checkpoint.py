"""CheckpointCallback: mmengine CheckpointHook's files, retention across resume, best selection,
deletion only after writing and only of its own files."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from functrain.callbacks import Callback, CheckpointCallback, infer_rule
from functrain.checkpoint import load_checkpoint
from functrain.loops import EpochBasedTrainLoop, IterBasedTrainLoop, Runner, ValLoop
from functrain.state import TrainState

mmengine = pytest.importorskip("mmengine")
from mmengine.evaluator import BaseMetric  # noqa: E402
from mmengine.hooks import CheckpointHook  # noqa: E402
from mmengine.runner import Runner as MMRunner  # noqa: E402
from test_loop_mmengine import _mm_loader, _ToyModel  # noqa: E402


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch):
    monkeypatch.setattr(mmengine.runner.loops.time, "sleep", lambda s: None)


class Scripted:
    """An evaluator returning the next value of ``values`` as ``{key: value}`` per run."""

    def __init__(self, key, values):
        self.key, self.values, self.calls = key, list(values), 0

    def reset(self):
        pass

    def process(self, outputs, batch):
        pass

    def evaluate(self):
        self.calls += 1
        return {self.key: self.values[self.calls - 1]}


def mm_files(tmp_path, train_cfg, hook_cfg, key, values, n_train=4) -> tuple[set, str]:
    class Metric(BaseMetric):
        default_prefix = ""
        calls = 0

        def process(self, data_batch, data_samples):
            self.results.append(0)

        def compute_metrics(self, results):
            Metric.calls += 1
            return {key: values[Metric.calls - 1]}

    work = tmp_path / "mm"
    MMRunner(
        model=_ToyModel(),
        work_dir=str(work),
        experiment_name=f"ckpt_{time.monotonic_ns()}",
        train_dataloader=_mm_loader(n_train),
        val_dataloader=_mm_loader(2),
        val_evaluator=[Metric()],
        train_cfg=train_cfg,
        val_cfg=dict(),
        optim_wrapper=dict(optimizer=dict(type="SGD", lr=0.01)),
        default_hooks=dict(
            runtime_info=None,
            timer=None,
            sampler_seed=None,
            logger=None,
            param_scheduler=None,
            checkpoint=dict(type="CheckpointHook", **hook_cfg),
        ),
        log_level="ERROR",
        default_scope=None,
    ).train()
    return {p.name for p in work.glob("*.pth")}, Path((work / "last_checkpoint").read_text()).name


def null_step(state, batch):
    return state.replace(params={"w": state.params["w"] + 1}), {"loss": torch.zeros(())}


def ft_runner(work, loop, hook_cfg, key, values, **kwargs):
    return Runner(
        state=TrainState(params={"w": torch.zeros(())}, buffers={}, opt_state=()),
        train_step=null_step,
        train_loop=loop,
        val_loop=ValLoop([0], lambda s, b: None, Scripted(key, values)),
        default_callbacks={"checkpoint": CheckpointCallback(**hook_cfg), "logger": None},
        work_dir=work,
        log_level="WARNING",
        **kwargs,
    )


CONFIGS = [
    (
        "epochs",
        dict(type="EpochBasedTrainLoop", max_epochs=5, val_interval=1),
        dict(interval=2, max_keep_ckpts=2, save_best="acc"),
        "acc",
        [0.5, 0.7, 0.6, 0.9, 0.8],
    ),
    (
        "begin",
        dict(type="EpochBasedTrainLoop", max_epochs=6, val_interval=2),
        dict(
            interval=1,
            save_begin=3,
            filename_tmpl="ckpt_{}.pth",
            save_best="auto",
            max_keep_ckpts=3,
        ),
        "val/top1",
        [0.3, 0.2, 0.4],
    ),
    (
        "iters",
        dict(type="IterBasedTrainLoop", max_iters=10, val_interval=4),
        dict(interval=3, by_epoch=False, max_keep_ckpts=1, save_best="loss"),
        "loss",
        [3.0, 1.0, 2.0],
    ),
]


@pytest.mark.parametrize(("name", "train_cfg", "hook_cfg", "key", "values"), CONFIGS)
def test_same_files_as_mmengine_checkpoint_hook(tmp_path, name, train_cfg, hook_cfg, key, values):
    expected, expected_last = mm_files(tmp_path, train_cfg, hook_cfg, key, values)
    cfg = {k: v for k, v in train_cfg.items() if k != "type"}
    loop = (
        EpochBasedTrainLoop if train_cfg["type"] == "EpochBasedTrainLoop" else IterBasedTrainLoop
    )([0, 1], **cfg)
    work = tmp_path / "ft"
    ft_runner(work, loop, hook_cfg, key, values).train()
    assert {p.name for p in work.glob("*.pth")} == expected
    assert Path((work / "last_checkpoint").read_text()).name == expected_last
    assert not list(work.glob(".*.tmp"))


def test_best_checkpoint_selection_and_scores(tmp_path):
    loop = EpochBasedTrainLoop([0, 1], max_epochs=5)
    runner = ft_runner(tmp_path, loop, dict(save_best="acc"), "acc", [0.5, 0.7, 0.6, 0.9, 0.8])
    state = runner.train()
    cs = state.callbacks["checkpoint"]
    assert cs["best_score"] == {"acc": 0.9}
    assert Path(cs["best_ckpt"]["acc"]).name == "best_acc_epoch_4.pth"
    best = load_checkpoint(tmp_path / "best_acc_epoch_4.pth")
    assert "opt_state" not in best["state"]  # best checkpoints hold no optimizer state
    assert torch.equal(best["state"]["params"]["w"], torch.tensor(8.0))  # 4 epochs x 2 iters
    # several metrics, each with its inferred rule
    loop = EpochBasedTrainLoop([0], max_epochs=3)

    class Two(Scripted):
        def evaluate(self):
            self.calls += 1
            return {"acc": [0.1, 0.3, 0.2][self.calls - 1], "loss": [5.0, 6.0, 4.0][self.calls - 1]}

    runner = ft_runner(tmp_path / "two", loop, dict(save_best=["acc", "loss"]), "x", [])
    runner.val_loop.evaluator = Two("x", [])
    state = runner.train()
    assert state.callbacks["checkpoint"]["best_score"] == {"acc": 0.3, "loss": 4.0}
    assert sorted(p.name for p in (tmp_path / "two").glob("best_*")) == [
        "best_acc_epoch_2.pth",
        "best_loss_epoch_3.pth",
    ]


@pytest.mark.parametrize(
    "key",
    ["acc", "val/top1_acc", "mAP", "loss", "val_loss", "AR@100", "mIoU", "bbox_mAP", "Accuracy"],
)
def test_rule_inference_matches_mmengine(key):
    assert infer_rule(key) == CheckpointHook(save_best=key).rules[0]


def test_rule_inference_errors_and_custom_keys():
    with pytest.raises(ValueError, match="Cannot infer the rule for key psnr"):
        CheckpointCallback(save_best="psnr")
    assert CheckpointCallback(save_best="psnr", greater_keys=["psnr"]).rules == ["greater"]
    assert CheckpointCallback(save_best=["a", "b"], rule=["less", "greater"]).rules == [
        "less",
        "greater",
    ]
    with pytest.raises(ValueError, match='Number of "rule"'):
        CheckpointCallback(save_best=["a", "b", "c"], rule=["less", "greater"])
    with pytest.raises(KeyError, match="rule must be greater, less or None"):
        CheckpointCallback(save_best="acc", rule="bigger")


def test_retention_holds_across_resume_and_deletes_only_own_files(tmp_path):
    foreign = tmp_path / "epoch_1_notes.pth"
    foreign.parent.mkdir(parents=True, exist_ok=True)
    foreign.write_bytes(b"user file")
    user_epoch = tmp_path / "epoch_9.pth"  # matches the template but was not written by us
    user_epoch.write_bytes(b"user file")

    def runner(max_epochs, keep, resume=False):
        return ft_runner(
            tmp_path,
            EpochBasedTrainLoop([0, 1], max_epochs=max_epochs),
            dict(interval=1, max_keep_ckpts=keep),
            "acc",
            [0.0] * 10,
            resume=resume,
        )

    state = runner(3, 2).train()
    assert state.callbacks["checkpoint"]["keep_ckpt_ids"] == [2, 3]
    assert sorted(p.name for p in tmp_path.glob("epoch_?.pth")) == [
        "epoch_2.pth",
        "epoch_3.pth",
        "epoch_9.pth",
    ]
    state = runner(5, 2, resume=True).train()  # the kept ids came back with the state
    assert state.callbacks["checkpoint"]["keep_ckpt_ids"] == [4, 5]
    assert sorted(p.name for p in tmp_path.glob("epoch_?.pth")) == [
        "epoch_4.pth",
        "epoch_5.pth",
        "epoch_9.pth",
    ]
    state = runner(6, 1, resume=True).train()  # a smaller max_keep_ckpts trims at the start
    assert sorted(p.name for p in tmp_path.glob("epoch_?.pth")) == ["epoch_6.pth", "epoch_9.pth"]
    assert foreign.read_bytes() == b"user file" and user_epoch.read_bytes() == b"user file"


def test_old_checkpoint_is_deleted_only_after_the_new_one_is_written(tmp_path):
    existing_at_write = []

    class Spy(Callback):
        def before_save_checkpoint(self, runner, state, checkpoint):
            existing_at_write.append(sorted(p.name for p in tmp_path.glob("epoch_*.pth")))

    runner = ft_runner(
        tmp_path,
        EpochBasedTrainLoop([0], max_epochs=3),
        dict(interval=1, max_keep_ckpts=1),
        "a",
        [0] * 3,
    )
    runner.register_callback(Spy())
    runner.train()
    assert existing_at_write == [[], ["epoch_1.pth"], ["epoch_2.pth"]]
    assert sorted(p.name for p in tmp_path.glob("epoch_*.pth")) == ["epoch_3.pth"]


def test_checkpoint_records_finished_work_and_runs_after_lowest_callbacks(tmp_path):
    class Late(Callback):
        priority = "LOWEST"

        def after_train_epoch(self, runner, state):
            return state.with_callback_state("late", runner.epoch)

    runner = ft_runner(
        tmp_path,
        IterBasedTrainLoop([0, 1, 2], max_iters=5),
        dict(interval=2, by_epoch=False),
        "a",
        [0] * 9,
    )
    runner.register_callback(Late())
    runner.train()
    ckpt = load_checkpoint(tmp_path / "iter_2.pth")
    assert (ckpt["meta"]["iter"], ckpt["state"]["iteration"], ckpt["state"]["epoch"]) == (2, 2, 0)
    assert torch.equal(ckpt["state"]["params"]["w"], torch.tensor(2.0))
    epoch_runner = ft_runner(
        tmp_path / "e", EpochBasedTrainLoop([0, 1, 2], max_epochs=2), dict(interval=1), "a", [0] * 9
    )
    epoch_runner.register_callback(Late())
    epoch_runner.train()
    ckpt = load_checkpoint(tmp_path / "e" / "epoch_1.pth")
    assert (ckpt["meta"]["epoch"], ckpt["state"]["epoch"], ckpt["state"]["iteration"]) == (1, 1, 3)
    # a LOWEST callback's update in the same event is in the file (written after all ran)
    assert ckpt["state"]["callbacks"]["late"] == 0
