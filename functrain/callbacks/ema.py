"""``EMA``: an exponential moving average of the parameters (mmengine's EMAHook)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch

from functrain.callbacks.base import Callback

__all__ = ["EMA"]


class EMA(Callback):
    """Keep ``ema = (1 - momentum) * ema + momentum * params`` (mmengine's
    ``ExponentialMovingAverage`` inside ``EMAHook``), used for validation, test and saved
    checkpoints.

    The average lives in the train state (``state.callbacks["ema"]``: ``params``, optionally
    ``buffers``, and ``steps``), so it is checkpointed and resumed with everything else. It
    is updated in place after each train step (the loop gives up old states), with one
    ``torch._foreach_lerp_`` per step and no host sync. Before ``begin_iter`` /
    ``begin_epoch`` the average is a copy of the parameters; the first update after that
    copies too (mmengine's ``steps == 0``), then every ``interval``-th step averages.

    For validation and test the state's params are swapped with the average (and swapped
    back afterwards); with ``swap_checkpoint`` a checkpoint's ``params`` hold the average
    and the callback state the raw weights, swapped back on load (as mmengine does).

    Args:
        momentum: weight of the new value, in (0, 1) (mmengine's default 0.0002).
        interval: average every ``interval`` updates.
        begin_iter, begin_epoch: start averaging at this iteration / epoch (not both).
        update_buffers: also average floating buffers (BatchNorm statistics); otherwise the
            buffers used with the average are the model's own.
        swap_checkpoint: store the average as the checkpoint's ``params``.

    Ensembles: the average is stacked like the params (one average per member, the same
    ``_foreach_lerp_``). ``momentum`` may be a sequence of N values, one per member
    (``runner.members`` must be N); member i's average is then what ``EMA(momentum =
    momentum[i])`` keeps for member i's params (one ``_foreach_lerp_`` with a weight tensor
    of shape ``[N, 1, ...]`` per leaf; the same lerp per element).
    """

    priority = "NORMAL"

    def __init__(
        self,
        momentum: float | Sequence[float] = 0.0002,
        interval: int = 1,
        begin_iter: int = 0,
        begin_epoch: int = 0,
        update_buffers: bool = False,
        swap_checkpoint: bool = True,
    ) -> None:
        per_member = not isinstance(momentum, int | float)
        values = [float(m) for m in momentum] if per_member else [float(momentum)]  # type: ignore[union-attr]
        if per_member and not values:
            raise ValueError("EMA: momentum is an empty sequence; give one value per member")
        bad = [m for m in values if not 0.0 < m < 1.0]
        if bad:
            raise ValueError(f"momentum must be in range (0.0, 1.0) but got {bad[0]}")
        if max(values) > 0.5:
            warnings.warn(
                "The value of momentum in EMA is usually a small number, which is different "
                f"from the conventional notion of momentum but got {momentum}.",
                stacklevel=2,
            )
        if begin_iter != 0 and begin_epoch != 0:
            raise ValueError("`begin_iter` and `begin_epoch` should not be both set.")
        if begin_iter < 0 or begin_epoch < 0:
            raise ValueError("begin_iter and begin_epoch must be >= 0")
        if interval < 1:
            raise ValueError(f"interval must be >= 1, got {interval}")
        self.momentum: float | list[float] = values if per_member else values[0]
        self._weights: list[torch.Tensor] | None = None  # per-member momentum, per leaf
        self.interval = interval
        self.begin_iter = begin_iter
        self.begin_epoch = begin_epoch
        self.enabled_by_epoch = begin_epoch > 0
        self.update_buffers = update_buffers
        self.swap_checkpoint = swap_checkpoint

    def _float_buffers(self, state: Any) -> dict[str, torch.Tensor]:
        return {k: v for k, v in state.buffers.items() if v.dtype.is_floating_point}

    def before_train(self, runner: Any, state: Any) -> Any:
        if self.enabled_by_epoch and self.begin_epoch > runner.max_epochs:
            raise ValueError(
                f"begin_epoch ({self.begin_epoch}) must be <= max_epochs ({runner.max_epochs})"
            )
        if not self.enabled_by_epoch and self.begin_iter > runner.max_iters:
            raise ValueError(
                f"begin_iter ({self.begin_iter}) must be <= max_iters ({runner.max_iters})"
            )
        self._weights = None
        if isinstance(self.momentum, list):
            members = getattr(runner, "members", None)
            if members != len(self.momentum):
                raise ValueError(
                    f"EMA: momentum has {len(self.momentum)} values (one per member), but the "
                    f"run has members={members}"
                )
        if self.get_state(state) is not None:
            return None  # resumed
        ema: dict[str, Any] = {
            "params": {k: v.detach().clone() for k, v in state.params.items()},
            "steps": 0,
        }
        if self.update_buffers:
            ema["buffers"] = {k: v.clone() for k, v in self._float_buffers(state).items()}
        return self.set_state(state, ema)

    def _started(self, runner: Any) -> bool:
        if self.enabled_by_epoch:
            return runner.epoch + 1 >= self.begin_epoch
        return runner.iter + 1 >= self.begin_iter

    def after_train_iter(self, runner: Any, state: Any, batch_idx: int, **kwargs: Any) -> Any:
        ema = self.get_state(state)
        avg = list(ema["params"].values())
        src = [state.params[k] for k in ema["params"]]
        if self.update_buffers:
            avg += list(ema["buffers"].values())
            src += [state.buffers[k] for k in ema["buffers"]]
        if not self._started(runner):
            torch._foreach_copy_(avg, src)
            return None
        steps = ema["steps"]
        if steps == 0:
            torch._foreach_copy_(avg, src)
        elif steps % self.interval == 0:
            if isinstance(self.momentum, list):
                if self._weights is None:
                    self._weights = self._member_weights(avg, self.momentum)
                torch._foreach_lerp_(avg, src, self._weights)
            else:
                torch._foreach_lerp_(avg, src, self.momentum)
        return self.set_state(state, {**ema, "steps": steps + 1})

    @staticmethod
    def _member_weights(avg: list[torch.Tensor], momentum: list[float]) -> list[torch.Tensor]:
        """One weight tensor per leaf, ``[N, 1, ...]``: member i's momentum on its slice
        (made once, on the leaves' devices and dtypes)."""
        n = len(momentum)
        return [
            torch.tensor(momentum, dtype=a.dtype, device=a.device).view(n, *([1] * (a.dim() - 1)))
            for a in avg
        ]

    # -- swapping ------------------------------------------------------------------------------
    def _swap(self, state: Any) -> Any:
        ema = self.get_state(state)
        if ema is None:
            return None
        raw = {"params": state.params}
        changes: dict[str, Any] = {"params": {**state.params, **ema["params"]}}
        if self.update_buffers:
            raw["buffers"] = {k: state.buffers[k] for k in ema["buffers"]}
            changes["buffers"] = {**state.buffers, **ema["buffers"]}
        new_ema = {**ema, "params": {k: raw["params"][k] for k in ema["params"]}}
        if self.update_buffers:
            new_ema["buffers"] = raw["buffers"]
        return self.set_state(state.replace(**changes), new_ema)

    def before_val_epoch(self, runner: Any, state: Any) -> Any:
        return self._swap(state)

    def after_val_epoch(self, runner: Any, state: Any, metrics: Any = None) -> Any:
        return self._swap(state)

    def before_test_epoch(self, runner: Any, state: Any) -> Any:
        return self._swap(state)

    def after_test_epoch(self, runner: Any, state: Any, metrics: Any = None) -> Any:
        return self._swap(state)

    def before_save_checkpoint(self, runner: Any, state: Any, checkpoint: dict) -> None:
        if not self.swap_checkpoint:
            return
        saved = checkpoint["state"]
        ema = saved["callbacks"].get(self.state_key())
        if ema is None:
            return
        for part in ("params", "buffers"):
            if part in ema:
                for k in ema[part]:
                    ema[part][k], saved[part][k] = saved[part][k], ema[part][k]
        ema["swapped"] = True

    def after_load_checkpoint(self, runner: Any, state: Any, checkpoint: dict) -> None:
        saved = checkpoint["state"]
        ema = saved.get("callbacks", {}).get(self.state_key())
        if ema is None or not ema.pop("swapped", False):
            return
        for part in ("params", "buffers"):
            if part in ema:
                for k in ema[part]:
                    ema[part][k], saved[part][k] = saved[part][k], ema[part][k]
