"""Seed blocks 2-6: a new optimizer, registered so that a config can name it.

In MMDetection a new optimizer is a ``torch.optim.Optimizer`` subclass registered in
``mmdet.registry.OPTIMIZERS``; in functrain it is a function returning a
:class:`functrain.GradientTransformation`, registered in ``functrain.config.OPTIMIZERS``.
A config uses it through ``custom_imports`` and ``optim_wrapper.optimizer.type``::

    custom_imports = dict(imports=['examples.configs.my_project.my_optimizer'],
                          allow_failed_imports=False)
    optim_wrapper = dict(type='OptimWrapper',
                         optimizer=dict(type='MyOptimizer', lr=0.02, a=0.9, b=1e-4, c=0.1))
"""

from __future__ import annotations

import functrain as ft
from functrain.config import OPTIMIZERS
from functrain.schedules import Schedule


@OPTIMIZERS.register_module()
def MyOptimizer(  # the registered name is the config's `type`
    lr: float | Schedule = 0.01, a: float = 0.9, b: float = 0.0, c: float = 1.0
) -> ft.GradientTransformation:
    """SGD on gradients clipped elementwise: each gradient element is clamped to ``[-c, c]``,
    L2 weight decay ``b * param`` is added, then heavy-ball momentum ``a`` and the learning
    rate ``lr`` are applied as in ``torch.optim.SGD``.

    Args:
        lr: the learning rate, a float or a schedule (a config's ``param_scheduler`` passes a
            schedule here).
        a: momentum.
        b: weight decay (scaled per parameter by ``paramwise_cfg``'s ``decay_mult``).
        c: the elementwise gradient bound.

    Returns:
        The gradient transformation.

    Example:
        >>> tx = MyOptimizer(lr=0.1, a=0.9, b=1e-4, c=0.5)
        >>> state = tx.init({"w": torch.zeros(3)})
    """
    if not c > 0:
        raise ValueError(f"MyOptimizer: c (the gradient bound) must be > 0, got {c!r}")
    return ft.chain(
        ft.clip_by_value(c),
        ft.add_decayed_weights(b),
        ft.trace(momentum=a),
        ft.scale_by_learning_rate(lr),
    )
