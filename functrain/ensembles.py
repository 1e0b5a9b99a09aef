"""Training N ensemble members in one process: stacked parameters, one vmapped step.

An ensemble here is N copies of one module whose tensors are *stacked*: every parameter and
buffer carries a leading member axis of size N (what ``torch.func.stack_module_state``
returns). One train step runs the forward pass of all members at once with
``torch.func.vmap`` over a ``functional_call`` loss, one backward pass for all of them, then
one update of all members with :func:`functrain.apply_gradients`. With
``tx = functrain.ensemble(inner, N)`` the update has per-member semantics (a global-norm
clip per member, per-member learning rates), so member i follows the same trajectory as an
independent run of ``inner`` (with member i's hyperparameters) from member i's seed.

- :func:`init_members` builds N models from N seeds and stacks their tensors;
- :func:`make_ensemble_train_step` / :func:`make_ensemble_eval_step` are the stacked
  versions of :func:`functrain.make_train_step` / :func:`functrain.make_eval_step`;
- :func:`member_state` and :func:`member_state_dict` take member i out again, as an ordinary
  :class:`functrain.TrainState` or a ``state_dict`` that loads into the plain module.

The state is an ordinary :class:`functrain.TrainState` whose ``params``, ``buffers`` and
``opt_state`` have the member axis.

Example:
    >>> params, buffers, model = ft.init_members(lambda: torch.nn.Linear(4, 2), seeds=[0, 1, 2])
    >>> tx = ft.ensemble(ft.chain(ft.clip(1.0), ft.adamw(lr=[1e-3, 1e-2, 1e-1])), 3)
    >>> state = ft.TrainState(params=params, buffers=buffers, opt_state=tx.init(params))
    >>> def loss_fn(forward, batch):
    ...     x, y = batch
    ...     return torch.nn.functional.cross_entropy(forward(x), y)
    >>> step = ft.make_ensemble_train_step(model, loss_fn, tx, 3)
    >>> state, metrics = step(state, (torch.randn(8, 4), torch.randint(0, 2, (8,))))
    >>> metrics["loss"].shape
    torch.Size([3])
    >>> ft.member_state(state, 1).params["weight"].shape
    torch.Size([2, 4])
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import optree
import torch
from torch import Tensor
from torch.func import vmap

from functrain.state import TrainState
from functrain.step import (
    EvalStep,
    LossFn,
    StepInputs,
    TrainStep,
    _autocast,
    _autograd_gradients,
    _device_type,
    _func_gradients,
    _loss_of,
    _loss_scale_reader,
)
from functrain.transforms.base import GradientTransformation
from functrain.transforms.fused_step import apply_gradients
from functrain.transforms.members import StackedState
from functrain.transforms.multipliers import trainable_parameters
from functrain.tree import leaf_paths, tree_map

__all__ = [
    "ACTIVE_MEMBERS",
    "Members",
    "active_members",
    "init_members",
    "make_ensemble_eval_step",
    "make_ensemble_train_step",
    "member_state",
    "member_state_dict",
    "stop_members",
    "stopped_members",
]

#: The key in ``state.callbacks`` of the per-member "still training" mask: a bool tensor of
#: shape ``[N]`` on the params' device. :func:`make_ensemble_train_step` keeps a member whose
#: entry is ``False`` exactly as it was (params, buffers, optimizer state); callbacks clear
#: entries with :func:`stop_members` (``EarlyStopping``, ``TerminateOnNaN`` in member mode).
ACTIVE_MEMBERS = "active_members"


# make_ensemble_train_step(grad=...): the gradient functions of functrain.step, applied to
# the members' summed loss.
_GRADIENTS = {"func": _func_gradients, "autograd": _autograd_gradients}


class Members(NamedTuple):
    """What :func:`init_members` returns (unpacks as ``params, buffers, module``).

    Attributes:
        params: ``{name: tensor}`` of the trainable parameters, each ``[N, *shape]``.
        buffers: ``{name: tensor}`` of the buffers and frozen parameters, each ``[N, *shape]``.
        module: a copy of the first member's module on the ``meta`` device: its structure and
            code, without storage (the steps run it through ``functional_call``).
    """

    params: dict[str, Tensor]
    buffers: dict[str, Tensor]
    module: torch.nn.Module


def init_members(
    make_model: Callable[[], torch.nn.Module],
    seeds: Iterable[int],
    *,
    device: torch.device | str | None = None,
) -> Members:
    """Build one model per seed and stack their tensors along a new leading member axis.

    Member i is exactly the model ``make_model()`` builds after ``torch.manual_seed(seeds[i])``
    (bitwise: the same constructor draws the same numbers). The global random generators are
    restored afterwards, so building an ensemble does not change what the caller draws next.

    Args:
        make_model: builds a fresh module (same architecture on every call).
        seeds: one seed per member; their number is the ensemble size N.
        device: where to put the stacked tensors (default: where the modules put theirs).

    Returns:
        ``Members(params, buffers, module)``; ``params`` holds the parameters with
        ``requires_grad`` (as :meth:`functrain.TrainState.create`), ``buffers`` the buffers and
        frozen parameters, ``module`` a storage-less copy for the steps.

    Example:
        >>> params, buffers, model = init_members(lambda: torch.nn.Linear(3, 2), seeds=range(4))
        >>> params["weight"].shape
        torch.Size([4, 2, 3])
    """
    seeds = list(seeds)
    if not seeds:
        raise ValueError("init_members: seeds is empty; give one seed per ensemble member")
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise TypeError(f"init_members: seeds must be ints, got {seeds!r}")
    # CUDA generators are forked too when CUDA is there: a make_model that builds on the GPU
    # draws from them after manual_seed.
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    models = []
    with torch.random.fork_rng(devices=cuda):
        for seed in seeds:
            torch.manual_seed(seed)
            models.append(make_model())
    first = models[0]
    names = _tensor_names(first)
    for i, model in enumerate(models[1:], start=1):
        if _tensor_names(model) != names:
            raise ValueError(
                f"init_members: make_model built different architectures: member {i} "
                f"(seed {seeds[i]}) has tensors {_tensor_names(model)} where member 0 has {names}"
            )

    def stacked(per_member: list[Tensor], name: str) -> Tensor:
        shapes = {tuple(t.shape) for t in per_member}
        if len(shapes) != 1:
            raise ValueError(
                f"init_members: tensor {name!r} has different shapes across members: "
                f"{sorted(shapes)}"
            )
        out = torch.stack([t.detach() for t in per_member])
        return out.to(device) if device is not None else out

    trainable = [trainable_parameters(m) for m in models]
    # Buffers, then frozen parameters: the split TrainState.create makes.
    others = [
        {**dict(m.named_buffers()), **{k: p for k, p in m.named_parameters() if k not in t}}
        for m, t in zip(models, trainable, strict=True)
    ]
    params = {k: stacked([t[k] for t in trainable], k) for k in trainable[0]}
    buffers = {k: stacked([o[k] for o in others], k) for k in others[0]}
    # The steps only need the module's code and structure: a meta copy holds no memory.
    module = copy.deepcopy(first).to("meta")
    return Members(params, buffers, module)


def _tensor_names(model: torch.nn.Module) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return tuple(k for k, _ in model.named_parameters()), tuple(k for k, _ in model.named_buffers())


def _check_members(tree: Mapping[str, Any] | Any, members: int, what: str, where: str) -> None:
    """Every tensor leaf of ``tree`` has a leading axis of size ``members`` (else a ValueError
    naming the first offending path and both sizes). Shapes only: no host sync."""
    leaves, spec = optree.tree_flatten(tree, namespace="functrain")
    for path, leaf in zip(leaf_paths(spec), leaves, strict=True):
        if not isinstance(leaf, Tensor):
            continue
        if leaf.dim() == 0 or leaf.shape[0] != members:
            size = "no member axis (a 0-d tensor)" if leaf.dim() == 0 else str(leaf.shape[0])
            name = f"{what}[{path!r}]" if path else what
            raise ValueError(
                f"{where}: {name} has a leading (member) axis of {size}, but the ensemble has "
                f"members={members}; stacked trees carry the member axis first on every leaf"
            )


def _opt_state_members(opt_state: Any) -> int | None:
    """The member count a :func:`functrain.ensemble` state records, or ``None``."""
    return opt_state.members if isinstance(opt_state, StackedState) else None


def _check_count(members: int, where: str) -> None:
    if not isinstance(members, int) or isinstance(members, bool) or members < 1:
        raise ValueError(f"{where}: members must be a positive int, got {members!r}")


def make_ensemble_train_step(
    model: torch.nn.Module,
    loss_fn: LossFn,
    tx: GradientTransformation,
    members: int,
    *,
    batch_per_member: bool = False,
    donate: bool = True,
    autocast: torch.dtype | None = None,
    fused: bool | None = None,
    grad: str = "autograd",
) -> TrainStep:
    """Build ``step(state, batch) -> (state, metrics)`` for a stacked ensemble of ``members``.

    The stacked twin of :func:`functrain.make_train_step`, with the same ``loss_fn``: one
    ``torch.func.vmap`` over the members of the loss on
    ``functional_call(model, (params_i, buffers_i), ...)``, one backward pass of the summed
    member losses (the members share no tensor, so member i's slice of the gradient is the
    gradient of its own loss), then one :func:`functrain.apply_gradients` of ``tx`` on the
    stacked gradients (one update, one kernel per op, for all members). Under the vmap:

    - the batch is shared by all members (``batch_per_member=False``), or every batch leaf
      has a leading member axis and member i sees slice i;
    - randomness is ``"different"``: dropout draws an independent mask per member;
    - BatchNorm running statistics are per member: each member's slice of the stacked
      buffers is updated (in place on the state's buffers with ``donate=True``, on copies
      otherwise, as in :func:`functrain.make_train_step`).

    Use ``tx = functrain.ensemble(inner, members)`` for per-member semantics of reducing
    transforms (clipping, trust ratios, skipped steps) and per-member hyperparameters; a
    purely elementwise transform (``adamw`` without clipping) is per member as it stands.

    Args:
        model: the module (structure and code only; :func:`init_members` gives a meta copy).
        loss_fn: ``loss_fn(forward, batch) -> loss`` or ``(loss, {name: tensor})``, written
            for one member (a 0-d loss).
        tx: the transform whose state is ``state.opt_state``, on stacked trees.
        members: the ensemble size N; every params / buffers leaf (and with
            ``batch_per_member`` every batch leaf) must have a leading axis of N.
        batch_per_member: each member gets its own batch (slice i of the batch's leaves).
        donate: let the step reuse the input state's buffers. Results are bitwise the same.
        autocast: run ``loss_fn`` under ``torch.autocast`` with this dtype. Under ``vmap``
            autocast lowers fewer ops than in :func:`functrain.make_train_step`: torch's
            batching rules add a linear layer's bias in float32 and convolutions stay in
            float32 (pytorch/pytorch#192617; seen with torch 2.13 on CPU), so the outputs of
            such layers are float32.
        fused: passed to :func:`functrain.apply_gradients`.
        grad: how the vmapped loss is differentiated, as in :func:`functrain.make_train_step`:
            ``"autograd"`` (default; ``torch.autograd.grad`` of the members' summed loss,
            measurably faster for small models, see ``benchmarks/ensemble.py``) or ``"func"``
            (``torch.func.grad_and_value``, composable with outer ``torch.func`` transforms).
            The same gradients either way.

    Returns:
        The train step; ``metrics["loss"]`` and whatever ``loss_fn`` added are tensors of
        shape ``[members, ...]`` (one value per member), left on the device.

    Example:
        >>> params, buffers, model = init_members(lambda: torch.nn.Linear(4, 3), [0, 1])
        >>> tx = ensemble(adamw(lr=[1e-2, 1e-3]), 2)
        >>> state = TrainState(params=params, buffers=buffers, opt_state=tx.init(params))
        >>> def loss_fn(forward, batch):
        ...     x, y = batch
        ...     return torch.nn.functional.cross_entropy(forward(x), y)
        >>> step = make_ensemble_train_step(model, loss_fn, tx, 2)
        >>> state, metrics = step(state, (torch.randn(5, 4), torch.randint(0, 3, (5,))))
        >>> metrics["loss"].shape  # one loss per member
        torch.Size([2])
    """
    where = "make_ensemble_train_step"
    _check_count(members, where)
    if grad not in _GRADIENTS:
        raise ValueError(f"{where}: grad must be one of {sorted(_GRADIENTS)}, got {grad!r}")
    member_loss = _loss_of(model, loss_fn, autocast)  # one member's (scaled) loss
    loss_scale = _loss_scale_reader()
    batch_dim = 0 if batch_per_member else None
    # One vmapped loss per (loss scale per member or not, device type): the in_dims differ.
    vmapped: dict[tuple[int | None, str], Callable[..., Any]] = {}

    def stacked_loss(params: dict[str, Tensor], inputs: StepInputs) -> tuple[Tensor, Any]:
        # Every member's loss in one vmap. The members share no tensor, so the gradient of
        # their sum with respect to member i's slice is member i's own gradient: one
        # backward pass through the vmapped forward gives all of them.
        scale = inputs.scale  # a loss_scaling inside ensemble(...) has one scale per member
        scale_dim = 0 if isinstance(scale, Tensor) and scale.dim() == 1 else None
        dev = inputs.device_type
        fn = vmapped.get((scale_dim, dev))
        if fn is None:
            fn = vmap(
                lambda p, b, x, s: member_loss(p, StepInputs(b, x, dev, s)),
                in_dims=(0, 0, batch_dim, scale_dim),
                randomness="different",
            )
            vmapped[(scale_dim, dev)] = fn
        scaled, out = fn(params, inputs.buffers, inputs.batch, scale)
        return scaled.sum(), out

    gradients = _GRADIENTS[grad](stacked_loss)

    def train_step(state: TrainState, batch: Any) -> tuple[TrainState, dict[str, Tensor]]:
        _check_members(state.params, members, "state.params", where)
        _check_members(state.buffers, members, "state.buffers", where)
        if batch_per_member:
            _check_members(batch, members, "batch", where)
        recorded = _opt_state_members(state.opt_state)
        if recorded is not None and recorded != members:
            raise ValueError(
                f"{where}: the optimizer state is for an ensemble of {recorded} members "
                f"(functrain.ensemble(tx, {recorded})), but the step was built for "
                f"members={members}"
            )
        if not model.training:
            model.train()
        # Once a callback has stopped a member (state.callbacks[ACTIVE_MEMBERS]), the step
        # keeps the old tensors (no donation) and selects old or new per member; before
        # that it donates as usual. Whether the mask exists is known on the host: no sync.
        mask = state.callbacks.get(ACTIVE_MEMBERS)
        donate_now = donate and mask is None
        buffers = state.buffers if donate_now else {k: b.clone() for k, b in state.buffers.items()}
        inputs = StepInputs(buffers, batch, _device_type(state), loss_scale(state.opt_state))
        grads, (value, aux) = gradients(state.params, inputs)
        params, opt_state = apply_gradients(
            tx, state.params, grads, state.opt_state, donate=donate_now, fused=fused
        )
        if mask is not None:
            params = _select_members(mask, params, state.params, members)
            buffers = _select_members(mask, buffers, state.buffers, members)
            opt_state = _select_members(mask, opt_state, state.opt_state, members)
        metrics = {"loss": value.detach(), **aux}
        return state.replace(params=params, buffers=buffers, opt_state=opt_state), metrics

    return train_step


def make_ensemble_eval_step(
    model: torch.nn.Module,
    fn: LossFn,
    members: int,
    *,
    batch_per_member: bool = False,
    autocast: torch.dtype | None = None,
) -> EvalStep:
    """Build ``step(state, batch) -> outputs``: ``fn`` of every member, vmapped, in eval mode.

    The stacked twin of :func:`functrain.make_eval_step`: ``fn(forward, batch)`` is written
    for one member, and every tensor it returns comes back with a leading member axis
    (BatchNorm uses each member's running statistics, dropout is off, no gradients).

    Args:
        model: the module (structure and code only).
        fn: ``fn(forward, batch) -> outputs`` (tensors, or a pytree of tensors).
        members: the ensemble size N.
        batch_per_member: each member gets its own batch (slice i of the batch's leaves).
        autocast: run ``fn`` under ``torch.autocast`` with this dtype.

    Example:
        >>> params, buffers, model = init_members(lambda: torch.nn.Linear(4, 3), range(8))
        >>> state = TrainState(params=params, buffers=buffers, opt_state=None)
        >>> def accuracy(forward, batch):
        ...     x, y = batch
        ...     logits = forward(x)
        ...     return {"logits": logits, "acc": (logits.argmax(-1) == y).float().mean()}
        >>> eval_step = make_ensemble_eval_step(model, accuracy, 8)
        >>> out = eval_step(state, (torch.randn(5, 4), torch.randint(0, 3, (5,))))
        >>> out["logits"].shape, out["acc"].shape  # one accuracy per member
        (torch.Size([8, 5, 3]), torch.Size([8]))
    """
    where = "make_ensemble_eval_step"
    _check_count(members, where)

    def member_fn(params: dict[str, Tensor], buffers: dict[str, Tensor], batch: Any) -> Any:
        def forward(*args: Any, **kwargs: Any) -> Any:
            return torch.func.functional_call(model, (params, buffers), args, kwargs)

        return fn(forward, batch)

    vmapped = vmap(
        member_fn, in_dims=(0, 0, 0 if batch_per_member else None), randomness="different"
    )

    def eval_step(state: TrainState, batch: Any) -> Any:
        _check_members(state.params, members, "state.params", where)
        _check_members(state.buffers, members, "state.buffers", where)
        if batch_per_member:
            _check_members(batch, members, "batch", where)
        if model.training:
            model.eval()
        with torch.no_grad(), _autocast(autocast, _device_type(state)):
            return vmapped(state.params, state.buffers, batch)

    return eval_step


def _members_of(state: TrainState) -> int:
    recorded = _opt_state_members(state.opt_state)
    if recorded is not None:
        return recorded
    for t in (*state.params.values(), *state.buffers.values()):
        if t.dim() > 0:
            return t.shape[0]
    raise ValueError("member_state: the state has no tensor with a member axis")


def member_state(state: TrainState, i: int) -> TrainState:
    """Member ``i`` of a stacked ensemble state, as an ordinary :class:`functrain.TrainState`.

    ``params`` and ``buffers`` are slice ``i`` of every leaf (contiguous copies, so saving it
    does not save the whole ensemble's storage). The optimizer state is unwrapped from the
    :func:`functrain.ensemble` record and every tensor leaf that carries the member axis
    (a leading axis of size N: moments, per-member norms and hyperparameters) is sliced;
    leaves shared by all members (a step counter, a scalar hyperparameter) are copied as
    they are. The result continues training with ``make_train_step(model, loss_fn, tx_i)``,
    where ``tx_i`` is the ensemble's inner transform built with member ``i``'s
    hyperparameters, and ``state.params | state.buffers`` loads into the plain module (see
    :func:`member_state_dict`). Counters and callback state are carried over.

    Args:
        state: the ensemble's state (leaves ``[N, ...]``).
        i: the member, ``0 <= i < N`` (negative counts from the end).

    Example:
        >>> params, buffers, model = init_members(lambda: torch.nn.Linear(4, 3), range(4))
        >>> tx = ensemble(chain(clip(1.0), adamw(lr=[1e-4, 1e-3, 1e-2, 1e-1])), 4)
        >>> state = TrainState(params=params, buffers=buffers, opt_state=tx.init(params))
        >>> one = member_state(state, 3)  # continue with chain(clip(1.0), adamw(lr=1e-1))
        >>> one.params["weight"].shape, values_in_force(one.opt_state)["lr"]
        (torch.Size([3, 4]), tensor(0.1000, dtype=torch.float64))
    """
    n = _members_of(state)
    if not isinstance(i, int) or isinstance(i, bool) or not -n <= i < n:
        raise IndexError(f"member_state: member {i!r} out of range for an ensemble of {n}")
    _check_members(state.params, n, "state.params", "member_state")
    _check_members(state.buffers, n, "state.buffers", "member_state")

    def take(t: Any) -> Any:
        # A tensor with the member axis is sliced; any other tensor is shared by all members
        # (copied all the same: a step that donates the member's state writes into it).
        if not isinstance(t, Tensor):
            return t
        return t[i].clone() if t.dim() > 0 and t.shape[0] == n else t.clone()

    opt_state = state.opt_state
    if _opt_state_members(opt_state) is not None:
        opt_state = opt_state.inner
    return state.replace(
        params={k: v[i].clone() for k, v in state.params.items()},
        buffers={k: v[i].clone() for k, v in state.buffers.items()},
        opt_state=tree_map(take, opt_state),
    )


def member_state_dict(
    state: TrainState, i: int, model: torch.nn.Module | None = None
) -> dict[str, Tensor]:
    """Member ``i``'s tensors as a module ``state_dict`` (``load_state_dict(strict=True)``).

    Args:
        state: the ensemble's state.
        i: the member.
        model: the module (or the meta copy :func:`init_members` returns); when given, only
            the names in ``model.state_dict()`` are kept, in its order (non-persistent
            buffers are left out, as ``state_dict`` leaves them out).

    Example:
        >>> params, buffers, model = init_members(lambda: torch.nn.BatchNorm1d(3), range(4))
        >>> state = TrainState(params=params, buffers=buffers, opt_state=None)
        >>> net = torch.nn.BatchNorm1d(3)
        >>> net.load_state_dict(member_state_dict(state, 2, model), strict=True)
        <All keys matched successfully>
    """
    one = member_state(state.replace(opt_state=None), i)
    tensors = {**one.params, **one.buffers}
    if model is None:
        return tensors
    return {k: tensors[k] for k in model.state_dict() if k in tensors}


def _select_members(mask: Tensor, new: Any, old: Any, members: int) -> Any:
    """``new`` where ``mask`` is True, ``old`` elsewhere, member by member: every tensor leaf
    with the member axis is a ``torch.where`` over it; leaves shared by all members (a step
    counter, a scalar hyperparameter) take the new value. (torch has no foreach ``where``,
    hence one op per leaf.)"""

    def pick(n: Any, o: Any) -> Any:
        if not isinstance(n, Tensor) or n.dim() == 0 or n.shape[0] != members:
            return n
        return torch.where(mask.view(members, *([1] * (n.dim() - 1))), n, o)

    return tree_map(pick, new, old)


def active_members(state: TrainState) -> Tensor | None:
    """The per-member "still training" mask (``state.callbacks[ACTIVE_MEMBERS]``, a bool
    tensor ``[N]``), or ``None`` while every member trains."""
    return state.callbacks.get(ACTIVE_MEMBERS)


def stop_members(state: TrainState, stop: Iterable[int], members: int) -> TrainState:
    """``state`` with members ``stop`` marked stopped: from the next step of
    :func:`make_ensemble_train_step` on, their params, buffers and optimizer-state slices
    stay bitwise as they are (the others train on; a counter shared by all members, such as
    the optimizer's step count, still advances).

    Args:
        state: the ensemble's state.
        stop: member indices (host ints: the callbacks decide on values already read).
        members: the ensemble size N.

    Example:
        >>> state = stop_members(state, [2], 4)  # doctest: +SKIP
        >>> stopped_members(state)  # doctest: +SKIP
        [2]
    """
    stop = sorted(set(stop))
    for i in stop:
        if not 0 <= i < members:
            raise IndexError(f"stop_members: member {i} out of range for an ensemble of {members}")
    mask = state.callbacks.get(ACTIVE_MEMBERS)
    if mask is None:
        if not stop:
            return state
        device = next((t.device for t in state.params.values()), None)
        mask = torch.ones(members, dtype=torch.bool, device=device)
    else:
        mask = mask.clone()  # the state is a value: never write into the old mask
    if stop:
        mask[stop] = False
    return state.with_callback_state(ACTIVE_MEMBERS, mask)


def stopped_members(state: TrainState) -> list[int]:
    """The members :func:`stop_members` stopped, in order (reads the mask to the host: call
    it where the loop syncs anyway, at validation or a logging interval)."""
    mask = state.callbacks.get(ACTIVE_MEMBERS)
    if mask is None:
        return []
    return [i for i, active in enumerate(mask.tolist()) if not active]
