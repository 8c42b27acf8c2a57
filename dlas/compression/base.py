"""What every layer-3 compression is: a model -> model transform, then fine-tuning.

Fine-tuning is passed in as a callable so that compressions stay free of training
details (Lightning, logging, data): ``finetune(model, epochs, lr) -> model``.
Each compression records what it did in ``report`` (per-layer sparsity, channels
kept, dtype) for the MLflow run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from dlas.data.base import ImageClassificationData

Finetune = Callable[[nn.Module, int, float], nn.Module]


class Compression:
    name = "base"

    def __init__(self, *, finetune_epochs: int = 0, finetune_lr: float = 0.01) -> None:
        if finetune_epochs < 0:
            raise ValueError(f"compression.finetune_epochs={finetune_epochs} must be >= 0")
        if finetune_lr <= 0:
            raise ValueError(f"compression.finetune_lr={finetune_lr} must be > 0")
        self.finetune_epochs = finetune_epochs
        self.finetune_lr = finetune_lr
        self.report: dict[str, Any] = {}

    # the dtype the compressed model expects its input in
    input_dtype: torch.dtype = torch.float32
    # what its exported program computes in, as layers 4-5 read it (the compilers pick
    # their int8 or fp16 kernels by it; logged as ``compute_dtype``); layer 3 knows it
    # and the deployment does not have to guess it from the graph
    compute_dtype: str = "float32"

    def apply(
        self, model: nn.Module, data: ImageClassificationData, finetune: Finetune
    ) -> nn.Module:
        raise NotImplementedError

    @property
    def amount(self) -> float:
        """The compression ratio knob, 0 where a compression has none (logged for every run
        so that runs share one parameter schema)."""
        return float(getattr(self, "_amount", 0.0))


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Conv and linear layers: the weights that hold the MACs."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def weight_sparsity(model: nn.Module) -> dict[str, float]:
    return {
        name: float((m.weight == 0).sum()) / m.weight.numel() for name, m in prunable_layers(model)
    }
