# Seed blocks 20 and 21: CheckpointHook keeping the last 3 checkpoints, with the optimizer
# state, and LoggerHook every 50 iterations. Over 5 epochs, epoch_3.pth .. epoch_5.pth stay.
_base_ = [
    "./_base_/models/digits_net.py",
    "./_base_/datasets/digits.py",
    "./_base_/schedules/schedule_1x.py",
    "./_base_/default_runtime.py",
]

train_cfg = dict(max_epochs=5)

default_hooks = dict(
    checkpoint=dict(type="CheckpointHook", interval=1, max_keep_ckpts=3, save_optimizer=True),
    logger=dict(type="LoggerHook", interval=50),
)
