"""A small dataset and model for examples, configs and tests: nothing to download.

:class:`Digits` is scikit-learn's handwritten digits (1797 8x8 images, 10 classes, shipped
inside scikit-learn), split into train / val / test. :class:`DigitsNet` is a small CNN with
a ``backbone`` (convolutions with BatchNorm, one depthwise), and a ``head``, so that
``paramwise_cfg`` options such as ``custom_keys={'backbone': ...}``, ``norm_decay_mult`` and
``dwconv_decay_mult`` have something to act on. Both are registered for configs
(``model=dict(type='DigitsNet')``, ``dataset=dict(type='Digits', split='train')``).

The model follows mmengine's ``BaseModel`` calling convention, which the config runner uses:
``model(inputs, labels, mode='loss')`` returns a dict of losses, ``mode='predict'`` the
logits and ``mode='tensor'`` (the default) the logits as well.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["Digits", "DigitsNet"]

SPLITS = ("train", "val", "test")


class Digits(torch.utils.data.Dataset):
    """scikit-learn's digits as ``(image, label)`` pairs: a float32 ``(64,)`` vector in
    [0, 1] and an int64 label.

    Args:
        split: ``'train'`` (70%), ``'val'`` (15%) or ``'test'`` (15%), stratified.
        seed: the split's random state.

    Example:
        >>> x, y = Digits("train")[0]
        >>> x.shape, y.dtype
        (torch.Size([64]), torch.int64)
    """

    def __init__(self, split: str = "train", seed: int = 0) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")
        try:
            from sklearn.datasets import load_digits
            from sklearn.model_selection import train_test_split
        except ImportError as err:  # pragma: no cover - sklearn is in the dev extra
            raise ImportError(
                "the Digits dataset needs scikit-learn: pip install scikit-learn"
            ) from err
        digits = load_digits()
        x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
        y = torch.tensor(digits.target, dtype=torch.int64)
        x_train, x_rest, y_train, y_rest = train_test_split(
            x, y, test_size=0.3, random_state=seed, stratify=y
        )
        x_val, x_test, y_val, y_test = train_test_split(
            x_rest, y_rest, test_size=0.5, random_state=seed, stratify=y_rest
        )
        self.split = split
        self.x, self.y = {
            "train": (x_train, y_train),
            "val": (x_val, y_val),
            "test": (x_test, y_test),
        }[split]
        self.metainfo = {"classes": tuple(str(i) for i in range(10))}

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.x[index], self.y[index]


class DigitsNet(nn.Module):
    """A small CNN for 8x8 digits: ``backbone`` (conv-BN-ReLU, depthwise conv-BN-ReLU,
    strided conv-BN-ReLU) then ``head`` (global average pool, linear).

    Args:
        num_classes: output classes.
        width: channels of the backbone.

    Example:
        >>> model = DigitsNet()
        >>> model(torch.zeros(2, 64)).shape
        torch.Size([2, 10])
    """

    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.backbone = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1, groups=width),  # depthwise
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1, stride=2),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
        )
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes)
        )

    def forward(self, inputs: Tensor, labels: Tensor | None = None, mode: str = "tensor") -> Any:
        logits = self.head(self.backbone(inputs.reshape(-1, 1, 8, 8)))
        if mode == "loss":
            if labels is None:
                raise ValueError("DigitsNet: mode='loss' needs labels")
            return {"loss": nn.functional.cross_entropy(logits, labels)}
        if mode in ("predict", "tensor"):
            return logits
        raise ValueError(f"DigitsNet: unknown mode {mode!r}; use 'loss', 'predict' or 'tensor'")
