"""The computational-imaging problem space: degraded / clean pairs, DnCNN, PSNR and SSIM,
through the whole stack."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from conftest import compose, overrides, run_entry, runs

from dlas.tracking import schema

#: a 3-conv DnCNN four channels wide on 32 x 32 digits: seconds per stage
RESTORE = [
    "experiment=denoising",
    "deploy=true",
    "measure.verify_samples=8",
    "measure.repeat=3",
    "measure.number=1",
    "measure.retries=0",
    "model.depth=3",
    "model.width=4",
]


def digits(name: str, **kwargs):
    from dlas.data import get_datamodule

    data = get_datamodule(name, **({"batch_size": 16, "seed": 0} | kwargs))
    data.setup()
    return data


def stacked(split) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*(split[i] for i in range(len(split))), strict=True)
    return torch.stack(xs), torch.stack(ys)


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    return 10 * math.log10(1.0 / float(((x - y) ** 2).mean()))


def test_denoising_pairs_follow_the_stated_noise_model() -> None:
    data = digits("digit_denoising", noise_sigma=0.1)
    assert data.task == "restoration" and data.input_shape == (1, 32, 32)
    assert data.num_classes == 1  # the network's output is an image of the input's channels
    noisy, clean = stacked(data.test_set)
    assert clean.min() >= 0 and clean.max() <= 1  # the intensity scale PSNR is defined on
    noise = noisy - clean
    assert float(noise.std()) == pytest.approx(0.1, rel=0.02)
    assert float(noise.mean()) == pytest.approx(0.0, abs=2e-3)
    # sigma 0.1 on a [0, 1] scale: the noisy input itself scores 20 dB
    assert psnr(noisy, clean) == pytest.approx(20.0, abs=0.1)
    # the same seed gives the same noisy images in any process (cached models stay valid)
    again, _ = stacked(digits("digit_denoising", noise_sigma=0.1).test_set)
    assert torch.equal(again, noisy)
    other, _ = stacked(digits("digit_denoising", noise_sigma=0.1, seed=1).test_set)
    assert not torch.equal(other[:10], noisy[:10])


def test_super_resolution_input_is_the_bicubic_down_and_up_image() -> None:
    import torch.nn.functional as F

    data = digits("digit_superres", scale=2)
    blurry, clean = stacked(data.val_set)
    assert blurry.shape == clean.shape == (500, 1, 32, 32)
    small = F.interpolate(clean, scale_factor=0.5, mode="bicubic", antialias=True)
    assert torch.allclose(blurry, F.interpolate(small, size=(32, 32), mode="bicubic"))
    assert 15 < psnr(blurry, clean) < 30  # detail lost, shape kept


def test_the_clean_targets_are_the_packaged_digits() -> None:
    from dlas.data.packaged import mnist5k_arrays

    _, clean = stacked(digits("digit_denoising").train_set)
    images, _ = mnist5k_arrays()
    assert clean.shape[0] == 3500
    first = clean[0, 0, 2:30, 2:30].numpy()  # padded 28 -> 32 by 2 on each side
    assert any(np.allclose(first, im, atol=1e-6) for im in images)


@pytest.fixture
def image_folder(tmp_path):
    """Eight small PNGs (some in a subfolder, one RGB) and a file that is no image."""
    from PIL import Image

    rng = np.random.default_rng(0)
    (tmp_path / "sub").mkdir()
    for i in range(8):
        folder = tmp_path / ("sub" if i % 2 else "")
        pixels = rng.integers(0, 256, size=(40, 48, 3) if i == 3 else (40, 48), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def test_image_folder_reads_every_image_into_three_splits(image_folder) -> None:
    data = digits(
        "image_folder",
        root=str(image_folder),
        image_size=32,
        degradation="super_resolution",
        val_fraction=0.125,
        test_fraction=0.25,
    )
    assert len(data.files) == 8
    sizes = [len(s) for s in (data.train_set, data.val_set, data.test_set)]
    assert sizes == [5, 1, 2]
    blurry, clean = stacked(data.train_set)
    assert clean.shape == (5, 1, 32, 32) and clean.min() >= 0 and clean.max() <= 1
    assert not torch.equal(blurry, clean)
    rgb = digits("image_folder", root=str(image_folder), image_size=16, in_channels=3)
    assert rgb.input_shape == (3, 16, 16) and stacked(rgb.test_set)[1].shape[1] == 3


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"root": None}, ValueError, "dataset.root"),
        ({"root": "/no/such/folder"}, FileNotFoundError, "/no/such/folder"),
        ({"in_channels": 2}, ValueError, "valid choices: 1"),
        ({"degradation": "blur"}, ValueError, "denoise, super_resolution"),
        ({"scale": 3}, ValueError, "dataset.scale=3"),
        ({"noise_sigma": 0.0}, ValueError, "noise_sigma"),
    ],
)
def test_bad_image_folder_settings_are_named(image_folder, kwargs, error, message) -> None:
    from dlas.data import get_datamodule

    args = {"root": str(image_folder), "image_size": 32} | kwargs
    with pytest.raises(error, match=message):
        get_datamodule("image_folder", **args)


def test_a_folder_with_too_few_images_is_refused(tmp_path) -> None:
    from dlas.data import get_datamodule

    with pytest.raises(ValueError, match="holds 0 image files"):
        get_datamodule("image_folder", root=str(tmp_path))


def test_dncnn_is_a_residual_conv_stack_of_known_size() -> None:
    from dlas.models import TASK_OF, get_model
    from dlas.models.restoration import dncnn_params

    for depth, width, channels in ((2, 4, 1), (8, 32, 1), (5, 16, 3)):
        model = get_model(
            "dncnn", num_classes=channels, in_channels=channels, depth=depth, width=width
        )
        assert sum(p.numel() for p in model.parameters()) == dncnn_params(depth, width, channels)
        convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
        assert len(convs) == depth
    # the residual: with the last conv at zero the network is the identity
    torch.nn.init.zeros_(model.head.weight)
    torch.nn.init.zeros_(model.head.bias)
    x = torch.rand(2, 3, 20, 20)
    assert torch.equal(model.eval()(x), x)
    assert TASK_OF["dncnn"] == "restoration"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_classes": 10}, "must equal its 1 input channels"),
        ({"depth": 1}, "needs >= 2"),
        ({"pretrained": True}, "no pretrained weights"),
    ],
)
def test_bad_dncnn_settings_are_named(kwargs, message) -> None:
    from dlas.models import get_model

    with pytest.raises(ValueError, match=message):
        get_model("dncnn", **({"num_classes": 1, "in_channels": 1} | kwargs))


def test_psnr_and_ssim_are_the_textbook_ones() -> None:
    from dlas.training.tasks import get_task

    task = get_task("restoration")
    assert task.quality == "psnr"
    clean = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    noisy = clean + 0.05 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(1))
    got = task.quality_of(noisy.numpy(), clean.numpy(), 1, None)
    assert got == pytest.approx(psnr(noisy, clean), abs=1e-4)  # pooled over the split
    ssim = task.build_metrics(1, None)["ssim"]
    assert float(ssim(clean, clean)) == pytest.approx(1.0)
    noisier = clean + 0.2 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(2))
    assert float(ssim(noisier, clean)) < float(ssim(noisy, clean)) < 1.0
    assert float(task.loss(noisy, clean)) == pytest.approx(float(((noisy - clean) ** 2).mean()))


def test_int8_quantization_takes_a_top_level_residual() -> None:
    """``x + net(x)`` in the root module: PT2E's call labelling once read the placeholder
    ``x`` as a node of the root's call (KeyError: x)."""
    from dlas.compression import get_compression
    from dlas.models import get_model

    torch.manual_seed(0)
    data = digits("digit_denoising")
    model = get_model("dncnn", num_classes=1, in_channels=1, depth=3, width=8).eval()
    quant = get_compression("quant", calibration_batches=2)
    q = quant.apply(copy.deepcopy(model), data, None)
    x = torch.cat(data.calibration_batches(1))
    with torch.no_grad():
        ref, out = model(x), q(x)
    assert quant.report["dtype"] == "int8"
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()


def test_a_classifier_on_a_restoration_dataset_fails_naming_the_presets() -> None:
    from dlas.errors import ConfigError
    from dlas.stack import build_point

    with pytest.raises(ConfigError, match="experiment=denoising or experiment=super_resolution"):
        build_point(compose("dataset=digit_denoising", "model=resnet18"))


@pytest.mark.e2e
@pytest.mark.tvm
@pytest.mark.slow
def test_a_denoising_point_trains_deploys_and_scores_by_psnr(workdir) -> None:
    """The whole stack on the restoration task: TVM and onnxruntime reproduce PyTorch's
    images, and the point is scored by PSNR (logged as quality)."""
    result = run_entry("train.py", *overrides(workdir, *RESTORE, "measure.compare=[onnxruntime]"))
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = runs(workdir["uri"])
    m, params = run.data.metrics, run.data.params
    assert run.info.status == "FINISHED"
    assert (params[schema.TASK], params[schema.QUALITY_METRIC]) == ("restoration", "psnr")
    assert {"psnr", "ssim", schema.QUALITY} <= set(m) and schema.TOP1 not in m
    assert m[schema.QUALITY] == m["psnr"] and 0 < m["ssim"] <= 1
    assert m[schema.MAX_ABS_ERR] <= m[schema.VERIFY_TOLERANCE]
    assert m[schema.COMPILED_QUALITY] == pytest.approx(m[schema.REFERENCE_QUALITY], abs=1e-3)
    assert m[schema.of_compiler("onnxruntime", schema.LATENCY_MS)] > 0


def test_a_diverged_training_fails_the_run_naming_the_learning_rate(workdir) -> None:
    """NaN scores are not a result: SGD at a huge rate blows DnCNN up, and the run is
    FAILED with the optimizer and rate named, not FINISHED with psnr = NaN."""
    from dlas.errors import TrainingDivergedError
    from dlas.stack import run_point

    args = ["dataset=digit_denoising", "model.depth=3", "model.width=4"]
    args += ["trainer=default", "trainer.lr=1e6", "trainer.scheduler=none"]
    with pytest.raises(
        TrainingDivergedError, match="trainer.optimizer=sgd at trainer.lr=1000000.0"
    ):
        run_point(compose(*overrides(workdir, *args)))
    (run,) = runs(workdir["uri"])
    assert run.info.status == "FAILED" and "TrainingDivergedError" in run.data.tags["error"]


def test_fine_tuning_never_outruns_the_training_rate() -> None:
    """A compression's finetune_lr (set for SGD at 0.1) is capped at trainer.lr."""
    from omegaconf import OmegaConf

    from dlas.training.fit import Trainer

    calls = []
    trainer = Trainer(OmegaConf.create({"lr": 1e-3}), data=None)
    trainer.fit = lambda model, epochs, lr, stage: calls.append((epochs, lr, stage))
    finetune = trainer.finetuner()
    finetune(None, 2, 0.05)
    finetune(None, 1, 1e-4)
    assert calls == [(2, 1e-3, "finetune"), (1, 1e-4, "finetune")]
