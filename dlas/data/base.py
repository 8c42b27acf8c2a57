"""The common shape of every layer-1 dataset: a LightningDataModule with known geometry.

The model is built for the data (classes, channels, resolution), so those three
numbers are known right after construction, before ``setup`` reads any file.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Subset


class ImageClassificationData(pl.LightningDataModule):
    name: str = "base"
    #: the problem space: what a target is (a class per image, a class per pixel, ...)
    task: str = "classification"
    #: the target value no loss or metric counts (segmentation's unlabelled pixels), if any
    ignore_index: int | None = None

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int,
        image_size: int,
        batch_size: int = 128,
        eval_batch_size: int = 256,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1 or eval_batch_size < 1:
            raise ValueError(f"dataset.batch_size={batch_size} must be >= 1")
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.image_size = image_size
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    # -- subclasses build the three splits once
    def build_splits(self) -> tuple[Dataset, Dataset, Dataset]:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set, self.val_set, self.test_set = self.build_splits()

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.image_size, self.image_size)

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        self.setup()
        dataset = getattr(self, f"{split}_set")
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            generator=generator,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size, shuffle=False)

    def calibration_batches(self, n: int) -> list[torch.Tensor]:
        """Un-shuffled training images for quantization calibration (deterministic)."""
        loader = self._loader("train", self.batch_size, shuffle=False)
        batches = []
        for i, (x, _) in enumerate(loader):
            if i >= n:
                break
            batches.append(x)
        return batches

    def example_batch(self, batch_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``batch_size`` test images: real inputs for tracing and verification."""
        self.setup()
        assert self.test_set is not None
        n = min(batch_size, len(self.test_set))  # type: ignore[arg-type]
        items = [self.test_set[i] for i in range(n)]
        x = torch.stack([torch.as_tensor(im) for im, _ in items])
        y = torch.stack([torch.as_tensor(label) for _, label in items])  # classes or masks
        return x, y

    def describe(self) -> dict[str, int]:
        self.setup()
        return {
            "train_samples": len(self.train_set),  # type: ignore[arg-type]
            "val_samples": len(self.val_set),  # type: ignore[arg-type]
            "test_samples": len(self.test_set),  # type: ignore[arg-type]
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "image_size": self.image_size,
        }


def random_split_indices(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split range(n) into (rest, held_out) with a seeded permutation."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    k = int(round(n * fraction))
    return perm[k:], perm[:k]


def subset(dataset: Dataset, indices: list[int]) -> Subset:
    return Subset(dataset, indices)
