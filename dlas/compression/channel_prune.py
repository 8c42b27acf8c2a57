"""Structured filter pruning that removes channels for real (torch-pruning, DepGraph).

torch-pruning traces the model into a dependency graph, so removing a filter also
removes the matching input channels of every consumer, the BatchNorm entries, and
keeps residual additions and concatenations consistent. Filters are ranked by
the Lp norm of their whole dependency group. ``amount`` is the fraction of each
layer's output channels removed (the task's outputs are kept); params and
MACs shrink roughly by (1 - amount)^2 since both sides of a layer lose channels.
"""

from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn

from dlas.compression.base import Compression, prunable_layers
from dlas.registry import check_fraction


def conv_channels(model: nn.Module) -> dict[str, int]:
    return {n: m.out_channels for n, m in prunable_layers(model) if isinstance(m, nn.Conv2d)}


def output_layers(model: nn.Module, data) -> list[nn.Module]:
    """The layers whose outputs are the task's: a classifier's last linear layer, a
    segmentation network's convolutions to the classes (LR-ASPP has two, summed); their
    output channels are the classes and cannot be pruned."""
    if data.task == "classification":
        return [m for _, m in prunable_layers(model) if isinstance(m, nn.Linear)][-1:]
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.Conv2d) and m.out_channels == data.num_classes
    ]


class ChannelPrune(Compression):
    name = "channel_prune"

    def __init__(self, *, amount: float = 0.5, steps: int = 1, norm: int = 2, **kwargs) -> None:
        super().__init__(**kwargs)
        self._amount = check_fraction("compression.amount", amount)
        if steps < 1:
            raise ValueError(f"compression.steps={steps} must be >= 1")
        if norm not in (1, 2):
            raise ValueError(f"compression.norm={norm}; valid choices: 1, 2")
        self.steps, self.norm = steps, norm

    def apply(self, model, data, finetune):
        example = torch.zeros(1, *data.input_shape)
        before = conv_channels(model)
        classifier = output_layers(model, data)
        model.eval()
        pruner = tp.pruner.MetaPruner(
            model,
            example,
            importance=tp.importance.GroupMagnitudeImportance(p=self.norm),
            pruning_ratio=self._amount,
            iterative_steps=self.steps,
            ignored_layers=classifier,
        )
        for _ in range(self.steps):
            pruner.step()
            if self.finetune_epochs:
                model = finetune(model, self.finetune_epochs, self.finetune_lr)
        after = conv_channels(model)
        kept = sum(after.values()) / sum(before.values())
        self.report = {
            "dtype": "float32",
            "channels_kept": kept,
            "channels_per_layer": {n: [before[n], after[n]] for n in before},
        }
        return model
