"""L-BFGS as ``torch.optim.LBFGS`` computes it, with the closure passed to ``update``.

L-BFGS re-evaluates the objective inside a step (up to ``max_iter`` iterations, each with a
fixed step or a strong-Wolfe line search), so its ``update`` needs a function that evaluates
the loss and its gradient at given parameters. It is given as an extra keyword argument::

    def value_fn(params):                       # -> (loss, grads), grads shaped like params
        return torch.func.grad_and_value(loss_fn)(params)[::-1]

    tx = lbfgs(lr=1, max_iter=20, line_search_fn="strong_wolfe")
    state = tx.init(params)
    loss, grads = value_fn(params)
    updates, state = tx.update(grads, state, params, value_fn=value_fn, loss=loss)
    params = apply_updates(params, updates)

or ``loss_fn=`` (a function returning only the loss; the gradient is then taken with
``torch.func.grad_and_value``). ``loss=`` is the loss at ``params`` for which ``updates``
is the gradient, torch's first ``closure()`` call; without it ``update`` makes that call
itself and uses its gradient (``updates`` then only gives the tree structure).

Unlike every other transform, L-BFGS decides on the host: the convergence tests
(``tolerance_grad``, ``tolerance_change``), the curvature test ``y.s > 1e-10``, the
iteration and evaluation budgets and the line search all read tensor values with Python
comparisons, exactly as torch does. Each ``update`` therefore syncs with the device several
times per iteration, and is not differentiable (``torch.func.grad`` cannot trace it). The
state holds, like torch's, Python floats next to tensors.

The arithmetic follows torch's step operation by operation on one flat vector of all leaves
(they must share a device and dtype, as torch requires); the result is returned as
``updates = new_params - params``. The strong-Wolfe line search is
:mod:`functrain.transforms.line_search`; this module holds the state, the factory and the step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import torch
from torch import Tensor

from functrain.transforms import foreach as fe
from functrain.transforms.base import (
    FlatTransform,
    GradientTransformation,
    from_flat,
    state_record,
    static_field,
)
from functrain.transforms.hyperparams import Schedule, value_at
from functrain.transforms.line_search import Number, strong_wolfe
from functrain.transforms.optim_parts import check_state_paths, refuse_members
from functrain.transforms.validation import check_nonnegative, is_schedule
from functrain.tree import PyTree, TreeInfo, flatten_like

__all__ = ["LbfgsState", "lbfgs"]


@state_record
class LbfgsState:
    """State of :func:`lbfgs`: torch's LBFGS state, field for field.

    Attributes:
        func_evals: total number of objective evaluations (0-d int64).
        n_iter: total number of L-BFGS iterations (0-d int64).
        count: number of ``update`` calls (0-d int64); a scheduled ``lr`` is evaluated here.
        lr: the learning rate in force (0-d float64).
        loss: the loss at the parameters of the last ``update`` call (torch's return value
            of ``step``), or ``None`` before the first.
        d: last search direction (flat), or ``None``.
        t: last step length (a float, or a 0-d tensor as torch leaves it), or ``None``.
        old_dirs, old_stps, ro: the curvature history ``y``, ``s`` and ``1 / y.s``.
        H_diag: scale of the initial inverse Hessian (float or 0-d tensor), or ``None``.
        prev_flat_grad: the last gradient (flat), or ``None``.
        prev_loss: the last loss (float), or ``None``.
        paths: dotted leaf paths the state was built for (static).
    """

    func_evals: Tensor
    n_iter: Tensor
    count: Tensor
    lr: Tensor
    loss: Any
    d: Tensor | None
    t: Any
    old_dirs: tuple[Tensor, ...]
    old_stps: tuple[Tensor, ...]
    ro: tuple[Any, ...]
    H_diag: Any
    prev_flat_grad: Tensor | None
    prev_loss: Any
    paths: tuple[str, ...] = static_field()


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"Invalid {name}: {value!r}; {name} must be an integer >= {minimum}")
    return value


# Why L-BFGS has no stacked-members form (functrain.ensemble).
_NO_ENSEMBLE = (
    "its line search and stopping tests decide on the host from one loss for the whole "
    "tree, so stacked members cannot each take their own iterations; run one lbfgs per member"
)


def lbfgs(
    lr: float | Schedule = 1.0,
    max_iter: int = 20,
    max_eval: int | None = None,
    tolerance_grad: float = 1e-7,
    tolerance_change: float = 1e-9,
    history_size: int = 100,
    line_search_fn: str | None = None,
) -> GradientTransformation:
    """L-BFGS, as ``torch.optim.LBFGS``; ``update`` needs ``value_fn=`` or ``loss_fn=``.

    One ``update`` is one torch ``step(closure)``: up to ``max_iter`` L-BFGS iterations
    (two-loop recursion over the last ``history_size`` curvature pairs, the first step
    scaled by ``min(1, 1/||g||_1) * lr``), each moving by ``lr`` along the direction or by
    the step a strong-Wolfe line search finds, stopping early on ``tolerance_grad`` (max
    gradient entry), ``tolerance_change`` (directional derivative, step or loss change) or
    ``max_eval`` evaluations. It owns the whole update (no ``scale_by_learning_rate``
    after it): the step lengths come from the line search and the curvature history.

    The decisions are made on the host and the update is not differentiable; see the
    module docstring for how to call ``update``.

    Args:
        lr: learning rate (default 1), or a schedule of the number of ``update`` calls
            (read on the host).
        max_iter: iterations per ``update``.
        max_eval: objective evaluations per ``update`` (default ``max_iter * 5 // 4``).
        tolerance_grad: stop when ``max |g| <= tolerance_grad``.
        tolerance_change: stop when the step, the loss change or the directional derivative
            is below it.
        history_size: curvature pairs kept.
        line_search_fn: ``None`` (fixed step ``lr``) or ``"strong_wolfe"``.

    Example:
        >>> tx = lbfgs(lr=1.0, max_iter=20, line_search_fn="strong_wolfe")
    """
    refuse_members("lbfgs", f"it cannot run under functrain.ensemble: {_NO_ENSEMBLE}", lr=lr)
    check_nonnegative("lr", lr, allow_schedule=True)
    max_iter = _check_int("max_iter", max_iter, 1)
    max_eval = max_iter * 5 // 4 if max_eval is None else _check_int("max_eval", max_eval, 1)
    check_nonnegative("tolerance_grad", tolerance_grad)
    check_nonnegative("tolerance_change", tolerance_change)
    history_size = _check_int("history_size", history_size, 1)
    if line_search_fn not in (None, "strong_wolfe"):
        raise ValueError(
            f"Invalid line_search_fn: {line_search_fn!r}; only None and 'strong_wolfe' are "
            "supported"
        )
    tolerance_grad, tolerance_change = float(tolerance_grad), float(tolerance_change)

    def init(params: list[Tensor], info: TreeInfo) -> LbfgsState:
        if info.members is not None:
            raise ValueError(f"lbfgs cannot run under functrain.ensemble: {_NO_ENSEMBLE}")
        if len(info.groups) > 1:
            first, other = params[info.groups[0][0]], params[info.groups[1][0]]
            raise ValueError(
                "lbfgs needs every leaf on one device with one dtype (torch's LBFGS works on "
                f"one flat vector): leaf {info.paths[info.groups[1][0]]!r} is "
                f"{other.dtype} on {other.device}, leaf {info.paths[0]!r} {first.dtype} on "
                f"{first.device}"
            )
        device = params[0].device if params else torch.device("cpu")
        zero = torch.zeros((), dtype=torch.int64, device=device)
        lr0 = value_at(lr, zero) if is_schedule(lr) else lr
        return LbfgsState(
            func_evals=zero,
            n_iter=zero,
            count=zero,
            lr=torch.as_tensor(lr0, dtype=torch.float64, device=device),
            loss=None,
            d=None,
            t=None,
            old_dirs=(),
            old_stps=(),
            ro=(),
            H_diag=None,
            prev_flat_grad=None,
            prev_loss=None,
            paths=info.paths,
        )

    def update(
        updates: list[Tensor],
        state: LbfgsState,
        params: list[Tensor] | None,
        info: TreeInfo,
        *,
        value_fn: Callable[[PyTree], tuple[Any, PyTree]] | None = None,
        loss_fn: Callable[[PyTree], Any] | None = None,
        loss: Any = None,
        **extra: Any,
    ) -> tuple[list[Tensor], LbfgsState]:
        check_state_paths("lbfgs", state.paths, info)
        fe.refuse_vmap(
            "lbfgs",
            "its iterations and line search re-evaluate value_fn / loss_fn and branch on the "
            "loss and gradient values on the host",
            "vmap a first-order optimizer instead (functrain.adam, functrain.sgd, ...), or run "
            "lbfgs once per member outside vmap",
        )
        if params is None:
            raise ValueError("lbfgs needs the parameters: call update(grads, state, params, ...)")
        if (value_fn is None) == (loss_fn is None):
            raise ValueError(
                "lbfgs.update needs exactly one of value_fn=(params -> (loss, grads)) or "
                "loss_fn=(params -> loss) to re-evaluate the objective"
            )
        if info.multipliers is not None and any(m != (1.0, 1.0) for m in info.multipliers):
            raise ValueError(
                "lbfgs does not support per-parameter multipliers (torch's LBFGS has no "
                "parameter groups either)"
            )
        evaluate = _evaluator(value_fn, loss_fn, info)
        step_lr = float(value_at(lr, state.count)) if is_schedule(lr) else float(state.lr)
        # Private working copies: torch moves the parameters in place during a step.
        xs = [p.detach().clone(memory_format=torch.contiguous_format) for p in params]
        if loss is None:
            orig_loss, flat_grad = evaluate(xs)
        else:
            orig_loss, flat_grad = loss, _flat(updates)
        new_state = _step(
            xs,
            evaluate,
            float(orig_loss),
            flat_grad,
            state,
            lr=step_lr,
            max_iter=max_iter,
            max_eval=max_eval,
            tolerance_grad=tolerance_grad,
            tolerance_change=tolerance_change,
            history_size=history_size,
            line_search_fn=line_search_fn,
        )
        new_state = _replace(
            new_state,
            count=state.count + 1,
            lr=torch.as_tensor(step_lr, dtype=torch.float64, device=state.lr.device),
            loss=orig_loss.detach() if isinstance(orig_loss, Tensor) else orig_loss,
        )
        return [_exact_delta(x, p) for x, p in zip(xs, params, strict=True)], new_state

    name = f"lbfgs(lr={lr!r}, max_iter={max_iter}, line_search_fn={line_search_fn!r})"
    return from_flat(FlatTransform(init, update, name=name))


def _replace(state: LbfgsState, **changes: Any) -> LbfgsState:
    return attrs.evolve(state, **changes)


def _exact_delta(x: Tensor, p: Tensor) -> Tensor:
    """An update ``u`` with ``p + u == x`` in floating point wherever one exists.

    ``x - p`` alone is inexact when ``x`` and ``p`` are far apart (a sign change, say), and
    ``apply_updates`` would then land an ulp away from torch's in-place iterate; L-BFGS's
    later iterations can amplify that ulp by orders of magnitude. Two correction rounds
    (``u += x - (p + u)``, each difference exact near convergence) remove it.
    """
    u = x - p
    for _ in range(2):
        u = u + (x - (p + u))
    return u


def _flat(tensors: list[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors], 0)


Evaluate = Callable[[list[Tensor]], tuple[Any, Tensor]]


def _evaluator(
    value_fn: Callable[[PyTree], tuple[Any, PyTree]] | None,
    loss_fn: Callable[[PyTree], Any] | None,
    info: TreeInfo,
) -> Evaluate:
    def evaluate(xs: list[Tensor]) -> tuple[Any, Tensor]:
        tree = info.unflatten(xs)
        with torch.enable_grad():
            if value_fn is not None:
                result = value_fn(tree)
                if not isinstance(result, tuple) or len(result) != 2:
                    raise ValueError(
                        "value_fn must return (loss, grads) with grads shaped like params; "
                        "pass loss_fn= for a function returning only the loss"
                    )
                value, grads = result
            else:
                grads, value = torch.func.grad_and_value(loss_fn)(tree)
        leaves = flatten_like(grads, info, what="grads returned by value_fn", against="params")
        return value, _flat([g.detach() for g in leaves])

    return evaluate


def _add_grad(xs: list[Tensor], step_size: Number, update: Tensor) -> None:
    offset = 0
    for x in xs:
        numel = x.numel()
        x.add_(update[offset : offset + numel].view_as(x), alpha=step_size)
        offset += numel


def _step(
    xs: list[Tensor],
    evaluate: Evaluate,
    loss: float,
    flat_grad: Tensor,
    state: LbfgsState,
    *,
    lr: float,
    max_iter: int,
    max_eval: int,
    tolerance_grad: float,
    tolerance_change: float,
    history_size: int,
    line_search_fn: str | None,
) -> LbfgsState:
    """torch.optim.LBFGS.step on the flat vector ``xs`` (moved in place), line for line."""
    func_evals = int(state.func_evals) + 1
    state_n_iter = int(state.n_iter)
    current_evals = 1

    d, t = state.d, state.t
    old_dirs, old_stps, ro = list(state.old_dirs), list(state.old_stps), list(state.ro)
    H_diag, prev_flat_grad, prev_loss = state.H_diag, state.prev_flat_grad, state.prev_loss

    def finish() -> LbfgsState:
        device = state.func_evals.device
        return _replace(
            state,
            func_evals=torch.tensor(func_evals, device=device),
            n_iter=torch.tensor(state_n_iter, device=device),
            d=d,
            t=t,
            old_dirs=tuple(old_dirs),
            old_stps=tuple(old_stps),
            ro=tuple(ro),
            H_diag=H_diag,
            prev_flat_grad=prev_flat_grad,
            prev_loss=prev_loss,
        )

    if flat_grad.abs().max() <= tolerance_grad:
        return finish()

    n_iter = 0
    while n_iter < max_iter:
        n_iter += 1
        state_n_iter += 1

        if state_n_iter == 1:
            d = flat_grad.neg()
            old_dirs, old_stps, ro = [], [], []
            H_diag = 1
        else:
            y = flat_grad.sub(prev_flat_grad)
            s = d.mul(t)
            ys = y.dot(s)
            if ys > 1e-10:
                if len(old_dirs) == history_size:
                    old_dirs.pop(0)
                    old_stps.pop(0)
                    ro.pop(0)
                old_dirs.append(y)
                old_stps.append(s)
                ro.append(1.0 / ys)
                H_diag = ys / y.dot(y)

            num_old = len(old_dirs)
            al: list[Any] = [None] * history_size
            q = flat_grad.neg()
            for i in range(num_old - 1, -1, -1):
                al[i] = old_stps[i].dot(q) * ro[i]
                q.add_(old_dirs[i], alpha=-al[i])
            d = r = torch.mul(q, H_diag)
            for i in range(num_old):
                be_i = old_dirs[i].dot(r) * ro[i]
                r.add_(old_stps[i], alpha=al[i] - be_i)

        if prev_flat_grad is None:
            prev_flat_grad = flat_grad.clone(memory_format=torch.contiguous_format)
        else:
            # A copy, not torch's copy_: the previous state's buffer is not ours to change.
            prev_flat_grad = flat_grad.clone(memory_format=torch.contiguous_format)
        prev_loss = loss

        if state_n_iter == 1:
            t = min(1.0, 1.0 / flat_grad.abs().sum()) * lr
        else:
            t = lr

        gtd = flat_grad.dot(d)
        if gtd > -tolerance_change:
            break

        ls_func_evals = 0
        if line_search_fn is not None:
            x_init = [x.clone(memory_format=torch.contiguous_format) for x in xs]

            def obj_func(x: list[Tensor], t: Number, d: Tensor) -> tuple[float, Tensor]:
                _add_grad(xs, t, d)
                value, grad = evaluate(xs)
                for dst, src in zip(xs, x, strict=True):
                    dst.copy_(src)
                return float(value), grad

            loss, flat_grad, t, ls_func_evals = strong_wolfe(
                obj_func, x_init, t, d, loss, flat_grad, gtd, max_ls=max_eval - current_evals
            )
            _add_grad(xs, t, d)
            opt_cond = flat_grad.abs().max() <= tolerance_grad
        else:
            _add_grad(xs, t, d)
            if n_iter != max_iter:
                value, flat_grad = evaluate(xs)
                loss = float(value)
                opt_cond = flat_grad.abs().max() <= tolerance_grad
                ls_func_evals = 1

        current_evals += ls_func_evals
        func_evals += ls_func_evals

        if n_iter == max_iter:
            break
        if current_evals >= max_eval:
            break
        if opt_cond:
            break
        if d.mul(t).abs().max() <= tolerance_change:
            break
        if abs(loss - prev_loss) < tolerance_change:
            break

    return finish()
