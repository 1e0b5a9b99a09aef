# Seed block 11: cosine annealing (CosineAnnealingLR) over the whole run, stepped per epoch
# (the seed's T_max = end = 8 epochs is this run's 4).
_base_ = [
    "./_base_/models/digits_net.py",
    "./_base_/datasets/digits.py",
    "./_base_/schedules/schedule_1x.py",
    "./_base_/default_runtime.py",
]

lr = 0.02  # the base optimizer's lr (SGD)
param_scheduler = [
    dict(type="CosineAnnealingLR", T_max=4, eta_min=lr * 1e-5, begin=0, end=4, by_epoch=True)
]
