"""``as_torch_optimizer``: functrain transforms inside torch loops, mmengine's Runner and
Lightning.

Most comparisons are bitwise, and each says why: the adapter calls the same
``apply_gradients`` on the same gradients as functrain's own loop (or torch's fused kernel on
both sides), so the same kernels run on the same inputs in the same order. The only other
source of difference is the learning rate, computed by torch's / mmengine's scheduler on one
side and functrain's schedule on the other; they may differ in the last float64 bit, but the
CPU fused kernels use the lr in float32, and the tests check that those roundings agree.
"""

from __future__ import annotations

import copy
import io
import math
import re
import struct
from pathlib import Path

import pytest
import torch

import functrain as ft
from functrain.schedules import cosine_annealing_lr
from functrain.transforms.as_torch import FunctrainOptimizer

STEPS = 50


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny tensors on a busy 2-core machine: extra intra-op threads only wait.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


def _batches(n: int = STEPS, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 6, generator=g), torch.randn(16, 3, generator=g)) for _ in range(n)]


def _loss(model: torch.nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return torch.nn.functional.mse_loss(model(x), y)


def _functrain_run(model: torch.nn.Module, tx, batches) -> tuple[dict, object]:
    """functrain's own loop: torch.func gradients, apply_gradients (donating)."""
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    state = tx.init(params)

    def loss_fn(p, batch):
        x, y = batch
        return torch.nn.functional.mse_loss(torch.func.functional_call(model, p, (x,)), y)

    for batch in batches:
        grads = torch.func.grad(loss_fn)(params, batch)
        params, state = ft.apply_gradients(tx, params, grads, state, donate=True)
    return params, state


def _torch_run(model: torch.nn.Module, opt, batches, scheduler=None) -> None:
    for batch in batches:
        opt.zero_grad()
        _loss(model, batch).backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()


def _assert_bitwise(model: torch.nn.Module, params: dict) -> None:
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), params[name]), (
            name,
            float((p.detach() - params[name]).abs().max()),
        )


def _assert_same_state(a, b) -> None:
    la, lb = ft.flatten(a)[0], ft.flatten(b)[0]
    assert len(la) == len(lb)
    assert all(torch.equal(x, y) for x, y in zip(la, lb, strict=True))


def _float32(x: float) -> float:
    return struct.unpack("f", struct.pack("f", x))[0]


# --------------------------------------------------------------------------------------------
# (a) a plain loop with torch's CosineAnnealingLR equals functrain's schedule-driven chain


def test_cosine_annealing_lr_drives_the_chain_like_functrains_schedule():
    batches = _batches()
    model, ref_model = _model(), _model()
    opt = ft.as_torch_optimizer(ft.adamw(lr=1e-2, weight_decay=0.05), model.named_parameters())
    assert isinstance(opt, torch.optim.Optimizer) and isinstance(opt, FunctrainOptimizer)
    assert [set(g) for g in opt.param_groups] == [{"params", "lr"}]
    assert opt.param_groups[0]["lr"] == 1e-2
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=STEPS, eta_min=1e-4)
    lrs = []
    for batch in batches:
        lrs.append(opt.param_groups[0]["lr"])
        opt.zero_grad()
        _loss(model, batch).backward()
        opt.step()
        sched.step()

    schedule = cosine_annealing_lr(1e-2, T_max=STEPS, eta_min=1e-4)
    params, state = _functrain_run(ref_model, ft.adamw(lr=schedule, weight_decay=0.05), batches)
    # torch's recursive cosine and functrain's closed form: the same values to float64
    # rounding, the same in float32 (what the fused kernel uses; see the module docstring).
    for i, lr in enumerate(lrs):
        assert _float32(lr) == _float32(float(schedule(i))), (i, lr, float(schedule(i)))
    assert len(set(lrs)) == STEPS  # the scheduler moved it every step
    _assert_bitwise(model, params)
    # the lr in force after the last step, as the adapter's state records it
    assert float(ft.values_in_force(opt.opt_state)["lr"]) == lrs[-1]


def test_a_factory_makes_momentum_schedulable_like_torch_sgd():
    """With a factory (ft.sgd), momentum / weight_decay are group keys; changing them
    rebuilds the transform. torch's fused SGD with the same changes: the same kernel."""
    batches = _batches(12)
    model, ref_model = _model(), _model()
    opt = ft.as_torch_optimizer(
        ft.sgd, model.named_parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3
    )
    ref = torch.optim.SGD(
        ref_model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3, fused=True
    )
    group = opt.param_groups[0]
    assert group["momentum"] == 0.9 and group["nesterov"] is False and group["dampening"] == 0.0
    for i, batch in enumerate(batches):
        for g in (group, ref.param_groups[0]):
            g["momentum"] = 0.9 - 0.05 * i  # a momentum schedule
            g["lr"] = 0.05 / (1 + i)
        for m, o in ((model, opt), (ref_model, ref)):
            o.zero_grad()
            _loss(m, batch).backward()
            o.step()
    _assert_bitwise(model, dict(ref_model.named_parameters()))
    in_force = ft.values_in_force(opt.opt_state)
    assert float(in_force["lr"]) == 0.05 / 12
    assert float(in_force["momentum"]) == 0.9 - 0.05 * 11  # recorded for loggers


# --------------------------------------------------------------------------------------------
# (c) state_dict round trip, (d) closure, zero_grad, None grads


def test_state_dict_round_trip_continues_bitwise():
    batches = _batches(10)
    tx = ft.chain(ft.clip(0.5), ft.adamw(lr=3e-3))
    model = _model()
    opt = ft.as_torch_optimizer(tx, model.named_parameters())
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    _torch_run(model, opt, batches[:5], sched)

    # through bytes, as a checkpoint stores it (functrain records are pickled classes)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=False)
    clone = _model(seed=7)
    clone.load_state_dict(saved["model"])
    opt2 = ft.as_torch_optimizer(tx, clone.named_parameters())
    opt2.load_state_dict(saved["opt"])
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"] == 3e-3 * 0.25

    _torch_run(model, opt, batches[5:])
    _torch_run(clone, opt2, batches[5:])
    _assert_bitwise(clone, dict(model.named_parameters()))
    _assert_same_state(opt.opt_state, opt2.opt_state)


def test_load_state_dict_refuses_another_transform_or_other_parameters():
    model = _model()
    sd = ft.as_torch_optimizer(ft.adamw(lr=1e-3), model.named_parameters()).state_dict()
    with pytest.raises(ValueError, match="another structure"):
        ft.as_torch_optimizer(ft.sgd(0.1, momentum=0.9), model.named_parameters()).load_state_dict(
            sd
        )
    wider = torch.nn.Sequential(torch.nn.Linear(6, 9), torch.nn.Tanh(), torch.nn.Linear(9, 3))
    with pytest.raises(
        ValueError, match=r"state leaf '0\.0\.mu\.0' is torch.Size\(\[8\]\), expected shape \(9,\)"
    ):
        ft.as_torch_optimizer(ft.adamw(lr=1e-3), wider.named_parameters()).load_state_dict(sd)
    other = torch.nn.Linear(6, 3)
    with pytest.raises(ValueError, match="saved for parameters"):
        ft.as_torch_optimizer(ft.adamw(lr=1e-3), other.named_parameters()).load_state_dict(sd)
    with pytest.raises(ValueError, match="expected"):
        ft.as_torch_optimizer(ft.adamw(lr=1e-3), model.named_parameters()).load_state_dict(
            torch.optim.AdamW(model.parameters()).state_dict()
        )


def test_step_with_closure_returns_its_loss_and_steps_like_without():
    batch = _batches(1)[0]
    model, ref_model = _model(), _model()
    opt = ft.as_torch_optimizer(ft.sgd(0.1, momentum=0.9), model.parameters())
    ref = ft.as_torch_optimizer(ft.sgd(0.1, momentum=0.9), ref_model.parameters())

    def closure():
        opt.zero_grad()
        loss = _loss(model, batch)
        loss.backward()
        return loss

    with torch.no_grad():  # step() enables grad for the closure, as torch's optimizers do
        loss = opt.step(closure)
    assert torch.equal(loss, _loss(ref_model, batch))
    _torch_run(ref_model, ref, [batch])
    _assert_bitwise(model, dict(ref_model.named_parameters()))
    assert opt.step() is None


def test_zero_grad_none_grads_and_grad_untouched():
    model = _model()
    opt = ft.as_torch_optimizer(ft.adam(lr=1e-2), model.named_parameters())
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    count = ft.tree_map(lambda t: t.clone(), opt.opt_state)
    opt.step()  # no parameter has a gradient: skipped, as torch skips it
    _assert_bitwise(model, before)
    _assert_same_state(count, opt.opt_state)
    _loss(model, _batches(1)[0]).backward()
    grads = {k: v.grad.clone() for k, v in model.named_parameters()}
    opt.step()
    # .grad is the caller's: the chain works on a copy
    assert all(torch.equal(v.grad, grads[k]) for k, v in model.named_parameters())
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    opt.zero_grad(set_to_none=False)  # no grads to zero: still fine
    # A missing grad among others is a zero gradient (documented; torch would skip that
    # parameter): the same step as an explicit zero gradient, Adam's moments included.
    twin = _model()
    twin.load_state_dict(model.state_dict())
    opt2 = ft.as_torch_optimizer(ft.adam(lr=1e-2), twin.named_parameters())
    opt2.load_state_dict(opt.state_dict())
    for m in (model, twin):
        for p in m.parameters():
            p.grad = torch.ones_like(p)
    model[2].bias.grad = None
    twin[2].bias.grad = torch.zeros_like(twin[2].bias)
    b = model[2].bias.detach().clone()
    opt.step()
    opt2.step()
    _assert_bitwise(model, dict(twin.named_parameters()))
    _assert_same_state(opt.opt_state, opt2.opt_state)
    assert not torch.equal(model[2].bias.detach(), b)  # Adam's momentum still moves it


def test_clear_errors():
    model = _model()
    with pytest.raises(ValueError, match="2 param groups"):
        ft.as_torch_optimizer(
            ft.sgd(0.1),
            [{"params": [model[0].weight]}, {"params": [model[0].bias], "lr": 0.01}],
        )
    with pytest.raises(ValueError, match=r"\['momentum'\] given for a built transform"):
        ft.as_torch_optimizer(ft.sgd(0.1), model.parameters(), momentum=0.9)
    with pytest.raises(ValueError, match="add_param_group"):
        ft.as_torch_optimizer(ft.sgd(0.1), [model[0].weight]).add_param_group(
            {"params": [model[0].bias]}
        )
    # a scheduled lr is not settable: a scheduler writing group['lr'] is refused at step()
    opt = ft.as_torch_optimizer(
        ft.sgd(cosine_annealing_lr(0.1, T_max=10)), model.named_parameters()
    )
    assert opt.param_groups[0]["lr"] == 0.1  # read back, for loggers
    opt.param_groups[0]["lr"] = 0.05
    _loss(model, _batches(1)[0]).backward()
    with pytest.raises(ValueError, match="no settable learning rate"):
        opt.step()
    # a group lr given with a built transform goes into its state
    opt = ft.as_torch_optimizer(ft.sgd(0.1), {"params": list(model.parameters()), "lr": 0.02})
    assert float(ft.values_in_force(opt.opt_state)["lr"]) == 0.02


# --------------------------------------------------------------------------------------------
# (e) GradScaler


def test_grad_scaler_unscales_and_skips_non_finite_steps():
    # torch 2.13 enables GradScaler("cpu"): the path tested is the one a CPU run takes.
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    assert scaler.is_enabled()
    batches = _batches(6)
    model, ref_model = _model(), _model()
    tx = ft.chain(ft.clip(1.0), ft.adamw(lr=1e-2))
    opt = ft.as_torch_optimizer(tx, model.named_parameters())
    for batch in batches:
        opt.zero_grad()
        scaler.scale(_loss(model, batch)).backward()
        scaler.step(opt)
        scaler.update()
    # Scaling by 2**16 and unscaling by its exact reciprocal changes no gradient bit (no
    # overflow or underflow at these magnitudes), so this is functrain's plain run.
    params, _ = _functrain_run(ref_model, tx, batches)
    _assert_bitwise(model, params)
    assert scaler.get_scale() == 2.0**16

    # an inf gradient: GradScaler skips step() and halves the scale; nothing moves
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    state = ft.tree_map(lambda t: t.clone(), opt.opt_state)
    opt.zero_grad()
    scaler.scale(_loss(model, batches[0]) * float("inf")).backward()
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() == 2.0**15
    _assert_bitwise(model, before)
    _assert_same_state(state, opt.opt_state)


# --------------------------------------------------------------------------------------------
# (f) any chain: partition, masked, multipliers, Lion, schedule-free, accumulate


def _labels(path: str) -> str:
    return "first" if path.startswith("0.") else "last"


CHAINS = {
    "partition": lambda: ft.partition(
        {"first": ft.adamw(lr=1e-2), "last": ft.sgd(0.1, momentum=0.9)}, _labels
    ),
    "masked": lambda: ft.chain(
        ft.masked(ft.clip(0.1), lambda path: path.endswith("weight")), ft.sgd(0.05)
    ),
    "with_multipliers": lambda: ft.with_multipliers(
        ft.sgd(0.1, momentum=0.9, weight_decay=1e-2), {"0.weight": (0.1, 1.0), "2.bias": (1.0, 0.0)}
    ),
    "lion": lambda: ft.lion(lr=1e-3, weight_decay=0.1),
    "schedule_free": lambda: ft.schedule_free_adamw(lr=1e-2),
    "accumulate": lambda: ft.accumulate(ft.adamw(lr=1e-2), 3, max_iters=10),
}


@pytest.mark.parametrize("name", sorted(CHAINS))
def test_any_chain_runs_through_the_adapter_as_in_functrain(name):
    batches = _batches(10)
    model, ref_model = _model(), _model()
    opt = ft.as_torch_optimizer(CHAINS[name](), model.named_parameters())
    _torch_run(model, opt, batches)
    params, state = _functrain_run(ref_model, CHAINS[name](), batches)
    # the same apply_gradients on the same gradients (see the module docstring)
    _assert_bitwise(model, params)
    _assert_same_state(state, opt.opt_state)
    start = dict(_model().named_parameters())
    assert any(not torch.equal(p.detach(), start[k]) for k, p in model.named_parameters())


def test_partition_lrs_scale_together():
    model = _model()
    opt = ft.as_torch_optimizer(CHAINS["partition"](), model.named_parameters())
    assert opt.param_groups[0]["lr"] == 1e-2  # the first settable lr
    opt.param_groups[0]["lr"] = 5e-3  # what a scheduler halving it writes
    _loss(model, _batches(1)[0]).backward()
    opt.step()
    lrs = {k: float(v) for k, v in ft.values_in_force(opt.opt_state).items() if "lr" in k}
    assert lrs == {"first/lr": 5e-3, "last/lr": 0.05}  # 0.1 * 0.5, exact in binary halving


# --------------------------------------------------------------------------------------------
# (b) mmengine's Runner with a functrain transform registered as an optimizer


def test_mmengine_runner_with_functrain_optimizer_matches_functrain_train(tmp_path, monkeypatch):
    pytest.importorskip("mmengine")
    import mmengine
    from mmengine.registry import OPTIMIZERS

    from tests.test_config_mmengine import SHORT, _config, compare_tensors, run_functrain
    from tests.test_config_mmengine import run_mmengine as run_mm

    # As tests/test_config_mmengine.py does: no 2 s sleep, configs importable.
    monkeypatch.setattr(mmengine.runner.loops.time, "sleep", lambda s: None)

    built_here = []

    def functrain_sgd(params, **kwargs):
        """mmengine builds it with the config's keywords: a factory keeps them schedulable."""
        built_here.append(ft.as_torch_optimizer(ft.sgd, params, **kwargs))
        return built_here[-1]

    OPTIMIZERS.register_module(name="FunctrainSGD", module=functrain_sgd, force=True)
    # SGD(lr 0.02, momentum 0.9, wd 1e-4) + CosineAnnealingLR by epoch over 4 epochs
    cfg = _config("digits_cosine.py", SHORT)
    mm_cfg = copy.deepcopy(cfg)
    assert mm_cfg["optim_wrapper"]["optimizer"]["type"] == "SGD"
    mm_cfg["optim_wrapper"]["optimizer"]["type"] = "FunctrainSGD"
    mm = run_mm(mm_cfg, tmp_path / "mm")
    built, ft_rec = run_functrain(cfg, tmp_path / "ft")
    assert len(built_here) == 1  # mmengine's Runner stepped the adapter
    assert built_here[0].param_groups[0]["weight_decay"] == 1e-4

    assert mm.labels == ft_rec.labels and mm.events == ft_rec.events
    n = len(mm.labels)
    assert n == built.runner.train_loop.max_iters
    # mmengine's param scheduler wrote group['lr']; the adapter's state used it
    for i in range(n):
        assert {_float32(v) for v in mm.lr[i].values()} == {_float32(ft_rec.values[i]["lr"])}, i
        assert set(mm.momentum[i].values()) == {0.9}
    assert len({ft_rec.values[i]["lr"] for i in range(n)}) == 4  # one per epoch
    in_state = float(ft.values_in_force(built_here[0].opt_state)["lr"])
    assert in_state == next(iter(mm.lr[-1].values()))  # the last lr mmengine set, in force
    params = {k for k, _ in built.model.named_parameters()}
    # Bitwise: the same forward/backward on the same batches from the same seed, then
    # torch's fused SGD kernel through apply_gradients on both sides.
    for when in ("first", "last"):
        err = compare_tensors(getattr(ft_rec, when), getattr(mm, when), params, set())
        assert all(v == 0.0 for v in err.values()), (when, err)
    assert [v["accuracy"] for v in mm.val] == [v["accuracy"] for v in ft_rec.val]


# --------------------------------------------------------------------------------------------
# (g) Lightning


def test_lightning_trainer_runs_the_adapter():
    import lightning  # a dev dependency: the test must run, never skip

    batches = _batches(20)

    class Module(lightning.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = _model()

        def training_step(self, batch, batch_idx):
            return _loss(self.net, batch)

        def configure_optimizers(self):
            opt = ft.as_torch_optimizer(ft.adamw(lr=1e-2), self.net.named_parameters())
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=20, eta_min=1e-4)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    module = Module()
    trainer = lightning.Trainer(
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    # batch_size=None: the prebuilt batches as they are, in order
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    params, _ = _functrain_run(
        _model(), ft.adamw(lr=cosine_annealing_lr(1e-2, T_max=20, eta_min=1e-4)), batches
    )
    _assert_bitwise(module.net, params)


def test_readme_section_runs():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.search(r"## functrain in any training loop\n.*?```python\n(.*?)```", readme, re.S)
    namespace: dict = {}
    exec(compile(code.group(1), "README.md", "exec"), namespace)
    opt, sched = namespace["opt"], namespace["sched"]
    assert opt.param_groups[0]["lr"] == sched.get_last_lr()[0] < 1e-3
    # the third step ran with the lr the scheduler set after the second
    lr = float(ft.values_in_force(opt.opt_state)["lr"])
    # (torch's recursive cosine against the closed form: float64 rounding apart)
    assert math.isclose(lr, 1e-3 * (1 + math.cos(math.pi * 2 / 100)) / 2, rel_tol=1e-12)
    assert namespace["sgd"].param_groups[0]["momentum"] == 0.9


def test_mmengine_momentum_scheduler_drives_a_factory_like_torchs_fused_adamw(
    tmp_path, monkeypatch
):
    """CosineAnnealingMomentum writes betas[0] every iteration: the factory rebuilds AdamW
    with it. Against mmengine's own run with torch's fused AdamW (what run_mmengine gives
    the "AdamW" type): the same clip_grad_norm_ by the OptimWrapper, then the same fused
    kernel with the same lr and betas on both sides, so bitwise."""
    pytest.importorskip("mmengine")
    import mmengine
    from mmengine.registry import OPTIMIZERS

    from tests.test_config_mmengine import CYCLIC, _config, compare_tensors
    from tests.test_config_mmengine import run_mmengine as run_mm

    monkeypatch.setattr(mmengine.runner.loops.time, "sleep", lambda s: None)
    built_here = []

    def functrain_adamw(params, **kwargs):
        built_here.append(ft.as_torch_optimizer(ft.adamw, params, **kwargs))
        return built_here[-1]

    OPTIMIZERS.register_module(name="FunctrainAdamW", module=functrain_adamw, force=True)
    cfg = _config("digits_momentum_cosine.py", CYCLIC)
    mm_cfg = copy.deepcopy(cfg)
    mm_cfg["optim_wrapper"]["optimizer"]["type"] = "FunctrainAdamW"
    ours = run_mm(mm_cfg, tmp_path / "ours")
    torch_run = run_mm(cfg, tmp_path / "torch")
    assert len(built_here) == 1
    assert ours.labels == torch_run.labels and ours.events == torch_run.events
    assert ours.lr == torch_run.lr and ours.momentum == torch_run.momentum
    assert len({tuple(m.values()) for m in ours.momentum}) > 10  # betas[0] moved
    # the betas[0] in force in the adapter's state: the last one the scheduler wrote
    last_b1 = float(ft.values_in_force(built_here[0].opt_state)["momentum"])
    assert last_b1 == next(iter(ours.momentum[-1].values()))
    params = set(ours.lr[0])  # the recorder's keys: every parameter's name
    for when in ("first", "last"):
        err = compare_tensors(getattr(ours, when), getattr(torch_run, when), params, set())
        assert all(v == 0.0 for v in err.values()), (when, err)
