# Seed block 7: a custom optimizer wrapper constructor (no weight decay on BatchNorm),
# registered in my_project/my_constructor.py and named by optim_wrapper.constructor.
_base_ = [
    "./_base_/models/digits_net.py",
    "./_base_/datasets/digits.py",
    "./_base_/schedules/schedule_1x.py",
    "./_base_/default_runtime.py",
]

custom_imports = dict(
    imports=["examples.configs.my_project.my_constructor"], allow_failed_imports=False
)

optim_wrapper = dict(constructor="MyOptimizerWrapperConstructor")
