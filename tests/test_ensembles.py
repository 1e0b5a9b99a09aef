"""Training N ensemble members in one process (functrain.ensembles).

Member i of a stacked ensemble must follow the same trajectory as an independent
``make_train_step`` run from member i's seed with member i's hyperparameters. The vmapped
forward/backward runs other matmul kernels than the unbatched one (a batched matmul, or one
matmul over the concatenated weights when the batch is shared), so the gradients differ in
the last bits. The parity tests therefore run in float64, where such a difference is
``delta <= 1e-15`` (gradients of size <= 1 through a few ops), and Adam turns it into at most
``lr * delta / eps`` per step (a near-zero gradient divided by ``sqrt(v) + eps``). Over
``STEPS`` steps at the largest lr that is ``TOL`` below, about 2e-8; any real mistake (a wrong
member's slice, shared BatchNorm statistics, a shared clip norm, another member's lr) moves
a value by a sizeable fraction of ``lr`` (1e-3 or more) in one step.
"""

from __future__ import annotations

import re
from pathlib import Path

import optree
import pytest
import torch
from torch import Tensor, nn

import functrain as ft

SEEDS = (3, 1, 4)
LRS = (1e-3, 1e-2, 3e-2)
STEPS = 6
TOL = STEPS * max(LRS) * 1e-15 / 1e-8  # see the module docstring; Adam's eps is 1e-8
README = Path(__file__).resolve().parents[1] / "README.md"


def make_model() -> nn.Module:
    # BatchNorm after the ReLU: every parameter has a real gradient (a bias right before a
    # BatchNorm has a zero one, which Adam would turn into rounding noise of size lr).
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.BatchNorm1d(16), nn.Linear(16, 4)).double()


def loss_fn(forward, batch):
    x, y = batch
    logits = forward(x)
    return nn.functional.cross_entropy(logits, y), {"acc": (logits.argmax(-1) == y).double().mean()}


def member_tx(lr: float) -> ft.GradientTransformation:
    return ft.chain(ft.clip(0.5), ft.adamw(lr=lr, weight_decay=0.1))


def ensemble_tx(n: int = len(SEEDS)) -> ft.GradientTransformation:
    return ft.ensemble(ft.chain(ft.clip(0.5), ft.adamw(lr=list(LRS[:n]), weight_decay=0.1)), n)


def batches(steps: int, per_member: bool, n: int = len(SEEDS)) -> list[tuple[Tensor, Tensor]]:
    gen = torch.Generator().manual_seed(7)
    lead = (n,) if per_member else ()
    return [
        (
            torch.randn(*lead, 16, 8, generator=gen, dtype=torch.float64),
            torch.randint(0, 4, (*lead, 16), generator=gen),
        )
        for _ in range(steps)
    ]


def assert_close(actual: Tensor, expected: Tensor, what: str) -> None:
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, what
    if not actual.is_floating_point():
        assert torch.equal(actual, expected), what
        return
    scale = max(float(expected.abs().max()), 1.0) if expected.numel() else 1.0
    err = float((actual - expected).abs().max()) if expected.numel() else 0.0
    assert err <= TOL * scale, f"{what}: max error {err:.3g} > {TOL:g} * {scale:.3g}"


def assert_trees_close(actual, expected, what: str) -> None:
    a, spec_a = optree.tree_flatten(actual, namespace="functrain")
    e, spec_e = optree.tree_flatten(expected, namespace="functrain")
    assert spec_a == spec_e, f"{what}: structures differ\n{spec_a}\n{spec_e}"
    for i, (x, y) in enumerate(zip(a, e, strict=True)):
        if isinstance(y, Tensor):
            assert_close(x, y, f"{what} leaf {i}")
        else:
            assert x == y, f"{what} leaf {i}"


def independent_run(i: int, data, per_member: bool, extra_steps: int = 0):
    """Member i trained alone, as a user would: seed, build, TrainState.create, make_train_step."""
    torch.manual_seed(SEEDS[i])
    model = make_model()
    tx = member_tx(LRS[i])
    state = ft.TrainState.create(model, tx)
    step = ft.make_train_step(model, loss_fn, tx)
    losses = []
    for x, y in data:
        state, metrics = step(state, (x[i], y[i]) if per_member else (x, y))
        losses.append(metrics["loss"])
    return state, torch.stack(losses)


def ensemble_run(data, per_member: bool, donate: bool = True, grad: str = "autograd"):
    params, buffers, model = ft.init_members(make_model, SEEDS)
    tx = ensemble_tx()
    state = ft.TrainState(params=params, buffers=buffers, opt_state=tx.init(params))
    step = ft.make_ensemble_train_step(
        model, loss_fn, tx, len(SEEDS), batch_per_member=per_member, donate=donate, grad=grad
    )
    losses = []
    for batch in data:
        state, metrics = step(state, batch)
        assert metrics["loss"].shape == (len(SEEDS),) and metrics["acc"].shape == (len(SEEDS),)
        losses.append(metrics["loss"])
    return state, torch.stack(losses, dim=1), model


# ------------------------------------------------------------------------ init_members


def test_init_members_equals_models_built_after_each_seed_bitwise():
    params, buffers, module = ft.init_members(make_model, SEEDS)
    for i, seed in enumerate(SEEDS):
        torch.manual_seed(seed)
        reference = make_model().state_dict()
        # The same constructor drawing from the same generator state: the same bits.
        for name, value in reference.items():
            stacked = params[name] if name in params else buffers[name]
            assert torch.equal(stacked[i], value), name
    assert set(params) == {k for k, _ in make_model().named_parameters()}
    assert all(t.device.type == "meta" for t in module.state_dict().values())


def test_init_members_leaves_the_global_generator_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    ft.init_members(make_model, SEEDS)
    assert torch.equal(torch.rand(3), expected)


def test_init_members_keeps_frozen_parameters_as_buffers():
    def make():
        model = make_model()
        model[0].weight.requires_grad_(False)
        return model

    params, buffers, _ = ft.init_members(make, [0, 1])
    assert "0.weight" not in params and buffers["0.weight"].shape == (2, 16, 8)


# ------------------------------------------------------------------- train step parity


@pytest.mark.parametrize("grad", ["autograd", "func"])
@pytest.mark.parametrize("per_member", [False, True], ids=["shared_batch", "batch_per_member"])
def test_member_i_equals_an_independent_run_with_its_seed_and_lr(per_member, grad):
    data = batches(STEPS, per_member)
    state, losses, _ = ensemble_run(data, per_member, grad=grad)
    for i in range(len(SEEDS)):
        alone, alone_losses = independent_run(i, data, per_member)
        one = ft.member_state(state, i)
        assert_close(losses[i], alone_losses, f"member {i} losses")
        for name in alone.params:
            assert_close(one.params[name], alone.params[name], f"member {i} param {name}")
        # BatchNorm running statistics (and num_batches_tracked) are the member's own.
        for name in alone.buffers:
            assert_close(one.buffers[name], alone.buffers[name], f"member {i} buffer {name}")
        # The extracted optimizer state is the independent run's: the same records, moments,
        # the member's clip norm and learning rate.
        assert_trees_close(one.opt_state, alone.opt_state, f"member {i} opt_state")


def test_members_differ_from_each_other():
    # Guards the parity test against passing vacuously (all members the same).
    state, losses, _ = ensemble_run(batches(3, False), False)
    w = state.params["0.weight"]
    assert not torch.allclose(w[0], w[1]) and not torch.allclose(losses[0], losses[2])
    mean = state.buffers["2.running_mean"]
    assert not torch.allclose(mean[0], mean[1])


def test_extracted_member_continues_like_its_independent_run():
    data = batches(STEPS, False)
    state, _, _ = ensemble_run(data[:3], False)
    model = make_model()
    for i in range(len(SEEDS)):
        one = ft.member_state(state, i)
        step = ft.make_train_step(model, loss_fn, member_tx(LRS[i]))
        for batch in data[3:]:
            one, _ = step(one, batch)
        alone, _ = independent_run(i, data, False)
        for name in alone.params:
            assert_close(one.params[name], alone.params[name], f"member {i} param {name}")
        assert_trees_close(one.opt_state, alone.opt_state, f"member {i} opt_state")


def test_donate_false_leaves_the_input_state_untouched_and_gives_the_same_bits():
    data = batches(2, False)
    params, buffers, model = ft.init_members(make_model, SEEDS)
    tx = ensemble_tx()
    state = ft.TrainState(params=params, buffers=buffers, opt_state=tx.init(params))
    before = optree.tree_map(torch.clone, state, namespace="functrain")
    pure = ft.make_ensemble_train_step(model, loss_fn, tx, len(SEEDS), donate=False)
    out = state
    for batch in data:
        out, _ = pure(out, batch)
    assert_trees_close(state, before, "input state")
    for a, b in zip(
        optree.tree_leaves(state, namespace="functrain"),
        optree.tree_leaves(before, namespace="functrain"),
        strict=True,
    ):
        assert torch.equal(a, b)
    donated, _, _ = ensemble_run(data, False, donate=True)
    # Donation only decides which buffers are written: the same kernels in the same order.
    for a, b in zip(
        optree.tree_leaves(out, namespace="functrain"),
        optree.tree_leaves(donated, namespace="functrain"),
        strict=True,
    ):
        assert torch.equal(a, b)


def test_func_and_autograd_gradients_give_the_same_bits():
    data = batches(3, True)
    func, func_losses, _ = ensemble_run(data, True, grad="func")
    auto, auto_losses, _ = ensemble_run(data, True, grad="autograd")
    # Both differentiate the same vmapped forward with the same backward formulas.
    assert torch.equal(func_losses, auto_losses)
    for a, b in zip(
        optree.tree_leaves(func, namespace="functrain"),
        optree.tree_leaves(auto, namespace="functrain"),
        strict=True,
    ):
        assert torch.equal(a, b)


def test_loss_scaling_inside_the_ensemble_scales_each_members_loss():
    # The step differentiates loss * scale (read from the loss_scaling state, as
    # make_train_step does) and the transform unscales: member i as its own run.
    def scaled(lr):
        return ft.loss_scaling(member_tx(lr), init_scale=2.0**10)

    data = batches(3, False)
    params, buffers, model = ft.init_members(make_model, SEEDS)
    tx = ft.ensemble(scaled(list(LRS)), len(SEEDS))
    state = ft.TrainState(params=params, buffers=buffers, opt_state=tx.init(params))
    step = ft.make_ensemble_train_step(model, loss_fn, tx, len(SEEDS))
    for batch in data:
        state, _ = step(state, batch)
    for i, seed in enumerate(SEEDS):
        torch.manual_seed(seed)
        net = make_model()
        alone = ft.TrainState.create(net, scaled(LRS[i]))
        alone_step = ft.make_train_step(net, loss_fn, scaled(LRS[i]))
        for batch in data:
            alone, _ = alone_step(alone, batch)
        one = ft.member_state(state, i)
        for name in alone.params:
            assert_close(one.params[name], alone.params[name], f"member {i} param {name}")
        assert_trees_close(one.opt_state, alone.opt_state, f"member {i} opt_state")


def test_autocast_runs_the_members_forward_in_lower_precision():
    def make32() -> nn.Module:
        return make_model().float()

    params, buffers, model = ft.init_members(make32, SEEDS)
    tx = ft.ensemble(ft.sgd(lr=0.0), len(SEEDS))
    state = ft.TrainState(params=params, buffers=buffers, opt_state=tx.init(params))
    x, y = batches(1, False)[0]
    losses = {}
    for dtype in (None, torch.bfloat16):
        step = ft.make_ensemble_train_step(
            model, loss_fn, tx, len(SEEDS), autocast=dtype, donate=False
        )
        losses[dtype] = step(state, (x.float(), y))[1]["loss"]
    # The matmuls run in bfloat16 (8 mantissa bits): the losses move, by about 2**-8.
    assert losses[torch.bfloat16].dtype == torch.float32
    assert not torch.equal(losses[None], losses[torch.bfloat16])
    torch.testing.assert_close(losses[torch.bfloat16], losses[None], rtol=3e-2, atol=0)


def test_dropout_masks_differ_between_members():
    def make():
        return nn.Sequential(nn.Dropout(0.5), nn.Linear(32, 2))

    def keep_output(forward, batch):
        out = forward(batch)
        return out.sum(), {"out": out}

    # Identical members (one seed three times) on one batch: only dropout can tell them apart.
    params, buffers, model = ft.init_members(make, [0, 0, 0])
    tx = ft.ensemble(ft.sgd(lr=0.0), 3)
    state = ft.TrainState(params=params, buffers=buffers, opt_state=tx.init(params))
    step = ft.make_ensemble_train_step(model, keep_output, tx, 3)
    _, metrics = step(state, torch.ones(4, 32))
    out = metrics["out"]
    assert out.shape == (3, 4, 2)
    assert not torch.equal(out[0], out[1]) and not torch.equal(out[1], out[2])


# --------------------------------------------------------------------- eval and extraction


def test_eval_step_gives_each_members_eval_mode_outputs():
    data = batches(3, False)
    state, _, model = ensemble_run(data, False)
    x, y = batches(1, False)[0]

    def outputs(forward, batch):
        inputs, labels = batch
        logits = forward(inputs)
        return {"logits": logits, "acc": (logits.argmax(-1) == labels).double().mean()}

    out = ft.make_ensemble_eval_step(model, outputs, len(SEEDS))(state, (x, y))
    assert out["logits"].shape == (len(SEEDS), 16, 4) and out["acc"].shape == (len(SEEDS),)
    for i in range(len(SEEDS)):
        net = make_model()
        net.load_state_dict(ft.member_state_dict(state, i))
        net.eval()  # BatchNorm on the member's running statistics
        with torch.no_grad():
            assert_close(out["logits"][i], net(x), f"member {i} logits")


def test_member_state_dict_loads_into_the_plain_module_strictly():
    class WithScratch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = make_model()
            self.register_buffer("scratch", torch.zeros(3), persistent=False)

        def forward(self, x: Tensor) -> Tensor:
            return self.net(x)

    params, buffers, model = ft.init_members(WithScratch, [5, 6])
    tx = ft.ensemble(ft.adamw(lr=[1e-3, 1e-2]), 2)
    state = ft.TrainState(params=params, buffers=buffers, opt_state=tx.init(params))
    state, _ = ft.make_ensemble_train_step(model, loss_fn, tx, 2)(state, batches(1, False)[0])
    for i in range(2):
        net = WithScratch()
        # The non-persistent buffer is not part of state_dict: the model filters it out.
        net.load_state_dict(ft.member_state_dict(state, i, model), strict=True)
        for name, value in net.state_dict().items():
            assert torch.equal(value, state.params.get(name, state.buffers.get(name))[i]), name
        one = ft.member_state(state, i)
        assert one.iteration == state.iteration and one.opt_state is not None
        # A slice is a copy: saving one member does not save the whole ensemble's storage.
        assert one.params["net.0.weight"].untyped_storage().size() == 16 * 8 * 8


def test_member_checkpoint_restores_into_a_plain_state_and_the_ensemble_round_trips(tmp_path):
    from functrain.checkpoint import (
        FORMAT,
        VERSION,
        atomic_save,
        load_checkpoint,
        restore_state,
        state_to_dict,
    )

    def save(state, name):
        path = tmp_path / name
        atomic_save({"format": FORMAT, "version": VERSION, "state": state_to_dict(state)}, path)
        return load_checkpoint(path)

    def make32() -> nn.Module:
        # float32: a fresh clip state records its norm as float32 whatever the params' dtype
        # (float64 after the first update of a float64 model), and restore_state checks
        # dtypes against the fresh template.
        return make_model().float()

    params, buffers, model = ft.init_members(make32, SEEDS)
    tx = ensemble_tx()
    state = ft.TrainState(params=params, buffers=buffers, opt_state=tx.init(params))
    step = ft.make_ensemble_train_step(model, loss_fn, tx, len(SEEDS))
    for x, y in batches(2, False):
        state, _ = step(state, (x.float(), y))
    # Member 1 as a checkpoint of an ordinary run: restore_state checks every leaf of the
    # file against a fresh plain state (structure, shapes, dtypes) and names any mismatch.
    plain = ft.TrainState.create(make32(), member_tx(LRS[1]))
    restored = restore_state(save(ft.member_state(state, 1), "member1.pth"), plain)
    for a, b in zip(
        optree.tree_leaves(restored, namespace="functrain"),
        optree.tree_leaves(ft.member_state(state, 1), namespace="functrain"),
        strict=True,
    ):
        assert torch.equal(a, b)
    # The whole ensemble round-trips as well (StackedState and per-member values included).
    params, buffers, _ = ft.init_members(make32, SEEDS)
    fresh = ft.TrainState(params=params, buffers=buffers, opt_state=tx.init(params))
    restored = restore_state(save(state, "all.pth"), fresh)
    assert optree.tree_structure(restored, namespace="functrain") == optree.tree_structure(
        state, namespace="functrain"
    )
    for a, b in zip(
        optree.tree_leaves(restored, namespace="functrain"),
        optree.tree_leaves(state, namespace="functrain"),
        strict=True,
    ):
        assert torch.equal(a, b)


# ------------------------------------------------------------------------------ bad input


def test_member_count_mismatch_between_params_and_step_names_both_sizes():
    params, buffers, model = ft.init_members(make_model, SEEDS)
    tx = ft.adamw(lr=1e-3)
    state = ft.TrainState(params=params, buffers=buffers, opt_state=tx.init(params))
    step = ft.make_ensemble_train_step(model, loss_fn, tx, 4)
    with pytest.raises(ValueError, match=r"state\.params\['0\.bias'\].* axis of 3.*members=4"):
        step(state, batches(1, False)[0])


def test_batch_without_the_member_axis_is_named():
    params, buffers, model = ft.init_members(make_model, SEEDS)
    tx = ensemble_tx()
    state = ft.TrainState(params=params, buffers=buffers, opt_state=tx.init(params))
    step = ft.make_ensemble_train_step(model, loss_fn, tx, 3, batch_per_member=True)
    with pytest.raises(ValueError, match=r"batch\['0'\].* axis of 16.*members=3"):
        step(state, batches(1, False)[0])


def test_hyperparameter_vector_of_another_length_names_both_sizes():
    params, _, _ = ft.init_members(make_model, SEEDS)
    with pytest.raises(ValueError, match=r"lr.*4 per-member values.*3 members"):
        ft.ensemble(ft.adamw(lr=[1e-3, 1e-2, 1e-1, 1.0]), 3).init(params)


def test_seeds_and_ensemble_size_mismatch_names_both_sizes():
    params, _, _ = ft.init_members(make_model, SEEDS)  # 3 members
    with pytest.raises(ValueError, match=r"leading member axis of size 4"):
        ft.ensemble(ft.adamw(lr=[1e-3, 1e-2, 1e-1, 1.0]), 4).init(params)


def test_optimizer_state_for_another_member_count_is_refused_by_the_step():
    params, buffers, model = ft.init_members(make_model, SEEDS)
    state = ft.TrainState(params=params, buffers=buffers, opt_state=ensemble_tx().init(params))
    other = {k: v[:2] for k, v in params.items()}
    state2 = ft.TrainState(
        params=other,
        buffers={k: v[:2] for k, v in buffers.items()},
        opt_state=state.opt_state,
    )
    step = ft.make_ensemble_train_step(model, loss_fn, ensemble_tx(2), 2)
    with pytest.raises(ValueError, match=r"ensemble of 3 members.*members=2"):
        step(state2, batches(1, False)[0])


def test_init_members_bad_input():
    with pytest.raises(ValueError, match="seeds is empty"):
        ft.init_members(make_model, [])
    widths = iter([16, 32])

    def make():
        return nn.Linear(8, next(widths))

    with pytest.raises(ValueError, match=r"'weight' has different shapes across members"):
        ft.init_members(make, [0, 1])
    with pytest.raises(ValueError, match="members must be a positive int"):
        ft.make_ensemble_train_step(make_model(), loss_fn, ft.sgd(0.1), 0)


def test_member_index_out_of_range():
    params, buffers, _ = ft.init_members(make_model, SEEDS)
    state = ft.TrainState(params=params, buffers=buffers, opt_state=None)
    with pytest.raises(IndexError, match="member 3 out of range for an ensemble of 3"):
        ft.member_state(state, 3)


# --------------------------------------------------------------------------------- README


def test_readme_ensembles_code_runs():
    code = re.search(
        r"## Ensembles and sweeps\n.*?```python\n(.*?)```", README.read_text(), re.S
    ).group(1)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    state, n = namespace["state"], namespace["n"]
    assert namespace["metrics"]["loss"].shape == (n,)
    assert state.iteration == 0 and ft.member_state(state, 0).params
