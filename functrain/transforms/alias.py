"""Optimizers under their usual names (torch.optim's, with its arguments and defaults, and
LAMB, LARS, Lion), each a composition of transforms, as optax's ``alias.py``.

Every alias is ``chain(...)`` of building blocks; the update rules live in the modules that
define them (:func:`~functrain.transforms.adam.scale_by_adam`,
:func:`~functrain.transforms.adamax.scale_by_adamax`, ...). The compositions are written in
three modules, by family, and re-exported here so that ``functrain.transforms.alias.<name>``
keeps working:

- :mod:`~functrain.transforms.aliases_adam`: ``adam``, ``adamw``, ``adamax``, ``nadam``,
  ``radam``;
- :mod:`~functrain.transforms.aliases_torch`: torch.optim's others, ``sgd``, ``adagrad``,
  ``adadelta``, ``asgd``, ``rmsprop``, ``rprop``, ``adafactor``, ``muon``;
- :mod:`~functrain.transforms.aliases_papers`: from papers torch lacks, ``lamb``, ``lars``,
  ``lion``.

torch.optim's two weight decay orders (L2 into the gradient, or decoupled after the
direction) are :mod:`~functrain.transforms.decay_order`'s chains. The modules holding the
update rules re-export their alias from here at first access
(:func:`~functrain.transforms.optim_parts.reexport_alias`), so ``from
functrain.transforms.adamax import adamax`` keeps working without an import cycle.
"""

from __future__ import annotations

from functrain.transforms.aliases_adam import adam, adamax, adamw, nadam, radam
from functrain.transforms.aliases_papers import lamb, lars, lion
from functrain.transforms.aliases_torch import (
    adadelta,
    adafactor,
    adagrad,
    asgd,
    muon,
    rmsprop,
    rprop,
    sgd,
)
from functrain.transforms.hyperparams import Schedule as Schedule  # alias.Schedule, as before

__all__ = [
    "adadelta",
    "adafactor",
    "adagrad",
    "adam",
    "adamax",
    "adamw",
    "asgd",
    "lamb",
    "lars",
    "lion",
    "muon",
    "nadam",
    "radam",
    "rmsprop",
    "rprop",
    "sgd",
]
