"""Half precision (IEEE fp16) weights and activations.

Fine-tuning (``finetune_epochs > 0``) is fp16-aware: each conv/linear weight is
seen through a straight-through fp16 rounding while training in float32, so the
model learns weights that survive the cast; then the whole model is cast.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from dlas.compression.base import Compression, prunable_layers


class _RoundToHalf(nn.Module):
    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w + (w.half().float() - w).detach()  # straight-through estimator


class HalfPrecision(Compression):
    name = "fp16"
    input_dtype = torch.float16
    compute_dtype = "float16"

    def apply(self, model, data, finetune):
        if self.finetune_epochs:
            layers = [m for _, m in prunable_layers(model)]
            for m in layers:
                parametrize.register_parametrization(m, "weight", _RoundToHalf())
            model = finetune(model, self.finetune_epochs, self.finetune_lr)
            for m in layers:
                parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
        self.report = {"dtype": "float16"}
        return model.half()
