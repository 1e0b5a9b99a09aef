# The demo `make demo` runs: the seed's first config (AdamW, backbone lr x0.1, no decay on
# norm layers, gradient clipping; see digits_adamw.py) trained for 30 epochs with validation
# every epoch, the best and the last 3 checkpoints kept, and the logged curves (loss, lr,
# accuracy) drawn to curves.png in the work dir.
_base_ = ["./digits_adamw.py"]

max_epochs = 30
train_cfg = dict(type="EpochBasedTrainLoop", max_epochs=max_epochs, val_interval=1)
param_scheduler = [
    dict(type="LinearLR", start_factor=0.01, by_epoch=False, begin=0, end=40),
    dict(
        type="CosineAnnealingLR",
        T_max=max_epochs,
        eta_min=5e-5,
        begin=0,
        end=max_epochs,
        by_epoch=True,
        convert_to_iter_based=True,
    ),
]
default_hooks = dict(
    checkpoint=dict(type="CheckpointHook", interval=1, max_keep_ckpts=3, save_best="auto"),
)
custom_hooks = [dict(type="CurvesPlot")]
