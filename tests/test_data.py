"""Layer 1: every dataset loads real files in its real on-disk format."""

from __future__ import annotations

import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dlas.data import get_datamodule


def test_mnist5k_is_real_stratified_and_padded():
    dm = get_datamodule("mnist5k", seed=0)
    info = dm.describe()
    assert (info["train_samples"], info["val_samples"], info["test_samples"]) == (3500, 500, 1000)
    x, y = dm.example_batch(8)
    assert x.shape == (8, 1, 32, 32)
    # padding: the 2-pixel border is constant background
    assert torch.allclose(x[:, :, :2, :], x[0, 0, 0, 0].expand_as(x[:, :, :2, :]))
    counts = Counter(int(label) for _, label in dm.test_set)
    assert sorted(counts) == list(range(10)) and set(counts.values()) == {100}
    # splits are disjoint images
    train_x = torch.stack([dm.train_set[i][0] for i in range(50)]).flatten(1)
    test_x = torch.stack([dm.test_set[i][0] for i in range(50)]).flatten(1)
    assert torch.cdist(train_x, test_x).min() > 0


def test_digits_resizes_and_splits():
    dm = get_datamodule("digits", image_size=16, seed=1)
    x, _ = dm.example_batch(4)
    assert x.shape == (4, 1, 16, 16)
    assert sum(dm.describe()[k] for k in ("train_samples", "val_samples", "test_samples")) == 1797


def test_synthetic_any_shape():
    dm = get_datamodule("synthetic", num_samples=40, image_size=20, in_channels=3, num_classes=7)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape[1:] == (3, 20, 20) and int(y.max()) < 7
    assert dm.describe()["train_samples"] == 30


def write_cifar10(root: Path, per_batch: int = 6) -> None:
    """Tiny files in the real cifar-10-batches-py pickle format."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        batch = {
            "data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            "labels": [int(v) for v in rng.integers(0, 10, per_batch)],
            "batch_label": name,
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)


def test_cifar10_reads_real_format(tmp_path):
    write_cifar10(tmp_path)
    dm = get_datamodule("cifar10", root=str(tmp_path), val_fraction=0.2)
    info = dm.describe()
    assert (info["train_samples"], info["val_samples"], info["test_samples"]) == (24, 6, 6)
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (6, 3, 32, 32) and x.dtype == torch.float32


def test_cifar10_root_errors(tmp_path):
    with pytest.raises(ValueError, match="dataset.root"):
        get_datamodule("cifar10", root=None)
    with pytest.raises(FileNotFoundError, match="download=true"):
        get_datamodule("cifar10", root=str(tmp_path))


def write_imagefolder(root: Path, classes=("n01", "n02", "n03"), per_class: int = 4) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(d / f"{c}_{i}.JPEG")


def test_imagenet_imagefolder_with_class_subset(tmp_path):
    write_imagefolder(tmp_path)
    dm = get_datamodule("imagenet", root=str(tmp_path), image_size=32, classes=2, val_fraction=0.25)
    assert dm.num_classes == 2
    info = dm.describe()
    assert (info["train_samples"], info["val_samples"], info["test_samples"]) == (6, 2, 8)
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (8, 3, 32, 32) and set(y.tolist()) == {0, 1}
    named = get_datamodule("imagenet", root=str(tmp_path), image_size=32, classes=["n03"])
    assert named.classes == ["n03"]


def test_imagenet_errors(tmp_path):
    with pytest.raises(ValueError, match="dataset.root"):
        get_datamodule("imagenet", root=None)
    with pytest.raises(FileNotFoundError, match="train/"):
        get_datamodule("imagenet", root=str(tmp_path))
    write_imagefolder(tmp_path)
    with pytest.raises(ValueError, match="nXX"):
        get_datamodule("imagenet", root=str(tmp_path), classes=["nXX"])


def test_unknown_dataset_names_choices():
    with pytest.raises(ValueError, match="unknown dataset 'cifar100'.*mnist5k"):
        get_datamodule("cifar100")


@pytest.mark.parametrize(
    "kwargs", [{"val_fraction": 1.5}, {"val_fraction": 0.5, "test_fraction": 0.5}]
)
def test_bad_fractions(kwargs):
    with pytest.raises(ValueError, match="fraction"):
        get_datamodule("mnist5k", **kwargs)
