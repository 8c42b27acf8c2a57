"""Layer 2 of the stack: models and neural architectures, one door ``get_model``."""

from __future__ import annotations

from functools import partial

from torch import nn

from dlas.models.darts import build_darts_model
from dlas.models.patterns import PATTERNS, build_pattern_model
from dlas.models.restoration import build_dncnn
from dlas.models.segmentation import SEGMENTATION_ZOO, build_segmentation_zoo_model, build_unet
from dlas.models.zoo import ZOO, build_zoo_model
from dlas.registry import Registry

MODELS: Registry[nn.Module] = Registry("model")
for _name in ZOO:
    MODELS.register(_name)(partial(build_zoo_model, _name))
for _name in PATTERNS:  # one pattern, sized by depth and width (dlas.models.patterns)
    MODELS.register(_name)(partial(build_pattern_model, _name))
#: NAS-found networks, sized by depth (cells) and width like the patterns (dlas.models.darts)
NAS_CELLS = ("darts",)
MODELS.register("darts")(build_darts_model)
for _name in SEGMENTATION_ZOO:
    MODELS.register(_name)(partial(build_segmentation_zoo_model, _name))
MODELS.register("unet")(build_unet)
MODELS.register("dncnn")(build_dncnn)

#: the problem space each model is built for (a classifier cannot label pixels)
TASK_OF: dict[str, str] = (
    {name: "classification" for name in MODELS.names()}
    | {name: "segmentation" for name in (*SEGMENTATION_ZOO, "unet")}
    | {"dncnn": "restoration"}
)


def models_for(task: str) -> list[str]:
    return sorted(name for name, t in TASK_OF.items() if t == task)


def get_model(
    name: str,
    *,
    num_classes: int,
    in_channels: int = 3,
    input_size: int = 224,
    **kwargs,
) -> nn.Module:
    """Build model ``name`` for ``num_classes`` classes on ``in_channels`` x ``input_size``²
        images. Extra keyword arguments go to the family's builder (``pretrained``, ``stem``;
    ``depth``, ``width``, ``stages`` for the pattern families; ``depth``, ``width`` for
    ``darts``, ``unet`` and ``dncnn``)."""
    return MODELS.build(
        name, num_classes=num_classes, in_channels=in_channels, input_size=input_size, **kwargs
    )


def list_models() -> list[str]:
    return MODELS.names()


__all__ = [
    "MODELS",
    "NAS_CELLS",
    "PATTERNS",
    "TASK_OF",
    "ZOO",
    "get_model",
    "list_models",
    "models_for",
]
