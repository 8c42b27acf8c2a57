"""Structural metrics of a model: parameters, non-zeros, MACs and effectual MACs."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def structure(model: nn.Module) -> dict[str, float]:
    """Parameters, non-zeros, the weight sparsity of conv/linear layers (what pruning
    targets) and the number of conv output channels (what channel pruning removes)."""
    params = list(model.parameters())
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    weights = sum(m.weight.numel() for m in layers)
    zeros = sum(m.weight.numel() - int(torch.count_nonzero(m.weight)) for m in layers)
    return {
        "params": sum(p.numel() for p in params),
        "nonzero_params": int(sum(int(torch.count_nonzero(p)) for p in params)),
        "sparsity": zeros / max(weights, 1),
        "conv_channels": sum(m.out_channels for m in layers if isinstance(m, nn.Conv2d)),
    }


@torch.no_grad()
def count_macs(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """MACs of one forward pass of ``example`` (batch 1) counted by torch's FlopCounterMode
    (convolutions and matmuls), and ``nonzero_macs``: each conv/linear layer's MACs
    scaled by its weight density, the work a zero-skipping engine would do."""
    example = example[:1]
    counter = FlopCounterMode(display=False)
    was_training = model.training
    model.eval()
    with counter:
        model(example)
    model.train(was_training)
    macs = counter.get_total_flops() // 2
    per_module = counter.get_flop_counts()
    root = type(model).__name__
    skipped = 0.0
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)) and f"{root}.{name}" in per_module:
            layer_macs = sum(per_module[f"{root}.{name}"].values()) / 2
            density = float(torch.count_nonzero(module.weight)) / module.weight.numel()
            skipped += layer_macs * (1.0 - density)
    return {"macs": int(macs), "nonzero_macs": int(round(macs - skipped))}
