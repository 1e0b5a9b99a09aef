"""Seed block 7: a custom optimizer wrapper constructor, for special cases such as no weight
decay on BatchNorm.

In mmengine a constructor builds the ``OptimWrapper`` with its param groups; in functrain it
returns the per-parameter multipliers, ``{parameter path: Multiplier(lr_mult, decay_mult)}``,
that the builder applies with :func:`functrain.mask_multipliers`. A config names it with
``optim_wrapper.constructor``::

    custom_imports = dict(imports=['examples.configs.my_project.my_constructor'])
    optim_wrapper = dict(type='OptimWrapper', constructor='MyOptimizerWrapperConstructor',
                         optimizer=dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=1e-4))
"""

from __future__ import annotations

from torch import nn

from functrain.config import OPTIM_WRAPPER_CONSTRUCTORS, DefaultOptimWrapperConstructor
from functrain.transforms.multipliers import Multiplier


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class MyOptimizerWrapperConstructor(DefaultOptimWrapperConstructor):
    """The default constructor (``paramwise_cfg`` as usual), then no weight decay on the
    weight and bias of every BatchNorm layer (their learning rate multiplier is kept).

    Args:
        optim_wrapper_cfg: the ``optim_wrapper`` dict.
        paramwise_cfg: its ``paramwise_cfg`` (optional).

    Example:
        >>> mults = MyOptimizerWrapperConstructor(dict(optimizer=dict(type='SGD')))(model)
        >>> mults['backbone.1.weight']  # doctest: +SKIP
        Multiplier(lr_mult=1.0, decay_mult=0.0)
    """

    def __call__(self, model: nn.Module) -> dict[str, Multiplier]:
        multipliers = dict(super().__call__(model))
        for prefix, module in model.named_modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                for name, param in module.named_parameters(recurse=False):
                    if not param.requires_grad:
                        continue
                    path = f"{prefix}.{name}" if prefix else name
                    lr_mult = multipliers.get(path, Multiplier()).lr_mult
                    multipliers[path] = Multiplier(lr_mult, 0.0)
        return multipliers
