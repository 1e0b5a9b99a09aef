# Seed block 13: the iteration-based loop with dynamic validation intervals, computed the
# seed's way: validate every `interval` iterations, then only at the end.
#
# When: after iteration i finishes, the interval in force is that of the last milestone
# <= i + 1 (mmengine's rule, which functrain follows), so the switch at milestone 201 already
# decides the check after iteration 200. With interval 100 and 250 iterations, validation
# runs after iterations 100 and 250; in the seed's numbers (5000, 368750) the last periodic
# validation is after iteration 360000, not 365000 as the seed's comment says.
_base_ = [
    "./_base_/models/digits_net.py",
    "./_base_/datasets/digits.py",
    "./_base_/schedules/schedule_1x.py",
    "./_base_/default_runtime.py",
]

interval = 100
max_iters = 250
dynamic_intervals = [(max_iters // interval * interval + 1, max_iters)]
train_cfg = dict(
    # the base's train_cfg is an EpochBasedTrainLoop with max_epochs: replace it
    _delete_=True,
    type="IterBasedTrainLoop",
    max_iters=max_iters,
    val_interval=interval,
    dynamic_intervals=dynamic_intervals,
)

# An iteration-based run draws batches from an endless sampler.
train_dataloader = dict(sampler=dict(type="InfiniteSampler", shuffle=True))

# Schedules in iterations (an iteration-based loop never steps by-epoch schedulers).
param_scheduler = [
    dict(type="LinearLR", start_factor=0.001, by_epoch=False, begin=0, end=20),
    dict(
        type="MultiStepLR", begin=0, end=max_iters, by_epoch=False, milestones=[150, 225], gamma=0.1
    ),
]

# Checkpoints and logs counted in iterations, as mmengine's iteration-based configs do:
# checkpoints iter_100.pth, iter_200.pth and (save_last) iter_250.pth; validation metrics
# logged at their iteration rather than at "epoch 0".
default_hooks = dict(
    checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=interval),
    logger=dict(type="LoggerHook", interval=50, log_metric_by_epoch=False),
)
log_processor = dict(by_epoch=False)
