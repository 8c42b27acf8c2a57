"""Layer 2: one door to the zoo, every model adapted to small 1- and 3-channel inputs."""

from __future__ import annotations

import os

import pytest
import torch
import torchvision

from dlas.models import get_model, list_models
from dlas.models.zoo import ZOO

REQUIRED = {
    "resnet18",
    "resnet50",
    "vgg16",
    "mobilenet_v2",
    "densenet121",
    "efficientnet_b0",
    "mnasnet1_0",
}


def test_zoo_has_required_models():
    assert set(list_models()) >= REQUIRED


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", sorted(ZOO))
def test_builds_and_runs_at_32px(name, channels):
    model = get_model(name, num_classes=7, in_channels=channels, input_size=32).eval()
    with torch.no_grad():
        out = model(torch.randn(2, channels, 32, 32))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


def spatial_after_stem(model, channels=1):
    """Resolution entering the first stage, read from the first conv's output chain."""
    sizes = []
    hook = lambda m, i, o: sizes.append(o.shape[-1])  # noqa: E731
    handles = [
        m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)
    ]
    model.eval()(torch.randn(1, channels, 32, 32))
    for h in handles:
        h.remove()
    return sizes


def test_stems_set_the_resolution():
    full = spatial_after_stem(get_model("resnet18", num_classes=10, in_channels=1, stem="cifar"))
    compact = spatial_after_stem(
        get_model("resnet18", num_classes=10, in_channels=1, stem="compact")
    )
    imagenet = spatial_after_stem(
        get_model("resnet18", num_classes=10, in_channels=1, stem="imagenet")
    )
    assert (full[1], compact[1], imagenet[1]) == (32, 16, 8)
    auto_small = get_model("resnet18", num_classes=10, input_size=32)
    assert auto_small.conv1.stride == (1, 1) and isinstance(auto_small.maxpool, torch.nn.Identity)
    auto_large = get_model("resnet18", num_classes=10, input_size=224)
    assert auto_large.conv1.kernel_size == (7, 7)


def test_vgg_small_input_head_is_compact():
    vgg = get_model("vgg16", num_classes=10, input_size=32)
    assert sum(p.numel() for p in vgg.parameters()) < 20e6  # not the 134M ImageNet head


def test_unknown_model_names_choices():
    with pytest.raises(ValueError, match="unknown model 'resnet19'.*resnet18"):
        get_model("resnet19", num_classes=10)


def test_bad_stem():
    with pytest.raises(ValueError, match="model.stem='wide'"):
        get_model("resnet18", num_classes=10, stem="wide")


def test_pretrained_missing_weights_fail_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="does not download"):
        get_model("resnet18", num_classes=10, pretrained=True)


def test_pretrained_loads_from_local_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = torchvision.models.ResNet18_Weights.DEFAULT
    source = torchvision.models.resnet18()
    folder = tmp_path / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(source.state_dict(), folder / os.path.basename(weights.url))
    model = get_model("resnet18", num_classes=5, in_channels=3, input_size=224, pretrained=True)
    assert torch.equal(model.layer3[0].conv1.weight, source.layer3[0].conv1.weight)
    assert model.fc.out_features == 5
    grey = get_model("resnet18", num_classes=5, in_channels=1, input_size=224, pretrained=True)
    assert torch.allclose(grey.conv1.weight[:, 0], source.conv1.weight.sum(dim=1), atol=1e-6)


# ------------------------------------------------------- segmentation networks (issue 18)


@pytest.mark.parametrize(
    "name", ["lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large", "fcn_resnet50"]
)
def test_segmentation_zoo_labels_every_pixel_of_a_small_input(name):
    from dlas.models.segmentation import build_segmentation_zoo_model

    model = build_segmentation_zoo_model(name, num_classes=11, in_channels=1, input_size=64)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, 64, 64))
    assert out.shape == (2, 11, 64, 64)  # one tensor, the input's size, a logit per class
    # stem=auto at 64 px keeps full resolution at the stem: the deepest backbone features
    # are 8 x 8 (torchvision's stem would leave 4 x 4)
    backbone = model.inner.backbone
    with torch.no_grad():
        deepest = list(backbone(torch.randn(1, 1, 64, 64)).values())[-1]
    assert deepest.shape[-1] == 8
    imagenet = build_segmentation_zoo_model(name, num_classes=11, in_channels=3, stem="imagenet")
    with torch.no_grad():
        features = list(imagenet.inner.backbone(torch.randn(1, 3, 64, 64)).values())[-1]
    assert features.shape[-1] == (8 if name == "fcn_resnet50" else 4)


@pytest.mark.parametrize("depth, width", [(1, 4), (2, 8), (3, 16)])
def test_unet_size_is_its_closed_form(depth, width):
    from dlas.models.segmentation import build_unet, unet_params

    model = build_unet(num_classes=11, in_channels=1, input_size=32, depth=depth, width=width)
    assert sum(p.numel() for p in model.parameters()) == unet_params(depth, width, 11, 1)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 1, 32, 32)).shape == (1, 11, 32, 32)


def test_unet_bad_sizes_are_named():
    from dlas.models.segmentation import build_segmentation_zoo_model, build_unet

    with pytest.raises(ValueError, match="image_size=36 must be a multiple of 8"):
        build_unet(num_classes=11, input_size=36, depth=3)
    with pytest.raises(ValueError, match="model.width=0"):
        build_unet(num_classes=11, width=0)
    with pytest.raises(ValueError, match="model.stem='tiny' for a segmentation network"):
        build_segmentation_zoo_model("fcn_resnet50", num_classes=11, stem="tiny")
