"""Gradient transforms: the algebra, clipping, scalings, optimizers and the fused step."""

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
from functrain.transforms.fused import apply_gradients, fusion_plan
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
from functrain.transforms.torch_names import TORCH_OPTIMIZERS, optimizer_from_config

__all__ = [
    "TORCH_OPTIMIZERS",
    "ClipState",
    "DecayState",
    "EmptyState",
    "FlatTransform",
    "GradientTransformation",
    "LearningRateState",
    "Multiplier",
    "ScaleByAdamState",
    "TraceState",
    "adam",
    "adamw",
    "add_decayed_weights",
    "apply_gradients",
    "apply_updates",
    "chain",
    "clip",
    "clip_by_value",
    "from_flat",
    "fusion_plan",
    "identity",
    "mask_multipliers",
    "optimizer_from_config",
    "paramwise_multipliers",
    "scale",
    "scale_by_adam",
    "scale_by_adamw",
    "scale_by_learning_rate",
    "sgd",
    "state_record",
    "stateless",
    "stateless_foreach",
    "stateless_with_tree_map",
    "trace",
    "trainable_parameters",
]
