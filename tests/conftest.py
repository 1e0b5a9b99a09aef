"""Shared fixtures: mixed-shape parameter trees and hypothesis profiles."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "default",
    deadline=None,
    max_examples=20,
    suppress_health_check=[HealthCheck.too_slow],
)
# CI draws the same examples on every run, so a red run can be reproduced.
settings.register_profile("ci", parent=settings.get_profile("default"), derandomize=True)
settings.load_profile("ci" if os.environ.get("CI") else "default")

# Environment variables that choose CPU kernels (`make test-kernels` sets them).
KERNEL_VARIABLES = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA")


def pytest_report_header(config: pytest.Config) -> str:
    """The CPU kernels this run uses: where a result may depend on them, a report says which."""
    chosen = ", ".join(f"{k}={os.environ[k]}" for k in KERNEL_VARIABLES if k in os.environ)
    return (
        f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}"
        + (f" ({chosen})" if chosen else "")
    )


SHAPES = {
    "scalar": (),
    "vec": (7,),
    "mat": (5, 3),
    "conv": (4, 3, 2, 2),
    "nested": {"a": (6,), "b": [(2, 3)]},
}


def make_tree(shapes=SHAPES, dtype=torch.float32, generator=None, scale=1.0):
    """A pytree of random tensors with the given nested shapes."""
    if isinstance(shapes, dict):
        return {k: make_tree(v, dtype, generator, scale) for k, v in shapes.items()}
    if isinstance(shapes, list):
        return [make_tree(v, dtype, generator, scale) for v in shapes]
    return torch.randn(shapes, dtype=dtype, generator=generator) * scale
