# Seed block 12: the epoch-based loop and when it validates. The seed's
#     train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=12, val_begin=1, val_interval=1)
# validates after every epoch; here, over 5 epochs, validation starts after epoch 2 and runs
# every 2 epochs: after epochs 2 and 4, and after the last epoch (5) as always.
_base_ = [
    "./_base_/models/digits_net.py",
    "./_base_/datasets/digits.py",
    "./_base_/schedules/schedule_1x.py",
    "./_base_/default_runtime.py",
]

train_cfg = dict(type="EpochBasedTrainLoop", max_epochs=5, val_begin=2, val_interval=2)
