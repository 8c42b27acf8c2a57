"""Layer 1 of the stack: datasets and problem spaces, one door ``get_datamodule``."""

from __future__ import annotations

from dlas.data.base import ImageClassificationData
from dlas.data.cifar10 import Cifar10
from dlas.data.imagenet import ImageNet
from dlas.data.packaged import Digits, Mnist5k
from dlas.data.restoration import DigitDenoising, DigitSuperResolution, ImageFolder
from dlas.data.segmentation import DigitCanvases, Voc
from dlas.data.synthetic import Synthetic
from dlas.registry import Registry

DATASETS: Registry[ImageClassificationData] = Registry("dataset")
for _cls in (
    Mnist5k,
    Digits,
    Cifar10,
    ImageNet,
    Synthetic,
    DigitCanvases,
    Voc,
    DigitDenoising,
    DigitSuperResolution,
    ImageFolder,
):
    DATASETS.register(_cls.name)(_cls)


def get_datamodule(name: str, **kwargs) -> ImageClassificationData:
    """Build the LightningDataModule registered as ``name`` (see ``DATASETS.names()``)."""
    return DATASETS.build(name, **kwargs)


def task_of(name: str) -> str:
    """The problem space of dataset ``name``, known without loading anything: a class
    attribute of its datamodule (what a search checks its objectives against)."""
    return getattr(DATASETS.get(name), "task", "classification")


__all__ = ["DATASETS", "ImageClassificationData", "get_datamodule", "task_of"]
