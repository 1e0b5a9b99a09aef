"""The visualizer, its backends and the visualization hook (seed block 22).

A few iterations of the Digits visualization config with all four backends, then each
tracker's output read back with that tracker's own reader and compared with the logger's
``scalars.json``: TensorBoard's ``EventAccumulator``, MLflow's ``MlflowClient`` on the local
file store, the ``vis_data`` files, and W&B's offline transaction log (``run-<id>.wandb``)
parsed into wandb's own protobuf ``Record`` messages. W&B never touches the network here:
``WANDB_MODE=offline``.
"""

from __future__ import annotations

import json
import logging
import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from functrain.config import build_runner
from functrain.config.errors import ConfigError
from functrain.config.file import load_config
from functrain.visualization import (
    LocalVisBackend,
    VisualizationHook,
    Visualizer,
    draw_classification,
)

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "examples" / "configs" / "digits_visualization.py"
AXES = ("step", "epoch", "iter")
ALL_BACKENDS = [
    dict(type="LocalVisBackend"),
    dict(type="TensorboardVisBackend"),
    dict(type="WandbVisBackend", init_kwargs=dict(project="functrain-test")),
    dict(type="MLflowVisBackend", exp_name="digits", run_name="vis-test"),
]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """W&B offline and quiet; one torch thread (tiny tensors, shared CPUs)."""
    for key, value in {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_DISABLE_GIT": "true",
        "WANDB_DISABLE_CODE": "true",
        "MLFLOW_ALLOW_FILE_STORE": "true",
    }.items():
        monkeypatch.setenv(key, value)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def digits_cfg(backends: list[dict], **extra) -> dict:
    """The example config, shortened: 2 epochs of 10 iterations, a log line every 4."""
    cfg = load_config(CONFIG)
    cfg["train_cfg"]["max_epochs"] = 2
    cfg["train_dataloader"]["batch_size"] = 128
    cfg["default_hooks"]["logger"]["interval"] = 4
    cfg["default_hooks"]["checkpoint"] = None
    cfg["visualizer"]["vis_backends"] = backends
    cfg.update(extra)
    return cfg


def logged(log_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (log_dir / "scalars.json").read_text().splitlines()]


def curves(runner) -> dict[str, list[tuple[int, float]]]:
    """``{"<mode>/<key>": [(step, value), ...]}`` of what the logger wrote (its records keep
    the mode; the file does not)."""
    out: dict[str, list[tuple[int, float]]] = {}
    for record in runner.log_records:
        if record["mode"] == "test":
            continue  # test metrics are not curves (not in scalars.json either)
        for k, v in record.items():
            if k not in (*AXES, "mode"):
                out.setdefault(f"{record['mode']}/{k}", []).append((record["step"], v))
    return out


def wandb_records(path: Path):
    """W&B's offline transaction log: a LevelDB-style log (7-byte file header, 32 KiB
    blocks of chunks with a 7-byte header: crc32c, length, type FULL=1/FIRST=2/MIDDLE=3/
    LAST=4), each record a ``wandb_internal_pb2.Record``; parsed by wandb's own classes."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a W&B transaction log"
    block, pos, buf = 32768, 7, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # the block's tail is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pos += 7
        chunk, pos = data[pos : pos + length], pos + length
        if kind == 0:
            continue
        buf += chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            buf = b""
            yield record


def test_every_backend_reads_back_what_the_logger_wrote(tmp_path):
    pytest.importorskip("tensorboard")
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    built = build_runner(digits_cfg(ALL_BACKENDS), work_dir=tmp_path / "work", device="cpu")
    runner = built.runner
    runner.train()
    log_dir = runner.log_dir
    vis_data = log_dir / "vis_data"
    lines = logged(log_dir)
    expected = curves(runner)
    # Batches 4 and 8 of each epoch (the last 2 are not logged: ignore_last, mmengine default).
    assert [r["step"] for r in lines if "lr" in r] == [4, 8, 14, 18]
    assert len([r for r in lines if "accuracy" in r]) == 2

    # vis_data (mmengine's LocalVisBackend layout): the same lines as the logger's file;
    # the same json.dumps of the same Python floats, so equal as text.
    assert (vis_data / "scalars.json").read_text() == (log_dir / "scalars.json").read_text()
    assert load_config(vis_data / "config.py") == load_config_plain(built.cfg)
    images = sorted(p.name for p in (vis_data / "vis_image").iterdir())
    # Validation batches 0, 2, 4 (interval=2) after each epoch, at training iterations 10, 20.
    assert images == sorted(
        f"val_predictions_batch{b}_{s}.png" for b in (0, 2, 4) for s in (10, 20)
    )

    # TensorBoard: its event-file reader. Scalars are stored as float32 (simple_value), so
    # each equals the logged float64 rounded to float32, exactly (one rounding, no arithmetic).
    acc = EventAccumulator(str(vis_data), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == set(expected)
    for tag, points in expected.items():
        got = [(e.step, e.value) for e in acc.Scalars(tag)]
        assert got == [(s, float(np.float32(v))) for s, v in points], tag
    assert len(acc.Tags()["images"]) == 3  # val/predictions_batch0, 2, 4
    assert "config" in "".join(acc.Tags()["tensors"])  # add_text

    # MLflow: its client on the local file store. Values are stored as float64 text that
    # round-trips, so they are equal exactly.
    backend = runner.visualizer.get_backend("MLflowVisBackend")
    client = MlflowClient(backend.store_uri)
    assert backend.store_uri == (vis_data / "mlruns").resolve().as_uri()
    run = client.get_run(backend.run_id)
    assert run.info.run_name == "vis-test" and run.info.status == "FINISHED"
    assert set(run.data.metrics) == set(expected)
    for tag, points in expected.items():
        got = sorted((m.step, m.value) for m in client.get_metric_history(backend.run_id, tag))
        assert got == sorted(points), tag
    assert run.data.params["train_cfg.max_epochs"] == "2"
    assert run.data.params["optim_wrapper.optimizer.lr"] == "0.02"
    artifacts = {a.path for a in client.list_artifacts(backend.run_id)}
    assert "config.py" in artifacts
    assert {f"val_predictions_batch{b}_{s}.png" for b in (0, 2, 4) for s in (10, 20)} <= artifacts

    # W&B offline: what its local files allow. The run directory is an offline run
    # (offline-run-*, nothing synced); its transaction log holds the config update and one
    # history row per logger record with every curve and its "<mode>/step", equal to the
    # logger's values (JSON numbers that round-trip float64), and the images as media.
    (run_dir,) = (vis_data / "wandb").glob("offline-run-*")
    (log_file,) = run_dir.glob("run-*.wandb")
    rows, config = [], {}
    for record in wandb_records(log_file):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            row: dict = {}
            for item in record.history.item:
                # A scalar is one item; an image is a media record, one item per field
                # (nested_key = [name, field]).
                name, *field = [item.key] if item.key else list(item.nested_key)
                value = json.loads(item.value_json)
                if field:
                    row.setdefault(name, {})[field[0]] = value
                elif not name.startswith("_"):
                    row[name] = value
            rows.append(row)
        elif kind == "config":
            for item in record.config.update:
                config[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    assert config["train_cfg"]["max_epochs"] == 2 and config["visualizer"]["name"] == "visualizer"
    got_w: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        for k, v in row.items():
            mode, _, key = k.partition("/")
            if key != "step" and not isinstance(v, dict):  # a dict: an image's media record
                got_w.setdefault(k, []).append((row[f"{mode}/step"], v))
    assert got_w == expected
    media = [v for row in rows for v in row.values() if isinstance(v, dict)]
    assert [m["_type"] for m in media] == ["image-file"] * 6  # 3 batches x 2 validations
    tb_image = acc.Images("val/predictions_batch0")[0]
    assert {(m["width"], m["height"]) for m in media} == {(tb_image.width, tb_image.height)}


def load_config_plain(cfg: dict) -> dict:
    """What a config dumped to config.py loads back as (tuples stay tuples, ...)."""
    from functrain.config.config_dict import Config

    return dict(Config(dict(cfg)))


def test_a_backend_that_is_not_installed_fails_before_training(tmp_path, monkeypatch, capsys):
    import importlib.util

    from functrain.cli import main

    real = importlib.util.find_spec
    # wandb "not installed": find_spec finds nothing, as it would without the package.
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    cfg = digits_cfg([dict(type="LocalVisBackend"), dict(type="WandbVisBackend")])
    with pytest.raises(ConfigError) as err:
        build_runner(cfg, work_dir=tmp_path / "work", device="cpu")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("visualizer.vis_backends: WandbVisBackend needs the wandb package")
    assert "pip install functrain[wandb]" in message

    # From the command line: one line, status != 0, and nothing trained.
    work = tmp_path / "cli"
    argv = ["train", str(CONFIG), "--work-dir", str(work), "--device", "cpu", "--cfg-options",
            "visualizer.vis_backends.1.type=WandbVisBackend"]  # fmt: skip
    assert main(argv) != 0
    out, errtext = capsys.readouterr()
    assert "pip install functrain[wandb]" in errtext
    assert not list(work.rglob("*.pth"))


@pytest.mark.parametrize(
    ("visualizer", "path", "words"),
    [
        (dict(type="Visualizer", vis_backends=[dict(type="NoSuchVisBackend")]),
         "visualizer.vis_backends[0]", "unknown backend type 'NoSuchVisBackend'"),
        (dict(type="Visualizer", vis_backends=[dict(type="LocalVisBackend", colour=1)]),
         "visualizer.vis_backends[0] (LocalVisBackend)", "colour"),
        (dict(type="NoSuchVisualizer"), "visualizer.type", "unknown visualizer"),
        (dict(type="DetLocalVisualizer", bbox_colour="red"), "visualizer", "bbox_colour"),
    ],
)  # fmt: skip
def test_bad_visualizer_configs_name_the_key(visualizer, path, words, tmp_path):
    cfg = digits_cfg([], visualizer=visualizer)
    with pytest.raises(ConfigError) as err:
        build_runner(cfg, work_dir=tmp_path, device="cpu")
    assert err.value.path == path and words in str(err.value)


def test_det_visualizer_options_are_accepted(tmp_path):
    cfg = digits_cfg([dict(type="LocalVisBackend")])
    cfg["visualizer"].update(bbox_color=(255, 0, 0), line_width=3, alpha=0.8)
    cfg["default_hooks"]["visualization"] = dict(
        type="DetVisualizationHook", draw=True, interval=3, show=False, wait_time=0.5,
        test_out_dir="test_drawings", score_thr=0.5,
    )  # fmt: skip
    runner = build_runner(cfg, work_dir=tmp_path, device="cpu").runner
    (hook,) = [c for c in runner.callbacks if isinstance(c, VisualizationHook)]
    assert (hook.draw, hook.interval, hook.wait_time) == (True, 3, 0.5)
    assert runner.visualizer.drawing["line_width"] == 3
    runner.test()
    # test_out_dir: test batches 0 and 3 of 5 drawn (interval=3), also saved there.
    saved = sorted(p.name for p in (runner.log_dir / "test_drawings").iterdir())
    assert saved == ["test_batch0.png", "test_batch3.png"]
    assert hook.drawn == ["test/predictions_batch0", "test/predictions_batch3"]


def test_without_visualizer_nothing_changes(tmp_path):
    cfg = digits_cfg([])
    del cfg["visualizer"], cfg["default_hooks"]["visualization"]
    runner = build_runner(cfg, work_dir=tmp_path, device="cpu").runner
    assert runner.visualizer is None
    runner.train()
    assert not (runner.log_dir / "vis_data").exists()
    assert logged(runner.log_dir)


def test_draw_false_draws_nothing(tmp_path):
    cfg = digits_cfg([dict(type="LocalVisBackend")])
    cfg["default_hooks"]["visualization"]["draw"] = False  # mmdet's default
    runner = build_runner(cfg, work_dir=tmp_path, device="cpu").runner
    runner.val()
    assert not (runner.log_dir / "vis_data" / "vis_image").exists()


# -- drawing ---------------------------------------------------------------------------------


def red_pixels(image: np.ndarray) -> int:
    r, g, b = (image[..., i].astype(int) for i in range(3))
    return int(((r > 200) & (g < 60) & (b < 60)).sum())


@pytest.mark.parametrize("shape", [(6, 64), (6, 8, 8), (6, 1, 8, 8), (6, 3, 8, 8)])
def test_draw_marks_the_mistakes(shape):
    torch.manual_seed(0)
    inputs = torch.rand(shape)
    if shape[1:2] == (3,):  # grey RGB: random colours would themselves have red pixels
        inputs = torch.rand(6, 1, 8, 8).expand(shape)
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    right = torch.nn.functional.one_hot(labels, 10).float()
    image = draw_classification(inputs, right, labels)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert red_pixels(image) == 0  # nothing wrong, nothing red
    wrong = right.clone()
    wrong[2] = torch.nn.functional.one_hot(torch.tensor(7), 10).float()
    assert red_pixels(draw_classification(inputs, wrong, labels)) > 50  # frame + title


def test_draw_rejects_what_is_not_classification():
    with pytest.raises(ValueError, match="not a square image"):
        draw_classification(torch.zeros(2, 10), torch.zeros(2, 3), torch.zeros(2))
    with pytest.raises(ValueError, match="not \\(N, num_classes\\)"):
        draw_classification(torch.zeros(2, 8, 8), torch.zeros(2), torch.zeros(2))


def fake_runner(tmp_path, vis) -> SimpleNamespace:
    loader = SimpleNamespace(dataset=SimpleNamespace(metainfo={"classes": tuple("0123")}))
    return SimpleNamespace(
        visualizer=vis, val_dataloader=loader, test_dataloader=loader, iter=7,
        logger=logging.getLogger("functrain.test_visualization"), log_dir=tmp_path,
        model=torch.nn.Identity(),
    )  # fmt: skip


def test_a_model_it_cannot_draw_is_skipped_with_one_line(tmp_path, caplog):
    vis = Visualizer(vis_backends=[dict(type="LocalVisBackend")], save_dir=tmp_path / "vis")
    runner = fake_runner(tmp_path, vis)
    hook = VisualizationHook(draw=True, interval=1)
    detection_like = {"bboxes": torch.zeros(2, 4), "scores": torch.zeros(2)}
    with caplog.at_level(logging.INFO, logger="functrain.test_visualization"):
        for i in range(3):
            hook.after_val_iter(
                runner, None, i, (torch.zeros(2, 8, 8), torch.zeros(2)), detection_like
            )
    lines = [r.getMessage() for r in caplog.records if "VisualizationHook" in r.getMessage()]
    assert len(lines) == 1 and "cannot draw" in lines[0] and "skipped" in lines[0]
    assert hook.drawn == [] and not (tmp_path / "vis").exists()


def test_show_without_a_display_logs_once_and_saves(tmp_path, caplog, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    vis = Visualizer(vis_backends=[LocalVisBackend()], save_dir=tmp_path / "vis")
    runner = fake_runner(tmp_path, vis)
    hook = VisualizationHook(draw=True, interval=1, show=True)
    batch = (torch.rand(4, 64), torch.tensor([0, 1, 2, 3]))
    with caplog.at_level(logging.INFO, logger="functrain.test_visualization"):
        for i in range(2):
            hook.after_val_iter(runner, None, i, batch, torch.eye(4))
    lines = [r.getMessage() for r in caplog.records if "no display" in r.getMessage()]
    assert len(lines) == 1
    saved = sorted(p.name for p in (tmp_path / "vis" / "vis_image").iterdir())
    assert saved == ["val_predictions_batch0_7.png", "val_predictions_batch1_7.png"]


def test_only_the_main_rank_writes(tmp_path, monkeypatch):
    import functrain.visualization.visualizer as module

    monkeypatch.setattr(module, "is_main_process", lambda: False)
    vis = Visualizer(vis_backends=[dict(type="LocalVisBackend")], save_dir=tmp_path / "vis")
    vis.add_config({"a": 1})
    vis.add_scalars({"loss": 1.0}, step=1)
    vis.add_image("x", np.zeros((4, 4, 3), np.uint8))
    vis.close()
    assert not (tmp_path / "vis").exists()


def test_add_scalars_takes_the_step_as_an_argument(tmp_path):
    vis = Visualizer(vis_backends=[dict(type="LocalVisBackend")], save_dir=tmp_path)
    with pytest.raises(ValueError, match="step=..."):
        vis.add_scalars({"loss": 1.0, "step": 3})
    with pytest.raises(ValueError, match=r"RGB uint8 array \(H, W, 3\)"):
        vis.add_image("x", np.zeros((4, 4), np.uint8))
