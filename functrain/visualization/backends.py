"""Visualization backends under mmengine's names and options: where a :class:`Visualizer`
sends scalars, the config and images.

=========================  ==================================================================
backend                    writes (under ``save_dir``, the run's ``<log_dir>/vis_data``)
=========================  ==================================================================
``LocalVisBackend``        mmengine's layout: ``scalars.json`` (one JSON line per call,
                           the same lines as the logger's ``scalars.json``), ``config.py``,
                           ``vis_image/<name>_<step>.png``
``TensorboardVisBackend``  an event file (``tensorboard`` package's ``SummaryWriter``)
``WandbVisBackend``        a W&B run under ``save_dir/wandb``; offline unless ``WANDB_MODE``
                           (or ``init_kwargs['mode']``) says otherwise
``MLflowVisBackend``       an MLflow run; a local file store ``save_dir/mlruns`` unless
                           ``tracking_uri`` names another
=========================  ==================================================================

A backend starts (imports its package, opens its writer or run) on first use, as mmengine's
``force_init_env``; only the main rank's :class:`Visualizer` ever uses one. The trackers are
optional: :func:`check_installed` says, in one line, which extra to install.

Scalar names: ``LocalVisBackend`` writes the record as the logger does (mmengine's file);
the trackers get ``<mode>/<key>`` (``train/loss``, ``val/accuracy``), as the logger's own
TensorBoard scalars, so that training and validation ``time`` do not share one curve
(mmengine sends both as ``time``). ``epoch`` / ``iter`` are x-axes, not curves, and go only to
the local file.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "BACKENDS",
    "BaseVisBackend",
    "LocalVisBackend",
    "MLflowVisBackend",
    "MissingBackendPackage",
    "TensorboardVisBackend",
    "WandbVisBackend",
    "check_installed",
    "flatten",
]

#: Keys of a logged record that are x-axes (only the local file keeps them).
AXES = ("step", "epoch", "iter")


class MissingBackendPackage(ImportError):
    """A backend's optional package is not installed; the message says what to install."""


def flatten(d: Mapping[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """``{'a': {'b': 1}, 'c': [dict(x=2)]}`` -> ``{'a.b': 1, 'c.0.x': 2}`` (mmengine's
    ``MLflowVisBackend._flatten``: lists of dicts are indexed, other lists kept)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{sep}{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(flatten(v, key, sep))
        elif isinstance(v, list | tuple) and any(isinstance(x, Mapping) for x in v):
            for i, x in enumerate(v):
                out.update(flatten(x, f"{key}{sep}{i}", sep) if isinstance(x, Mapping) else {})
        else:
            out[key] = v
    return out


def _config_text(config: Mapping[str, Any]) -> str:
    """The config as a Python file (``Config.pretty_text``), or its ``repr`` lines when a
    value is not a literal (a module object passed in code)."""
    from functrain.config.config_dict import Config

    try:
        return Config(dict(config)).pretty_text
    except (ValueError, TypeError):
        return "".join(f"{k} = {v!r}\n" for k, v in config.items())


class BaseVisBackend:
    """What every backend does; subclasses set :attr:`package` / :attr:`extra` and override
    ``_init_env`` and the ``_add_*`` methods.

    Args:
        save_dir: the directory this backend writes under (the :class:`Visualizer` passes
            ``<log_dir>/vis_data``).
    """

    #: (module to import, ``functrain[extra]`` that installs it); ``None``: no package.
    package: tuple[str, str] | None = None

    def __init__(self, save_dir: str | os.PathLike[str] | None = None) -> None:
        self.save_dir = Path(save_dir) if save_dir is not None else None
        self._ready = False

    @classmethod
    def missing(cls) -> str | None:
        """``None`` when the backend's package is importable, else the line saying what to
        install."""
        if cls.package is None:
            return None
        module, extra = cls.package
        if importlib.util.find_spec(module) is not None:
            return None
        return (
            f"{cls.__name__} needs the {extra} package: pip install functrain[{extra}] "
            f"(or pip install {extra})"
        )

    def _start(self) -> None:
        if self._ready:
            return
        if self.save_dir is None:
            raise ValueError(f"{type(self).__name__}: save_dir is not set")
        problem = self.missing()
        if problem:
            raise MissingBackendPackage(problem)
        self.save_dir.mkdir(parents=True, exist_ok=True)
        self._init_env()
        self._ready = True

    def _init_env(self) -> None:
        """Open the writer / run (called once, on first use)."""

    @property
    def experiment(self) -> Any:
        """The tracker object (the writer, the ``wandb`` / ``mlflow`` module), as mmengine."""
        self._start()
        return self._experiment()

    def _experiment(self) -> Any:
        return self

    def add_config(self, config: Mapping[str, Any], **kwargs: Any) -> None:
        """Record the run's config (its hyperparameters) once."""
        self._start()
        self._add_config(config)

    def add_image(self, name: str, image: np.ndarray, step: int = 0, **kwargs: Any) -> None:
        """Record an RGB ``uint8`` image of shape ``(H, W, 3)``."""
        self._start()
        self._add_image(name, image, step)

    def add_scalars(
        self, scalar_dict: Mapping[str, Any], step: int = 0, prefix: str = "", **kwargs: Any
    ) -> None:
        """Record Python numbers at ``step``; the trackers name them ``prefix + key``."""
        self._start()
        self._add_scalars(scalar_dict, step, prefix)

    def add_scalar(self, name: str, value: Any, step: int = 0, **kwargs: Any) -> None:
        """One scalar (mmengine's method)."""
        self.add_scalars({name: value}, step)

    def _add_config(self, config: Mapping[str, Any]) -> None:
        pass

    def _add_image(self, name: str, image: np.ndarray, step: int) -> None:
        pass

    def _add_scalars(self, scalars: Mapping[str, Any], step: int, prefix: str) -> None:
        pass

    def close(self) -> None:
        """Flush and close; the next use opens the backend again."""
        if self._ready:
            self._close()
        self._ready = False

    def _close(self) -> None:
        pass

    @staticmethod
    def _curves(scalars: Mapping[str, Any], prefix: str) -> dict[str, float]:
        """The tracker curves of a record: axes dropped, names prefixed."""
        return {f"{prefix}{k}": v for k, v in scalars.items() if k not in AXES}


class LocalVisBackend(BaseVisBackend):
    """mmengine's ``LocalVisBackend``: ``scalars.json``, ``config.py`` and ``vis_image/``.

    Args:
        save_dir: the directory (mmengine's ``<log_dir>/vis_data``).
        img_save_dir: images go to ``save_dir / img_save_dir / f"{name}_{step}.png"``.
        config_save_file: the config file name (must end in ``.py``).
        scalar_save_file: the scalars file name (must end in ``.json``).
    """

    def __init__(
        self,
        save_dir: str | os.PathLike[str] | None = None,
        img_save_dir: str = "vis_image",
        config_save_file: str = "config.py",
        scalar_save_file: str = "scalars.json",
    ) -> None:
        if not str(config_save_file).endswith(".py"):
            raise ValueError(f"config_save_file must end in .py, got {config_save_file!r}")
        if not str(scalar_save_file).endswith(".json"):
            raise ValueError(f"scalar_save_file must end in .json, got {scalar_save_file!r}")
        super().__init__(save_dir)
        self.img_save_dir = img_save_dir
        self.config_save_file = config_save_file
        self.scalar_save_file = scalar_save_file

    def _add_config(self, config: Mapping[str, Any]) -> None:
        assert self.save_dir is not None
        (self.save_dir / self.config_save_file).write_text(_config_text(config))

    def _add_image(self, name: str, image: np.ndarray, step: int) -> None:
        from PIL import Image  # matplotlib's own dependency

        assert self.save_dir is not None
        folder = self.save_dir / self.img_save_dir
        folder.mkdir(parents=True, exist_ok=True)
        safe = name.replace("/", "_").replace(os.sep, "_")
        Image.fromarray(image).save(folder / f"{safe}_{step}.png")

    def _add_scalars(self, scalars: Mapping[str, Any], step: int, prefix: str) -> None:
        # The record as given (no prefix) then its step: the logger's scalars.json line.
        assert self.save_dir is not None
        with open(self.save_dir / self.scalar_save_file, "a") as f:
            f.write(json.dumps({**scalars, "step": step}) + "\n")


class TensorboardVisBackend(BaseVisBackend):
    """mmengine's ``TensorboardVisBackend``: an event file in ``save_dir`` (float32 scalars,
    the config as text, images)."""

    package = ("tensorboard", "tensorboard")

    def _init_env(self) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(str(self.save_dir))

    def _experiment(self) -> Any:
        return self._writer

    def _add_config(self, config: Mapping[str, Any]) -> None:
        self._writer.add_text("config", _config_text(config))

    def _add_image(self, name: str, image: np.ndarray, step: int) -> None:
        self._writer.add_image(name, image, step, dataformats="HWC")

    def _add_scalars(self, scalars: Mapping[str, Any], step: int, prefix: str) -> None:
        for k, v in self._curves(scalars, prefix).items():
            self._writer.add_scalar(k, v, step)

    def _close(self) -> None:
        self._writer.close()


class WandbVisBackend(BaseVisBackend):
    """mmengine's ``WandbVisBackend``, offline by default: ``WANDB_MODE=offline`` (and
    ``WANDB_SILENT``, ``WANDB_DISABLE_GIT``, ``WANDB_DISABLE_CODE``) unless the environment
    or ``init_kwargs['mode']`` says otherwise, so it never needs the network.

    Args:
        save_dir: the run goes to ``save_dir / "wandb"``.
        init_kwargs: passed to ``wandb.init`` (``dir`` defaults to ``save_dir``).
        define_metric_cfg: ``{metric: summary}`` or a list of ``wandb.define_metric`` kwargs.
        commit: passed to ``wandb.log``.
        log_code_name: accepted (mmengine's option); code is not uploaded offline.
        watch_kwargs: accepted (mmengine's ``add_graph`` option).

    Each row logged has ``<prefix>step`` (``train/step``, ``val/step``): W&B's own step only
    increases, and validation's step (the epoch) is smaller than training's.
    """

    package = ("wandb", "wandb")

    def __init__(
        self,
        save_dir: str | os.PathLike[str] | None = None,
        init_kwargs: Mapping[str, Any] | None = None,
        define_metric_cfg: Mapping[str, Any] | list[Any] | None = None,
        commit: bool = True,
        log_code_name: str | None = None,
        watch_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(save_dir)
        if define_metric_cfg is not None and not isinstance(define_metric_cfg, Mapping | list):
            raise ValueError(
                f"define_metric_cfg must be a dict or a list, got {define_metric_cfg!r}"
            )
        self.init_kwargs = dict(init_kwargs or {})
        self.define_metric_cfg = define_metric_cfg
        self.commit = commit
        self.log_code_name = log_code_name
        self.watch_kwargs = dict(watch_kwargs or {})
        self.run: Any = None

    def _init_env(self) -> None:
        if "mode" not in self.init_kwargs:
            os.environ.setdefault("WANDB_MODE", "offline")
        for key in ("WANDB_SILENT", "WANDB_DISABLE_GIT", "WANDB_DISABLE_CODE"):
            os.environ.setdefault(key, "true")
        import wandb

        self._wandb = wandb
        # reinit: a later runner.test() after training opens its own run in the same dir
        # (and another visualizer's run in this process stays open).
        kwargs = {"dir": str(self.save_dir), "reinit": "create_new", **self.init_kwargs}
        self.run = wandb.init(**kwargs)
        cfg = self.define_metric_cfg
        if isinstance(cfg, Mapping):
            for metric, summary in cfg.items():
                self.run.define_metric(metric, summary=summary)
        elif isinstance(cfg, list):
            for item in cfg:
                self.run.define_metric(**item)

    def _experiment(self) -> Any:
        return self._wandb

    def _add_config(self, config: Mapping[str, Any]) -> None:
        allow = self.init_kwargs.get("allow_val_change", False)
        self.run.config.update(dict(config), allow_val_change=allow)

    def _add_image(self, name: str, image: np.ndarray, step: int) -> None:
        self.run.log({name: self._wandb.Image(image)}, commit=self.commit)

    def _add_scalars(self, scalars: Mapping[str, Any], step: int, prefix: str) -> None:
        row = self._curves(scalars, prefix)
        row[f"{prefix}step"] = step
        self.run.log(row, commit=self.commit)

    def _close(self) -> None:
        self.run.finish()


class MLflowVisBackend(BaseVisBackend):
    """mmengine's ``MLflowVisBackend``; by default a local file store ``save_dir/mlruns``
    (mmengine uses ``save_dir`` itself), read back with ``MlflowClient(tracking_uri)``.

    Args:
        save_dir: the store goes to ``save_dir / "mlruns"`` unless ``tracking_uri`` is given.
        exp_name: experiment name (default ``'Default'``).
        run_name: the run's name.
        tags: tags set on the run.
        params: params logged on the run.
        tracking_uri: another store (a server: make sure it runs).
        artifact_suffix: files of the work dir with these suffixes are logged as artifacts
            at close (mmengine's option).
        tracked_config_keys: log only these top-level config keys as params.
        artifact_location: where the experiment's artifacts go.

    MLflow's file store is "in maintenance mode" from MLflow 3.x and refuses to open unless
    ``MLFLOW_ALLOW_FILE_STORE=true``; the backend sets it (when unset) for its local store.
    """

    package = ("mlflow", "mlflow")

    def __init__(
        self,
        save_dir: str | os.PathLike[str] | None = None,
        exp_name: str | None = None,
        run_name: str | None = None,
        tags: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
        tracking_uri: str | None = None,
        artifact_suffix: str | tuple[str, ...] = (".json", ".log", ".py", "yaml"),
        tracked_config_keys: list[str] | tuple[str, ...] | None = None,
        artifact_location: str | None = None,
        work_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(save_dir)
        self.exp_name = exp_name or "Default"
        self.run_name = run_name
        self.tags = dict(tags or {})
        self.params = dict(params or {})
        self.tracking_uri = tracking_uri
        self.artifact_suffix = (
            (artifact_suffix,) if isinstance(artifact_suffix, str) else tuple(artifact_suffix)
        )
        self.tracked_config_keys = tracked_config_keys
        self.artifact_location = artifact_location
        self.work_dir = Path(work_dir) if work_dir is not None else None
        self.run_id: str | None = None

    @property
    def store_uri(self) -> str:
        """The tracking URI the run is written to."""
        if self.tracking_uri is not None:
            return self.tracking_uri
        assert self.save_dir is not None
        return (self.save_dir.resolve() / "mlruns").as_uri()

    def _init_env(self) -> None:
        if self.tracking_uri is None:
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.tracking import MlflowClient

        self._client = MlflowClient(self.store_uri)
        if self.run_id is not None:  # reopened (runner.test() after training): same run
            self._client.update_run(self.run_id, status="RUNNING")
            return
        exp = self._client.get_experiment_by_name(self.exp_name)
        exp_id = (
            exp.experiment_id
            if exp is not None
            else self._client.create_experiment(
                self.exp_name, artifact_location=self.artifact_location
            )
        )
        tags = {str(k): str(v) for k, v in self.tags.items()}
        run = self._client.create_run(exp_id, run_name=self.run_name, tags=tags)
        self.run_id = run.info.run_id
        if self.params:
            self._log_params(self.params)

    def _experiment(self) -> Any:
        return self._client

    def _log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in flatten(params).items()]
        for i in range(0, len(items), 100):  # MLflow's batch limit is 100 params
            self._client.log_batch(self.run_id, params=items[i : i + 100])

    def _add_config(self, config: Mapping[str, Any]) -> None:
        keys = self.tracked_config_keys
        tracked = dict(config) if keys is None else {k: config[k] for k in keys if k in config}
        self._log_params(tracked)
        self._client.log_text(self.run_id, _config_text(config), "config.py")
        if self.work_dir is None and config.get("work_dir") is not None:
            self.work_dir = Path(config["work_dir"])

    def _add_image(self, name: str, image: np.ndarray, step: int) -> None:
        safe = name.replace("/", "_")
        self._client.log_image(self.run_id, image, f"{safe}_{step}.png")

    def _add_scalars(self, scalars: Mapping[str, Any], step: int, prefix: str) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in self._curves(scalars, prefix).items()]
        self._client.log_batch(self.run_id, metrics=metrics)

    def _close(self) -> None:
        if self.work_dir is not None and self.work_dir.is_dir():
            for path in sorted(self.work_dir.rglob("*")):
                if path.is_file() and path.name.endswith(self.artifact_suffix):
                    if "mlruns" in path.parts or "wandb" in path.parts:
                        continue  # the trackers' own files
                    rel = path.parent.relative_to(self.work_dir)
                    self._client.log_artifact(
                        self.run_id, str(path), str(rel) if rel.parts else None
                    )
        self._client.set_terminated(self.run_id)


#: mmengine's backend names -> classes.
BACKENDS: dict[str, type[BaseVisBackend]] = {
    "LocalVisBackend": LocalVisBackend,
    "TensorboardVisBackend": TensorboardVisBackend,
    "WandbVisBackend": WandbVisBackend,
    "MLflowVisBackend": MLflowVisBackend,
}


def check_installed(backends: list[BaseVisBackend]) -> None:
    """Raise :class:`MissingBackendPackage` (one line) for the first backend whose package
    is not installed."""
    for backend in backends:
        problem = backend.missing()
        if problem:
            raise MissingBackendPackage(problem)
