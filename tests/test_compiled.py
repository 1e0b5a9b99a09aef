"""functrain.compiled and make_train_step(compile=True): the compiled programs against the eager
chain, compile counts, and the eager fallback.

Compiling is slow on a 2-core CPU (seconds per program), so the trees are tiny and the
compiled transforms are shared through module-scoped fixtures.

Tolerances: the compiled step fuses each transform's ops into one loop per buffer, where
the C++ compiler may contract ``a * b + c`` into an FMA and the packed global norm sums in
another order; each op then differs by at most an ulp or two, so after a few steps the
parameters agree to ~1e-7 relative. The tests allow 1e-6 (the brief's bound).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from torch._dynamo.utils import counters

import functrain as ft
from functrain.cli import main
from functrain.config import ConfigError, build_runner
from functrain.config.build import compile_option
from functrain.config.file import load_config
from functrain.state import TrainState
from functrain.step import make_train_step

STEPS = 5


def _params() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "enc.weight": torch.randn(6, 5, generator=g),
        "enc.bias": torch.randn(6, generator=g),
        "head.weight": torch.randn(3, 6, generator=g),
        "head.bias": torch.randn(3, generator=g),
    }


def _grads(step: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return {k: torch.randn(v.shape, generator=g) for k, v in _params().items()}


def _mixed_chain() -> ft.GradientTransformation:
    """A user transform, partition by leaf rank, masked by path, a cosine schedule."""
    halve_negative = ft.stateless_foreach(
        lambda u, p: [torch.where(x < 0, 0.5 * x, x) for x in u], name="halve_negative"
    )
    return ft.chain(
        ft.clip(1.0),
        halve_negative,
        ft.partition(
            {
                "matrix": ft.adamw(
                    lr=ft.schedules.cosine_annealing_lr(1e-2, T_max=10), weight_decay=0.1
                ),
                "vector": ft.lion(lr=1e-3),
            },
            lambda path, p: "matrix" if p.ndim > 1 else "vector",
        ),
        ft.masked(ft.scale(0.5), lambda path: path.startswith("enc.")),
    )


def _assert_close(got: dict, want: dict) -> None:
    for k in want:
        scale = want[k].abs().max()
        diff = (got[k] - want[k]).abs().max()
        assert diff <= 1e-6 * scale, f"{k}: {diff} vs scale {scale}"


@pytest.fixture(scope="module")
def mixed_run() -> dict:
    """Eager and compiled (donating) runs of the mixed chain, and the compile counters."""
    counters.clear()
    eager, fast = _mixed_chain(), ft.compiled(_mixed_chain())
    p_eager, p_fast = _params(), _params()
    s_eager, s_fast = eager.init(p_eager), fast.init(p_fast)
    for step in range(STEPS):
        p_eager, s_eager = ft.apply_gradients(eager, p_eager, _grads(step), s_eager)
        p_fast, s_fast = ft.apply_gradients(fast, p_fast, _grads(step), s_fast, donate=True)
    return {
        "eager": p_eager,
        "compiled": p_fast,
        "stats": ft.compile_stats(fast),
        "frames": dict(counters["stats"]),
        "state": s_fast,
    }


def test_compiled_matches_eager_chain(mixed_run: dict) -> None:
    assert not mixed_run["stats"]["eager"]
    _assert_close(mixed_run["compiled"], mixed_run["eager"])


def test_one_compile_for_all_steps_of_a_schedule(mixed_run: dict) -> None:
    # The step counter and the cosine learning rate are graph inputs: five steps, one program.
    assert mixed_run["stats"]["compiles"] == 1
    assert mixed_run["frames"].get("unique_graphs", 0) == 1


def test_values_in_force_see_through_the_compiled_state(mixed_run: dict) -> None:
    values = ft.values_in_force(mixed_run["state"])
    assert values, "the learning rates in force are readable from a CompiledState"


def test_pure_update_matches_and_leaves_inputs_alone() -> None:
    eager = ft.chain(ft.clip(1.0), ft.adamw(lr=1e-2))
    fast = ft.compiled(ft.chain(ft.clip(1.0), ft.adamw(lr=1e-2)))
    params = _params()
    before = {k: v.clone() for k, v in params.items()}
    s_eager, s_fast = eager.init(params), fast.init(params)
    for step in range(2):
        u_eager, s_eager = eager.update(_grads(step), s_eager, params)
        u_fast, s_fast = fast.update(_grads(step), s_fast, params)
        _assert_close(u_fast, u_eager)
    for k in params:
        assert torch.equal(params[k], before[k])


def test_fallback_warns_once_and_runs_eagerly(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> object:
        raise RuntimeError("no C++ compiler")

    # torch.compile failing stands for a missing C++ compiler or an inductor error.
    monkeypatch.setattr(torch, "compile", broken)
    eager, fast = ft.adamw(lr=1e-2), ft.compiled(ft.adamw(lr=1e-2))
    p_eager, p_fast = _params(), _params()
    s_eager, s_fast = eager.init(p_eager), fast.init(p_fast)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(2):
            p_eager, s_eager = ft.apply_gradients(eager, p_eager, _grads(step), s_eager)
            p_fast, s_fast = ft.apply_gradients(fast, p_fast, _grads(step), s_fast)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "no C++ compiler" in messages[0]
    assert ft.compile_stats(fast)["eager"]
    _assert_close(p_fast, p_eager)


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="donate must be a bool"):
        ft.compiled(ft.adamw(), donate="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="GradientTransformation"):
        ft.compiled(lambda x: x)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not built by functrain.compiled"):
        ft.compile_stats(ft.adamw())


def test_compiled_train_step_matches_eager() -> None:
    torch.manual_seed(0)
    # No bias before the BatchNorm: its gradient is rounding noise, which Adam would amplify.
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 16, bias=False),
        torch.nn.BatchNorm1d(16),
        torch.nn.ReLU(),
        torch.nn.Linear(16, 3),
    )

    def loss_fn(forward, batch):
        x, y = batch
        return torch.nn.functional.cross_entropy(forward(x), y)

    tx = ft.chain(ft.clip(1.0), ft.adamw(lr=1e-2))
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 8, generator=g), torch.randint(0, 3, (8,), generator=g))] * 4
    eager_step = make_train_step(model, loss_fn, tx)
    fast_step = make_train_step(model, loss_fn, tx, compile=True)
    s_eager, s_fast = TrainState.create(model, tx), TrainState.create(model, tx)
    for batch in batches:
        s_eager, m_eager = eager_step(s_eager, batch)
        s_fast, m_fast = fast_step(s_fast, batch)
    info = fast_step.compile_info
    assert info["mode"] == "fullgraph" and info["programs"] == 1
    for k in s_eager.params:
        assert torch.allclose(s_fast.params[k], s_eager.params[k], rtol=1e-5, atol=1e-5), k
    assert torch.allclose(m_fast["loss"], m_eager["loss"], rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_captured_step_does_not_sync() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
    model = model.cuda()

    def loss_fn(forward, batch):
        x, y = batch
        return torch.nn.functional.cross_entropy(forward(x), y)

    tx = ft.chain(ft.clip(1.0), ft.adamw(lr=ft.schedules.cosine_annealing_lr(1e-3, T_max=100)))
    step = make_train_step(model, loss_fn, tx, compile="reduce-overhead")
    state = TrainState.create(model, tx)
    x = torch.randn(16, 32, device="cuda")
    y = torch.randint(0, 4, (16,), device="cuda")
    for _ in range(3):  # compile and warm up (CUDA graph recording) outside the check
        state, metrics = step(state, (x, y))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(10):  # the steps between two log intervals
            state, metrics = step(state, (x, y))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(metrics["loss"]).item()


def test_under_vmap_runs_eagerly_without_warning_and_compiles_afterwards() -> None:
    # vmap's batched tensors cannot be recorded by make_fx: the call under vmap runs the
    # chain eagerly over the packed buffers (no warning, no fallback for later calls).
    n = 3
    stacked = {k: torch.stack([v + i for i in range(n)]) for k, v in _params().items()}
    grads = {k: torch.stack([v * (i + 1) for i in range(n)]) for k, v in _grads(0).items()}
    eager, fast = ft.adamw(lr=1e-2), ft.compiled(ft.adamw(lr=1e-2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        state = torch.func.vmap(fast.init)(stacked)
        batched, _ = torch.func.vmap(lambda p, g, s: ft.apply_gradients(fast, p, g, s))(
            stacked, grads, state
        )
    assert ft.compile_stats(fast) == {"compiles": 0, "seconds": 0.0, "eager": False}
    for i in range(n):
        p_i = {k: v[i] for k, v in stacked.items()}
        want, _ = ft.apply_gradients(
            eager, p_i, {k: v[i] for k, v in grads.items()}, eager.init(p_i)
        )
        _assert_close({k: v[i] for k, v in batched.items()}, want)
    # Outside vmap the same transform compiles as usual.
    params = _params()
    got, _ = ft.apply_gradients(fast, params, _grads(0), fast.init(params))
    want, _ = ft.apply_gradients(eager, _params(), _grads(0), eager.init(_params()))
    stats = ft.compile_stats(fast)
    assert stats["compiles"] == 1 and not stats["eager"]
    _assert_close(got, want)


# --------------------------------------------------------------------------- Runner / config / CLI

CONFIGS = Path(__file__).resolve().parents[1] / "examples" / "configs"


def _digits_run(name: str, compile: object, work_dir: Path) -> tuple[TrainState, dict]:
    """A few iterations of a seed config (the compile time dominates the test's time)."""
    cfg = load_config(CONFIGS / name)
    cfg["train_cfg"] = dict(type="EpochBasedTrainLoop", max_epochs=1, val_interval=1000)
    # 1257 samples: 9 batches of 128, the last one dropped (one batch shape: one program).
    cfg["train_dataloader"].update(batch_size=128, drop_last=True)
    for key in ("val_cfg", "val_dataloader", "val_evaluator"):
        cfg[key] = None
    for key in ("test_cfg", "test_dataloader", "test_evaluator"):
        cfg[key] = None
    cfg["default_hooks"]["checkpoint"] = None
    built = build_runner(cfg, device="cpu", work_dir=work_dir, compile=compile)
    state = built.runner.train()
    return state, getattr(built.runner.train_step, "compile_info", {})


def test_runner_compiled_digits_config_matches_eager(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    # SGD with momentum and gradient clipping, a warmup and step schedule (the seed's 1x).
    # (An Adam-family config is not compared leaf by leaf: DigitsNet's conv biases sit
    # before a BatchNorm, their gradients are rounding noise, which Adam scales to lr.)
    eager, _ = _digits_run("digits_sgd_clip.py", None, tmp_path / "eager")
    fast, info = _digits_run("digits_sgd_clip.py", True, tmp_path / "compiled")
    assert info["mode"] == "fullgraph" and info["programs"] == 1
    assert fast.iteration == eager.iteration == 9
    # Fused pointwise ops round within an ulp or two per op; 9 steps stay far inside 1e-5.
    for tree in ("params", "buffers"):
        want, got = getattr(eager, tree), getattr(fast, tree)
        for k in want:
            if not want[k].is_floating_point():
                assert torch.equal(got[k], want[k]), k
                continue
            scale = want[k].abs().max().clamp_min(1e-3)
            assert (got[k] - want[k]).abs().max() <= 1e-5 * scale, f"{tree}.{k}"


def test_compile_config_key_follows_mmengine_spelling() -> None:
    assert compile_option(None) is False and compile_option(False) is False
    assert compile_option(True) is True and compile_option({}) is True
    assert compile_option(dict(mode="reduce-overhead")) == "reduce-overhead"
    with pytest.raises(ConfigError, match="target") as err:
        compile_option(dict(target="forward"))
    assert err.value.path == "compile.target"
    with pytest.raises(ConfigError, match="inductor"):
        compile_option(dict(backend="eager"))
    with pytest.raises(ConfigError, match="bool or a dict"):
        compile_option(3)


def test_cli_compile_flag_reaches_the_train_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import functrain.step as step_module

    seen: list[object] = []
    original = step_module.make_train_step

    def recording(*args: object, compile: object = False, **kwargs: object) -> object:
        seen.append(compile)
        return original(*args, **kwargs)  # eager: the flag's wiring is what is checked

    monkeypatch.setattr(step_module, "make_train_step", recording)
    config = str(CONFIGS / "digits_sgd_clip.py")
    short = ["--cfg-options", "train_cfg.max_epochs=1", "train_dataloader.batch_size=256"]
    flags = ([], ["--compile"], ["--compile", "max-autotune"])
    for i, flag in enumerate(flags):
        argv = ["train", config, "--work-dir", str(tmp_path / str(i)), "--device", "cpu", *flag]
        assert main([*argv, *short]) == 0, capsys.readouterr().err
    assert seen == [False, True, "max-autotune"]


def test_compile_program_pins_the_vector_width_into_inductors_cache_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Inductor's FX-graph cache key does not see ATEN_CPU_CAPABILITY: an avx2 program reloaded
    # by an avx512 process was rebuilt with 16-float vectors over loops stepping 8 (an abort
    # here). While a program runs (and so while it compiles), cpp.simdlen is the width this
    # process picks (1 without a vector ISA), so it is part of the key; afterwards it is reset.
    import torch._inductor.config as inductor_config
    from torch._inductor.cpu_vec_isa import pick_vec_isa

    from functrain.transforms.compiled import compile_program

    seen = []
    monkeypatch.setattr(
        torch, "compile", lambda fn, **kw: lambda *a: seen.append(inductor_config.cpp.simdlen)
    )
    before = inductor_config.cpp.simdlen
    compile_program(lambda x: x)(torch.ones(1))
    isa = pick_vec_isa()
    assert seen == [isa.bit_width() if isa else 1]
    assert inductor_config.cpp.simdlen == before


def test_a_first_step_that_creates_state_runs_eagerly_and_later_steps_compile_once() -> None:
    # torch's SGD momentum buffer is None until the first step: that step's program would
    # never run again, so it is not compiled (one program, not two).
    eager, fast = ft.sgd(lr=0.1, momentum=0.9), ft.compiled(ft.sgd(lr=0.1, momentum=0.9))
    p_eager, p_fast = _params(), _params()
    s_eager, s_fast = eager.init(p_eager), fast.init(p_fast)
    for step in range(3):
        p_eager, s_eager = ft.apply_gradients(eager, p_eager, _grads(step), s_eager)
        p_fast, s_fast = ft.apply_gradients(fast, p_fast, _grads(step), s_fast, donate=True)
    stats = ft.compile_stats(fast)
    assert stats["compiles"] == 1 and not stats["eager"]
    _assert_close(p_fast, p_eager)


def test_large_leaves_in_buffers_of_their_own_match_the_eager_chain() -> None:
    # own_buffer=20: enc.weight (30 elements) is its own buffer, the rest is packed by class.
    eager, fast = _mixed_chain(), ft.compiled(_mixed_chain(), own_buffer=20)
    p_eager, p_fast = _params(), _params()
    s_eager, s_fast = eager.init(p_eager), fast.init(p_fast)
    for step in range(3):
        grads = _grads(step)
        before = {k: v.clone() for k, v in grads.items()}
        p_eager, s_eager = ft.apply_gradients(eager, p_eager, _grads(step), s_eager)
        p_fast, s_fast = ft.apply_gradients(fast, p_fast, grads, s_fast, donate=True)
        for k in grads:  # the donated gradients are read, not written (an in-graph copy)
            assert torch.equal(grads[k], before[k]), k
    assert ft.compile_stats(fast)["compiles"] == 1
    _assert_close(p_fast, p_eager)
    with pytest.raises(ValueError, match="own_buffer must be None or a positive"):
        ft.compiled(ft.adamw(), own_buffer=0)


def test_compiled_ensemble_keeps_the_member_axis() -> None:
    # An ensemble is traced over its stacked leaves (packing would flatten the member axis
    # its per-member clip needs): it equals the eager ensemble within the file's bound.
    n = 3
    gen = torch.Generator().manual_seed(0)
    params = {"w": torch.randn(n, 4, 5, generator=gen), "b": torch.randn(n, 5, generator=gen)}
    grads = [{k: torch.randn(v.shape, generator=gen) for k, v in params.items()} for _ in range(3)]

    def make() -> ft.GradientTransformation:
        return ft.ensemble(ft.chain(ft.clip(1.0), ft.adamw([1e-3, 1e-2, 1e-1])), n)

    out = []
    for tx in (make(), ft.compiled(make())):
        p, s = {k: v.clone() for k, v in params.items()}, tx.init(params)
        for g in grads:
            p, s = ft.apply_gradients(tx, p, {k: v.clone() for k, v in g.items()}, s)
        out.append(p)
    _assert_close(out[1], out[0])
