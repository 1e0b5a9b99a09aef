"""Plot the learning-rate and momentum schedules of the MMDetection runtime tutorial.

Builds the tutorial's ``param_scheduler`` configs with ``functrain.schedules.from_mmengine``
(cosine up-then-down with its momentum twin, PolyLR, CosineAnnealingLR, and the usual
linear warm-up + MultiStepLR) and draws them on the iteration axis to one PNG each.

Usage::

    python examples/plot_schedules.py [OUTPUT_DIR]

Without an argument the figures go to a fresh temporary directory. Runs in about a
second, with no network.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from functrain.schedules import from_mmengine, plot_schedules

LR = 0.01
EPOCH_LENGTH = 200  # iterations per epoch (len(train_dataloader))

CYCLIC = [
    # Learning rate: up to lr * 10 over 8 epochs, then down to lr * 1e-4 over 12 epochs.
    dict(type="CosineAnnealingLR", T_max=8, eta_min=LR * 10, begin=0, end=8,
         by_epoch=True, convert_to_iter_based=True),
    dict(type="CosineAnnealingLR", T_max=12, eta_min=LR * 1e-4, begin=8, end=20,
         by_epoch=True, convert_to_iter_based=True),
    # Momentum: down to 0.85 / 0.95 of its value over 8 epochs, then up to 1.
    dict(type="CosineAnnealingMomentum", T_max=8, eta_min=0.85 / 0.95, begin=0, end=8,
         by_epoch=True, convert_to_iter_based=True),
    dict(type="CosineAnnealingMomentum", T_max=12, eta_min=1, begin=8, end=20,
         by_epoch=True, convert_to_iter_based=True),
]  # fmt: skip
POLY = [dict(type="PolyLR", power=0.9, eta_min=1e-4, begin=0, end=8, by_epoch=True)]
COSINE = [dict(type="CosineAnnealingLR", T_max=8, eta_min=LR * 1e-5, begin=0, end=8, by_epoch=True)]
STEP_1X = [
    dict(type="LinearLR", start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type="MultiStepLR", begin=0, end=12, by_epoch=True, milestones=[8, 11], gamma=0.1),
]


def main(out_dir: Path) -> list[Path]:
    """Write the figures into ``out_dir`` and return their paths."""
    momentum = 0.95  # eta_min of the momentum schedulers is absolute, as in mmengine
    written = [
        plot_schedules(
            {"lr": from_mmengine(CYCLIC, base=LR, epoch_length=EPOCH_LENGTH, param="lr")},
            20 * EPOCH_LENGTH,
            out_dir / "cyclic_lr.png",
            title="Cyclic CosineAnnealingLR (20 epochs)",
            xlabel="iteration",
        ),
        plot_schedules(
            {
                "momentum": from_mmengine(
                    CYCLIC, base=momentum, epoch_length=EPOCH_LENGTH, param="momentum"
                )
            },
            20 * EPOCH_LENGTH,
            out_dir / "cyclic_momentum.png",
            title="Cyclic CosineAnnealingMomentum (20 epochs)",
            xlabel="iteration",
        ),
        plot_schedules(
            {
                "PolyLR (by epoch)": from_mmengine(POLY, base=LR, epoch_length=EPOCH_LENGTH),
                "CosineAnnealingLR (by epoch)": from_mmengine(
                    COSINE, base=LR, epoch_length=EPOCH_LENGTH
                ),
                "LinearLR warm-up + MultiStepLR": from_mmengine(
                    STEP_1X, base=LR, epoch_length=EPOCH_LENGTH
                ),
            },
            12 * EPOCH_LENGTH,
            out_dir / "decay_policies.png",
            title="Decay policies of the tutorial",
            xlabel="iteration",
            log_y=True,
        ),
    ]
    return written


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="schedules-"))
    for path in main(target):
        print(path)
