"""Train / eval steps: functional_call + grad_and_value, BatchNorm buffers, donation, metrics."""

from __future__ import annotations

import pytest
import torch

import functrain as ft
from functrain.loops import EpochBasedTrainLoop, Runner, ValLoop
from functrain.state import RngState, TrainState, capture_rng, restore_rng
from functrain.step import make_eval_step, make_train_step


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(5, 7), torch.nn.BatchNorm1d(7), torch.nn.ReLU(), torch.nn.Linear(7, 3)
    )


def loss_fn(forward, batch):
    x, y = batch
    logits = forward(x)
    return torch.nn.functional.cross_entropy(logits, y), {
        "acc": (logits.argmax(-1) == y).float().mean()
    }


def batches(n: int):
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(6, 5, generator=g), torch.randint(0, 3, (6,), generator=g)) for _ in range(n)
    ]


@pytest.mark.parametrize("grad", ["func", "autograd"])
def test_train_step_matches_eager_torch_training(grad):
    """Params after 5 steps equal (bitwise) those of an eager module trained by
    torch.optim.AdamW(fused=True), and the BatchNorm running statistics (threaded
    functionally) equal the eager module's."""
    model = make_model()
    eager = make_model()
    tx = ft.adamw(lr=0.05, weight_decay=0.01)
    opt = torch.optim.AdamW(eager.parameters(), lr=0.05, weight_decay=0.01, fused=True)
    step = make_train_step(model, loss_fn, tx, grad=grad)
    state = TrainState.create(model, tx)
    for x, y in batches(5):
        state, metrics = step(state, (x, y))
        opt.zero_grad()
        torch.nn.functional.cross_entropy(eager(x), y).backward()
        opt.step()
    for name, p in eager.named_parameters():
        assert torch.equal(state.params[name], p.detach()), name
    for name, b in eager.named_buffers():
        assert torch.equal(state.buffers[name], b), name
    assert int(state.buffers["1.num_batches_tracked"]) == 5
    # the module's own tensors were never touched
    assert torch.equal(dict(model.named_buffers())["1.running_mean"], torch.zeros(7))


def test_metrics_stay_on_device_as_tensors():
    model = make_model()
    tx = ft.sgd(lr=0.1)
    state, metrics = make_train_step(model, loss_fn, tx)(
        TrainState.create(model, tx), batches(1)[0]
    )
    assert set(metrics) == {"loss", "acc"}
    for v in metrics.values():
        assert isinstance(v, torch.Tensor) and v.dim() == 0 and not v.requires_grad


def test_donate_false_leaves_input_state_untouched_and_is_bitwise_equal():
    model = make_model()
    tx = ft.chain(ft.clip(0.1), ft.sgd(lr=0.1, momentum=0.9))
    pure = make_train_step(model, loss_fn, tx, donate=False)
    donating = make_train_step(model, loss_fn, tx, donate=True)
    s_pure = TrainState.create(model, tx)
    s_don = TrainState.create(model, tx)
    for b in batches(4):
        before = s_pure.map_tensors(lambda t: t.clone())
        new_pure, _ = pure(s_pure, b)
        for a, c in zip(ft.flatten(before)[0], ft.flatten(s_pure)[0], strict=True):
            assert torch.equal(a, c)  # the input state is unchanged
        s_pure = new_pure
        s_don, _ = donating(s_don, b)
    for a, c in zip(ft.flatten(s_pure)[0], ft.flatten(s_don)[0], strict=True):
        assert torch.equal(a, c)


def test_frozen_parameters_go_to_buffers_and_stay_fixed():
    model = make_model()
    model[0].weight.requires_grad_(False)
    tx = ft.sgd(lr=0.5)
    state = TrainState.create(model, tx)
    assert "0.weight" not in state.params and "0.weight" in state.buffers
    frozen = state.buffers["0.weight"].clone()
    state, _ = make_train_step(model, loss_fn, tx)(state, batches(1)[0])
    assert torch.equal(state.buffers["0.weight"], frozen)
    assert not torch.equal(state.params["0.bias"], dict(model.named_parameters())["0.bias"])


def test_bad_loss_is_a_clear_error():
    model = make_model()
    tx = ft.sgd(lr=0.1)
    step = make_train_step(model, lambda fwd, b: fwd(b[0]), tx)
    with pytest.raises(TypeError, match="0-d loss tensor"):
        step(TrainState.create(model, tx), batches(1)[0])


def test_eval_step_uses_eval_mode_and_no_grad():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(5, 5), torch.nn.Dropout(0.5), torch.nn.BatchNorm1d(5)
    )
    tx = ft.sgd(lr=0.1)
    state = TrainState.create(model, tx)
    eval_step = make_eval_step(model, lambda fwd, b: fwd(b))
    x = torch.randn(4, 5)
    a, b = eval_step(state, x), eval_step(state, x)
    assert torch.equal(a, b) and not a.requires_grad  # no dropout noise
    # running statistics (zeros/ones) are used, not the batch's
    expected = model[0](x).detach() / torch.sqrt(torch.tensor(1.0 + 1e-5))
    torch.testing.assert_close(a, expected)


def test_autocast_bfloat16_step_keeps_float32_params():
    model = make_model()
    tx = ft.adam(lr=0.01)
    step = make_train_step(model, loss_fn, tx, autocast=torch.bfloat16)
    state = TrainState.create(model, tx)
    state, metrics = step(state, batches(1)[0])
    assert all(p.dtype == torch.float32 for p in state.params.values())
    assert torch.isfinite(metrics["loss"])


def test_a_hand_written_step_runs_in_the_loop():
    """The step contract: (state, batch) -> (state, metrics); counters belong to the loop."""
    seen = []

    def my_step(state, batch):
        seen.append(state.iteration)
        params = {k: v + batch for k, v in state.params.items()}
        return state.replace(params=params), {"loss": torch.tensor(float(batch))}

    state = TrainState(params={"w": torch.zeros(2)}, buffers={}, opt_state=())
    runner = Runner(
        state=state,
        train_step=my_step,
        train_loop=EpochBasedTrainLoop([1.0, 2.0], max_epochs=2),
        val_loop=ValLoop([0], lambda s, b: {"w": s.params["w"].sum()}),
        default_callbacks=False,
    )
    final = runner.train()
    assert seen == [0, 1, 2, 3]
    assert torch.equal(final.params["w"], torch.full((2,), 6.0))
    assert (final.iteration, final.epoch) == (4, 2)
    assert runner.last_val_metrics == {"w": 12.0}


def test_rng_snapshot_roundtrip():
    snap = capture_rng()
    assert isinstance(snap, RngState) and hash(snap) == hash(capture_rng())
    import random

    a = (torch.rand(3), random.random())
    restore_rng(snap)
    assert torch.equal(torch.rand(3), a[0]) and random.random() == a[1]


def test_train_state_is_frozen_and_maps_tensors():
    model = make_model()
    state = TrainState.create(model, ft.adam(lr=0.1))
    with pytest.raises(AttributeError):
        state.iteration = 3  # type: ignore[misc]
    doubled = state.map_tensors(lambda t: t * 2 if t.is_floating_point() else t)
    torch.testing.assert_close(doubled.params["0.weight"], state.params["0.weight"] * 2)
    assert state.with_callback_state("x", 1).callbacks == {"x": 1} and state.callbacks == {}
    fresh = make_model()
    with torch.no_grad():
        fresh[0].weight.zero_()
    doubled.load_into(fresh)
    assert torch.equal(fresh[0].weight, doubled.params["0.weight"])
