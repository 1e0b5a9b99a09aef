"""Setting the process group up: :func:`init_distributed` from torchrun's environment, and
:func:`setup_env` for an mmengine ``env_cfg``.

Launching (what ``torchrun`` sets up and :func:`init_distributed` reads)::

    torchrun --nproc_per_node=2 train.py          # RANK, WORLD_SIZE, LOCAL_RANK,
                                                  # MASTER_ADDR, MASTER_PORT in the env
    # train.py
    from functrain.distributed import init_distributed, is_main_process
    init_distributed("pytorch", timeout=600)      # nccl on GPU (device = LOCAL_RANK), else gloo
    if is_main_process():
        print("only once")

:func:`setup_env` is the same step driven by an mmengine ``env_cfg`` (``cudnn_benchmark``,
``mp_cfg``, ``dist_cfg``, ``resource_limit``) and a ``launcher`` name, for configs.
"""

from __future__ import annotations

import datetime
import difflib
import logging
import os
import platform
from collections.abc import Mapping
from typing import Any

import attrs
import torch
import torch.distributed as dist

from functrain.ranks import (
    get_device,
    get_local_rank,
    get_rank,
    get_world_size,
    is_distributed,
    synced_timestamp,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "SUPPORTED_LAUNCHERS",
    "EnvInfo",
    "init_distributed",
    "setup_env",
]

logger = logging.getLogger("functrain.distributed")

#: Collective timeout when none is given: mmengine's (torch's default for gloo), 30 minutes.
DEFAULT_TIMEOUT = datetime.timedelta(minutes=30)

#: Launchers :func:`setup_env` accepts.
SUPPORTED_LAUNCHERS = ("none", "pytorch")
_KNOWN_UNSUPPORTED_LAUNCHERS = ("slurm", "mpi")
_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
_RENDEZVOUS_VARS = ("MASTER_ADDR", "MASTER_PORT")


def _suggest(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


# --------------------------------------------------------------------------------------------
# Setting the process group up


def _as_timedelta(timeout: float | datetime.timedelta | None, where: str) -> datetime.timedelta:
    if timeout is None:
        return DEFAULT_TIMEOUT
    if isinstance(timeout, datetime.timedelta):
        value = timeout
    elif isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(
            f"{where} must be a number of seconds or a datetime.timedelta, got "
            f"{type(timeout).__name__} ({timeout!r}); e.g. dist_cfg=dict(timeout=1800)"
        )
    else:
        value = datetime.timedelta(seconds=timeout)
    if value.total_seconds() <= 0:
        raise ValueError(f"{where} must be positive, got {timeout!r}")
    return value


def _int_env(name: str) -> int:
    raw = os.environ[name]
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


def _check_backend(backend: str) -> str:
    if not isinstance(backend, str) or not backend:
        raise TypeError(f"backend must be a string such as 'nccl' or 'gloo', got {backend!r}")
    known = [b for b in getattr(dist.Backend, "backend_list", ["gloo", "nccl", "mpi", "ucc"])]
    known = [b for b in known if b not in ("undefined", "fake")]
    # "cpu:gloo,cuda:nccl" picks a backend per device type; check each part.
    names = [part.split(":")[-1] for part in backend.lower().split(",")]
    for name in names:
        if name not in known:
            raise ValueError(
                f"unknown distributed backend {name!r}{_suggest(name, known)} (torch knows "
                f"{', '.join(known)})"
            )
    if "nccl" in names and not torch.cuda.is_available():
        raise ValueError(
            "backend 'nccl' needs CUDA, which is not available in this process; use "
            "backend='gloo' for CPU training (or leave backend=None to pick it)"
        )
    return backend


def init_distributed(
    launcher: str = "pytorch",
    backend: str | None = None,
    timeout: float | datetime.timedelta | None = None,
    **init_kwargs: Any,
) -> bool:
    """Initialize the default process group from torchrun's environment.

    Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and ``MASTER_ADDR`` / ``MASTER_PORT``
    for the default ``env://`` rendezvous), binds this process to ``cuda:LOCAL_RANK`` when
    CUDA is available (with ``gloo``, only when the machine has that many GPUs), and calls ``torch.distributed.init_process_group``. Does nothing when
    the group is already initialized (as mmengine's runner) or when ``launcher`` is
    ``"none"``.

    Args:
        launcher: ``"pytorch"`` (torchrun / ``torch.distributed.launch``) or ``"none"``.
            ``"slurm"`` and ``"mpi"`` are not supported: run ``torchrun`` under ``srun`` /
            ``mpirun`` instead.
        backend: ``"nccl"``, ``"gloo"``, ... ; ``None`` picks ``"nccl"`` when CUDA is
            available, else ``"gloo"``.
        timeout: how long a collective may wait for its peers before it fails, in seconds or
            as a ``timedelta`` (default :data:`DEFAULT_TIMEOUT`, 30 minutes, as mmengine). A
            rank that dies or hangs therefore stops the others within this time at most.
        **init_kwargs: passed to ``torch.distributed.init_process_group`` (``init_method``,
            ``store``, ``pg_options``, ``device_id``, ...).

    Returns:
        ``True`` when this call initialized the group.

    Raises:
        RuntimeError: launched with ``"pytorch"`` but without torchrun's environment
            variables (the message names the missing ones and how to launch).
        ValueError: an unsupported launcher or an unknown backend (with a suggestion), or
            ``"nccl"`` without CUDA.

    Example:
        >>> init_distributed("none")  # a single process: nothing to do
        False
        >>> # under `torchrun --nproc_per_node=2 train.py`:
        >>> init_distributed("pytorch", timeout=600)  # doctest: +SKIP
        True
    """
    _check_launcher(launcher)
    if launcher == "none":
        return False
    if is_distributed():
        return False
    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed support")
    missing = [v for v in _TORCHRUN_VARS if v not in os.environ]
    rendezvous = init_kwargs.get("init_method") in (None, "env://") and "store" not in init_kwargs
    if rendezvous:
        missing += [v for v in _RENDEZVOUS_VARS if v not in os.environ]
    if missing:
        raise RuntimeError(
            f"launcher 'pytorch' needs the environment variables that torchrun sets; missing: "
            f"{', '.join(missing)}. Launch with `torchrun --nproc_per_node=N your_script.py ...` "
            "(or `torchrun --nproc_per_node=N -m functrain.cli train CONFIG --launcher "
            "pytorch`), or use launcher 'none' for a single process"
        )
    rank, world_size, local_rank = (_int_env(v) for v in _TORCHRUN_VARS)
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} is not in [0, WORLD_SIZE={world_size})")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    backend = _check_backend(backend)
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        if 0 <= local_rank < count:
            torch.cuda.set_device(local_rank)
        elif "nccl" in backend:
            raise ValueError(
                f"LOCAL_RANK={local_rank} but this machine has {count} CUDA device(s); start "
                f"at most {count} processes per node (torchrun --nproc_per_node) or use "
                "backend='gloo' for CPU training"
            )
        # else: more CPU (gloo) processes than GPUs; they do not get a device of their own.
    kwargs = dict(init_kwargs)
    kwargs.setdefault("rank", rank)
    kwargs.setdefault("world_size", world_size)
    dist.init_process_group(backend=backend, timeout=_as_timedelta(timeout, "timeout"), **kwargs)
    logger.info(
        f"initialized torch.distributed: backend {backend}, rank {rank} of {world_size}, "
        f"local rank {local_rank}"
    )
    return True


def _check_launcher(launcher: str) -> None:
    if launcher in SUPPORTED_LAUNCHERS:
        return
    supported = ", ".join(repr(x) for x in SUPPORTED_LAUNCHERS)
    if launcher in _KNOWN_UNSUPPORTED_LAUNCHERS:
        raise ValueError(
            f"launcher {launcher!r} is not supported by functrain (supported: {supported}); "
            f"under {launcher}, start `torchrun` on each node (e.g. `srun torchrun "
            "--nnodes=$SLURM_NNODES --nproc_per_node=N ...`) and use launcher 'pytorch'"
        )
    raise ValueError(
        f"unknown launcher {launcher!r}{_suggest(launcher, SUPPORTED_LAUNCHERS)} (supported: "
        f"{supported})"
    )


@attrs.frozen
class EnvInfo:
    """What :func:`setup_env` set up.

    Attributes:
        launcher: the launcher name.
        distributed: whether a process group of several ranks is initialized.
        rank, world_size, local_rank: this process's place.
        backend: the process group's backend, or ``None`` without one.
        device: the device this process should compute on (:func:`get_device`).
        timestamp: ``%Y%m%d_%H%M%S`` of rank 0's clock, the same on every rank (mmengine's
            run timestamp, which names the log directory).
    """

    launcher: str
    distributed: bool
    rank: int
    world_size: int
    local_rank: int
    backend: str | None
    device: torch.device
    timestamp: str


_ENV_KEYS = ("cudnn_benchmark", "mp_cfg", "dist_cfg", "resource_limit")
_MP_KEYS = ("mp_start_method", "opencv_num_threads")


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"{where} must be a dict, got {type(value).__name__} ({value!r})")
    return dict(value)


def _reject_unknown(cfg: Mapping[str, Any], known: tuple[str, ...], where: str) -> None:
    for key in cfg:
        if key not in known:
            raise ValueError(
                f"unknown {where} key {key!r}{_suggest(key, known)} (known keys: "
                f"{', '.join(known)})"
            )


def setup_env(env_cfg: Mapping[str, Any] | None, launcher: str = "none") -> EnvInfo:
    """Set up the process as mmengine 0.10.7's ``Runner.setup_env`` does for an ``env_cfg``.

    Keys (all optional; any other key is an error naming it, with a suggestion):

    - ``cudnn_benchmark``: ``True`` sets ``torch.backends.cudnn.benchmark`` (``False``
      leaves it alone, as mmengine).
    - ``mp_cfg``: ``mp_start_method`` (``torch.multiprocessing.set_start_method(...,
      force=True)``, a warning if it changes an earlier choice) and ``opencv_num_threads``
      (``cv2.setNumThreads``; ignored with a logged note when OpenCV is not installed).
      Unlike mmengine, nothing is changed for a key that is absent (mmengine forces
      ``fork`` and 0 OpenCV threads by default). Under a launcher other than ``"none"``,
      ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` default to 1 for the processes this one
      starts, as mmengine (logged).
    - ``dist_cfg``: arguments of :func:`init_distributed` for launcher ``"pytorch"``:
      ``backend``, ``timeout`` (seconds), ``init_backend`` (only ``"torch"``) and
      ``init_process_group`` keywords (``init_method``, ...). Ignored for ``"none"``. A
      ``backend='nccl'`` (the boilerplate of mmengine / MMDetection configs) on a machine
      without CUDA falls back to ``gloo`` with a logged warning.
    - ``resource_limit``: raise the soft limit of open files (``RLIMIT_NOFILE``) to at
      least this (default 4096, capped at the hard limit), as mmengine always does.

    Args:
        env_cfg: the config's ``env_cfg`` dict, or ``None``.
        launcher: ``"none"`` (one process) or ``"pytorch"`` (torchrun); ``"slurm"`` and
            ``"mpi"`` raise ``ValueError`` naming the supported launchers.

    Returns:
        An :class:`EnvInfo`.

    Example:
        >>> info = setup_env(dict(cudnn_benchmark=False), launcher="none")
        >>> info.rank, info.world_size, info.distributed
        (0, 1, False)
        >>> setup_env(dict(dist_cfg=dict(backend="gloo")), launcher="slurm")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: launcher 'slurm' is not supported by functrain (supported: ...
    """
    _check_launcher(launcher)
    cfg = _mapping(env_cfg, "env_cfg")
    _reject_unknown(cfg, _ENV_KEYS, "env_cfg")
    mp_cfg = _mapping(cfg.get("mp_cfg"), "env_cfg.mp_cfg")
    _reject_unknown(mp_cfg, _MP_KEYS, "env_cfg.mp_cfg")
    dist_cfg = _mapping(cfg.get("dist_cfg"), "env_cfg.dist_cfg")
    init_backend = dist_cfg.pop("init_backend", "torch")
    if init_backend != "torch":
        raise ValueError(
            f"env_cfg.dist_cfg.init_backend={init_backend!r} is not supported; functrain "
            "initializes torch.distributed itself (init_backend='torch')"
        )
    timeout = _as_timedelta(dist_cfg.pop("timeout", None), "env_cfg.dist_cfg.timeout")
    resource_limit = cfg.get("resource_limit", 4096)
    if isinstance(resource_limit, bool) or not isinstance(resource_limit, int):
        raise TypeError(f"env_cfg.resource_limit must be an integer, got {resource_limit!r}")

    if cfg.get("cudnn_benchmark"):
        torch.backends.cudnn.benchmark = True
    _set_multi_processing(mp_cfg, distributed=launcher != "none")

    if launcher == "none" and int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        logger.warning(
            f"WORLD_SIZE={os.environ['WORLD_SIZE']} in the environment but launcher='none': "
            "each process trains on its own; pass launcher 'pytorch' (--launcher pytorch) "
            "for data-parallel training"
        )
    if launcher != "none" and not is_distributed():
        backend = dist_cfg.pop("backend", None)
        if backend is not None and "nccl" in str(backend) and not torch.cuda.is_available():
            logger.warning(
                f"env_cfg.dist_cfg.backend={backend!r} needs CUDA, which is not available: "
                "using 'gloo'"
            )
            backend = "gloo"
        init_distributed(launcher, backend=backend, timeout=timeout, **dist_cfg)

    if platform.system() != "Windows":
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = max(resource_limit, soft)
        if hard != resource.RLIM_INFINITY:
            wanted = min(wanted, hard)
        if wanted != soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))

    distributed = is_distributed() and get_world_size() > 1
    return EnvInfo(
        launcher=launcher,
        distributed=distributed,
        rank=get_rank(),
        world_size=get_world_size(),
        local_rank=get_local_rank(),
        backend=str(dist.get_backend()) if is_distributed() else None,
        device=get_device(),
        timestamp=synced_timestamp(),
    )


def _set_multi_processing(mp_cfg: Mapping[str, Any], distributed: bool) -> None:
    if "mp_start_method" in mp_cfg and platform.system() != "Windows":
        import torch.multiprocessing as mp

        method = mp_cfg["mp_start_method"]
        methods = mp.get_all_start_methods()
        if method not in methods:
            raise ValueError(
                f"env_cfg.mp_cfg.mp_start_method={method!r}{_suggest(method, methods)} is not "
                f"available here (available: {', '.join(methods)})"
            )
        current = mp.get_start_method(allow_none=True)
        if current is not None and current != method:
            logger.warning(
                f"multiprocessing start method {method!r} differs from the earlier setting "
                f"{current!r}; setting it to {method!r} (env_cfg.mp_cfg.mp_start_method)"
            )
        mp.set_start_method(method, force=True)
    if "opencv_num_threads" in mp_cfg:
        try:
            import cv2
        except ImportError:
            logger.info("env_cfg.mp_cfg.opencv_num_threads ignored: OpenCV is not installed")
        else:
            cv2.setNumThreads(int(mp_cfg["opencv_num_threads"]))
    if distributed:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            if var not in os.environ:
                os.environ[var] = "1"
                logger.info(
                    f"{var} set to 1 for the processes started from here (as mmengine); "
                    "set it yourself to tune"
                )
