"""Python config files, ``--cfg-options`` and ConfigDict, checked against mmengine 0.10.7.

The parity tests load the same files with ``mmengine.config.Config.fromfile`` and with
``functrain.config.file.load_config`` and compare the resulting dicts, types included.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import pickle
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from functrain.config.file import (
    Config,
    ConfigDict,
    ConfigFileError,
    load_config,
    merge_from_dict,
    parse_cfg_options,
)

# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


def assert_same(a: Any, b: Any, where: str = "cfg") -> None:
    """Equal, with the same container and scalar types everywhere (1 != 1.0, [] != ())."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert list(a) == list(b) or set(a) == set(b), f"{where}: keys {list(a)} != {list(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
        return
    assert type(a) is type(b), f"{where}: {type(a).__name__} {a!r} != {type(b).__name__} {b!r}"
    if isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where}: {a!r} != {b!r}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), where
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def strip_delete(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: strip_delete(v) for k, v in value.items() if k != "_delete_"}
    if isinstance(value, (list, tuple)):
        return type(value)(strip_delete(v) for v in value)
    return value


def contains_key(value: Any, key: str) -> bool:
    if isinstance(value, dict):
        return key in value or any(contains_key(v, key) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(contains_key(v, key) for v in value)
    return False


def mm_load(path: Path) -> dict:
    from mmengine.config import Config as MMConfig

    return MMConfig.fromfile(str(path)).to_dict()


# --------------------------------------------------------------------------------------
# a small MMDetection-like config tree
# --------------------------------------------------------------------------------------

OPTIM_SGD = (
    "optim_wrapper = dict(type='OptimWrapper', "
    "optimizer=dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=0.0001))"
)

TREE = {
    "_base_/models/net.py": """
        model = dict(
            type='Net',
            backbone=dict(type='ResNet', depth=50, out_indices=(0, 1, 2, 3),
                          norm_cfg=dict(type='BN', requires_grad=True)),
            neck=dict(type='FPN', in_channels=[256, 512, 1024, 2048], out_channels=256),
            act=None,
        )
    """,
    "_base_/schedules/schedule_1x.py": f"""
        {OPTIM_SGD}
        param_scheduler = [
            dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
            dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[8, 11],
                 gamma=0.1),
        ]
        train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=12, val_interval=1)
        val_cfg = dict(type='ValLoop')
    """,
    "_base_/default_runtime.py": """
        default_scope = 'mmdet'
        default_hooks = dict(
            timer=dict(type='IterTimerHook'),
            logger=dict(type='LoggerHook', interval=50),
            checkpoint=dict(type='CheckpointHook', interval=1),
        )
        env_cfg = dict(cudnn_benchmark=False,
                       mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0))
        custom_hooks = []
        log_level = 'INFO'
        load_from = None
        resume = False
    """,
    "configs/net/net_1x.py": """
        _base_ = [
            '../../_base_/models/net.py',
            '../../_base_/schedules/schedule_1x.py',
            '../../_base_/default_runtime.py',
        ]
    """,
    # The seed's gradient-clipping example: _delete_ replaces the inherited optim_wrapper.
    "configs/net/net_clip_delete.py": """
        _base_ = './net_1x.py'
        optim_wrapper = dict(
            _delete_=True,
            type='OptimWrapper',
            optimizer=dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=0.0001),
            clip_grad=dict(max_norm=35, norm_type=2))
    """,
    # ... and without _delete_ the dicts merge.
    "configs/net/net_clip_merge.py": """
        _base_ = './net_1x.py'
        optim_wrapper = dict(clip_grad=dict(max_norm=35, norm_type=2))
    """,
    "configs/net/net_adamw.py": """
        _base_ = './net_1x.py'
        optim_wrapper = dict(
            optimizer=dict(_delete_=True, type='AdamW', lr=0.0001, weight_decay=0.05),
            paramwise_cfg=dict(custom_keys={'backbone': dict(lr_mult=0.1),
                                            'backbone.norm': dict(decay_mult=0.0)},
                               norm_decay_mult=0.0),
            clip_grad=dict(max_norm=0.01, norm_type=2))
        param_scheduler = [dict(type='CosineAnnealingLR', T_max=12, eta_min_ratio=0.01,
                                by_epoch=True, convert_to_iter_based=True)]
        default_hooks = dict(logger=dict(interval=10), checkpoint=None)
        model = dict(neck=dict(_delete_=True, type='PAFPN', in_channels=[64, 128]))
    """,
    # Python expressions over the inherited values, helpers, builtins, and `_base_` mutation.
    "configs/net/net_base_refs.py": """
        _base_ = ['./net_1x.py']
        import math

        def double(x):
            return 2 * x

        scale = lambda x: x * 10  # noqa: E731
        __private = 'dropped'
        lr = double(_base_.optim_wrapper.optimizer.lr)
        optim_wrapper = dict(optimizer=dict(lr=lr, eps=math.pi))
        max_epochs = 24
        train_cfg = dict(max_epochs=max_epochs)
        model = dict(neck=dict(in_channels=_base_.model.neck.in_channels + [4096]))
        head = _base_.model.backbone
        head.depth = 18
        _base_.model.backbone.out_indices = (3,)
        milestones = [int(max_epochs * f) for f in (2 / 3, 11 / 12)]
        param_scheduler = [_base_.param_scheduler[0],
                           dict(type='MultiStepLR', milestones=milestones, end=max_epochs)]
        sizes = sorted({3, 1, 2})
    """,
    # Three levels, nested directories, a list replacing a list, tuples and odd literals.
    "configs/deep/a/b/c.py": """
        _base_ = '../../../net/net_clip_delete.py'
        train_pipeline = [
            dict(type='LoadImageFromFile'),
            dict(type='Resize', scale=(1333, 800), keep_ratio=True),
            dict(type='RandomFlip', prob=0.5),
            dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape')),
        ]
        strides = [(4, 4), (8, 8)]
        mean = [123.675, 116.28, 103.53]
        neg = -3
        big = 10 ** 20
        tiny = 1e-12
        inf = float('inf')
        label = 'caf\\u00e9 \\'quoted\\' "double"'
        raw = b'\\x00\\xff'
        empty = dict()
        nested_empty = dict(a=[], b=(), c={})
        mapping = {'a-b': 1, 2: 'two', 'ok': dict(x=1)}
        auto_scale_lr = dict(enable=False, base_batch_size=16)
    """,
    "configs/predef.py": """
        work_dir = './work_dirs/{{ fileBasenameNoExtension }}'
        here = '{{fileDirname}}'
        name = '{{ fileBasename }}'
        ext = '{{ fileExtname }}'
        data_root = '{{$FUNCTRAIN_TEST_DATA_ROOT:/data/coco}}/'
        num_classes = {{'$FUNCTRAIN_TEST_NUM_CLASSES:80'}}
    """,
    "configs/custom_imports.py": """
        _base_ = './net/net_1x.py'
        custom_imports = dict(imports=['json'], allow_failed_imports=False)
    """,
}

PARITY = [
    "_base_/models/net.py",
    "configs/net/net_1x.py",
    "configs/net/net_clip_delete.py",
    "configs/net/net_clip_merge.py",
    "configs/net/net_adamw.py",
    "configs/net/net_base_refs.py",
    "configs/deep/a/b/c.py",
    "configs/predef.py",
    "configs/custom_imports.py",
]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for rel, text in TREE.items():
        write(tmp_path, rel, text)
    return tmp_path


# --------------------------------------------------------------------------------------
# parity with mmengine
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("rel", PARITY)
def test_load_config_matches_mmengine(tree: Path, rel: str, monkeypatch) -> None:
    monkeypatch.setenv("FUNCTRAIN_TEST_NUM_CLASSES", "3")
    monkeypatch.delenv("FUNCTRAIN_TEST_DATA_ROOT", raising=False)
    ours = load_config(tree / rel)
    assert_same(ours.to_dict(), mm_load(tree / rel))
    assert ours.filename == str(tree / rel)


def test_seed_gradient_clipping_example(tree: Path) -> None:
    sgd = dict(type="SGD", lr=0.02, momentum=0.9, weight_decay=0.0001)
    deleted = load_config(tree / "configs/net/net_clip_delete.py")
    assert deleted.optim_wrapper == dict(
        type="OptimWrapper", optimizer=sgd, clip_grad=dict(max_norm=35, norm_type=2)
    )
    merged = load_config(tree / "configs/net/net_clip_merge.py")
    assert merged.optim_wrapper.to_dict() == deleted.optim_wrapper.to_dict()
    assert merged.optim_wrapper.clip_grad.max_norm == 35
    adamw = load_config(tree / "configs/net/net_adamw.py")
    # _delete_ inside a nested dict replaces only that dict; its siblings still merge.
    assert adamw.optim_wrapper.type == "OptimWrapper"
    assert adamw.optim_wrapper.optimizer == dict(type="AdamW", lr=0.0001, weight_decay=0.05)
    assert adamw.model.neck == dict(type="PAFPN", in_channels=[64, 128])
    assert adamw.default_hooks.checkpoint is None
    assert adamw.default_hooks.logger == dict(type="LoggerHook", interval=10)
    for cfg in (deleted, merged, adamw):
        assert not contains_key(cfg.to_dict(), "_delete_")


def test_base_references_and_helpers(tree: Path) -> None:
    cfg = load_config(tree / "configs/net/net_base_refs.py")
    assert cfg.lr == 0.04 and cfg.optim_wrapper.optimizer.lr == 0.04
    assert cfg.optim_wrapper.optimizer.momentum == 0.9
    assert cfg.model.neck.in_channels == [256, 512, 1024, 2048, 4096]
    # functions, modules and __names are dropped; values computed from them stay
    for name in ("double", "scale", "math", "__private", "_base_"):
        assert name not in cfg
    assert cfg.milestones == [16, 22]
    # a value read through `_base_` is a copy: no two keys share a container
    assert cfg.head.depth == 18 and cfg.model.backbone.depth == 18  # mmengine: same object
    cfg.head.depth = 34
    assert cfg.model.backbone.depth == 18
    assert cfg.model.backbone.out_indices == (3,)  # changed through `_base_`, as in mmengine


def test_stray_delete_keys_are_dropped(tmp_path: Path) -> None:
    # mmengine keeps `_delete_` where there was nothing to delete; functrain never does.
    write(tmp_path, "base.py", "x = dict(_delete_=True, a=1)\nlst = [dict(_delete_=True, b=1)]\n")
    child = write(
        tmp_path,
        "child.py",
        """
        _base_ = 'base.py'
        x = dict(c=2)
        y = dict(_delete_=True, d=dict(_delete_=True, e=1))
        """,
    )
    for path in (tmp_path / "base.py", child):
        ours = load_config(path).to_dict()
        theirs = mm_load(path)
        assert contains_key(theirs, "_delete_")
        assert not contains_key(ours, "_delete_")
        assert_same(ours, strip_delete(theirs))


def test_classes_kept_functions_and_modules_dropped(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "c.py",
        """
        _base_ = []
        import json
        from os import path as osp
        class Marker:
            pass
        def helper():
            return 1
        value = helper()
        builtin = len
        """,
    )
    cfg = load_config(path)
    assert set(cfg) == {"Marker", "value", "builtin"}
    assert set(mm_load(path)) == set(cfg)
    assert cfg.value == 1 and cfg.builtin is len and isinstance(cfg.Marker, type)


def test_text_and_env_variables(tree: Path, monkeypatch) -> None:
    monkeypatch.setenv("FUNCTRAIN_TEST_DATA_ROOT", "/mnt/data")
    monkeypatch.delenv("FUNCTRAIN_TEST_NUM_CLASSES", raising=False)
    cfg = load_config(tree / "configs/predef.py")
    assert cfg.data_root == "/mnt/data/" and cfg.num_classes == 80
    assert cfg.work_dir == "./work_dirs/predef" and cfg.ext == ".py"
    assert cfg.here == str(tree / "configs")
    assert cfg.env_variables == {"FUNCTRAIN_TEST_DATA_ROOT": "/mnt/data"}
    assert_same(cfg.to_dict(), mm_load(tree / "configs/predef.py"))
    chained = load_config(tree / "configs/net/net_clip_delete.py")
    assert str(tree / "_base_/models/net.py") in chained.text
    assert chained.text.rstrip().endswith("clip_grad=dict(max_norm=35, norm_type=2))")


# --------------------------------------------------------------------------------------
# file errors
# --------------------------------------------------------------------------------------


def test_duplicate_keys_among_bases(tmp_path: Path) -> None:
    write(tmp_path, "a.py", f"{OPTIM_SGD}\nlr = 1\n")
    write(tmp_path, "sub/b.py", "optim_wrapper = dict(type='AmpOptimWrapper')\nother = 2\n")
    child = write(tmp_path, "child.py", "_base_ = ['a.py', 'sub/b.py']\n")
    with pytest.raises(ConfigFileError, match="(?i)duplicate key") as info:
        load_config(child)
    message = str(info.value)
    assert "'optim_wrapper'" in message and str(tmp_path / "a.py") in message
    assert str(tmp_path / "sub/b.py") in message and str(child) in message
    with pytest.raises(KeyError, match="Duplicate key"):
        mm_load(child)


def test_diamond_inheritance_is_a_duplicate(tmp_path: Path) -> None:
    write(tmp_path, "root.py", "x = 1\n")
    write(tmp_path, "left.py", "_base_ = 'root.py'\n")
    write(tmp_path, "right.py", "_base_ = 'root.py'\n")
    child = write(tmp_path, "child.py", "_base_ = ['left.py', 'right.py']\n")
    with pytest.raises(ConfigFileError, match="'x'"):
        load_config(child)


def test_cycles(tmp_path: Path) -> None:
    a = write(tmp_path, "a.py", "_base_ = 'dir/b.py'\nx = 1\n")
    write(tmp_path, "dir/b.py", "_base_ = '../a.py'\ny = 1\n")
    with pytest.raises(ConfigFileError, match="circular") as info:
        load_config(a)
    assert str(info.value).count(str(a)) == 2 and str(tmp_path / "dir/b.py") in str(info.value)
    me = write(tmp_path, "self.py", "_base_ = './self.py'\n")
    with pytest.raises(ConfigFileError, match="circular"):
        load_config(me)


def test_missing_files(tmp_path: Path) -> None:
    write(tmp_path, "_base_/schedule_1x.py", "x = 1\n")
    child = write(tmp_path, "child.py", "_base_ = ['_base_/schedule_1X.py']\n")
    with pytest.raises(FileNotFoundError) as info:
        load_config(child)
    message = str(info.value)
    assert str(tmp_path / "_base_/schedule_1X.py") in message and str(child) in message
    assert "did you mean '_base_/schedule_1x.py'" in message
    with pytest.raises(FileNotFoundError, match="nope.py"):
        load_config(tmp_path / "nope.py")


def test_syntax_and_runtime_errors_name_file_and_line(tmp_path: Path) -> None:
    bad = write(tmp_path, "bad.py", "a = 1\nb = dict(\nc = 3\n")
    with pytest.raises(SyntaxError) as info:
        load_config(bad)
    assert str(bad) in str(info.value) and info.value.lineno in (2, 3)
    assert f"line {info.value.lineno}" in str(info.value)

    write(tmp_path, "base.py", "x = 1\n")
    boom = write(tmp_path, "boom.py", "_base_ = 'base.py'\na = 1\nb = undefined_name + 1\n")
    with pytest.raises(ConfigFileError, match="line 3") as info2:
        load_config(boom)
    assert str(boom) in str(info2.value) and "undefined_name" in str(info2.value)
    typo = write(tmp_path, "typo.py", "_base_ = 'base.py'\ny = _base_.xx\n")
    with pytest.raises(ConfigFileError, match="did you mean 'x'"):
        load_config(typo)


def test_unsupported_features_are_rejected(tmp_path: Path) -> None:
    write(tmp_path, "base.py", f"{OPTIM_SGD}\n")
    subst = write(
        tmp_path, "subst.py", "_base_ = 'base.py'\n\nlr = {{_base_.optim_wrapper.optimizer.lr}}\n"
    )
    with pytest.raises(ConfigFileError, match="not supported") as info:
        load_config(subst)
    assert "line 3" in str(info.value) and "_base_.optim_wrapper.optimizer.lr`" in str(info.value)

    yaml = write(tmp_path, "cfg.yaml", "a: 1\n")
    with pytest.raises(ConfigFileError, match=r"'\.py'"):
        load_config(yaml)
    json_base = write(tmp_path, "json_base.py", "_base_ = 'x.json'\n")
    with pytest.raises(ConfigFileError, match=r"'\.py'"):
        load_config(json_base)
    lazy = write(
        tmp_path,
        "lazy.py",
        """
        from mmengine.config import read_base
        with read_base():
            from .base import *
        """,
    )
    with pytest.raises(ConfigFileError, match="read_base"):
        load_config(lazy)
    scoped = write(tmp_path, "scoped.py", "_base_ = 'mmdet::faster_rcnn/x.py'\n")
    with pytest.raises(ConfigFileError, match="package-scoped"):
        load_config(scoped)


def test_bad_base_values_and_merges(tmp_path: Path, monkeypatch) -> None:
    write(tmp_path, "base.py", "model = dict(neck=None, depth=50)\n")
    clash = write(tmp_path, "clash.py", "_base_ = 'base.py'\nmodel = dict(neck=dict(type='FPN'))\n")
    with pytest.raises(ConfigFileError, match="'model.neck'.*_delete_=True"):
        load_config(clash)
    with pytest.raises(TypeError):
        mm_load(clash)
    fixed = write(
        tmp_path,
        "fixed.py",
        "_base_ = 'base.py'\nmodel = dict(neck=dict(_delete_=True, type='FPN'))\n",
    )
    assert_same(load_config(fixed).to_dict(), mm_load(fixed))
    not_str = write(tmp_path, "notstr.py", "_base_ = [1]\n")
    with pytest.raises(ConfigFileError, match="list of paths"):
        load_config(not_str)
    twice = write(tmp_path, "twice.py", "_base_ = 'base.py'\n_base_ = 'base.py'\n")
    with pytest.raises(ConfigFileError, match="twice"):
        load_config(twice)
    reserved = write(tmp_path, "reserved.py", "filename = 'x'\n")
    with pytest.raises(ConfigFileError, match="reserved"):
        load_config(reserved)
    monkeypatch.delenv("FUNCTRAIN_TEST_UNSET", raising=False)
    env = write(tmp_path, "env.py", "root = '{{$FUNCTRAIN_TEST_UNSET:}}'\n")
    with pytest.raises(ConfigFileError, match="FUNCTRAIN_TEST_UNSET"):
        load_config(env)


# --------------------------------------------------------------------------------------
# --cfg-options
# --------------------------------------------------------------------------------------

VALUES = [
    "1",
    "-3",
    "1_000",
    "0.5",
    "1e-3",
    "inf",
    "0x10",
    "True",
    "false",
    "TRUE",
    "None",
    "none",
    "abc",
    "'abc'",
    '"abc"',
    "'1'",
    "a,b,c",
    "1,2.5,x",
    "a,",
    ",",
    "[1,2]",
    "(1,2)",
    "(1,)",
    "[]",
    "()",
    "[(1,2),[a,b],c]",
    "[[1,[2,(3,4)]]]",
    "['a','b']",
    "[a, b, c]",
    "( 1 , 2 )",
    "path/to/file.pth",
    "http://host/x?a=b",
    "",
]


@pytest.mark.parametrize("value", VALUES)
def test_parse_value_matches_dict_action(value: str) -> None:
    from mmengine.config import DictAction

    assert_same(parse_cfg_options([f"k={value}"])["k"], DictAction._parse_iterable(value))


def test_parse_cfg_options_matches_dict_action_argparse() -> None:
    from mmengine.config import DictAction

    items = [
        "optim_wrapper.optimizer.lr=0.01",
        "param_scheduler.0.end=10",
        "model.backbone.out_indices=(1,2,3)",
        "train_cfg.by_epoch=False",
        "default_hooks.logger=None",
        "data.paths=[a.txt,b.txt]",
        "work_dir=runs/x=1",
        "optim_wrapper.optimizer.lr=0.02",  # a later item wins
    ]
    parser = argparse.ArgumentParser()
    parser.add_argument("--cfg-options", nargs="+", action=DictAction)
    theirs = parser.parse_args(["--cfg-options", *items]).cfg_options
    ours = parse_cfg_options(items)
    assert_same(ours, theirs)
    assert ours["work_dir"] == "runs/x=1" and ours["optim_wrapper.optimizer.lr"] == 0.02


def test_parse_cfg_options_keeps_inner_spaces() -> None:
    # Deliberate difference: mmengine deletes every space in a value.
    from mmengine.config import DictAction

    assert parse_cfg_options(["work_dir=my runs/a b"])["work_dir"] == "my runs/a b"
    assert DictAction._parse_iterable("my runs/a b") == "myruns/ab"
    assert parse_cfg_options(["k=[a b, c]"])["k"] == ["a b", "c"]


def test_parse_cfg_options_errors() -> None:
    with pytest.raises(ConfigFileError, match="'optim_wrapper.optimizer.lr'.*no '='"):
        parse_cfg_options(["optim_wrapper.optimizer.lr"])
    with pytest.raises(ConfigFileError, match="empty key"):
        parse_cfg_options(["=1"])
    with pytest.raises(ConfigFileError, match="unbalanced"):
        parse_cfg_options(["k=[1,(2,3]"])
    with pytest.raises(TypeError, match="list of 'key=value'"):
        parse_cfg_options("a=1")


OPTION_TABLE = [
    {"optim_wrapper.optimizer.lr": 0.01},
    {"param_scheduler.0.end": 10},
    {"param_scheduler.1.milestones": [16, 22]},
    {"model.backbone.depth": 101, "model.backbone.with_cp": True},
    {"new.nested.key": "x"},
    {"default_hooks.logger": None},
    {"train_cfg": {"max_epochs": 24}},
    {"optim_wrapper": {"_delete_": True, "type": "AmpOptimWrapper", "optimizer": {"type": "Adam"}}},
    {"param_scheduler.0": {"type": "ConstantLR"}},
    {"env_cfg.mp_cfg.opencv_num_threads": 2, "log_level": "DEBUG"},
    {"model.backbone.out_indices": (1, 2)},
    {"param_scheduler": [{"type": "PolyLR", "power": 1.0}]},
]


@pytest.mark.parametrize("options", OPTION_TABLE)
def test_merge_from_dict_matches_mmengine(tree: Path, options: dict) -> None:
    from mmengine.config import Config as MMConfig

    cfg = load_config(tree / "configs/net/net_1x.py")
    before = cfg.to_dict()
    theirs = MMConfig(cfg.to_dict())
    theirs.merge_from_dict(copy.deepcopy(options))
    ours = merge_from_dict(cfg, options)
    assert_same(ours.to_dict(), theirs.to_dict())
    assert isinstance(ours, Config) and ours.filename == cfg.filename
    assert_same(cfg.to_dict(), before)  # the input is untouched


def test_fromfile_with_cfg_options_matches_mmengine(tree: Path) -> None:
    from mmengine.config import Config as MMConfig
    from mmengine.config import DictAction

    items = [
        "optim_wrapper.optimizer.lr=0.005",
        "param_scheduler.1.milestones=[16,22]",
        "train_cfg.max_epochs=24",
        "model.backbone.out_indices=(0,3)",
        "default_hooks.checkpoint.interval=2",
    ]
    parser = argparse.ArgumentParser()
    parser.add_argument("--cfg-options", nargs="+", action=DictAction)
    theirs = MMConfig.fromfile(str(tree / "configs/net/net_clip_delete.py"))
    theirs.merge_from_dict(parser.parse_args(["--cfg-options", *items]).cfg_options)
    path = tree / "configs/net/net_clip_delete.py"
    assert_same(Config.fromfile(path, items).to_dict(), theirs.to_dict())
    assert_same(Config.fromfile(path, parse_cfg_options(items)).to_dict(), theirs.to_dict())


def test_merge_from_dict_sets_list_elements(tree: Path) -> None:
    # Deliberate difference: mmengine cannot set a scalar list element from --cfg-options
    # (it calls .copy() on the old element); functrain replaces it.
    from mmengine.config import Config as MMConfig

    cfg = load_config(tree / "configs/net/net_1x.py")
    new = merge_from_dict(cfg, {"model.neck.in_channels.1": 1024, "param_scheduler.0": None})
    assert new.model.neck.in_channels == [256, 1024, 1024, 2048]
    assert new.param_scheduler[0] is None and new.param_scheduler[1] == cfg.param_scheduler[1]
    theirs = MMConfig(cfg.to_dict())
    with pytest.raises(AttributeError):
        theirs.merge_from_dict({"model.neck.in_channels.1": 1024})


def test_merge_from_dict_errors_and_no_sharing(tree: Path) -> None:
    cfg = load_config(tree / "configs/net/net_1x.py")
    with pytest.raises(
        ValueError, match=r"option 'param_scheduler.5.end': index 5 .* out of range.* 2 element"
    ):
        merge_from_dict(cfg, {"param_scheduler.5.end": 1})
    with pytest.raises(ConfigFileError, match="'param_scheduler' is a list"):
        merge_from_dict(cfg, {"param_scheduler.first.end": 1})
    with pytest.raises(ConfigFileError, match="'optim_wrapper.optimizer.lr'.*float"):
        merge_from_dict(cfg, {"optim_wrapper.optimizer.lr.x": 1})
    with pytest.raises(ConfigFileError, match="empty key component"):
        merge_from_dict(cfg, {"optim_wrapper..lr": 1})
    with pytest.raises(TypeError, match="parse_cfg_options"):
        merge_from_dict(cfg, ["a=1"])  # type: ignore[arg-type]
    new = merge_from_dict(cfg, {"log_level": "DEBUG"})
    new.model.backbone.depth = 18
    new.param_scheduler[0].end = 1
    assert cfg.model.backbone.depth == 50 and cfg.param_scheduler[0].end == 500
    plain = merge_from_dict({"a": {"b": 1}}, {"a.c": 2})
    assert plain == {"a": {"b": 1, "c": 2}} and plain.filename is None


# --------------------------------------------------------------------------------------
# ConfigDict / Config
# --------------------------------------------------------------------------------------


def test_config_dict_attribute_access() -> None:
    cfg = Config(
        dict(
            optim_wrapper=dict(optimizer=dict(type="SGD", lr=0.02)),
            param_scheduler=[dict(type="LinearLR", end=500)],
            pair=(dict(a=1), 2),
        )
    )
    assert cfg.optim_wrapper.optimizer.lr == 0.02
    assert cfg.param_scheduler[0].end == 500 and cfg.pair[0].a == 1
    assert type(cfg.pair) is tuple and isinstance(cfg.param_scheduler[0], ConfigDict)
    cfg.optim_wrapper.clip_grad = dict(max_norm=35)
    assert cfg.optim_wrapper.clip_grad.max_norm == 35
    cfg["extra"] = [dict(x=dict(y=1))]
    assert cfg.extra[0].x.y == 1
    with pytest.raises(AttributeError, match="'optim_wraper'.*did you mean 'optim_wrapper'"):
        cfg.optim_wraper  # noqa: B018
    with pytest.raises(AttributeError, match="'lrr'.*'lr'"):
        cfg.optim_wrapper.optimizer.lrr  # noqa: B018
    with pytest.raises(KeyError, match="'typ'.*did you mean 'type'"):
        cfg.optim_wrapper.optimizer["typ"]
    with pytest.raises(AttributeError, match="filename"):
        cfg.filename = "x"
    assert not hasattr(cfg, "missing") and "optim_wrapper" in dir(cfg)
    del cfg.extra
    assert "extra" not in cfg
    plain = cfg.to_dict()
    assert type(plain) is dict and type(plain["optim_wrapper"]["optimizer"]) is dict
    assert type(plain["param_scheduler"][0]) is dict and type(plain["pair"][0]) is dict
    assert plain == cfg
    with pytest.raises(ValueError, match="reserved"):
        Config(dict(pretty_text=1))


def test_config_copy_pickle_deepcopy(tree: Path) -> None:
    cfg = load_config(tree / "configs/net/net_adamw.py")
    for other in (pickle.loads(pickle.dumps(cfg)), copy.deepcopy(cfg), cfg.copy()):
        assert type(other) is Config and other == cfg
        assert other.filename == cfg.filename and other.text == cfg.text
        assert isinstance(other.optim_wrapper, ConfigDict)
    deep = copy.deepcopy(cfg)
    deep.optim_wrapper.optimizer.lr = 1.0
    assert cfg.optim_wrapper.optimizer.lr == 0.0001
    assert repr(cfg).startswith(f"Config (path: {cfg.filename}): {{")


# --------------------------------------------------------------------------------------
# dump / pretty_text
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("rel", [r for r in PARITY if r != "configs/predef.py"])
def test_dump_round_trip(tree: Path, tmp_path: Path, rel: str) -> None:
    cfg = load_config(tree / rel)
    out = tmp_path / "dumped" / "cfg.py"
    out.parent.mkdir()
    assert cfg.dump(out) is None
    back = load_config(out)
    assert_same(back.to_dict(), cfg.to_dict())
    assert_same(mm_load(out), cfg.to_dict())  # mmengine reads what we write
    assert cfg.dump() == out.read_text(encoding="utf-8")
    assert max(len(line) for line in out.read_text().splitlines()) <= 100


def test_dump_errors_leave_files_alone(tmp_path: Path) -> None:
    target = tmp_path / "cfg.py"
    target.write_text("old = 1\n")
    bad = Config(dict(model=dict(act=object())))
    with pytest.raises(ValueError, match="model.act"):
        bad.dump(target)
    assert target.read_text() == "old = 1\n"
    with pytest.raises(ValueError, match=r"'\.py'"):
        Config(dict(a=1)).dump(tmp_path / "cfg.yaml")
    assert not (tmp_path / "cfg.yaml").exists()
    with pytest.raises(ValueError, match="'not-a-name'"):
        Config({"not-a-name": 1}).dump(target)
    assert sorted(os.listdir(tmp_path)) == ["cfg.py"]


def test_pretty_text_splits_long_values() -> None:
    cfg = Config(
        dict(
            short=dict(a=1),
            long=[dict(type="Resize", scale=(1333, 800), keep_ratio=True)] * 4,
        )
    )
    text = cfg.pretty_text
    assert text.splitlines()[0] == "short = dict(a=1)"
    assert "long = [\n    dict(type='Resize', scale=(1333, 800), keep_ratio=True),\n" in text
    assert text.endswith("]\n")


keys = st.text("abcxyz_", min_size=1, max_size=6).filter(str.isidentifier)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(10**20), 10**20)
    | st.floats(allow_nan=False)
    | st.text(max_size=8).filter(lambda s: "{{" not in s)
    | st.binary(max_size=4)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.lists(inner, max_size=3).map(tuple)
        | st.dictionaries(keys, inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["a-b", "class", "0"]) | st.integers(0, 3), inner, max_size=2
        )
    ),
    max_leaves=12,
)


@given(st.dictionaries(keys.filter(lambda k: not k.startswith("__")), values, max_size=4))
def test_dump_round_trip_property(tmp_path_factory, data: dict) -> None:
    data = {k: v for k, v in data.items() if k not in ("filename", "text", "_base_")}
    path = tmp_path_factory.mktemp("prop") / "cfg.py"
    Config(data).dump(path)
    assert_same(load_config(path).to_dict(), data)
