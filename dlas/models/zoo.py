"""torchvision's classification zoo, adapted to the data it will see.

Two adaptations, both to the *first* layers only, so the rest of each network stays
the torchvision architecture that papers name:

* channels: the stem convolution takes ``in_channels`` (1 for digits, 3 for RGB);
  pretrained RGB stem weights are summed over colour for a grey-scale stem.
* resolution (``stem``): ImageNet stems downsample 4x before the first stage, which
  leaves 8x8 or less of a 32x32 image. ``cifar`` is each family's usual CIFAR
  adaptation (full resolution into the first stage); ``compact`` keeps one 2x
  downsampling at the stem (4x fewer MACs than ``cifar``: quick CPU runs);
  ``imagenet`` is torchvision unchanged; ``auto`` picks ``cifar`` for inputs <= 64 px.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
import torchvision
from torch import nn

STEMS = ("auto", "imagenet", "cifar", "compact")


def resolve_stem(stem: str, input_size: int) -> str:
    """Check ``model.stem`` and turn ``auto`` into ``cifar`` (<= 64 px) or ``imagenet``."""
    if stem not in STEMS:
        raise ValueError(f"model.stem={stem!r}; valid choices: {', '.join(STEMS)}")
    if stem == "auto":
        return "cifar" if input_size <= 64 else "imagenet"
    return stem


def _conv_like(
    old: nn.Conv2d, in_channels: int, kernel: int | None = None, stride: int | None = None
) -> nn.Conv2d:
    k = kernel if kernel is not None else old.kernel_size[0]
    s = stride if stride is not None else old.stride[0]
    return nn.Conv2d(in_channels, old.out_channels, k, s, k // 2, bias=old.bias is not None)


def _strided_convs(module: nn.Module) -> list[nn.Conv2d]:
    return [m for m in module.modules() if isinstance(m, nn.Conv2d) and m.stride[0] == 2]


def _set_stride(conv: nn.Conv2d, stride: int) -> None:
    conv.stride = (stride, stride)


# Each adapter gets the freshly built torchvision model and edits it in place.
def _adapt_resnet(m: nn.Module, stem: str) -> None:
    if stem != "imagenet":
        m.conv1 = _conv_like(
            m.conv1, m.conv1.in_channels, kernel=3, stride=1 if stem == "cifar" else 2
        )
        m.maxpool = nn.Identity()


def _adapt_densenet(m: nn.Module, stem: str) -> None:
    if stem != "imagenet":
        conv0 = m.features.conv0
        m.features.conv0 = _conv_like(
            conv0, conv0.in_channels, kernel=3, stride=1 if stem == "cifar" else 2
        )
        m.features.pool0 = nn.Identity()


def _adapt_vgg(m: nn.Module, stem: str) -> None:
    """CIFAR-VGG: five pools take 32 px to 1x1, so the 7x7x512 -> 4096 head (120M
    params of replicated pixels) becomes 512 -> 512 -> classes."""
    if stem == "imagenet":
        return
    num_classes = m.classifier[-1].out_features
    m.avgpool = nn.AdaptiveAvgPool2d(1)
    m.classifier = nn.Sequential(
        nn.Linear(512, 512), nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Linear(512, num_classes)
    )
    if stem == "compact":
        _set_stride(m.features[0], 2)
        last_pool = max(i for i, layer in enumerate(m.features) if isinstance(layer, nn.MaxPool2d))
        m.features[last_pool] = nn.Identity()


def _adapt_mobile(m: nn.Module, stem: str) -> None:
    """MobileNet / EfficientNet / MnasNet: the stem conv and the first strided stage
    each halve the resolution; cifar undoes both, compact only the second."""
    if stem == "imagenet":
        return
    stem_conv, first_stage = _strided_convs(m)[:2]
    _set_stride(first_stage, 1)
    if stem == "cifar":
        _set_stride(stem_conv, 1)


ZOO: dict[str, tuple[str, Callable[[nn.Module, str], None]]] = {
    # dlas name: (torchvision name, small-input adapter)
    "resnet18": ("resnet18", _adapt_resnet),
    "resnet50": ("resnet50", _adapt_resnet),
    "vgg16": ("vgg16_bn", _adapt_vgg),
    "mobilenet_v2": ("mobilenet_v2", _adapt_mobile),
    "densenet121": ("densenet121", _adapt_densenet),
    "efficientnet_b0": ("efficientnet_b0", _adapt_mobile),
    "mnasnet1_0": ("mnasnet1_0", _adapt_mobile),
}


def _first_conv(m: nn.Module) -> tuple[nn.Module, str, nn.Conv2d]:
    for name, mod in m.named_modules():
        if isinstance(mod, nn.Conv2d):
            parent_name, _, attr = name.rpartition(".")
            return m.get_submodule(parent_name), attr, mod
    raise ValueError("model has no Conv2d")


def _last_linear(m: nn.Module) -> tuple[nn.Module, str, nn.Linear]:
    found = None
    for name, mod in m.named_modules():
        if isinstance(mod, nn.Linear):
            found = (name, mod)
    assert found is not None, "classifier has no Linear layer"
    parent_name, _, attr = found[0].rpartition(".")
    return m.get_submodule(parent_name), attr, found[1]


def _set_in_channels(m: nn.Module, in_channels: int) -> None:
    parent, attr, conv = _first_conv(m)
    if conv.in_channels == in_channels:
        return
    new = _conv_like(conv, in_channels)
    new.stride, new.padding = conv.stride, conv.padding
    with torch.no_grad():  # keep what pretrained colour filters know, as luminance filters
        new.weight.copy_(
            conv.weight.mean(dim=1, keepdim=True).expand_as(new.weight) * 3 / in_channels
        )
    setattr(parent, attr, new)


def _load_pretrained(tv_name: str) -> nn.Module:
    """torchvision weights from the local torch hub cache; never downloads."""
    weights = torchvision.models.get_model_weights(tv_name).DEFAULT
    folder = os.path.join(torch.hub.get_dir(), "checkpoints")
    path = os.path.join(folder, os.path.basename(weights.url))
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"model.pretrained=true needs {tv_name} weights at {path}; dlas does not download "
            f"weights. Copy {os.path.basename(weights.url)} there (TORCH_HOME moves the cache) "
            "or set model.pretrained=false"
        )
    return torchvision.models.get_model(tv_name, weights=weights)


def build_zoo_model(
    name: str,
    *,
    num_classes: int,
    in_channels: int = 3,
    input_size: int = 224,
    pretrained: bool = False,
    stem: str = "auto",
) -> nn.Module:
    tv_name, adapt = ZOO[name]
    stem = resolve_stem(stem, input_size)
    if in_channels not in (1, 3):
        raise ValueError(f"in_channels={in_channels}; valid choices: 1, 3")
    if pretrained:
        model = _load_pretrained(tv_name)
        parent, attr, head = _last_linear(model)
        setattr(parent, attr, nn.Linear(head.in_features, num_classes))
    else:
        model = torchvision.models.get_model(tv_name, weights=None, num_classes=num_classes)
    adapt(model, stem)
    _set_in_channels(model, in_channels)
    return model
