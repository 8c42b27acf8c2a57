"""CIFAR-10 from torchvision's on-disk format (``cifar-10-batches-py``)."""

from __future__ import annotations

import os

import torchvision.transforms as T
from torchvision.datasets import CIFAR10

from dlas.data.base import ImageClassificationData, random_split_indices, subset
from dlas.registry import check_fraction

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def batch_files_present(root: str) -> bool:
    folder = os.path.join(root, CIFAR10.base_folder)
    names = [f for f, _ in CIFAR10.train_list + CIFAR10.test_list] + [CIFAR10.meta["filename"]]
    return all(os.path.isfile(os.path.join(folder, f)) for f in names)


class _CIFAR10Files(CIFAR10):
    """torchvision's loader, checking that the batch files exist rather than re-hashing
    170 MB on every run: the archive's md5 is still verified when ``download=True``."""

    def _check_integrity(self) -> bool:
        return batch_files_present(self.root)

    def _load_meta(self) -> None:
        import pickle

        path = os.path.join(self.root, self.base_folder, self.meta["filename"])
        with open(path, "rb") as f:
            self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}


class Cifar10(ImageClassificationData):
    name = "cifar10"

    def __init__(
        self,
        *,
        root: str | None,
        download: bool = False,
        val_fraction: float = 0.1,
        augment: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(num_classes=10, in_channels=3, image_size=32, **kwargs)
        if not root:
            raise ValueError(
                "dataset=cifar10 needs dataset.root=<folder holding cifar-10-batches-py/> "
                "(add dataset.download=true to fetch it there)"
            )
        self.root = os.path.expanduser(root)
        self.download = download
        if not download and not batch_files_present(self.root):
            raise FileNotFoundError(
                f"dataset.root={root!r} has no complete {CIFAR10.base_folder}/ "
                f"(expected {', '.join(f for f, _ in CIFAR10.train_list + CIFAR10.test_list)}); "
                "set dataset.download=true to fetch it"
            )
        self.val_fraction = check_fraction("dataset.val_fraction", val_fraction)
        self.augment = augment

    def build_splits(self):
        norm = [T.ToTensor(), T.Normalize(MEAN, STD)]
        aug = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] if self.augment else []
        train_full = _CIFAR10Files(
            self.root, train=True, download=self.download, transform=T.Compose(aug + norm)
        )
        eval_full = _CIFAR10Files(self.root, train=True, download=False, transform=T.Compose(norm))
        test = _CIFAR10Files(self.root, train=False, download=False, transform=T.Compose(norm))
        train_idx, val_idx = random_split_indices(len(train_full), self.val_fraction, self.seed)
        return subset(train_full, train_idx), subset(eval_full, val_idx), test
