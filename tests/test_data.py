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


# ------------------------------------------------------------- segmentation (issue 18)


def test_digit_canvases_label_each_digit_pixel_with_its_class():
    from dlas.data.segmentation import DigitCanvases

    dm = DigitCanvases(image_size=48, max_digits=2, seed=0)
    info = dm.describe()
    assert (info["train_samples"], info["val_samples"], info["test_samples"]) == (3500, 500, 1000)
    x, y = dm.example_batch(16)
    assert x.shape == (16, 1, 48, 48) and y.shape == (16, 48, 48) and y.dtype == torch.int64
    assert int(y.min()) == 0 and int(y.max()) <= 10  # background and 1 + digit
    # labelled pixels are the bright ones: every labelled pixel's intensity is above every
    # background pixel's darkest (the normalised blank canvas)
    blank = x[:, 0][y == 0].min()
    assert bool((x[:, 0][y > 0] > blank).all())
    # most canvases hold one class per digit, and every class shows up in the test split
    seen = torch.unique(torch.stack([dm.test_set[i][1] for i in range(len(dm.test_set))]))
    assert seen.tolist() == list(range(11))
    # the same seed makes the same canvases; another seed others
    other = DigitCanvases(image_size=48, max_digits=2, seed=1).example_batch(16)
    assert not torch.equal(other[1], y)  # another seed, other canvases (the same: below)


def test_digit_canvases_paste_digits_exactly():
    from dlas.data.segmentation import paste_digits

    digit = np.zeros((28, 28), dtype=np.float32)
    digit[10:20, 12:16] = 1.0  # a bar: 40 bright pixels
    image, labels = paste_digits(
        digit[None], np.array([7]), size=28, max_digits=1, threshold=0.5,
        rng=np.random.default_rng(0),
    )  # fmt: skip
    assert np.array_equal(image, digit)  # a 28-pixel canvas leaves one place for it
    assert set(np.unique(labels)) == {0, 8} and int((labels == 8).sum()) == 40
    # the same seed pastes the same digits at the same places
    many = np.stack([np.roll(digit, k, axis=1) for k in range(5)])
    made = [
        paste_digits(many, np.arange(5), size=64, max_digits=3, threshold=0.5,
                     rng=np.random.default_rng(seed))
        for seed in (3, 3, 4)
    ]  # fmt: skip
    assert np.array_equal(made[0][1], made[1][1]) and not np.array_equal(made[0][1], made[2][1])


@pytest.mark.parametrize(
    "kwargs, message",
    [({"image_size": 20}, "image_size=20"), ({"max_digits": 0}, "max_digits=0")],
)
def test_digit_canvases_bad_geometry(kwargs, message):
    from dlas.data.segmentation import DigitCanvases

    with pytest.raises(ValueError, match=message):
        DigitCanvases(**kwargs)


def write_voc(root: Path, names: dict[str, list[str]], size: tuple[int, int] = (40, 30)):
    """A tiny Pascal-VOC 2012 folder in the real layout: JPEG images, palette PNG masks
    (class index per pixel, 255 on borders) and the split lists."""
    base = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, stems in names.items():
        (base / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(stems) + "\n")
        for i, stem in enumerate(stems):
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(base / "JPEGImages" / f"{stem}.jpg")
            mask = np.zeros((size[1], size[0]), dtype=np.uint8)
            mask[:, size[0] // 2 :] = 1 + i % 20  # right half: one class
            mask[:, size[0] // 2] = 255  # its border: ignored
            png = Image.frombytes("P", size, mask.tobytes())
            png.putpalette([v for c in range(256) for v in (c, c, c)])
            png.save(base / "SegmentationClass" / f"{stem}.png")
    return base


def test_voc_reads_real_layout(tmp_path):
    from dlas.data.segmentation import IGNORE_INDEX, Voc

    write_voc(tmp_path, {"train": [f"2007_{i:06d}" for i in range(10)], "val": ["2008_000001"]})
    dm = Voc(root=str(tmp_path), image_size=16, val_fraction=0.2, seed=0)
    info = dm.describe()
    assert (info["train_samples"], info["val_samples"], info["test_samples"]) == (8, 2, 1)
    assert info["num_classes"] == 21 and info["in_channels"] == 3
    x, y = dm.example_batch(1)
    assert x.shape == (1, 3, 16, 16) and x.dtype == torch.float32
    assert y.shape == (1, 16, 16) and y.dtype == torch.int64
    # resized nearest: only labels that were there (no blend of 1 and 255 in between)
    assert set(torch.unique(y).tolist()) <= {0, 1, IGNORE_INDEX}
    assert int((y[0, :, :7] == 0).sum()) == 16 * 7  # the left half stays background


def test_voc_names_what_the_folder_lacks(tmp_path):
    from dlas.data.segmentation import Voc

    with pytest.raises(ValueError, match="dataset.root"):
        Voc(root=None)
    base = write_voc(tmp_path, {"train": ["a"], "val": ["b"]})
    (base / "ImageSets" / "Segmentation" / "val.txt").unlink()
    lacking = r"missing VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt"
    with pytest.raises(FileNotFoundError, match=lacking):
        Voc(root=str(tmp_path))
