# Seed block 22: the visualizer, its backends and the visualization hook, on Digits. The seed's
#     default_hooks = dict(visualization=dict(type='DetVisualizationHook', draw=True))
#     vis_backends = [dict(type='LocalVisBackend'), dict(type='TensorboardVisBackend')]
#     visualizer = dict(type='DetLocalVisualizer', vis_backends=vis_backends, name='visualizer')
# as written. Every scalar the logger writes also goes to <log_dir>/vis_data/ (scalars.json,
# config.py, vis_image/) and to a TensorBoard event file there (pip install
# functrain[tensorboard]); the hook draws a grid of validation / test digits with predicted and
# true labels, mistakes in red. Add dict(type='WandbVisBackend') (offline unless WANDB_MODE
# says otherwise) or dict(type='MLflowVisBackend') (a local vis_data/mlruns store) the same way.
_base_ = [
    "./_base_/models/digits_net.py",
    "./_base_/datasets/digits.py",
    "./_base_/schedules/schedule_1x.py",
    "./_base_/default_runtime.py",
]

train_cfg = dict(type="EpochBasedTrainLoop", max_epochs=2, val_interval=1)

# interval=2: the validation / test loaders have 5 batches of 64; draw batches 0, 2 and 4.
default_hooks = dict(visualization=dict(type="DetVisualizationHook", draw=True, interval=2))
vis_backends = [dict(type="LocalVisBackend"), dict(type="TensorboardVisBackend")]
visualizer = dict(type="DetLocalVisualizer", vis_backends=vis_backends, name="visualizer")
