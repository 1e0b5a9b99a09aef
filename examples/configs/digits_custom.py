# Seed blocks 2-6 and 14-18: a user's own optimizer and hook, registered in their own
# modules and imported through custom_imports (the modules are in my_project/; the import
# path works from the repository root: `python -m functrain.cli train ...`, or
# PYTHONPATH=. with the `functrain` command; see README.md).
_base_ = [
    "./_base_/models/digits_net.py",
    "./_base_/datasets/digits.py",
    "./_base_/schedules/schedule_1x.py",
    "./_base_/default_runtime.py",
]

custom_imports = dict(
    imports=[
        "examples.configs.my_project.my_optimizer",
        "examples.configs.my_project.my_hook",
    ],
    allow_failed_imports=False,
)

# The base's SGD has momentum/weight_decay, which MyOptimizer does not take: replace it.
optim_wrapper = dict(
    _delete_=True,
    type="OptimWrapper",
    optimizer=dict(type="MyOptimizer", lr=0.02, a=0.9, b=0.0001, c=0.1),
)

custom_hooks = [dict(type="MyHook", a=10, b="my_hook.jsonl", priority="NORMAL")]
