# Seed block 0: AdamW, the backbone's learning rate x0.1, no weight decay on norm layers,
# gradient clipping. The numbers are the seed's except lr, raised from 1e-4 to 5e-3 so that
# the 4-epoch run learns (val accuracy 0.82 instead of 0.14; lr_mult scales it for the
# backbone, so the backbone runs at 5e-4).
#
# Note mmengine's precedence, which functrain follows: a custom key decides the decay of the
# parameters it matches, so norm_decay_mult=0.0 does not reach the BatchNorms inside
# `backbone` (all of DigitsNet's): they keep weight_decay 0.05 * decay_mult 1.0. Run
# `python -m functrain.cli explain examples/configs/digits_adamw.py` to see the table.
_base_ = [
    "./_base_/models/digits_net.py",
    "./_base_/datasets/digits.py",
    "./_base_/schedules/schedule_1x.py",
    "./_base_/default_runtime.py",
]

lr = 0.005

optim_wrapper = dict(
    # The base schedule's optim_wrapper holds SGD with momentum=0.9: without _delete_ the
    # dicts would merge and AdamW would receive `momentum` (an error in functrain and in
    # mmengine alike). _delete_=True replaces the inherited optim_wrapper.
    _delete_=True,
    type="OptimWrapper",
    # optimizer
    optimizer=dict(type="AdamW", lr=lr, weight_decay=0.05, eps=1e-8, betas=(0.9, 0.999)),
    # per-parameter learning rate and weight decay
    paramwise_cfg=dict(
        custom_keys={
            "backbone": dict(lr_mult=0.1, decay_mult=1.0),
        },
        norm_decay_mult=0.0,
    ),
    # gradient clipping
    clip_grad=dict(max_norm=0.01, norm_type=2),
)

# Cosine annealing over the whole run, stepped every iteration.
param_scheduler = [
    dict(
        type="CosineAnnealingLR",
        T_max=4,
        eta_min=lr * 1e-2,
        begin=0,
        end=4,
        by_epoch=True,
        convert_to_iter_based=True,
    ),
]
