"""``compiled(tx)``: any chain as a few fused kernels, by ``torch.compile`` over packed buffers.

A chain that is not shaped like a torch optimizer (a user transform, ``partition``, a
scheduled beta, Lion, ...) runs on the foreach path: one pass over memory per op, and one
kernel launch per op and leaf group. :func:`compiled` runs the same chain code once under
``make_fx`` (fake tensors: Python, attrs records, optree and the schedules run as written;
only the tensor operations are recorded), over *packed* buffers, and hands that graph to
``torch.compile``; inductor fuses every elementwise op of the step into one loop per buffer.

Packing. The leaves are packed into one contiguous buffer per *class*: leaves that share a
``(device, dtype)``, their :func:`functrain.with_multipliers` values and every mask and
label of the chain (``masked`` / ``partition`` / ``freeze`` resolve theirs on the real tree:
the values are recorded while ``tx.init`` runs on the real leaves and replayed for the
buffers). The chain then runs on the buffers as if each were one leaf. That is exact for
everything elementwise and for global reductions (``clip``'s global norm becomes the norm
of a few long vectors: the same number up to the order of summation), which covers every
transform whose update treats each element on its own: the torch-style optimizers, Lion,
weight decay, learning rates and their schedules, ``accumulate``, ``loss_scaling``,
``apply_if_finite``, and user transforms from ``stateless_foreach`` /
``stateless_with_tree_map`` written elementwise. A transform that looks at a leaf's shape or
reduces *per leaf* (LAMB / LARS trust ratios, Muon, Adafactor's factored moments, a user
function calling ``u.norm()``) needs ``pack=False``: the graph is then traced over the
leaves themselves (exact for any transform, but inductor compiles one loop per leaf: about
70 s for ResNet-50's 161 tensors on a 2-core CPU, against 5 s packed).

Large leaves keep a buffer of their own (``own_buffer``: at least 2**20 elements, the
largest :data:`MAX_ALONE`): their gradients and parameters enter the program as they are
(a view, no copy), so only the small leaves are copied into a class buffer each step; each
own buffer is one more loop for inductor to compile. In the donating step the gradients are
copied into buffers kept from step to step (a fresh multi-MiB buffer costs the page faults of
newly mapped memory every step), and the chain runs on an in-graph copy of them, which
inductor keeps in registers: the donated gradients are read, never written.

Scalars. The step counters and the values of scheduled hyperparameters are tensors in the
state, so they are inputs of the graph: the program is traced and compiled once per tree
structure, shapes and dtypes, never again when the step or a schedule's value changes. The
scalar arithmetic (bias corrections, a cosine schedule) is kept out of the per-element loops
(a ``functrain::realize`` boundary before each 0-d value meets a buffer), else inductor
would recompute it for every vector of elements.

State. ``init`` returns a :class:`CompiledState` holding ``tx``'s state over the packed
buffers (one moment buffer per class instead of one per leaf), so a checkpoint of a compiled
transform loads into the same compiled transform, not into the eager one.
:func:`functrain.values_in_force` and ``set_hyperparam`` see through it.

Numbers. The compiled step equals the eager chain on the same leaves within a few ulps:
inductor evaluates each fused expression in registers (``a * b + c`` may contract into an
FMA, ``x / c`` of a loop-invariant ``c`` stays a division), and the packed global norm sums
in another order; tests bound the difference at 1e-6 relative.

When ``torch.compile`` cannot run (no C++ compiler, an error in dynamo or inductor), the
first step warns in one line and the chain runs eagerly over the same packed buffers.

Example:
    >>> tx = compiled(chain(clip(1.0), lion(lr=1e-4)))
    >>> state = tx.init(params)  # doctest: +SKIP
    >>> params, state = apply_gradients(tx, params, grads, state, donate=True)  # doctest: +SKIP
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import optree
import torch
from torch import Tensor
from torch._C import _functorch

from functrain.transforms.base import (
    FlatTransform,
    GradientTransformation,
    as_flat,
    chain_multipliers,
    from_flat,
    state_record,
    static_field,
)
from functrain.transforms.kernel_specs import MultiplierSpec
from functrain.transforms.leaf_subsets import RESOLUTION_HOOK
from functrain.transforms.members import Ensemble
from functrain.transforms.optim_parts import check_state_paths
from functrain.tree import NAMESPACE, TreeInfo, leaf_paths

__all__ = [
    "CompiledState",
    "CompiledStep",
    "compile_program",
    "compile_stats",
    "compiled",
    "record",
]


@state_record
class CompiledState:
    """State of :func:`compiled`.

    Attributes:
        inner: the compiled transform's state over the packed buffers.
        paths: dotted leaf paths of the tree the state was built for (static).
    """

    inner: Any
    paths: tuple[str, ...] = static_field()


# --------------------------------------------------------------------------- realize boundary


@torch.library.custom_op("functrain::realize", mutates_args=())
def _realize(x: Tensor) -> Tensor:
    """A copy that inductor cannot fuse through: computed once, then read by the loops."""
    return x.clone()


@_realize.register_fake
def _(x: Tensor) -> Tensor:
    return torch.empty_like(x)


def _realize_backward(ctx: Any, grad: Tensor) -> Tensor:
    return grad


_realize.register_autograd(_realize_backward)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, Tensor) and value.dim() == 0


def _hoist_scalars(gm: torch.fx.GraphModule) -> int:
    """Put a ``functrain::realize`` between the 0-d values and the buffer ops reading them.

    The 0-d values computed before their first buffer reader are stacked (per dtype and
    device), realized with one call and read back by ``select``: one call of the custom op
    (a Python function, ~10 us) per wave of scalars instead of one per scalar. Returns the
    number of values realized.
    """
    graph = gm.graph
    realize = torch.ops.functrain.realize.default
    readers_of: dict[torch.fx.Node, list[torch.fx.Node]] = {}
    pending: dict[tuple[Any, ...], list[torch.fx.Node]] = {}
    count = 0

    def flush(before: torch.fx.Node) -> None:
        nonlocal count
        for nodes in pending.values():
            with graph.inserting_before(before):
                stacked = graph.call_function(torch.ops.aten.stack.default, (nodes,))
                boundary = graph.call_function(realize, (stacked,))
                for k, node in enumerate(nodes):
                    value = graph.call_function(torch.ops.aten.select.int, (boundary, 0, k))
                    value.meta["val"] = node.meta["val"]
                    for user in readers_of.pop(node):
                        user.replace_input_with(node, value)
            count += len(nodes)
        pending.clear()

    for node in list(graph.nodes):
        if any(arg in readers_of and node in readers_of[arg] for arg in node.all_input_nodes):
            flush(node)  # the first buffer op reading a pending value: realize them all here
        if node.op != "call_function" or node.target is realize:
            continue
        value = node.meta.get("val")
        if not _is_scalar(value):
            continue
        readers = [u for u in node.users if u.op != "output" and not _is_scalar(u.meta.get("val"))]
        if readers:
            readers_of[node] = readers
            pending.setdefault((value.dtype, value.device), []).append(node)
    graph.lint()
    gm.recompile()
    return count


# --------------------------------------------------------------------------- packing

#: At most this many leaves keep a buffer of their own (``compiled(own_buffer=...)``): each is
#: one more loop for inductor to generate and compile (about 0.3 s each on a 2-core CPU).
MAX_ALONE = 32


@attrs.frozen(eq=False)
class _Packing:
    """How the leaves of one tree structure map onto the class buffers."""

    classes: tuple[tuple[int, ...], ...]  # leaf indices of each buffer
    shapes: tuple[torch.Size, ...]
    info: TreeInfo  # the packed "tree" (one leaf per buffer) as the chain sees it
    values: dict[int, dict[int, Any]]  # resolution number -> {leaf index: value}
    multipliers: tuple[tuple[float, float], ...] | None  # per buffer
    identity: bool = False  # pack=False: the buffers are the leaves themselves

    def sizes(self, c: int) -> list[int]:
        return [math.prod(self.shapes[i]) for i in self.classes[c]]

    def pack(
        self,
        leaves: Sequence[Tensor],
        last: _Views | None,
        scratch: list[Tensor | None] | None = None,
    ) -> list[Tensor]:
        """One buffer per class; leaves that are the views we returned last time are read
        through their buffer (no copy), any other leaves are copied with one ``torch.cat``
        (into ``scratch[c]``, kept from call to call, when given: a fresh buffer of many
        MiB costs the page faults of memory the allocator maps anew every time)."""
        if self.identity:
            return list(leaves)
        out = []
        for c, idx in enumerate(self.classes):
            if last is not None and all(leaves[i] is last.views[i] for i in idx):
                out.append(last.buffers[c])
            elif len(idx) == 1 and leaves[idx[0]].is_contiguous():
                out.append(leaves[idx[0]].view(-1))
            elif scratch is not None:
                pieces = [leaves[i].reshape(-1) for i in idx]
                buffer = scratch[c]
                if buffer is None:
                    buffer = scratch[c] = torch.cat(pieces)
                else:
                    torch.cat(pieces, out=buffer)
                out.append(buffer)
            else:
                out.append(torch.cat([leaves[i].reshape(-1) for i in idx]))
        return out

    def unpack(self, buffers: Sequence[Tensor]) -> _Views:
        if self.identity:
            return _Views(tuple(buffers), tuple(buffers))
        leaves: list[Any] = [None] * len(self.shapes)
        for c, (idx, buffer) in enumerate(zip(self.classes, buffers, strict=True)):
            for i, piece in zip(idx, buffer.split(self.sizes(c)), strict=True):
                leaves[i] = piece.view(self.shapes[i])
        return _Views(tuple(buffers), tuple(leaves))


@attrs.frozen(eq=False)
class _Views:
    buffers: tuple[Tensor, ...]
    views: tuple[Tensor, ...]


class _Recorder:
    """Records each mask/label resolution of an ``init`` on the real tree, by leaf path."""

    def __init__(self, paths: Sequence[str]) -> None:
        self.index = {p: i for i, p in enumerate(paths)}
        self.values: dict[int, dict[int, Any]] = {}

    def __call__(self, info: TreeInfo, resolve: Callable[[], tuple[Any, ...]]) -> tuple[Any, ...]:
        values = resolve()
        self.values[len(self.values)] = {
            self.index[p]: v for p, v in zip(info.paths, values, strict=True)
        }
        return values


class _Replayer:
    """Answers the same resolutions, in the same order, for the packed buffers."""

    def __init__(self, packing: _Packing, buffer_of: dict[str, int]) -> None:
        self.packing = packing
        self.buffer_of = buffer_of
        self.calls = 0

    def __call__(self, info: TreeInfo, resolve: Callable[[], tuple[Any, ...]]) -> tuple[Any, ...]:
        recorded = self.packing.values.get(self.calls)
        if recorded is None:
            raise RuntimeError("compiled: the chain resolved more masks on the packed buffers")
        self.calls += 1
        classes = self.packing.classes
        return tuple(recorded[classes[self.buffer_of[p]][0]] for p in info.paths)


def _buffer_key(c: int, leaf: Tensor) -> str:
    return f"{str(leaf.dtype).removeprefix('torch.')}@{leaf.device}#{c}"


def _alone(leaves: Sequence[Tensor], threshold: int | None) -> set[int]:
    """The leaves that keep a buffer of their own: contiguous ones of at least ``threshold``
    elements, the largest :data:`MAX_ALONE` of them."""
    if not threshold:
        return set()
    big = [i for i, t in enumerate(leaves) if t.numel() >= threshold and t.is_contiguous()]
    big.sort(key=lambda i: -leaves[i].numel())
    return set(big[:MAX_ALONE])


def _plan(
    flat: FlatTransform,
    spec: MultiplierSpec | None,
    leaves: list[Tensor],
    info: TreeInfo,
    alone_from: int | None = None,
) -> _Packing:
    """The classes of ``leaves``: a meta-device ``init`` records every mask and label."""
    recorder = _Recorder(info.paths)
    token = RESOLUTION_HOOK.set(recorder)
    try:
        meta = [torch.empty_like(t, device="meta") for t in leaves]
        flat.init(meta, info)
    finally:
        RESOLUTION_HOOK.reset(token)
    per_leaf_mult = (
        [attrs.astuple(spec.lookup(p)) for p in info.paths] if spec is not None else None
    )
    missing = object()
    alone = _alone(leaves, alone_from)
    classes: dict[tuple[Any, ...], list[int]] = {}
    for i, leaf in enumerate(leaves):
        key = (
            i if i in alone else -1,
            leaf.device,
            leaf.dtype,
            None if per_leaf_mult is None else per_leaf_mult[i],
            tuple(recorder.values[k].get(i, missing) for k in sorted(recorder.values)),
        )
        classes.setdefault(key, []).append(i)
    idx = tuple(tuple(v) for v in classes.values())
    keys = [_buffer_key(c, leaves[members[0]]) for c, members in enumerate(idx)]
    fake = {k: torch.empty(0) for k in keys}
    _, treespec = optree.tree_flatten(fake, namespace=NAMESPACE)
    # Buffers in treespec order (a dict flattens in sorted key order).
    order = [keys.index(p) for p in leaf_paths(treespec)]
    idx = tuple(idx[o] for o in order)
    keys = [keys[o] for o in order]
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for c, members in enumerate(idx):
        leaf = leaves[members[0]]
        groups.setdefault((leaf.device, leaf.dtype), []).append(c)
    packed_info = TreeInfo(treespec, tuple(tuple(g) for g in groups.values()))
    mults = None
    if per_leaf_mult is not None:
        mults = tuple(per_leaf_mult[members[0]] for members in idx)
        packed_info = packed_info.with_multipliers(mults)
    return _Packing(idx, tuple(t.shape for t in leaves), packed_info, recorder.values, mults)


# --------------------------------------------------------------------------- the program


def _signature(tensors: Sequence[Any]) -> tuple[Any, ...]:
    return tuple(
        (t.shape, t.dtype, t.device, t.requires_grad) if isinstance(t, Tensor) else t
        for t in tensors
    )


class _Program:
    """The chain's step over packed buffers: traced once per input signature and compiled."""

    def __init__(
        self,
        run: Callable[..., Any],
        *,
        mode: str | None,
        dynamic: bool,
        where: str,
        steady: Callable[[], bool] = lambda: True,
    ) -> None:
        self.run = run
        self.steady = steady
        self.mode = mode
        self.dynamic = dynamic
        self.where = where
        self.compiled: dict[tuple[Any, ...], Callable[..., Any]] = {}
        self.eager = False
        self.tracing = False  # True while make_fx records ``run``
        self.compile_seconds: float = 0.0
        self.compiles = 0

    def __call__(self, donate: bool, apply: bool, inputs: list[Any]) -> Any:
        """``run(donate, apply, *inputs)``: flat inputs -> (flat outputs, out_spec)."""
        if self.eager or _functorch.peek_interpreter_stack() is not None:
            # Inside a torch.func transform (vmap, grad, ...) the inputs are wrapped tensors
            # that make_fx cannot record: that call runs eagerly, without a warning, and the
            # program still compiles on the next call outside the transform.
            return self.run(donate, apply, inputs)
        key = (donate, apply, _signature(inputs))
        fn = self.compiled.get(key)
        if fn is None:
            start = time.perf_counter()
            try:
                fn = self._compile(donate, apply, inputs)
                if fn is None:
                    # This call changes the state's layout (a momentum buffer created by the
                    # first step): no later call has its inputs, so it runs eagerly.
                    self.compiled[key] = self.run_eagerly(donate, apply)
                    return self.run(donate, apply, inputs)
                result = fn(inputs)
            except Exception as err:  # noqa: BLE001 - any failure of the compiler stack
                warnings.warn(
                    f"{self.where}: torch.compile is unavailable here "
                    f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                    "running the chain eagerly over the packed buffers",
                    RuntimeWarning,
                    stacklevel=4,
                )
                self.eager = True
                return self.run(donate, apply, inputs)
            self.compile_seconds += time.perf_counter() - start
            self.compiles += 1
            self.compiled[key] = fn
            return result
        return fn(inputs)

    def run_eagerly(self, donate: bool, apply: bool) -> Callable[..., Any]:
        return lambda inputs: self.run(donate, apply, inputs)

    def _compile(self, donate: bool, apply: bool, inputs: list[Any]) -> Callable[..., Any] | None:
        tensor_pos = [i for i, x in enumerate(inputs) if isinstance(x, Tensor)]
        out_spec: list[Any] = []

        def traced(*tensors: Tensor) -> list[Tensor]:
            full = list(inputs)
            for i, t in zip(tensor_pos, tensors, strict=True):
                full[i] = t
            out = self.run(donate, apply, full)
            leaves, spec = optree.tree_flatten(out, namespace=NAMESPACE)
            out_spec.append(spec)
            return leaves

        tensors = [inputs[i] for i in tensor_pos]
        self.tracing = True
        try:
            gm = record(traced, tensors)
        finally:
            self.tracing = False
        if not self.steady():
            return None
        _hoist_scalars(gm)
        program = compile_program(gm, fullgraph=True, dynamic=self.dynamic, mode=self.mode)
        spec = out_spec[-1]

        def call(now: list[Any]) -> Any:
            leaves = program(*(now[i] for i in tensor_pos))
            return optree.tree_unflatten(spec, list(leaves))

        return call


def record(fn: Callable[..., list[Tensor]], tensors: Sequence[Tensor]) -> torch.fx.GraphModule:
    """``fn(*tensors)``'s tensor operations as one graph (``make_fx`` with fake tensors).

    Tensors that ``fn`` reads from elsewhere (a schedule's milestones, a cached constant) are
    real, not inputs: they are recorded as constants of the graph (by value: inductor's
    FX-graph cache key includes a constant's values, so two graphs that differ only there
    never share a compiled program).
    """
    from torch.fx.experimental.proxy_tensor import make_fx

    return make_fx(fn, tracing_mode="fake", _allow_non_fake_inputs=True)(*tensors)


def compile_program(fn: Callable[..., Any], **kwargs: Any) -> Callable[..., Any]:
    """``torch.compile(fn, **kwargs)``, with inductor's CPU vector width pinned while it runs.

    Two inductor problems (torch 2.13) are worked around:

    - Its FX-graph cache key does not include the vector instruction set the C++ is
      generated for (``cpp.simdlen=None`` is resolved from ``ATEN_CPU_CAPABILITY`` only
      while generating code). A program cached by a run with ``ATEN_CPU_CAPABILITY=avx2``
      (loops stepping 8 floats) was reloaded by an avx512 run, whose compiler rebuilt the
      same source with 16-float vectors: stores past the end of the buffers, wrong results
      or an abort (and the reverse leaves half of every vector uncomputed). Pinning
      ``cpp.simdlen`` to the width the current process would pick anyway puts it in the key.
    - Without a vector instruction set it can use (``ATEN_CPU_CAPABILITY=default``, an old
      CPU), inductor still emits a vectorised reduction whose accumulator it never declares
      (``'tmp_acc0_vec' was not declared``); scalar code (``cpp.simdlen=1``) builds and
      computes the same thing.

    Compilation happens at a program's first call (and at any recompile), so every call runs
    with the width pinned (an attribute set and reset, about 4 us).
    """
    program = torch.compile(fn, **kwargs)
    try:
        import torch._inductor.config as inductor_config
        from torch._inductor.cpu_vec_isa import pick_vec_isa

        isa = pick_vec_isa()
        width = isa.bit_width() if isa else 1
        cpp = inductor_config.cpp
    except Exception:  # noqa: BLE001 - an inductor without these: nothing to work around
        return program

    def pinned(*args: Any) -> Any:
        before = cpp.simdlen
        cpp.simdlen = width
        try:
            return program(*args)
        finally:
            cpp.simdlen = before

    return pinned


# --------------------------------------------------------------------------- compiled()


def compiled(
    tx: GradientTransformation,
    *,
    donate: bool = True,
    mode: str | None = None,
    dynamic: bool = False,
    pack: bool = True,
    own_buffer: int | None = 1 << 20,
) -> GradientTransformation:
    """``tx`` compiled with ``torch.compile`` into a few fused kernels over packed buffers.

    The returned transform computes what ``tx`` computes (within a few ulps, see the module
    documentation) and is used like any other: ``init`` / ``update``, or
    :func:`functrain.apply_gradients`, which runs the update *and* the parameter update as
    one compiled program (the loop's path). Both donating (in place into the packed buffers
    it owns) and pure (fresh outputs, differentiable by autograd) programs are compiled on
    first use, once per tree structure, shapes and dtypes; step counters and scheduled
    values are inputs, so changing them never recompiles.

    Args:
        tx: any transform (a chain of built-in members, ``partition`` / ``masked`` /
            ``with_multipliers``, scheduled hyperparameters, ``accumulate``,
            ``loss_scaling``, ``apply_if_finite``, user transforms).
        donate: allow the in-place program when the caller donates (``update(...,
            donate=True)`` / ``apply_gradients(..., donate=True)``); ``False`` always runs
            the pure program.
        mode: ``torch.compile``'s ``mode`` (``None``, ``"max-autotune-no-cudagraphs"``, ...).
        dynamic: ``torch.compile``'s ``dynamic`` (symbolic buffer sizes: one program for
            trees of different sizes, slightly slower loops).
        pack: pack the leaves into one buffer per class (fast to compile and to run; exact for
            elementwise transforms and global norms). ``False`` traces over the leaves
            themselves, for transforms that reduce per leaf or read leaf shapes. An
            :func:`~functrain.ensemble` is always traced over its stacked leaves (packing
            would lose the member axis its per-member reductions need).
        own_buffer: leaves of at least this many elements keep a buffer of their own (no
            copy into a packed buffer each step; one more loop to compile each; at most
            :data:`MAX_ALONE` of them). ``None``: every leaf is packed.

    Returns:
        A :class:`~functrain.transforms.base.GradientTransformation` whose state is a
        :class:`CompiledState`.

    Example:
        >>> tx = compiled(chain(clip(1.0), adamw(lr=1e-3)))
        >>> state = tx.init(params)  # doctest: +SKIP
        >>> params, state = apply_gradients(tx, params, grads, state, donate=True)  # doctest: +SKIP
    """
    if not isinstance(tx, GradientTransformation):
        raise TypeError(f"compiled: tx must be a GradientTransformation, got {type(tx).__name__}")
    for name, value in (("donate", donate), ("dynamic", dynamic), ("pack", pack)):
        if not isinstance(value, bool):
            raise ValueError(f"compiled: {name} must be a bool, got {value!r}")
    if own_buffer is not None and (
        isinstance(own_buffer, bool) or not isinstance(own_buffer, int) or own_buffer < 1
    ):
        raise ValueError(
            f"compiled: own_buffer must be None or a positive number of elements, got {own_buffer!r}"
        )
    if mode is not None and not isinstance(mode, str):
        raise ValueError(f"compiled: mode must be None or a torch.compile mode name, got {mode!r}")
    if isinstance(tx, Ensemble):
        pack = False
    flat = as_flat(tx)
    # The outermost chain's multipliers are applied here (per buffer); the members run as
    # the chain runs them.
    spec = chain_multipliers(flat.parts) if flat.parts else None
    members = flat.parts if spec is not None else ()
    packings: dict[Any, _Packing] = {}
    # Packed gradient and parameter buffers kept for each packing (see ``step``).
    scratch: dict[_Packing, tuple[list[Tensor | None], list[Tensor | None]]] = {}
    last: dict[str, _Views | None] = {"params": None}

    def packing_for(leaves: list[Tensor], info: TreeInfo) -> _Packing:
        key = (info.treespec, tuple((t.shape, t.dtype, t.device) for t in leaves))
        found = packings.get(key)
        if found is None:
            if pack:
                found = _plan(flat, spec, leaves, info, own_buffer)
            else:
                found = _identity_packing(flat, spec, leaves, info)
            if len(packings) > 8:
                packings.clear()
                scratch.clear()
            packings[key] = found
        return found

    def inner_init(buffers: list[Tensor], p: _Packing) -> Any:
        buffer_of = {path: c for c, path in enumerate(p.info.paths)}
        token = RESOLUTION_HOOK.set(_Replayer(p, buffer_of) if pack else None)
        try:
            if members:
                return tuple(m.init(buffers, p.info) for m in members)
            return flat.init(buffers, p.info)
        finally:
            RESOLUTION_HOOK.reset(token)

    def inner_update(
        updates: list[Tensor], state: Any, params: list[Tensor] | None, info: TreeInfo, extra: Any
    ) -> tuple[list[Tensor], Any]:
        if members:
            new_states = []
            for m, s in zip(members, state, strict=True):
                updates, s = m.update(updates, s, params, info, **extra)
                new_states.append(s)
            return updates, tuple(new_states)
        return flat.update(updates, state, params, info, **extra)

    def init(params: list[Tensor], info: TreeInfo) -> CompiledState:
        p = packing_for(params, info)
        if p.identity:
            buffers = list(params)
        else:
            buffers = [torch.cat([params[i].detach().reshape(-1) for i in c]) for c in p.classes]
        return CompiledState(inner_init(buffers, p), info.paths)

    holder: dict[str, Any] = {}

    def run(donate_now: bool, apply: bool, inputs: list[Any]) -> Any:
        p: _Packing = holder["packing"]
        n = len(p.classes)
        grads, params = list(inputs[:n]), inputs[n : 2 * n]
        state, extra = inputs[2 * n], inputs[2 * n + 1]
        info = attrs.evolve(p.info, donate=donate_now)
        has_params = params[0] is not None if n else False
        plist = list(params) if has_params else None
        if program.tracing and (donate_now or apply):
            # The chain updates the gradients in place when donated (clip's scaling, ...).
            # In the graph that would be one more write pass over every gradient buffer;
            # on a copy it stays in registers (inductor never materializes the copy). And
            # no output of the program is then an input (a pure transform may keep a
            # gradient or parameter as state), so ``step`` may reuse the packed buffers.
            grads = [g.clone() for g in grads]
            if plist is not None and not donate_now:
                plist = [b.clone() for b in plist]
        updates, new_state = inner_update(grads, state, plist, info, extra)
        holder["steady"] = _layout(state) == _layout(new_state)
        if not apply:
            return updates, new_state
        assert plist is not None
        out = []
        for b, u in zip(plist, updates, strict=True):
            u = u if u.dtype == b.dtype else u.to(b.dtype)
            out.append(b.add_(u) if donate_now else b + u)
        return out, new_state

    # The program takes and returns flat lists; the state and extra travel as pytrees whose
    # tensors become graph inputs (make_fx sees them through optree).
    program = _Program(
        lambda d, a, inputs: run(d, a, _unflatten_inputs(inputs, holder)),
        mode=mode,
        dynamic=dynamic,
        where="compiled",
        steady=lambda: holder.get("steady", True),
    )

    def step(
        grads: list[Tensor],
        state: CompiledState,
        params: list[Tensor] | None,
        info: TreeInfo,
        apply: bool,
        extra: dict[str, Any],
    ) -> tuple[list[Tensor], CompiledState]:
        if not isinstance(state, CompiledState):
            raise ValueError(
                f"compiled got a state of type {type(state).__name__}, expected CompiledState; "
                "pass the state returned by this transform's init/update"
            )
        check_state_paths("compiled", state.paths, info)
        p = packing_for(grads, info)
        holder["packing"] = p
        donate_now = donate and info.donate
        # The compiled donating step never returns nor keeps its gradient buffers (the chain
        # runs on an in-graph copy of them, see ``run``): they can be the same every step.
        # The compiled step (update and apply) never returns nor keeps its packed inputs
        # (the chain runs on in-graph copies of them, see ``run``): they can be the same
        # buffers every step. Not where autograd records (``cat(out=...)`` has no gradient).
        reuse = (
            apply
            and not program.eager
            and _functorch.peek_interpreter_stack() is None
            and not (
                torch.is_grad_enabled() and any(t.requires_grad for t in (*grads, *(params or ())))
            )
        )
        kept = scratch.setdefault(p, ([None] * len(p.classes), [None] * len(p.classes)))
        g_buf = p.pack(grads, None, kept[0] if reuse else None)
        # Parameters that are the views this transform returned last time are read through
        # their buffer: the loop's steady state packs nothing but the gradients. (Donated
        # parameters are written in place: never into a kept buffer.)
        p_buf = (
            p.pack(params, last["params"], kept[1] if reuse and not donate_now else None)
            if params is not None
            else [None] * len(p.classes)
        )
        s_leaves, s_spec = optree.tree_flatten(state.inner, namespace=NAMESPACE)
        e_leaves, e_spec = optree.tree_flatten(extra, namespace=NAMESPACE)
        holder["specs"] = (len(p.classes), s_spec, len(s_leaves), e_spec)
        inputs = [*g_buf, *p_buf, *s_leaves, *e_leaves]
        out, new_inner = program(donate_now, apply, inputs)
        before = last["params"]
        if (
            apply
            and donate_now
            and before is not None
            and all(
                b is kept and o.data_ptr() == b.data_ptr()
                for b, kept, o in zip(p_buf, before.buffers, out, strict=True)
            )
        ):
            # Updated in place in the buffers we returned views of last time: the same views
            # (splitting a thousand leaves anew costs more than the update's kernel).
            views = before
        else:
            views = p.unpack(out)
        if apply:
            last["params"] = views
        return list(views.views), CompiledState(new_inner, state.paths)

    def update(
        updates: list[Tensor],
        state: CompiledState,
        params: list[Tensor] | None,
        info: TreeInfo,
        **extra: Any,
    ) -> tuple[list[Tensor], CompiledState]:
        return step(updates, state, params, info, False, extra)

    def apply_step(
        params: list[Tensor],
        grads: list[Tensor],
        state: CompiledState,
        info: TreeInfo,
        extra: dict[str, Any],
    ) -> tuple[list[Tensor], CompiledState]:
        return step(grads, state, params, info, True, extra)

    name = f"compiled({flat.name})"
    fusion = CompiledStep(apply_step, program)
    return from_flat(FlatTransform(init, update, name=name, fusion=fusion))


def compile_stats(tx: GradientTransformation) -> dict[str, Any]:
    """How a :func:`compiled` transform's compilation went.

    Returns:
        ``{"compiles": programs compiled so far, "seconds": time spent tracing and
        compiling them, "eager": whether it fell back to the eager path}``.

    Example:
        >>> compile_stats(tx)  # doctest: +SKIP
        {'compiles': 1, 'seconds': 5.2, 'eager': False}
    """
    fusion = tx.flat.fusion if isinstance(tx, GradientTransformation) and tx.flat else None
    if not isinstance(fusion, CompiledStep):
        raise ValueError("compile_stats: tx was not built by functrain.compiled")
    program = fusion.program
    return {
        "compiles": program.compiles,
        "seconds": program.compile_seconds,
        "eager": program.eager,
    }


@attrs.frozen
class CompiledStep:
    """Tells :func:`functrain.apply_gradients` to run the compiled update + parameter update.

    ``run(params, grads, state, info, extra) -> (new_params, new_state)``; ``program`` is
    the compiled program (for :func:`compile_stats`).
    """

    run: Callable[..., tuple[list[Tensor], Any]]
    program: Any = attrs.field(repr=False, default=None)


def _layout(tree: Any) -> tuple[Any, ...]:
    """A state's structure and its tensors' shapes and dtypes (what a program fixes)."""
    leaves, spec = optree.tree_flatten(tree, namespace=NAMESPACE)
    return spec, tuple((t.shape, t.dtype) if isinstance(t, Tensor) else t for t in leaves)


def _unflatten_inputs(inputs: list[Any], holder: dict[str, Any]) -> list[Any]:
    n, s_spec, n_state, e_spec = holder["specs"]
    grads, params = inputs[:n], inputs[n : 2 * n]
    state = optree.tree_unflatten(s_spec, inputs[2 * n : 2 * n + n_state])
    extra = optree.tree_unflatten(e_spec, inputs[2 * n + n_state :])
    return [*grads, *params, state, extra]


def _identity_packing(
    flat: FlatTransform, spec: MultiplierSpec | None, leaves: list[Tensor], info: TreeInfo
) -> _Packing:
    """``pack=False``: one "buffer" per leaf, the chain sees the real tree."""
    mults = None
    p_info = info
    if spec is not None:
        p_info = spec.apply(info)
        mults = p_info.multipliers
    return _Packing(
        tuple((i,) for i in range(len(leaves))),
        tuple(t.shape for t in leaves),
        p_info,
        {},
        mults,
        identity=True,
    )
