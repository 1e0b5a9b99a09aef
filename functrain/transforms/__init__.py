"""Gradient transforms: the algebra, clipping, scalings, optimizers and the fused step."""

from functrain.transforms.accumulation import (
    AccumulateState,
    MultiSteps,
    MultiStepsState,
    accumulate,
    has_updated,
    multi_steps,
    optimizer_step_schedule,
)
from functrain.transforms.adam import ScaleByAdamState, scale_by_adam, scale_by_adamw
from functrain.transforms.alias import adam, adamw, sgd
from functrain.transforms.base import (
    EmptyState,
    FlatTransform,
    GradientTransformation,
    apply_updates,
    chain,
    from_flat,
    identity,
    state_record,
    stateless,
    stateless_foreach,
    stateless_with_tree_map,
)
from functrain.transforms.clipping import ClipState, clip, clip_by_value
from functrain.transforms.combinators import (
    ApplyIfFiniteState,
    MaskedState,
    PartitionState,
    apply_if_finite,
    freeze,
    masked,
    named_chain,
    partition,
    set_to_zero,
)
from functrain.transforms.fused import apply_gradients, fusion_plan
from functrain.transforms.loss_scaling import (
    LossScaleState,
    find_loss_scale_state,
    loss_scaling,
    scale_loss,
)
from functrain.transforms.momentum import TraceState, trace
from functrain.transforms.multipliers import (
    Multiplier,
    mask_multipliers,
    paramwise_multipliers,
    trainable_parameters,
)
from functrain.transforms.scaling import (
    DecayState,
    LearningRateState,
    add_decayed_weights,
    scale,
    scale_by_learning_rate,
)
from functrain.transforms.state_values import set_hyperparam, values_in_force
from functrain.transforms.torch_names import TORCH_OPTIMIZERS, optimizer_from_config

__all__ = [
    "AccumulateState",
    "ApplyIfFiniteState",
    "ClipState",
    "DecayState",
    "EmptyState",
    "FlatTransform",
    "GradientTransformation",
    "LearningRateState",
    "LossScaleState",
    "MaskedState",
    "MultiSteps",
    "MultiStepsState",
    "Multiplier",
    "PartitionState",
    "ScaleByAdamState",
    "TORCH_OPTIMIZERS",
    "TraceState",
    "accumulate",
    "adam",
    "adamw",
    "add_decayed_weights",
    "apply_gradients",
    "apply_if_finite",
    "apply_updates",
    "chain",
    "clip",
    "clip_by_value",
    "find_loss_scale_state",
    "freeze",
    "from_flat",
    "fusion_plan",
    "has_updated",
    "identity",
    "loss_scaling",
    "mask_multipliers",
    "masked",
    "multi_steps",
    "named_chain",
    "optimizer_from_config",
    "optimizer_step_schedule",
    "paramwise_multipliers",
    "partition",
    "scale",
    "scale_by_adam",
    "scale_by_adamw",
    "scale_by_learning_rate",
    "scale_loss",
    "set_hyperparam",
    "set_to_zero",
    "sgd",
    "state_record",
    "stateless",
    "stateless_foreach",
    "stateless_with_tree_map",
    "trace",
    "trainable_parameters",
    "values_in_force",
]
