"""``from_torch_optimizer``: a user's ``torch.optim.Optimizer`` subclass as a transform.

Every run is compared with the same optimizer stepped imperatively (``p.grad = g;
opt.step()``) on the mixed-shape tree of tests/conftest.py: through
:func:`functrain.apply_gradients` (the optimizer writes the parameters itself) bitwise; through
``update`` + ``apply_updates`` bitwise where ``params + (new - params)`` can be exact (a tree
kept away from zero) and within 1e-6 of the leaf's scale on the raw tree, where a parameter
crossing zero can land an ulp of its update away (see the module docstring).
"""

from __future__ import annotations

import io
import math
import warnings

import optree
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.optim import Optimizer

import functrain as ft
from functrain.checkpoint import decode, encode, restore_state, state_to_dict
from functrain.transforms.torch_optimizer import (
    HostNumber,
    TorchOptimizerState,
    from_torch_optimizer,
    torch_optimizer_factory,
)
from tests.conftest import make_tree
from tests.test_parity_torch import assert_rel

STEPS = 50


class MyOptimizer(Optimizer):
    """The seed's ``MyOptimizer(params, a, b, c)``: step size ``a``, momentum ``b``, L2 decay
    ``c``; a bias-corrected momentum buffer and a Python-int step counter in its state. It adds
    the decay into ``p.grad`` in place, as old-style optimizers do."""

    def __init__(self, params, a, b, c):
        if a < 0:
            raise ValueError(f"Invalid a: {a}")
        super().__init__(params, dict(a=a, b=b, c=c))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            a, b, c = group["a"], group["b"], group["c"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["buf"] = torch.zeros_like(p)
                assert type(state["step"]) is int  # the adapter hands back Python ints
                state["step"] += 1
                g = p.grad.add_(p, alpha=c)
                state["buf"].mul_(b).add_(g, alpha=1 - b)
                p.add_(state["buf"], alpha=-a / (1 - b ** state["step"]))


class DecayingSGD(Optimizer):
    """Plain SGD that multiplies its own ``lr`` by ``gamma`` after every step."""

    def __init__(self, params, lr, gamma=0.9):
        super().__init__(params, dict(lr=lr, gamma=gamma))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                p.add_(p.grad, alpha=-group["lr"])
            group["lr"] *= group["gamma"]


CASES = {
    "MyOptimizer": (MyOptimizer, dict(a=0.05, b=0.9, c=1e-2)),
    "SGD-nesterov": (
        torch.optim.SGD,
        dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2),
    ),
    "SGD-dampening-maximize": (
        torch.optim.SGD,
        dict(lr=0.03, momentum=0.5, dampening=0.3, maximize=True),
    ),
    "Adam-amsgrad": (torch.optim.Adam, dict(lr=0.05, amsgrad=True, weight_decay=1e-2)),
    "AdamW": (torch.optim.AdamW, dict(lr=0.02, betas=(0.8, 0.99), weight_decay=0.1)),
    "Adagrad": (torch.optim.Adagrad, dict(lr=0.1, lr_decay=0.01)),  # state built eagerly
    "RMSprop": (torch.optim.RMSprop, dict(lr=0.01, momentum=0.5, centered=True)),
}


def assert_bitwise(a, b, what):
    """Leafwise ``torch.equal``, through functrain's state records too."""
    paths, leaves_a, spec_a = optree.tree_flatten_with_path(a, namespace="functrain")
    leaves_b, spec_b = optree.tree_flatten(b, namespace="functrain")
    assert spec_a == spec_b, f"{what}: structures differ"
    for path, x, y in zip(paths, leaves_a, leaves_b, strict=True):
        assert x.dtype == y.dtype and torch.equal(x, y), f"{what}: {path} not bitwise equal"


def tree_and_grads(seed=0, offset=0.0, steps=STEPS):
    gen = torch.Generator().manual_seed(seed)
    params = optree.tree_map(lambda t: t + offset, make_tree(generator=gen))
    return params, [make_tree(generator=gen) for _ in range(steps)]


def imperative(make_opt, params, grads_seq, *, clip=None, before_step=None):
    """The reference: ``opt.step()`` on leaf tensors, as a torch training loop runs it."""
    leaves = [torch.nn.Parameter(t.clone()) for t in optree.tree_leaves(params)]
    opt = make_opt(leaves)
    for t, grads in enumerate(grads_seq):
        for p, g in zip(leaves, optree.tree_leaves(grads), strict=True):
            p.grad = g.clone()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(leaves, clip, foreach=True)
        if before_step is not None:
            before_step(opt, t)
        opt.step()
    result = optree.tree_unflatten(optree.tree_structure(params), [p.detach() for p in leaves])
    return result, opt, leaves


def functrain_run(tx, params, grads_seq, path, state=None):
    """Final params and state along one path: ``update`` + ``apply_updates`` (pure or
    donating) or ``apply_gradients`` (pure or donating)."""
    params = optree.tree_map(torch.clone, params)
    state = tx.init(params) if state is None else state
    for grads in grads_seq:
        grads = optree.tree_map(torch.clone, grads)
        if path == "update":
            updates, state = tx.update(grads, state, params)
            params = ft.apply_updates(params, updates)
        elif path == "update-donate":
            params, state = ft.apply_gradients(tx, params, grads, state, donate=True, fused=False)
        elif path == "apply":
            params, state = ft.apply_gradients(tx, params, grads, state, fused=True)
        else:
            params, state = ft.apply_gradients(tx, params, grads, state, donate=True, fused=True)
    return params, state


def assert_state_equal(ours: TorchOptimizerState, opt: Optimizer, leaves):
    """Our per-leaf state holds exactly what ``opt.state`` holds for each parameter."""
    assert len(ours.param_state) == len(leaves)
    for entries, p in zip(ours.param_state, leaves, strict=True):
        theirs = opt.state[p]
        assert set(entries or {}) == set(theirs)
        for key, value in theirs.items():
            mine = entries[key]
            if isinstance(value, torch.Tensor):
                assert torch.equal(mine, value), key
                assert mine.dtype == value.dtype
            else:
                assert isinstance(mine, HostNumber) and mine.item() == value
                assert type(mine.item()) is type(value)


@pytest.mark.parametrize("case", sorted(CASES))
def test_fifty_steps_equal_the_imperative_optimizer(case):
    cls, kw = CASES[case]
    tx = from_torch_optimizer(cls, **kw)
    params, grads_seq = tree_and_grads()
    reference, opt, leaves = imperative(lambda ps: cls(ps, **kw), params, grads_seq)
    for path in ("apply", "apply-donate"):
        ours, state = functrain_run(tx, params, grads_seq, path)
        assert_bitwise(ours, reference, f"{case} {path}")
        assert_state_equal(state, opt, leaves)
        assert int(state.count) == STEPS
    for path in ("update", "update-donate"):
        ours, _ = functrain_run(tx, params, grads_seq, path)
        assert_rel(ours, reference, params, 1e-6, f"{case} {path}")
    # Away from zero, params + (new - params) is exact: the update path is bitwise too.
    params, grads_seq = tree_and_grads(offset=10.0)
    reference, opt, leaves = imperative(lambda ps: cls(ps, **kw), params, grads_seq)
    pure, state = functrain_run(tx, params, grads_seq, "update")
    donated, donated_state = functrain_run(tx, params, grads_seq, "update-donate")
    assert_bitwise(pure, reference, f"{case} update, offset tree")
    assert_bitwise(donated, reference, f"{case} update-donate, offset tree")
    assert_state_equal(state, opt, leaves)
    assert_state_equal(donated_state, opt, leaves)


@settings(max_examples=10)
@given(
    momentum=st.sampled_from([0.0, 0.9]),
    dampening=st.sampled_from([0.0, 0.3]),
    nesterov=st.booleans(),
    weight_decay=st.sampled_from([0.0, 1e-2]),
    maximize=st.booleans(),
)
def test_sgd_option_combinations(momentum, dampening, nesterov, weight_decay, maximize):
    if nesterov and (momentum == 0 or dampening != 0):
        with pytest.raises(ValueError, match="SGD: Nesterov momentum requires"):
            from_torch_optimizer(
                torch.optim.SGD, lr=0.1, momentum=momentum, dampening=dampening, nesterov=True
            )
        return
    kw = dict(
        lr=0.05,
        momentum=momentum,
        dampening=dampening,
        nesterov=nesterov,
        weight_decay=weight_decay,
        maximize=maximize,
    )
    params, grads_seq = tree_and_grads(seed=1, steps=20)
    reference, _, _ = imperative(lambda ps: torch.optim.SGD(ps, **kw), params, grads_seq)
    ours, _ = functrain_run(from_torch_optimizer(torch.optim.SGD, **kw), params, grads_seq, "apply")
    assert_bitwise(ours, reference, f"SGD {kw}")


@settings(max_examples=10)
@given(
    amsgrad=st.booleans(),
    maximize=st.booleans(),
    weight_decay=st.sampled_from([0.0, 1e-2]),
    betas=st.sampled_from([(0.9, 0.999), (0.5, 0.9)]),
    decoupled=st.booleans(),
)
def test_adam_option_combinations(amsgrad, maximize, weight_decay, betas, decoupled):
    cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    kw = dict(lr=0.02, betas=betas, weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize)
    params, grads_seq = tree_and_grads(seed=2, offset=10.0, steps=20)
    reference, _, _ = imperative(lambda ps: cls(ps, **kw), params, grads_seq)
    tx = from_torch_optimizer(cls, **kw)
    for path in ("update", "apply-donate"):
        ours, _ = functrain_run(tx, params, grads_seq, path)
        assert_bitwise(ours, reference, f"{cls.__name__} {kw} {path}")


def test_update_does_not_mutate_its_inputs():
    # MyOptimizer writes into p.grad and its buffers in place; the adapter gives it copies.
    tx = from_torch_optimizer(MyOptimizer, a=0.1, b=0.9, c=0.1)
    params, grads_seq = tree_and_grads(steps=3)
    state = tx.init(params)
    for grads in grads_seq:
        snapshot = optree.tree_map(torch.clone, (grads, state, params), namespace="functrain")
        versions = [
            t._version for t in optree.tree_leaves((grads, state, params), namespace="functrain")
        ]
        updates, new_state = tx.update(grads, state, params)
        assert_bitwise((grads, state, params), snapshot, "inputs after update")
        after = [
            t._version for t in optree.tree_leaves((grads, state, params), namespace="functrain")
        ]
        assert after == versions
        params, state = ft.apply_updates(params, updates), new_state
    assert int(state.count) == 3
    # Donating to apply_gradients, the optimizer steps in place on the parameters.
    before = params["mat"].clone()
    new_params, _ = ft.apply_gradients(tx, params, grads_seq[0], state, donate=True)
    assert new_params["mat"] is params["mat"] and not torch.equal(params["mat"], before)


def test_state_round_trips_checkpoints_and_optree_mid_run():
    tx = from_torch_optimizer(MyOptimizer, a=0.05, b=0.9, c=1e-2)
    params, grads_seq = tree_and_grads(steps=30)
    straight, straight_state = functrain_run(tx, params, grads_seq, "apply")

    half, state = functrain_run(tx, params, grads_seq[:12], "apply")
    # weights_only: the encoded state holds only dicts, tuples, numbers and tensors.
    buffer = io.BytesIO()
    torch.save(encode((half, state)), buffer)
    buffer.seek(0)
    loaded_params, loaded_state = decode(torch.load(buffer, weights_only=True))
    assert isinstance(loaded_state, TorchOptimizerState)
    assert_bitwise(loaded_state, state, "decoded state")
    assert type(loaded_state.param_state[0]["step"].item()) is int
    # optree sees every tensor of the record, and rebuilds it.
    leaves, spec = optree.tree_flatten(state, namespace="functrain")
    assert all(isinstance(t, torch.Tensor) for t in leaves)
    rebuilt = optree.tree_unflatten(spec, [t.clone() for t in leaves])
    for resumed_state in (loaded_state, rebuilt):
        resumed, final = functrain_run(tx, loaded_params, grads_seq[12:], "apply", resumed_state)
        assert_bitwise(resumed, straight, "resumed params")
        assert_bitwise(final, straight_state, "resumed state")


def test_checkpoint_restores_into_a_fresh_template_before_the_state_exists():
    # The Runner checks a file against tx.init(params), whose per-leaf entries are still None.
    tx = from_torch_optimizer(torch.optim.Adam, lr=0.01, amsgrad=True)
    params, grads_seq = tree_and_grads(steps=10)
    params = {
        path.replace(".", "_"): t
        for path, t in zip(ft.flatten(params)[1].paths, optree.tree_leaves(params), strict=True)
    }
    grads_seq = [dict(zip(params, optree.tree_leaves(g), strict=True)) for g in grads_seq]
    trained, state = functrain_run(tx, params, grads_seq[:4], "update")
    saved = {"state": state_to_dict(ft.TrainState(params=trained, buffers={}, opt_state=state))}
    template = ft.TrainState(params=params, buffers={}, opt_state=tx.init(params))
    assert all(entry is None for entry in template.opt_state.param_state)
    restored = restore_state(saved, template)
    resumed, _ = functrain_run(tx, restored.params, grads_seq[4:], "update", restored.opt_state)
    straight, _ = functrain_run(tx, params, grads_seq, "update")
    assert_bitwise(resumed, straight, "restored run")


@pytest.mark.parametrize("path", ["update", "apply", "apply-donate"])
def test_chain_with_clip_equals_clip_grad_norm_then_step(path):
    cls, kw = torch.optim.SGD, dict(lr=0.05, momentum=0.9, weight_decay=1e-2)
    tx = ft.chain(ft.clip(1.0), from_torch_optimizer(cls, **kw))
    params, grads_seq = tree_and_grads(offset=10.0, steps=30)
    reference, _, _ = imperative(lambda ps: cls(ps, **kw), params, grads_seq, clip=1.0)
    ours, state = functrain_run(tx, params, grads_seq, path)
    if path == "update":
        assert_bitwise(ours, reference, "clip + SGD")
    else:
        # apply_gradients folds the clip into the step as a division by 1/coefficient,
        # as it does for torch's fused kernels: an ulp in the clipped gradient at most.
        assert_rel(ours, reference, params, 1e-6, f"clip + SGD {path}")
    assert float(state[0].norm) > 1.0  # the clip engaged


def test_scheduled_hyperparameters_equal_setting_param_groups_by_hand():
    lr = ft.schedules.cosine_annealing_lr(T_max=20, eta_min=1e-3, base=0.1)
    beta1 = lambda step: 0.9 - 0.02 * step  # noqa: E731  (a plain callable works too)
    kw = dict(amsgrad=True)
    tx = from_torch_optimizer(torch.optim.Adam, lr=lr, betas=(beta1, 0.99), **kw)
    params, grads_seq = tree_and_grads(offset=10.0, steps=20)

    def set_by_hand(opt, t):
        opt.param_groups[0]["lr"] = float(lr(t))
        opt.param_groups[0]["betas"] = (float(beta1(t)), 0.99)

    reference, _, _ = imperative(
        lambda ps: torch.optim.Adam(ps, lr=0.5, **kw), params, grads_seq, before_step=set_by_hand
    )
    for path in ("update", "apply-donate"):
        ours, state = functrain_run(tx, params, grads_seq, path)
        assert_bitwise(ours, reference, f"scheduled Adam {path}")
    # The state records the values in force at the last step, where loggers find them.
    assert float(state.lr) == float(lr(19))
    assert float(state.hyperparams["betas"][0]) == float(beta1(19))
    assert torch.equal(ft.values_in_force(state)["lr"], state.lr)


def test_a_custom_hyperparameter_can_be_scheduled():
    a = lambda step: 0.1 / (1 + step)  # noqa: E731
    tx = from_torch_optimizer(MyOptimizer, a=a, b=0.9, c=0.0)
    params, grads_seq = tree_and_grads(steps=10)

    def set_a(opt, t):
        opt.param_groups[0]["a"] = float(a(t))

    reference, _, _ = imperative(
        lambda ps: MyOptimizer(ps, a=1.0, b=0.9, c=0.0), params, grads_seq, before_step=set_a
    )
    ours, state = functrain_run(tx, params, grads_seq, "apply")
    assert_bitwise(ours, reference, "scheduled a")
    assert state.lr is None and float(state.hyperparams["a"]) == float(a(9))


def test_an_optimizer_that_changes_its_own_lr_keeps_doing_so():
    params, grads_seq = tree_and_grads(steps=10)
    reference, opt, _ = imperative(lambda ps: DecayingSGD(ps, lr=0.1), params, grads_seq)
    ours, state = functrain_run(
        from_torch_optimizer(DecayingSGD, lr=0.1), params, grads_seq, "apply"
    )
    assert_bitwise(ours, reference, "DecayingSGD")
    assert float(state.lr) == opt.param_groups[0]["lr"]


MULTIPLIERS = {"mat": (0.1, 0.0), "vec": (2.0, 0.5), "nested.b.0": (2.0, 0.5), "conv": (1.0, 3.0)}


def grouped_like_mmengine(leaves, paths, lr, weight_decay):
    """torch param groups as mmengine's constructor builds them: one per parameter, with
    ``lr * lr_mult`` and ``weight_decay * decay_mult``."""
    groups = []
    for path, p in zip(paths, leaves, strict=True):
        lm, dm = MULTIPLIERS.get(path, (1.0, 1.0))
        groups.append({"params": [p], "lr": lr * lm, "weight_decay": weight_decay * dm})
    return groups


@pytest.mark.parametrize("scheduled", [False, True])
def test_multipliers_give_each_group_its_lr_and_weight_decay(scheduled):
    params, grads_seq = tree_and_grads(offset=10.0, steps=20)
    paths = ft.flatten(params)[1].paths
    schedule = ft.schedules.cosine_annealing_lr(T_max=20, eta_min=0.0, base=0.05)
    kw = dict(momentum=0.9, weight_decay=1e-2)
    tx = ft.chain(
        from_torch_optimizer(torch.optim.SGD, lr=schedule if scheduled else 0.05, **kw),
        ft.mask_multipliers(MULTIPLIERS),
    )

    def set_lrs(opt, t):  # what mmengine's scheduler does to each group
        if scheduled:
            for path, group in zip(paths, opt.param_groups, strict=True):
                lm = MULTIPLIERS.get(path, (1.0, 1.0))[0]
                group["lr"] = float(schedule.with_base(0.05 * lm)(t))

    reference, _, _ = imperative(
        lambda ps: torch.optim.SGD(grouped_like_mmengine(ps, paths, 0.05, 1e-2), lr=0.05, **kw),
        params,
        grads_seq,
        before_step=set_lrs,
    )
    for path in ("update", "apply-donate"):
        ours, state = functrain_run(tx, params, grads_seq, path)
        assert_bitwise(ours, reference, f"multipliers {path}")
    # Recorded as the base value, like scale_by_learning_rate.
    assert float(state[0].lr) == (float(schedule(19)) if scheduled else 0.05)


def test_multipliers_need_the_hyperparameter_they_scale():
    params, grads_seq = tree_and_grads(steps=1)
    tx = ft.chain(
        from_torch_optimizer(MyOptimizer, a=0.1, b=0.9, c=0.0), ft.mask_multipliers(MULTIPLIERS)
    )
    with pytest.raises(ValueError, match=r"'mat' has a lr_mult .* no numeric 'lr'"):
        tx.init(params)
    tx = ft.chain(from_torch_optimizer(DecayingSGD, lr=0.1), ft.mask_multipliers({"conv": (1, 3)}))
    with pytest.raises(ValueError, match=r"'conv' has a decay_mult .* no numeric 'weight_decay'"):
        tx.init(params)
    tx = ft.chain(
        from_torch_optimizer(DecayingSGD, lr=0.1), ft.mask_multipliers({"vec": (2.0, 1.0)})
    )
    state = tx.init(params)
    with pytest.raises(RuntimeError, match=r"changed param_groups\[\d\]\['lr'\]"):
        tx.update(grads_seq[0], state, params)


def test_seed_config_through_mmengine_optim_wrapper():
    """The seed's ``optimizer=dict(type='MyOptimizer', a=..., b=..., c=...)`` with its
    ``clip_grad=dict(max_norm=35, norm_type=2)``, built and stepped by mmengine, against the
    adapter chained after functrain's clip."""
    from mmengine.registry import OPTIMIZERS

    from tests.test_multipliers import grads_for, make_model, run_mmengine

    OPTIMIZERS.register_module(module=MyOptimizer, force=True)
    optimizer = dict(type="MyOptimizer", a=0.02, b=0.9, c=1e-4)
    grads_seq = [
        {k: g * 30 for k, g in grads.items()} for grads in grads_for(make_model(), 30, seed=3)
    ]
    clip_grad = dict(max_norm=35, norm_type=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = run_mmengine(make_model(), optimizer, None, clip_grad, grads_seq)
    make = torch_optimizer_factory(MyOptimizer)
    tx = ft.chain(ft.clip(35.0), make(a=0.02, b=0.9, c=1e-4))
    params = {k: v.clone() for k, v in ft.trainable_parameters(make_model()).items()}
    state = tx.init(params)
    for grads in grads_seq:
        updates, state = tx.update(grads, state, params)
        params = ft.apply_updates(params, updates)
    assert_rel(params, reference, reference, 1e-6, "seed MyOptimizer vs mmengine")
    assert float(state[0].norm) > 35.0  # the clip engaged


def test_train_step_equals_a_torch_training_loop():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    reference_model = torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)
    )
    reference_model.load_state_dict(model.state_dict())
    batches = [(torch.randn(16, 4), torch.randn(16, 2)) for _ in range(15)]

    def loss_fn(forward, batch):
        x, y = batch
        return torch.nn.functional.mse_loss(forward(x), y)

    tx = from_torch_optimizer(MyOptimizer, a=0.05, b=0.9, c=1e-3)
    state = ft.TrainState.create(model, tx)
    step = ft.make_train_step(model, loss_fn, tx, grad="autograd")
    opt = MyOptimizer(reference_model.parameters(), a=0.05, b=0.9, c=1e-3)
    for batch in batches:
        state, _ = step(state, batch)
        opt.zero_grad()
        loss_fn(reference_model, batch).backward()
        opt.step()
    assert_bitwise(state.params, dict(reference_model.named_parameters()), "train step")


def test_factory_has_the_optimizers_keyword_signature():
    import inspect

    make = torch_optimizer_factory(torch.optim.SGD)
    sig = inspect.signature(make).parameters
    assert "params" not in sig and sig["lr"].default == 1e-3 and sig["momentum"].default == 0
    assert all(p.kind is p.KEYWORD_ONLY for p in sig.values())
    assert list(inspect.signature(torch_optimizer_factory(MyOptimizer)).parameters) == [
        "a",
        "b",
        "c",
    ]
    assert make.__name__ == "SGD" and make.optimizer_cls is torch.optim.SGD


class KeepsAString(Optimizer):
    def __init__(self, params, lr=0.1, scale=1.0):
        self.scale = scale  # not in param_groups: cannot be scheduled
        super().__init__(params, dict(lr=lr))

    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p]["kind"] = "sgd"
                p.add_(p.grad, alpha=-group["lr"])


class AddsAGroupEntry(KeepsAString):
    def step(self, closure=None):
        self.param_groups[0]["step"] = 1


def test_errors_name_the_class_and_the_argument():
    params, grads_seq = tree_and_grads(steps=1)
    with pytest.raises(TypeError, match=r"Optimizer subclass .* got 'sgd'"):
        from_torch_optimizer(ft.sgd, lr=0.1)
    with pytest.raises(TypeError, match=r"instance of SGD; pass the class"):
        from_torch_optimizer(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1))
    with pytest.raises(TypeError, match="GradientTransformation: functrain's own"):
        from_torch_optimizer(ft.sgd(lr=0.1))
    with pytest.raises(
        TypeError,
        match=r"SGD: unknown argument 'momentun'; did you mean 'momentum'\? .*accepts: lr, momentum",
    ):
        from_torch_optimizer(torch.optim.SGD, lr=0.1, momentun=0.9)
    with pytest.raises(
        TypeError, match=r"MyOptimizer: .*missing 1 required .*'c'.* accepts: a, b, c"
    ):
        from_torch_optimizer(MyOptimizer, a=0.1, b=0.9)
    with pytest.raises(TypeError, match="do not pass 'params'"):
        from_torch_optimizer(torch.optim.SGD, params=[], lr=0.1)
    with pytest.raises(ValueError, match="SGD: Invalid learning rate: -1"):
        from_torch_optimizer(torch.optim.SGD, lr=-1)
    with pytest.raises(ValueError, match=r"MyOptimizer: Invalid a: -0.5"):
        from_torch_optimizer(MyOptimizer, a=-0.5, b=0.9, c=0.0)
    with pytest.raises(ValueError, match="LBFGS.step needs a closure.*functrain.lbfgs"):
        from_torch_optimizer(torch.optim.LBFGS, lr=1.0)
    with pytest.raises(ValueError, match=r"'scale' is a schedule but KeepsAString keeps no"):
        from_torch_optimizer(KeepsAString, scale=lambda step: 1.0)
    tx = from_torch_optimizer(torch.optim.SGD, lr=0.1)
    state = tx.init(params)
    with pytest.raises(ValueError, match=r"from_torch_optimizer\(SGD\) needs the parameters"):
        tx.update(grads_seq[0], state)
    with pytest.raises(ValueError, match=r"does not match the optimizer state: .*'conv'"):
        tx.update({"vec": torch.ones(7)}, state, {"vec": torch.ones(7)})
    tx = from_torch_optimizer(KeepsAString)
    with pytest.raises(TypeError, match=r"state\['conv'\]\['kind'\] is a str"):
        tx.update(grads_seq[0], tx.init(params), params)
    tx = from_torch_optimizer(AddsAGroupEntry)
    with pytest.raises(
        RuntimeError, match=r"added or removed param_groups\[0\] entries \['step'\]"
    ):
        tx.update(grads_seq[0], tx.init(params), params)


def test_host_number_keeps_python_types_exactly():
    for value in (True, 7, 2**62 + 1, 0.1, -math.pi):
        number = HostNumber.of(value)
        assert number.item() == value and type(number.item()) is type(value)


CUDA_CASES = {
    "MyOptimizer": (MyOptimizer, dict(a=0.05, b=0.9, c=1e-2)),
    "SGD-foreach": (torch.optim.SGD, dict(lr=0.05, momentum=0.9, weight_decay=1e-2)),
    "Adam-fused": (torch.optim.Adam, dict(lr=0.05, amsgrad=True, fused=True)),
    "AdamW-capturable": (torch.optim.AdamW, dict(lr=0.02, capturable=True)),
}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("case", sorted(CUDA_CASES))
def test_cuda_parameters_equal_the_imperative_optimizer(case):
    cls, kw = CUDA_CASES[case]
    tx = from_torch_optimizer(cls, **kw)
    for offset, paths in ((0.0, ("apply", "apply-donate")), (10.0, ("update", "update-donate"))):
        params, grads_seq = optree.tree_map(
            lambda t: t.cuda(), tree_and_grads(offset=offset, steps=20)
        )
        reference, opt, leaves = imperative(lambda ps: cls(ps, **kw), params, grads_seq)
        for path in paths:
            ours, state = functrain_run(tx, params, grads_seq, path)
            assert_bitwise(ours, reference, f"{case} {path} on CUDA")
            assert_state_equal(state, opt, leaves)
            assert all(t.is_cuda for t in optree.tree_leaves(ours))
    # A checkpoint restored onto the GPU template (lazily created entries land on the
    # parameters' device) continues exactly.
    params, grads_seq = optree.tree_map(lambda t: t.cuda(), tree_and_grads(offset=10.0, steps=8))
    flat = dict(zip(ft.flatten(params)[1].paths, optree.tree_leaves(params), strict=True))
    flat = {k.replace(".", "_"): v for k, v in flat.items()}
    grads_seq = [dict(zip(flat, optree.tree_leaves(g), strict=True)) for g in grads_seq]
    straight, _ = functrain_run(tx, flat, grads_seq, "apply")
    half, state = functrain_run(tx, flat, grads_seq[:3], "apply")
    buffer = io.BytesIO()
    torch.save(
        {"state": state_to_dict(ft.TrainState(params=half, buffers={}, opt_state=state))}, buffer
    )
    buffer.seek(0)
    template = ft.TrainState(params=flat, buffers={}, opt_state=tx.init(flat))
    restored = restore_state(torch.load(buffer, weights_only=True), template)
    resumed, _ = functrain_run(tx, restored.params, grads_seq[3:], "apply", restored.opt_state)
    assert_bitwise(resumed, straight, f"{case} resumed on CUDA")


def test_new_minus_params_is_the_best_update_there_is():
    """Where ``p + (x - p)`` misses ``x`` (steps across zero), no nearby update hits it."""
    gen = torch.Generator().manual_seed(0)
    old = torch.randn(200_000, generator=gen)
    new = (old.double() + torch.randn(200_000, generator=gen, dtype=torch.float64) * 0.3).float()
    delta = new - old
    missed = (old + delta) != new
    assert 0 < int(missed.sum()) < 0.2 * len(old)
    o, x, d = old[missed], new[missed], delta[missed]
    sterbenz = ((o > 0) == (x > 0)) & (x.abs() >= o.abs() / 2) & (x.abs() <= 2 * o.abs())
    assert not bool(sterbenz.any())  # within a factor of two, the difference is exact
    for direction in (math.inf, -math.inf):
        u = d.clone()
        for _ in range(4):
            u = torch.nextafter(u, torch.full_like(u, direction))
            assert not bool(((o + u) == x).any())
            # ... and none lands closer than the difference itself.
            assert bool(((o + u - x).abs() >= (o + d - x).abs()).all())


def test_the_learning_rate_is_read_from_the_state():
    # A constant lr lives in the state, so replacing it there (set_hyperparam's way) takes
    # effect at the next step, as writing param_groups[0]["lr"] does imperatively.
    import attrs

    params, grads_seq = tree_and_grads(offset=10.0, steps=6)

    def halve_at_three(opt, t):
        if t == 3:
            opt.param_groups[0]["lr"] = 0.025

    kw = dict(momentum=0.9)
    reference, _, _ = imperative(
        lambda ps: torch.optim.SGD(ps, lr=0.05, **kw), params, grads_seq, before_step=halve_at_three
    )
    tx = from_torch_optimizer(torch.optim.SGD, lr=0.05, **kw)
    p, state = functrain_run(tx, params, grads_seq[:3], "update")
    state = attrs.evolve(state, lr=torch.tensor(0.025, dtype=torch.float64))
    ours, state = functrain_run(tx, p, grads_seq[3:], "update", state)
    assert_bitwise(ours, reference, "lr replaced in the state")
    assert float(ft.values_in_force(state)["lr"]) == 0.025


def test_mixed_dtypes_in_one_param_group():
    gen = torch.Generator().manual_seed(4)
    params = {"f64": torch.randn(5, dtype=torch.float64, generator=gen), "f32": torch.randn(3, 2)}
    grads_seq = [optree.tree_map(torch.randn_like, params) for _ in range(10)]
    kw = dict(lr=0.05, momentum=0.9, weight_decay=1e-2)
    reference, _, _ = imperative(lambda ps: torch.optim.SGD(ps, **kw), params, grads_seq)
    tx = from_torch_optimizer(torch.optim.SGD, **kw)
    for path in ("apply", "apply-donate"):
        ours, _ = functrain_run(tx, params, grads_seq, path)
        assert_bitwise(ours, reference, f"mixed dtypes {path}")
    ours, _ = functrain_run(tx, params, grads_seq, "update")
    assert_rel(ours, reference, params, 1e-6, "mixed dtypes update")
