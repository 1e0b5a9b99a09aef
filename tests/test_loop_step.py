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


def digits_batches(n: int):
    g = torch.Generator().manual_seed(2)
    return [
        (torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g))
        for _ in range(n)
    ]


@pytest.mark.parametrize(
    "chain",
    [
        # the fused AdamW kernel with a folded clip, SGD with momentum, L2 decay and
        # maximize, and a scheduled beta1 (foreach Adam)
        lambda: ft.chain(ft.clip(0.05), ft.adamw(lr=0.01, weight_decay=0.05)),
        lambda: ft.sgd(lr=0.05, momentum=0.9, weight_decay=1e-3, maximize=True),
        lambda: ft.adam(lr=0.01, betas=(lambda t: 0.9 - 0.01 * t, 0.99)),
    ],
)
def test_grad_modes_are_bitwise_the_same(chain):
    """grad='auto' (autograd here), 'autograd' and 'func' give bitwise the same params,
    BatchNorm statistics, losses and extra metrics: the same backward kernels run in the same
    order, only functorch's wrapping differs."""
    from functrain.zoo import DigitsNet

    under_func = []  # whether each loss ran inside torch.func's grad transform

    def digits_loss(forward, batch):
        under_func.append(torch._C._functorch.peek_interpreter_stack() is not None)
        x, y = batch
        logits = forward(x)
        return torch.nn.functional.cross_entropy(logits, y), {"max": logits.max()}

    runs = {}
    for grad in ("func", "autograd", "auto"):
        torch.manual_seed(0)
        model = DigitsNet()
        tx = chain()
        step = make_train_step(model, digits_loss, tx, grad=grad)
        state = TrainState.create(model, tx)
        metrics = []
        for b in digits_batches(4):
            state, m = step(state, b)
            metrics.append(torch.stack([m["loss"], m["max"]]))
        runs[grad] = (ft.flatten(state)[0], torch.stack(metrics))
        assert under_func == [grad == "func"] * 4, grad  # auto took autograd's path
        under_func.clear()
    for grad in ("autograd", "auto"):
        for a, b in zip(runs["func"][0], runs[grad][0], strict=True):
            assert torch.equal(a, b), grad
        assert torch.equal(runs["func"][1], runs[grad][1]), grad


def test_auto_grad_lets_torch_func_differentiate_through_the_step():
    """Inside torch.func.grad (meta-learning through an update) 'auto' takes torch.func's
    path, so the outer gradient equals grad='func''s; detached autograd leaves would cut it."""
    x, y = batches(1)[0]
    results = {}
    for grad in ("func", "auto"):
        model = make_model()
        tx = ft.sgd(lr=0.1)
        step = make_train_step(model, loss_fn, tx, grad=grad, donate=False)
        state = TrainState.create(model, tx)

        def after_one_step(params, state=state, step=step):
            new, _ = step(state.replace(params=params), (x, y))
            return (new.params["3.weight"] ** 2).sum()

        results[grad] = torch.func.grad(after_one_step)(dict(state.params))
    for k in results["func"]:
        torch.testing.assert_close(results["auto"][k], results["func"][k], rtol=0, atol=0)
    # the second-order term is there: the outer gradient of 0.weight is not zero
    assert results["auto"]["0.weight"].abs().sum() > 0


def test_auto_grad_lets_autograd_differentiate_through_the_step():
    """Params that require grad under grad mode: 'auto' takes torch.func's path (which
    autograd can see through), as 'func' does."""
    x, y = batches(1)[0]
    outer = {}
    for grad in ("func", "auto"):
        model = make_model()
        tx = ft.sgd(lr=0.1)
        step = make_train_step(model, loss_fn, tx, grad=grad, donate=False)
        state = TrainState.create(model, tx)
        params = {k: v.clone().requires_grad_(True) for k, v in state.params.items()}
        new, _ = step(state.replace(params=params), (x, y))
        (g,) = torch.autograd.grad((new.params["3.weight"] ** 2).sum(), [params["0.weight"]])
        outer[grad] = g
    torch.testing.assert_close(outer["auto"], outer["func"], rtol=0, atol=0)
    assert outer["auto"].abs().sum() > 0


@pytest.mark.parametrize("grad", ["func", "autograd", "auto"])
def test_a_loss_that_uses_no_parameter_gives_zero_gradients(grad):
    model = make_model()
    tx = ft.sgd(lr=0.1)
    step = make_train_step(model, lambda fwd, b: (b[0] ** 2).mean(), tx, grad=grad)
    state = TrainState.create(model, tx)
    before = {k: v.clone() for k, v in state.params.items()}
    state, metrics = step(state, batches(1)[0])
    for k, v in before.items():
        assert torch.equal(state.params[k], v), k
    assert metrics["loss"] > 0


def test_unknown_grad_mode_is_a_clear_error():
    with pytest.raises(ValueError, match="grad must be 'auto', 'func' or 'autograd', got 'jax'"):
        make_train_step(make_model(), loss_fn, ft.sgd(lr=0.1), grad="jax")
