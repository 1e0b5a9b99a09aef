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
from functrain.transforms.adadelta import ScaleByAdadeltaState, adadelta, scale_by_adadelta
from functrain.transforms.adafactor import (
    DecoupledDecayState,
    FactoredRmsState,
    adafactor,
    add_decoupled_decay,
    scale_by_factored_rms,
    scale_by_relative_step,
)
from functrain.transforms.adagrad import (
    AdagradLearningRate,
    ScaleByAdagradState,
    adagrad,
    scale_by_adagrad,
)
from functrain.transforms.adam import ScaleByAdamState, scale_by_adam, scale_by_adamw
from functrain.transforms.adamax import ScaleByAdamaxState, adamax, scale_by_adamax
from functrain.transforms.alias import adam, adamw, sgd
from functrain.transforms.as_torch import FunctrainOptimizer, as_torch_optimizer
from functrain.transforms.asgd import ScaleByAsgdState, asgd, asgd_averaged_params, scale_by_asgd
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
from functrain.transforms.clipping import ClipState, clip, clip_by_global_norm, clip_by_value
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
from functrain.transforms.compiled import CompiledState, compile_stats, compiled
from functrain.transforms.fused_step import apply_gradients, fusion_plan
from functrain.transforms.lamb import lamb, scale_by_trust_ratio
from functrain.transforms.lars import lars, scale_by_lars
from functrain.transforms.lbfgs import LbfgsState, lbfgs
from functrain.transforms.lion import ScaleByLionState, lion, scale_by_lion
from functrain.transforms.loss_scaling import (
    LossScaleState,
    find_loss_scale_state,
    loss_scaling,
    scale_loss,
)
from functrain.transforms.members import PerMember, StackedState, ensemble, per_member
from functrain.transforms.momentum import TraceState, trace
from functrain.transforms.multipliers import (
    Multiplier,
    mask_multipliers,
    paramwise_multipliers,
    trainable_parameters,
    with_multipliers,
)
from functrain.transforms.muon import MuonState, is_matrix, muon, newton_schulz, scale_by_muon
from functrain.transforms.nadam import ScaleByNadamState, nadam, scale_by_nadam
from functrain.transforms.radam import ScaleByRadamState, radam, scale_by_radam
from functrain.transforms.rmsprop import ScaleByRmsState, rmsprop, scale_by_rms
from functrain.transforms.rprop import ScaleByRpropState, rprop, scale_by_rprop
from functrain.transforms.scaling import (
    DecayState,
    LearningRateState,
    add_decayed_weights,
    scale,
    scale_by_learning_rate,
)
from functrain.transforms.schedule_free import (
    ScaleByRmsEmaState,
    ScheduleFreeState,
    scale_by_rms_ema,
    scale_by_schedule_free,
    schedule_free_adamw,
    schedule_free_eval_params,
    schedule_free_sgd,
)
from functrain.transforms.sparse_adam import sparse_adam
from functrain.transforms.state_values import set_hyperparam, values_in_force
from functrain.transforms.torch_names import (
    EXTRA_OPTIMIZERS,
    TORCH_OPTIMIZERS,
    optimizer_from_config,
)
from functrain.transforms.torch_optimizer import (
    HostNumber,
    TorchOptimizerState,
    from_torch_optimizer,
    torch_optimizer_factory,
)

__all__ = [
    "CompiledState",
    "compile_stats",
    "compiled",
    "HostNumber",
    "TorchOptimizerState",
    "from_torch_optimizer",
    "torch_optimizer_factory",
    "AccumulateState",
    "AdagradLearningRate",
    "ApplyIfFiniteState",
    "FunctrainOptimizer",
    "ClipState",
    "DecayState",
    "DecoupledDecayState",
    "EXTRA_OPTIMIZERS",
    "EmptyState",
    "FactoredRmsState",
    "FlatTransform",
    "GradientTransformation",
    "LbfgsState",
    "LearningRateState",
    "LossScaleState",
    "MaskedState",
    "MultiSteps",
    "MultiStepsState",
    "Multiplier",
    "MuonState",
    "PartitionState",
    "ScaleByAdadeltaState",
    "ScaleByAdagradState",
    "ScaleByAdamState",
    "ScaleByAdamaxState",
    "ScaleByAsgdState",
    "ScaleByLionState",
    "ScaleByNadamState",
    "ScaleByRadamState",
    "ScaleByRmsEmaState",
    "ScaleByRmsState",
    "ScaleByRpropState",
    "ScheduleFreeState",
    "TORCH_OPTIMIZERS",
    "PerMember",
    "StackedState",
    "TraceState",
    "accumulate",
    "adadelta",
    "adafactor",
    "adagrad",
    "adam",
    "adamax",
    "adamw",
    "add_decayed_weights",
    "add_decoupled_decay",
    "apply_gradients",
    "apply_if_finite",
    "apply_updates",
    "as_torch_optimizer",
    "asgd",
    "asgd_averaged_params",
    "chain",
    "clip",
    "clip_by_global_norm",
    "clip_by_value",
    "ensemble",
    "find_loss_scale_state",
    "freeze",
    "from_flat",
    "fusion_plan",
    "has_updated",
    "identity",
    "is_matrix",
    "lamb",
    "lars",
    "lbfgs",
    "lion",
    "loss_scaling",
    "mask_multipliers",
    "masked",
    "multi_steps",
    "muon",
    "nadam",
    "named_chain",
    "newton_schulz",
    "optimizer_from_config",
    "optimizer_step_schedule",
    "paramwise_multipliers",
    "per_member",
    "partition",
    "radam",
    "rmsprop",
    "rprop",
    "scale",
    "scale_by_adadelta",
    "scale_by_adagrad",
    "scale_by_adam",
    "scale_by_adamax",
    "scale_by_adamw",
    "scale_by_asgd",
    "scale_by_factored_rms",
    "scale_by_lars",
    "scale_by_learning_rate",
    "scale_by_lion",
    "scale_by_muon",
    "scale_by_nadam",
    "scale_by_radam",
    "scale_by_relative_step",
    "scale_by_rms",
    "scale_by_rms_ema",
    "scale_by_rprop",
    "scale_by_schedule_free",
    "scale_by_trust_ratio",
    "scale_loss",
    "schedule_free_adamw",
    "schedule_free_eval_params",
    "schedule_free_sgd",
    "set_hyperparam",
    "set_to_zero",
    "sgd",
    "sparse_adam",
    "state_record",
    "stateless",
    "stateless_foreach",
    "stateless_with_tree_map",
    "trace",
    "trainable_parameters",
    "values_in_force",
    "with_multipliers",
]
