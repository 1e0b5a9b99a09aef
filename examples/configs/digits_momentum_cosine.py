# Seed block 9: a cyclic cosine learning rate with a momentum schedule (mmdetection3d's
# cyclic-20e schedule), scaled from 8 + 12 = 20 epochs to 2 + 3 = 5. Both are by-epoch
# windows converted to iterations, so the values change every iteration.
_base_ = [
    "./_base_/models/digits_net.py",
    "./_base_/datasets/digits.py",
    "./_base_/schedules/schedule_1x.py",
    "./_base_/default_runtime.py",
]

lr = 0.0018
# mmdetection3d's optimizer for this schedule: AdamW with betas[0] = 0.95, which the
# momentum schedulers drive (mmengine's *Momentum schedulers set Adam's betas[0]).
optim_wrapper = dict(
    _delete_=True,
    type="OptimWrapper",
    optimizer=dict(type="AdamW", lr=lr, betas=(0.95, 0.99), weight_decay=0.01),
    clip_grad=dict(max_norm=10, norm_type=2),
)

train_cfg = dict(max_epochs=5)

param_scheduler = [
    # learning rate
    # the first 2 epochs: lr rises from lr to lr * 10
    # the next 3 epochs: lr falls from lr * 10 to lr * 1e-4
    dict(
        type="CosineAnnealingLR",
        T_max=2,
        eta_min=lr * 10,
        begin=0,
        end=2,
        by_epoch=True,
        convert_to_iter_based=True,
    ),
    dict(
        type="CosineAnnealingLR",
        T_max=3,
        eta_min=lr * 1e-4,
        begin=2,
        end=5,
        by_epoch=True,
        convert_to_iter_based=True,
    ),
    # momentum (AdamW's betas[0])
    # the first 2 epochs: momentum falls from 0.95 to 0.85 / 0.95 (about 0.895)
    # the next 3 epochs: momentum rises from there towards 1 (the window ends one
    # iteration before it reaches 1)
    dict(
        type="CosineAnnealingMomentum",
        T_max=2,
        eta_min=0.85 / 0.95,
        begin=0,
        end=2,
        by_epoch=True,
        convert_to_iter_based=True,
    ),
    dict(
        type="CosineAnnealingMomentum",
        T_max=3,
        eta_min=1,
        begin=2,
        end=5,
        by_epoch=True,
        convert_to_iter_based=True,
    ),
]
