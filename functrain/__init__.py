"""functrain: functional, optax-style gradient transforms and training loops for PyTorch.

The public API is re-exported here; see the README for a quick start. Submodules:
``transforms`` (the algebra and optimizers), ``schedules``, ``tree``, ``packing``, ``state``,
``step``, ``ensembles``, ``loops``, ``callbacks`` and ``checkpoint``.
"""

from functrain import callbacks as callbacks
from functrain import checkpoint as checkpoint
from functrain import ensembles as ensembles
from functrain import loops as loops
from functrain import schedules as schedules
from functrain import state as state
from functrain import step as step
from functrain import tree as tree
from functrain.callbacks import Callback, Priority
from functrain.checkpoint import CheckpointError, CheckpointMismatchError, load_checkpoint
from functrain.ensembles import (
    Members,
    init_members,
    make_ensemble_eval_step,
    make_ensemble_train_step,
    member_state,
    member_state_dict,
    stop_members,
    stopped_members,
)
from functrain.loops import EpochBasedTrainLoop, IterBasedTrainLoop, Runner, TestLoop, ValLoop
from functrain.packing import PackLayout, pack
from functrain.state import TrainState
from functrain.step import make_eval_step, make_train_step
from functrain.transforms import *  # noqa: F403
from functrain.transforms import __all__ as _transforms_all
from functrain.tree import flatten, global_norm, tree_map

__version__ = "0.1.0"

__all__ = [
    *_transforms_all,
    "Callback",
    "CheckpointError",
    "CheckpointMismatchError",
    "EpochBasedTrainLoop",
    "IterBasedTrainLoop",
    "Members",
    "PackLayout",
    "Priority",
    "Runner",
    "TestLoop",
    "TrainState",
    "ValLoop",
    "flatten",
    "global_norm",
    "init_members",
    "load_checkpoint",
    "make_ensemble_eval_step",
    "make_ensemble_train_step",
    "make_eval_step",
    "make_train_step",
    "member_state",
    "member_state_dict",
    "pack",
    "stop_members",
    "stopped_members",
    "tree_map",
]
