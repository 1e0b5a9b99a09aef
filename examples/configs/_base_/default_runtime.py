# The runtime every example inherits: MMDetection's configs/_base_/default_runtime.py on
# Digits (no default_scope: functrain has one registry scope and ignores it with a note;
# no visualizer / DetVisualizationHook here: digits_visualization.py adds them).
default_hooks = dict(
    timer=dict(type="IterTimerHook"),
    # Seed block 21: log every 50 iterations.
    logger=dict(type="LoggerHook", interval=50),
    # A no-op in functrain (schedules live in the optimizer state); kept so the same file
    # drives mmengine, where it steps the schedulers.
    param_scheduler=dict(type="ParamSchedulerHook"),
    checkpoint=dict(type="CheckpointHook", interval=1),
    sampler_seed=dict(type="DistSamplerSeedHook"),
)

env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
    dist_cfg=dict(backend="nccl"),
)

# mmengine's log processor (functrain logs from LoggerHook and ignores this with a note).
log_processor = dict(type="LogProcessor", window_size=50, by_epoch=True)

log_level = "INFO"
load_from = None
resume = False

# Seeds Python, NumPy and torch before the model is built, and seeds the samplers.
randomness = dict(seed=0)
