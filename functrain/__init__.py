"""functrain: functional, optax-style gradient transforms and training loops for PyTorch.

The public API is re-exported here; see the README for a quick start.
"""

from functrain import schedules, tree
from functrain.packing import PackLayout, pack
from functrain.transforms import *  # noqa: F403
from functrain.transforms import __all__ as _transforms_all
from functrain.tree import flatten, global_norm, tree_map

__version__ = "0.1.0"

__all__ = [
    *_transforms_all,
    "PackLayout",
    "flatten",
    "global_norm",
    "pack",
    "schedules",
    "tree",
    "tree_map",
]
