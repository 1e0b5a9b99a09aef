# Seed block 1: any torch.optim optimizer by its name; here Adam.
_base_ = [
    "./_base_/models/digits_net.py",
    "./_base_/datasets/digits.py",
    "./_base_/schedules/schedule_1x.py",
    "./_base_/default_runtime.py",
]

optim_wrapper = dict(
    # The base's SGD has momentum=0.9, which Adam does not take: replace, do not merge.
    _delete_=True,
    type="OptimWrapper",
    optimizer=dict(type="Adam", lr=0.0003, weight_decay=0.0001),
)
