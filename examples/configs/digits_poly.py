# Seed block 10: polynomial decay (PolyLR) over the whole run (the seed's end=8 epochs is
# this run's 4).
_base_ = [
    "./_base_/models/digits_net.py",
    "./_base_/datasets/digits.py",
    "./_base_/schedules/schedule_1x.py",
    "./_base_/default_runtime.py",
]

param_scheduler = [dict(type="PolyLR", power=0.9, eta_min=1e-4, begin=0, end=4, by_epoch=True)]
