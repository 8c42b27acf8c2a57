"""ImageNet (or any ImageFolder tree with ``train/`` and ``val/``), optionally a class subset.

The official ``val/`` split is the test set; a validation split is held out of ``train/``.
Transforms are the usual ones: RandomResizedCrop + flip for training, resize to
``image_size / 0.875`` and center-crop for evaluation.
"""

from __future__ import annotations

import os

import torchvision.transforms as T
from torchvision.datasets import ImageFolder

from dlas.data.base import ImageClassificationData, random_split_indices, subset
from dlas.registry import check_fraction

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class _SubsetFolder(ImageFolder):
    """ImageFolder restricted to a fixed, ordered list of class folders."""

    def __init__(self, root: str, classes: list[str], **kwargs) -> None:
        self._keep = classes
        super().__init__(root, **kwargs)

    def find_classes(self, directory: str):
        return list(self._keep), {c: i for i, c in enumerate(self._keep)}


def resolve_classes(train_dir: str, classes) -> list[str]:
    """Turn ``classes`` (null, N, or a list of folder names) into the folder list."""
    available = sorted(e.name for e in os.scandir(train_dir) if e.is_dir())
    if not available:
        raise FileNotFoundError(f"{train_dir} has no class folders")
    if classes is None:
        return available
    if isinstance(classes, int):
        if not 1 <= classes <= len(available):
            raise ValueError(f"dataset.classes={classes} must be in [1, {len(available)}]")
        return available[:classes]
    wanted = [str(c) for c in classes]
    missing = [c for c in wanted if c not in available]
    if missing:
        raise ValueError(
            f"dataset.classes names folders not in {train_dir}: {missing}; "
            f"available: {available[:10]}{' ...' if len(available) > 10 else ''}"
        )
    return wanted


class ImageNet(ImageClassificationData):
    name = "imagenet"

    def __init__(
        self,
        *,
        root: str | None,
        image_size: int = 224,
        classes=None,
        val_fraction: float = 0.02,
        augment: bool = True,
        **kwargs,
    ) -> None:
        if not root:
            raise ValueError("dataset=imagenet needs dataset.root=<folder with train/ and val/>")
        root = os.path.expanduser(root)
        for split in ("train", "val"):
            if not os.path.isdir(os.path.join(root, split)):
                raise FileNotFoundError(
                    f"dataset.root={root!r} has no {split}/ folder (ImageFolder layout "
                    "root/{train,val}/<class>/<image> expected)"
                )
        self.classes = resolve_classes(os.path.join(root, "train"), classes)
        super().__init__(
            num_classes=len(self.classes), in_channels=3, image_size=image_size, **kwargs
        )
        self.root = root
        self.val_fraction = check_fraction("dataset.val_fraction", val_fraction)
        self.augment = augment

    def build_splits(self):
        s = self.image_size
        norm = [T.ToTensor(), T.Normalize(MEAN, STD)]
        evaluate = T.Compose([T.Resize(int(round(s / 0.875))), T.CenterCrop(s), *norm])
        train_tf = (
            T.Compose([T.RandomResizedCrop(s), T.RandomHorizontalFlip(), *norm])
            if self.augment
            else evaluate
        )
        train_dir, val_dir = (os.path.join(self.root, d) for d in ("train", "val"))
        train_full = _SubsetFolder(train_dir, self.classes, transform=train_tf)
        eval_full = _SubsetFolder(train_dir, self.classes, transform=evaluate)
        test = _SubsetFolder(val_dir, self.classes, transform=evaluate)
        train_idx, val_idx = random_split_indices(len(train_full), self.val_fraction, self.seed)
        return subset(train_full, train_idx), subset(eval_full, val_idx), test
