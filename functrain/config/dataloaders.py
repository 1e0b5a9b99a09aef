"""Data loaders and seeding from a config: ``train_dataloader`` / ``val_dataloader`` /
``test_dataloader`` (dataset, sampler, ``collate_fn``, workers) and ``randomness``, as
mmengine's runner builds them."""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from functools import partial
from typing import Any

import torch
from torch.utils.data import DataLoader

from functrain.config.builtin_registries import DATA_SAMPLERS, DATASETS, FUNCTIONS
from functrain.config.errors import ConfigError, check_allowed, error_text, suggest

__all__ = [
    "build_dataloader",
    "seed_from_config",
    "set_random_seed",
]

_DATALOADER_KEYS = (
    "batch_size", "num_workers", "persistent_workers", "pin_memory", "drop_last",
    "prefetch_factor", "timeout", "sampler", "batch_sampler", "collate_fn", "dataset", "shuffle",
)  # fmt: skip


def set_random_seed(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy (when installed) and torch (CPU and CUDA), as mmengine's
    ``set_random_seed``."""
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:  # pragma: no cover
        pass
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    if deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True)


def seed_from_config(cfg: Mapping[str, Any], rank: int) -> int | None:
    """The seed of the config's ``randomness`` (drawn by rank 0 and shared when ``seed`` is
    ``None``, plus ``rank`` with ``diff_rank_seed``), after seeding Python, numpy and torch
    with it as mmengine does."""
    rnd = cfg.get("randomness") or {}
    if not isinstance(rnd, Mapping):
        raise ConfigError("randomness", f"must be a dict like dict(seed=0), got {rnd!r}")
    check_allowed("randomness", rnd, ("seed", "deterministic", "diff_rank_seed"), "randomness")
    seed = rnd.get("seed")
    if seed is None:  # mmengine: rank 0 draws one and every rank uses it
        from functrain.ranks import sync_random_seed

        seed = sync_random_seed()
    elif isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError("randomness.seed", f"expected an int, got {seed!r}")
    if rnd.get("diff_rank_seed", False):
        seed += rank
    set_random_seed(seed, bool(rnd.get("deterministic", False)))
    return seed


def _worker_init_fn(worker_id: int, num_workers: int, rank: int, seed: int) -> None:
    worker_seed = num_workers * rank + worker_id + seed
    set_random_seed(worker_seed)


def build_dataloader(
    cfg: Any, path: str, *, seed: int | None, rank: int = 0, diff_rank_seed: bool = False
) -> DataLoader:
    """mmengine's ``Runner.build_dataloader``: ``dataset``, ``sampler`` (default
    ``DefaultSampler``) and ``collate_fn`` from the registries, the rest to ``DataLoader``."""
    if not isinstance(cfg, Mapping):
        raise ConfigError(path, f"must be a dict with 'dataset' and 'batch_size', got {cfg!r}")
    for key in cfg:
        if key not in _DATALOADER_KEYS:
            raise ConfigError(
                f"{path}.{key}",
                f"unknown dataloader key {key!r}{suggest(key, _DATALOADER_KEYS)} "
                f"(accepted: {', '.join(_DATALOADER_KEYS)})",
            )
    if "dataset" not in cfg:
        raise ConfigError(path, "needs a 'dataset' (e.g. dataset=dict(type='Digits'))")
    for key, minimum in (("batch_size", 1), ("num_workers", 0)):
        value = cfg.get(key, minimum)
        if key == "batch_size" and value is None:  # DataLoader's "no batching"
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(f"{path}.{key}", f"expected an int >= {minimum}, got {value!r}")
    if "shuffle" in cfg:
        raise ConfigError(
            f"{path}.shuffle",
            "mmengine configs shuffle through the sampler: sampler=dict(type='DefaultSampler', "
            "shuffle=True)",
        )
    dataset_cfg = cfg["dataset"]
    if isinstance(dataset_cfg, str | bytes | int | float) or dataset_cfg is None:
        raise ConfigError(
            f"{path}.dataset",
            f"expected a dict like dict(type='Digits', ...) or a Dataset, got {dataset_cfg!r}",
        )
    dataset = (
        DATASETS.build(dataset_cfg, f"{path}.dataset")
        if isinstance(dataset_cfg, Mapping)
        else dataset_cfg
    )
    sampler_seed = None if diff_rank_seed else seed
    sampler_cfg = cfg.get("sampler", {"type": "DefaultSampler", "shuffle": False})
    sampler = DATA_SAMPLERS.build(
        sampler_cfg, f"{path}.sampler", dataset=dataset, seed=sampler_seed
    )
    collate_cfg = cfg.get("collate_fn", {"type": "default_collate"})
    if isinstance(collate_cfg, Mapping):
        collate = FUNCTIONS.get(collate_cfg.get("type"), f"{path}.collate_fn.type")
        collate_kwargs = {k: v for k, v in collate_cfg.items() if k != "type"}
        if collate_kwargs:
            collate = partial(collate, **collate_kwargs)
    elif callable(collate_cfg):
        collate = collate_cfg
    else:
        raise ConfigError(
            f"{path}.collate_fn",
            f"expected a dict like dict(type='pseudo_collate') or a function, got {collate_cfg!r}",
        )
    kwargs = {k: v for k, v in cfg.items() if k not in ("dataset", "sampler", "collate_fn")}
    if "batch_size" not in kwargs:
        raise ConfigError(path, "needs a 'batch_size'")
    num_workers = kwargs.get("num_workers", 0)
    init_fn = None
    if seed is not None and num_workers:
        init_fn = partial(_worker_init_fn, num_workers=num_workers, rank=rank, seed=seed)
    if kwargs.get("batch_sampler") is not None:
        raise ConfigError(f"{path}.batch_sampler", "batch samplers are not supported")
    kwargs.pop("batch_sampler", None)
    if not num_workers:
        kwargs.pop("persistent_workers", None)
    try:
        return DataLoader(
            dataset, sampler=sampler, collate_fn=collate, worker_init_fn=init_fn, **kwargs
        )
    except (TypeError, ValueError) as err:
        text = error_text(err)
        named = [k for k in kwargs if re.search(rf"\b{re.escape(k)}\b", text)]
        raise ConfigError(f"{path}.{named[0]}" if len(named) == 1 else path, text) from err
