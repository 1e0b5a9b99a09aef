# The default "1x" schedule (seed: "默认情况下，我们使用 1x 的学习率调整策略" -> MultiStepLR):
# SGD lr 0.02, linear warmup, x0.1 at epochs 2 and 3 of 4 (MMDetection's 8 and 11 of 12).
_base_ = [
    "./_base_/models/digits_net.py",
    "./_base_/datasets/digits.py",
    "./_base_/schedules/schedule_1x.py",
    "./_base_/default_runtime.py",
]
