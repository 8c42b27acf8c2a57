"""Random images of any shape (torchvision FakeData): the data does not matter when only
inference time is measured, so this decouples timing studies from data availability."""

from __future__ import annotations

import torchvision.transforms as T
from torchvision.datasets import FakeData

from dlas.data.base import ImageClassificationData
from dlas.registry import check_fraction


class Synthetic(ImageClassificationData):
    name = "synthetic"

    def __init__(
        self,
        *,
        num_samples: int = 512,
        image_size: int = 32,
        in_channels: int = 3,
        num_classes: int = 10,
        val_fraction: float = 0.125,
        test_fraction: float = 0.125,
        **kwargs,
    ) -> None:
        if in_channels not in (1, 3):
            raise ValueError(f"dataset.in_channels={in_channels}; valid choices: 1, 3")
        super().__init__(
            num_classes=num_classes, in_channels=in_channels, image_size=image_size, **kwargs
        )
        self.num_samples = num_samples
        self.fractions = (
            check_fraction("dataset.val_fraction", val_fraction),
            check_fraction("dataset.test_fraction", test_fraction),
        )

    def build_splits(self):
        sizes = [int(self.num_samples * f) for f in self.fractions]
        sizes = [self.num_samples - sum(sizes), *sizes]
        return tuple(
            FakeData(
                size=n,
                image_size=self.input_shape,
                num_classes=self.num_classes,
                transform=T.ToTensor(),
                random_offset=offset * 1_000_003 + self.seed,
            )
            for offset, n in enumerate(sizes)
        )
