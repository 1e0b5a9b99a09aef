# MMDetection's configs/_base_/schedules/schedule_1x.py, shrunk from 12 epochs to 4: the
# "1x" schedule is SGD(lr 0.02, momentum 0.9, weight decay 1e-4), a linear warmup over the
# first iterations and a x0.1 drop at epochs 8 and 11 of 12, here at epochs 2 and 3 of 4.
max_epochs = 4
train_cfg = dict(type="EpochBasedTrainLoop", max_epochs=max_epochs, val_interval=1)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")

param_scheduler = [
    dict(type="LinearLR", start_factor=0.001, by_epoch=False, begin=0, end=20),
    dict(
        type="MultiStepLR",
        begin=0,
        end=max_epochs,
        by_epoch=True,
        milestones=[2, 3],
        gamma=0.1,
    ),
]

optim_wrapper = dict(
    type="OptimWrapper",
    optimizer=dict(type="SGD", lr=0.02, momentum=0.9, weight_decay=0.0001),
)

# mmengine's linear scaling rule (off, as in MMDetection): lr *= total batch / 16.
auto_scale_lr = dict(enable=False, base_batch_size=16)
