# Seed block 8: gradient clipping on top of an inherited optimizer, with `_delete_=True`.
#
# The seed's literal snippet
#     optim_wrapper = dict(_delete_=True, clip_grad=dict(max_norm=35, norm_type=2))
# replaces the base's whole optim_wrapper, optimizer included, so it cannot train (functrain
# says: "optim_wrapper: needs an 'optimizer' ..."; mmengine fails too). A runnable config
# with _delete_=True repeats the type and the optimizer, as below. To keep the base's
# optimizer instead, merge without _delete_:
#     optim_wrapper = dict(clip_grad=dict(max_norm=35, norm_type=2))
_base_ = [
    "./_base_/models/digits_net.py",
    "./_base_/datasets/digits.py",
    "./_base_/schedules/schedule_1x.py",
    "./_base_/default_runtime.py",
]

optim_wrapper = dict(
    _delete_=True,
    type="OptimWrapper",
    optimizer=dict(type="SGD", lr=0.02, momentum=0.9, weight_decay=0.0001),
    clip_grad=dict(max_norm=35, norm_type=2),
)
