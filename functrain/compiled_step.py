"""A train step compiled as one program: forward, backward and update (``make_train_step(...,
compile=True)``).

The step's Python (``functional_call``, autograd or ``torch.func.grad``, the chain, its
attrs state records, the schedules) runs once under ``make_fx`` with fake tensors, which
records every tensor operation of the step into one graph: the forward, the backward and
the optimizer update, with the step counters, scheduled values and the loss scale as graph
inputs (on the device; changing them never recompiles). ``torch.compile(fullgraph=True)``
compiles that graph. A step whose Python branches on tensor values cannot be recorded;
then ``torch.compile`` runs the step itself without ``fullgraph`` and a warning names its
graph breaks (from ``torch._dynamo.explain``); if that fails too, a warning and the eager
step.

A program is compiled per input signature (tree structure, shapes, dtypes): a shorter last
batch compiles a second one. A step that changes the state's layout (torch's SGD momentum
buffer, created by the first step) runs eagerly instead: no later step has its inputs.
Tensors the step reads from elsewhere (a schedule's milestones) are constants of the graph. ``mode="reduce-overhead"`` (``compile="reduce-overhead"``)
captures the program in a CUDA graph on CUDA (static input buffers, no host work between
the kernels); on the CPU it is the default mode.

What differs from the eager step: the pointwise ops are fused (rounding within a few ulps
per op); random ops (dropout) draw from inductor's generator, not the eager one.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any

import optree
import torch
from torch import Tensor

from functrain.state import TrainState
from functrain.tree import NAMESPACE

__all__ = ["compile_train_step"]

TrainStep = Callable[[TrainState, Any], tuple[TrainState, dict[str, Tensor]]]


def _signature(leaves: list[Any]) -> tuple[Any, ...]:
    return tuple(
        (tuple(t.shape), t.dtype, t.device) if isinstance(t, Tensor) else t for t in leaves
    )


def _layout(tree: Any) -> tuple[Any, ...]:
    """The tree's structure and its leaves' shapes and dtypes (what a compiled program fixes)."""
    leaves, spec = optree.tree_flatten(tree, namespace=NAMESPACE)
    return spec, _signature(leaves)


def _eager(now: list[Any]) -> Any:
    raise AssertionError("the eager marker is never called")


#: A signature whose step runs eagerly (it changes the state's layout; see ``build``).
_EAGER: Callable[[list[Any]], Any] = _eager


def compile_train_step(step: TrainStep, compile: bool | str = True) -> TrainStep:
    """``step`` as one compiled program per input signature.

    Args:
        step: a train step from :func:`functrain.make_train_step` (any step that only
            replaces ``params``, ``buffers`` and ``opt_state``).
        compile: ``True`` (``torch.compile``'s default mode) or a ``torch.compile`` mode name
            (``"reduce-overhead"``: CUDA graphs on CUDA; ``"max-autotune"``, ...).

    Returns:
        The compiled step, with ``step.compile_info`` a dict: ``programs``, ``seconds``
        (tracing + compiling), ``mode`` (``"fullgraph"``, ``"graph breaks"`` or ``"eager"``)
        and ``breaks`` (the graph-break reasons, when there were any).

    Example:
        >>> step = make_train_step(model, loss_fn, tx, compile=True)  # doctest: +SKIP
    """
    mode = None if compile is True else compile
    if mode is not None and not isinstance(mode, str):
        raise ValueError(f"compile must be a bool or a torch.compile mode name, got {compile!r}")
    programs: dict[Any, Callable[[list[Tensor]], list[Any]]] = {}
    info: dict[str, Any] = {"programs": 0, "seconds": 0.0, "mode": "fullgraph", "breaks": []}
    fallback: dict[str, Any] = {}

    def split(state: TrainState, batch: Any) -> tuple[list[Any], Any]:
        tree = (state.params, state.buffers, state.opt_state, batch)
        return optree.tree_flatten(tree, namespace=NAMESPACE)

    def core_for(state: TrainState, spec: Any) -> Callable[..., Any]:
        out_spec: list[Any] = []

        steady: list[bool] = []

        def core(*leaves: Tensor) -> list[Tensor]:
            params, buffers, opt_state, batch = optree.tree_unflatten(spec, list(leaves))
            new, metrics = step(
                state.replace(params=params, buffers=buffers, opt_state=opt_state), batch
            )
            out, o_spec = optree.tree_flatten(
                (new.params, new.buffers, new.opt_state, metrics), namespace=NAMESPACE
            )
            out_spec.append(o_spec)
            steady.append(
                _layout((params, buffers, opt_state))
                == _layout((new.params, new.buffers, new.opt_state))
            )
            return out

        core.out_spec = out_spec  # type: ignore[attr-defined]
        core.steady = steady  # type: ignore[attr-defined]
        return core

    def build(state: TrainState, leaves: list[Any], spec: Any) -> Callable[..., Any]:
        from functrain.transforms.compiled import _hoist_scalars, compile_program, record

        core = core_for(state, spec)
        try:
            gm = record(core, leaves)
        except Exception as err:  # noqa: BLE001 - e.g. a data-dependent Python branch
            return graph_breaks(state, leaves, spec, err)
        if not core.steady[-1]:  # type: ignore[attr-defined]
            # This step changes the state's layout (torch's SGD momentum buffer appears at
            # the first step): no later step has these inputs, so compiling it would double
            # the compile time for one step. It runs eagerly.
            return _EAGER
        _hoist_scalars(gm)
        program = compile_program(gm, fullgraph=True, mode=mode)
        o_spec = core.out_spec[-1]  # type: ignore[attr-defined]

        def run(now: list[Any]) -> Any:
            return optree.tree_unflatten(o_spec, list(program(*now)))

        return run

    def graph_breaks(
        state: TrainState, leaves: list[Any], spec: Any, err: Exception
    ) -> Callable[..., Any]:
        core = core_for(state, spec)
        try:
            # On copies: explain runs the step, which may write into the state (donation).
            explained = torch._dynamo.explain(core)(*(t.clone() for t in leaves))
            breaks = sorted({str(b.reason).splitlines()[0] for b in explained.break_reasons})
        except Exception as explain_err:  # noqa: BLE001
            breaks = [f"{type(explain_err).__name__}: {explain_err}".splitlines()[0]]
        info["mode"], info["breaks"] = "graph breaks", breaks
        warnings.warn(
            "make_train_step(compile=...): the step cannot be recorded as one program "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); compiling "
            f"it with {len(breaks)} graph break(s): " + "; ".join(breaks[:5]),
            RuntimeWarning,
            stacklevel=4,
        )
        from functrain.transforms.compiled import compile_program

        program = compile_program(core, mode=mode)

        def run(now: list[Any]) -> Any:
            out = program(*now)
            return optree.tree_unflatten(core.out_spec[-1], list(out))  # type: ignore[attr-defined]

        return run

    def compiled_step(state: TrainState, batch: Any) -> tuple[TrainState, dict[str, Tensor]]:
        if fallback:
            return step(state, batch)
        leaves, spec = split(state, batch)
        tensors = all(isinstance(t, Tensor) for t in leaves)
        key = (spec, _signature(leaves))
        run = programs.get(key)
        if run is _EAGER:
            return step(state, batch)
        if run is None:
            start = time.perf_counter()
            try:
                if not tensors:
                    raise TypeError("the batch holds non-tensor leaves")
                run = build(state, leaves, spec)
                if run is _EAGER:
                    programs[key] = run
                    info["seconds"] += time.perf_counter() - start
                    return step(state, batch)
                out = run(leaves)
            except Exception as err:  # noqa: BLE001 - no compiler, an inductor error, ...
                warnings.warn(
                    "make_train_step(compile=...): torch.compile is unavailable for this step "
                    f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                    "running it eagerly",
                    RuntimeWarning,
                    stacklevel=2,
                )
                fallback["eager"] = True
                info["mode"] = "eager"
                return step(state, batch)
            info["seconds"] += time.perf_counter() - start
            info["programs"] += 1
            programs[key] = run
        else:
            out = run(leaves)
        params, buffers, opt_state, metrics = out
        return state.replace(params=params, buffers=buffers, opt_state=opt_state), metrics

    compiled_step.compile_info = info  # type: ignore[attr-defined]
    return compiled_step
