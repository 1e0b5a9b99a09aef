"""mmengine-style configs: registries, config files, and a builder from config to runner.

Hand functrain the sections of an mmengine / MMDetection config (``optim_wrapper``,
``param_scheduler``, ``train_cfg``, ``default_hooks``, ``custom_hooks``, ...) as plain dicts
or as a Python config file, and get the runner mmengine would have built, with its numbers.
"""

from functrain.config import builtin_registries
from functrain.config.build import Built, build_runner, import_custom_modules
from functrain.config.builtin_registries import *  # noqa: F403 (the registries, listed in its __all__)
from functrain.config.config_dict import Config, ConfigDict
from functrain.config.errors import ConfigError, ConfigFileError
from functrain.config.explain import explain
from functrain.config.file import load_config
from functrain.config.hooks import Hook
from functrain.config.model_calls import parse_losses
from functrain.config.optim import OptimizerPlan, build_optimizer
from functrain.config.overrides import merge_from_dict, parse_cfg_options
from functrain.config.paramwise import DefaultOptimWrapperConstructor
from functrain.config.registry_class import Registry

__all__ = [
    *builtin_registries.__all__,
    "Built",
    "Config",
    "ConfigDict",
    "ConfigFileError",
    "ConfigError",
    "DefaultOptimWrapperConstructor",
    "Hook",
    "OptimizerPlan",
    "Registry",
    "build_optimizer",
    "build_runner",
    "explain",
    "import_custom_modules",
    "load_config",
    "merge_from_dict",
    "parse_cfg_options",
    "parse_losses",
]
