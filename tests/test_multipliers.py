"""Per-parameter multipliers against mmengine's DefaultOptimWrapperConstructor and OptimWrapper.

The model has what paramwise_cfg distinguishes: a conv without bias, BatchNorm, a depth-wise
conv, GroupNorm, InstanceNorm, LayerNorm, linear layers with biases, a top-level parameter,
a parameter shared by two modules, and a frozen parameter.
"""

from __future__ import annotations

import logging
import warnings

import optree
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import functrain as ft
from tests.test_parity_torch import assert_rel

logging.getLogger("mmengine").setLevel(logging.ERROR)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 8, 3, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, groups=8),
            nn.GroupNorm(2, 8),
            nn.Conv2d(8, 6, 1),
            nn.InstanceNorm2d(6, affine=True),
        )
        self.neck = nn.Sequential(nn.Linear(6, 12), nn.LayerNorm(12))
        self.head = nn.Linear(12, 4)
        self.aux_head = nn.Linear(12, 4, bias=True)
        self.aux_head.weight = self.head.weight  # shared
        self.weight = nn.Parameter(torch.ones(4))  # top-level: matched as ".weight"
        self.backbone[0].weight.requires_grad_(False)  # frozen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.backbone(x).mean(dim=(2, 3))
        h = self.neck(h)
        return (self.head(h) + self.aux_head(h)) * self.weight


def make_model(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    return Net()


CUSTOM_KEYS = {
    "backbone": dict(lr_mult=0.1, decay_mult=1.0),
    "head": dict(lr_mult=10.0, decay_mult=0.0),
    ".weight": dict(lr_mult=2.0),
    "neck.1": dict(decay_mult=0.5),
    "backbone.3": dict(lr_mult=0.5, decay_mult=3.0),
    "bias": dict(lr_mult=1.5),
}
optional_mult = st.one_of(st.none(), st.sampled_from([0.0, 0.5, 2.0]))
paramwise_cfgs = st.fixed_dictionaries(
    {},
    optional={
        "custom_keys": st.lists(st.sampled_from(sorted(CUSTOM_KEYS)), max_size=3, unique=True).map(
            lambda keys: {k: CUSTOM_KEYS[k] for k in keys}
        ),
        "bias_lr_mult": optional_mult.filter(lambda v: v is not None),
        "bias_decay_mult": optional_mult.filter(lambda v: v is not None),
        "norm_decay_mult": optional_mult.filter(lambda v: v is not None),
        "dwconv_decay_mult": optional_mult.filter(lambda v: v is not None),
        "flat_decay_mult": optional_mult.filter(lambda v: v is not None),
    },
).map(lambda cfg: {**cfg, "bypass_duplicate": True})


def mmengine_wrapper(model, optimizer, paramwise_cfg, clip_grad=None):
    from mmengine.optim import DefaultOptimWrapperConstructor

    cfg = dict(type="OptimWrapper", optimizer=optimizer)
    if clip_grad is not None:
        cfg["clip_grad"] = clip_grad
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return DefaultOptimWrapperConstructor(cfg, paramwise_cfg)(model)


def decay_needed(cfg):
    return any(
        k in cfg for k in ("bias_decay_mult", "norm_decay_mult", "dwconv_decay_mult")
    ) or any("decay_mult" in v for v in cfg.get("custom_keys", {}).values())


@given(cfg=paramwise_cfgs, with_wd=st.booleans())
def test_per_parameter_lr_and_decay_equal_mmengine_param_groups(cfg, with_wd):
    model = make_model()
    optimizer = dict(type="SGD", lr=0.01, momentum=0.9)
    if with_wd:
        optimizer["weight_decay"] = 1e-3
    elif decay_needed(cfg):
        with pytest.raises(ValueError, match="base_wd"):
            mmengine_wrapper(model, optimizer, cfg)
        with pytest.raises(ValueError, match="weight_decay"):
            ft.paramwise_multipliers(model, cfg, weight_decay=None)
        return
    wrapper = mmengine_wrapper(model, optimizer, cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mults = ft.paramwise_multipliers(model, cfg, weight_decay=optimizer.get("weight_decay"))
    names = {id(p): n for n, p in model.named_parameters()}
    groups = wrapper.optimizer.param_groups
    assert sorted(names[id(g["params"][0])] for g in groups) == sorted(mults)
    for group in groups:
        (param,) = group["params"]
        m = mults[names[id(param)]]
        assert group["lr"] == pytest.approx(0.01 * m.lr_mult, rel=1e-15)
        assert group["weight_decay"] == pytest.approx(
            optimizer.get("weight_decay", 0.0) * m.decay_mult, rel=1e-15
        )
    assert "backbone.0.weight" not in mults  # frozen: no update, no state


def grads_for(model, steps, seed):
    gen = torch.Generator().manual_seed(seed)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    shapes = {n: p.shape for n, p in model.named_parameters()}
    return [
        {n: torch.randn(shapes[n], generator=gen) * 10 ** (i % 3 - 1) for n in names}
        for i in range(steps)
    ]


def run_mmengine(model, optimizer, cfg, clip_grad, grads_seq):
    wrapper = mmengine_wrapper(model, optimizer, cfg, clip_grad)
    params = dict(model.named_parameters())
    for grads in grads_seq:
        for name, g in grads.items():
            params[name].grad = g.clone()
        wrapper.step()
        wrapper.zero_grad()
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def run_functrain(model, tx, grads_seq, fused):
    params = {k: v.clone() for k, v in ft.trainable_parameters(model).items()}
    state = tx.init(params)
    for grads in grads_seq:
        params, state = ft.apply_gradients(tx, params, grads, state, fused=fused)
    return params


OPTIMIZERS = {
    "AdamW": (
        dict(type="AdamW", lr=1e-3, weight_decay=0.05),
        lambda o: ft.adamw(lr=o["lr"], weight_decay=o["weight_decay"]),
    ),
    "SGD": (
        dict(type="SGD", lr=0.02, momentum=0.9, weight_decay=1e-4),
        lambda o: ft.sgd(lr=o["lr"], momentum=0.9, weight_decay=o["weight_decay"]),
    ),
    "Adam": (
        dict(type="Adam", lr=3e-4, weight_decay=1e-4),
        lambda o: ft.adam(lr=o["lr"], weight_decay=o["weight_decay"]),
    ),
}


@given(
    cfg=paramwise_cfgs,
    name=st.sampled_from(sorted(OPTIMIZERS)),
    clip=st.sampled_from([None, 0.5, 35.0]),
)
def test_fifty_steps_equal_mmengine_optim_wrapper(cfg, name, clip):
    optimizer, make_tx = OPTIMIZERS[name]
    grads_seq = grads_for(make_model(), 50, seed=1)
    clip_grad = None if clip is None else dict(max_norm=clip, norm_type=2)
    reference = run_mmengine(make_model(), optimizer, cfg, clip_grad, grads_seq)
    model = make_model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mults = ft.paramwise_multipliers(model, cfg, weight_decay=optimizer["weight_decay"])
    members = ([ft.clip(clip)] if clip else []) + [make_tx(optimizer), ft.mask_multipliers(mults)]
    tx = ft.chain(*members)
    initial = {k: v.clone() for k, v in ft.trainable_parameters(model).items()}
    # float32 AdamW's update() path carries torch's decoupled-decay rounding (see parity tests).
    rtol = 2e-5 if name == "AdamW" else 1e-6
    for fused in (True, False):
        ours = run_functrain(make_model(), tx, grads_seq, fused)
        assert_rel(ours, reference, initial, 1e-6 if fused else rtol, f"{name} fused={fused}")


@pytest.mark.parametrize(
    "optimizer",
    [
        dict(type="AdamW", lr=0.0001, weight_decay=0.05, eps=1e-8, betas=(0.9, 0.999)),
        dict(type="Adam", lr=0.0003, weight_decay=0.0001),
        dict(type="SGD", lr=0.02, momentum=0.9, weight_decay=0.0001),
    ],
)
def test_seed_optim_wrapper_configs(optimizer):
    """The seed's three optimizer configs; the first with its paramwise_cfg and clip 0.01,
    the others with the seed's `clip_grad=dict(max_norm=35, norm_type=2)` override."""
    if optimizer["type"] == "AdamW":
        cfg = dict(custom_keys={"backbone": dict(lr_mult=0.1, decay_mult=1.0)}, norm_decay_mult=0.0)
        clip = 0.01
        tx_opt = ft.adamw(lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05)
    else:
        cfg, clip = dict(bypass_duplicate=True), 35.0
        tx_opt = (
            ft.adam(lr=3e-4, weight_decay=1e-4)
            if optimizer["type"] == "Adam"
            else ft.sgd(lr=0.02, momentum=0.9, weight_decay=1e-4)
        )
    cfg = {**cfg, "bypass_duplicate": True}
    grads_seq = grads_for(make_model(), 50, seed=2)
    reference = run_mmengine(
        make_model(), optimizer, cfg, dict(max_norm=clip, norm_type=2), grads_seq
    )
    mults = ft.paramwise_multipliers(make_model(), cfg, weight_decay=optimizer["weight_decay"])
    tx = ft.chain(ft.clip(clip, norm_type=2), tx_opt, ft.mask_multipliers(mults))
    ours = run_functrain(make_model(), tx, grads_seq, fused=None)
    assert_rel(ours, reference, ft.trainable_parameters(make_model()), 1e-6, optimizer["type"])


def test_multipliers_group_by_value_not_by_leaf():
    model = make_model()
    mults = ft.paramwise_multipliers(
        model,
        dict(custom_keys={"backbone": dict(lr_mult=0.1)}, bypass_duplicate=True),
        weight_decay=0.1,
    )
    tx = ft.chain(ft.sgd(lr=0.1, weight_decay=0.1), ft.mask_multipliers(mults))
    params = ft.trainable_parameters(model)
    _, info = ft.flatten(params)
    refined = tx.flat.parts[1].fusion.apply(info)
    assert len(refined.groups) == 2  # one float32 group split by two lr_mult values
    assert sorted(refined.multipliers) == [(0.1, 1.0), (1.0, 1.0)]


def test_lr_mult_with_a_schedule_is_rebased_like_mmengine_param_groups():
    from functrain.schedules import cosine_annealing_lr

    lr = cosine_annealing_lr(0.1, T_max=10, eta_min=0.01)
    tx = ft.chain(ft.scale_by_learning_rate(lr), ft.mask_multipliers({"a": (0.5, 1.0)}))
    params = {"a": torch.zeros(()), "b": torch.zeros(())}
    grads = {"a": torch.ones(()), "b": torch.ones(())}
    state = tx.init(params)
    for step in range(10):
        updates, state = tx.update(grads, state, params)
        # mmengine steps each group from its own initial lr with the same absolute eta_min.
        assert updates["a"].item() == pytest.approx(-lr.with_base(0.05)(step), rel=1e-6)
        assert updates["b"].item() == pytest.approx(-lr(step), rel=1e-6)


def test_errors_name_the_key():
    model = make_model()
    with pytest.raises(ValueError, match="did you mean 'norm_decay_mult'"):
        ft.paramwise_multipliers(
            model, dict(norm_decay_mul=0.0, bypass_duplicate=True), weight_decay=0.1
        )
    with pytest.raises(ValueError, match="shared with 'head.weight'"):
        ft.paramwise_multipliers(model, {}, weight_decay=0.1)
    with pytest.warns(UserWarning, match="'nothing' matches no parameter"):
        ft.paramwise_multipliers(
            model, dict(custom_keys={"nothing": dict(lr_mult=2.0)}, bypass_duplicate=True)
        )
    with pytest.raises(ValueError, match="matches no parameter"):
        ft.paramwise_multipliers(
            model,
            dict(custom_keys={"nothing": dict(lr_mult=2.0)}, bypass_duplicate=True),
            strict=True,
        )
    with pytest.raises(ValueError, match="custom_keys.head.momentum"):
        ft.paramwise_multipliers(
            model, dict(custom_keys={"head": dict(momentum=0.5)}, bypass_duplicate=True)
        )
    params = {"w": torch.ones(2)}
    tx = ft.chain(ft.sgd(), ft.mask_multipliers({"v": (2.0, 1.0)}))
    with pytest.raises(ValueError, match="'v' is not a leaf"):
        tx.init(params)


def test_frozen_parameters_get_no_state():
    model = make_model()
    params = ft.trainable_parameters(model)
    assert "backbone.0.weight" not in params
    state = ft.adamw().init(params)
    assert "backbone.0.weight" not in state[0][0].paths
    assert optree.tree_structure(params).num_leaves == len(state[0][0].mu)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("fused", [False, None])
def test_with_multipliers_is_the_member_spelling(name, fused):
    """with_multipliers(tx, m) and chain(tx, mask_multipliers(m)) run the same kernels on the
    same groups in the same order (fused=None takes the fused path where it exists), so the
    parameters are bitwise equal, and so are the states (same layout)."""
    model = make_model()
    optimizer, make = OPTIMIZERS[name]
    mults = ft.paramwise_multipliers(
        model,
        dict(custom_keys={"backbone": dict(lr_mult=0.1, decay_mult=0.5)}, bypass_duplicate=True),
        weight_decay=optimizer["weight_decay"],
    )
    inner = ft.chain(ft.clip(1.0), make(optimizer))
    wrapped = ft.with_multipliers(inner, mults)
    member = ft.chain(inner, ft.mask_multipliers(mults))
    grads_seq = grads_for(model, 5, seed=3)
    a, b = (
        run_functrain(model, wrapped, grads_seq, fused),
        run_functrain(model, member, grads_seq, fused),
    )
    assert all(torch.equal(a[k], b[k]) for k in a)
    plain = run_functrain(model, inner, grads_seq, fused)
    assert not all(torch.equal(a[k], plain[k]) for k in a)  # the multipliers took effect
    state = wrapped.init(ft.trainable_parameters(model))
    assert optree.tree_structure(state, namespace="functrain") == optree.tree_structure(
        member.init(ft.trainable_parameters(model)), namespace="functrain"
    )
    assert repr(wrapped.flat.name).startswith("'with_multipliers(chain(clip(")


def test_with_multipliers_refuses_a_transform_that_has_multipliers():
    tx = ft.chain(ft.sgd(lr=0.1), ft.mask_multipliers({"w": (2.0, 1.0)}))
    with pytest.raises(ValueError, match="already holds multipliers"):
        ft.with_multipliers(tx, {"w": (2.0, 1.0)})
    with pytest.raises(ValueError, match="multipliers for 'w': lr_mult must be a number >= 0"):
        ft.with_multipliers(ft.sgd(lr=0.1), {"w": (-1.0, 1.0)})
