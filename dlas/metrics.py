"""Structural metrics of a model: parameters, non-zeros, MACs and effectual MACs, and
the bytes one inference touches."""

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


def _tensor_bytes(value: object) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


@torch.no_grad()
def memory_footprint(program: torch.export.ExportedProgram, example: torch.Tensor) -> dict:
    """What one batch-1 inference touches, to set against the cache sizes:

    * ``param_bytes``: every stored tensor of the program (weights, biases, BatchNorm
      statistics, int8 scales), each once, in the dtype it is stored in;
    * ``activation_bytes``: the largest input + output of one operator on ``example``;
    * ``working_set_bytes``: their sum, the memory a layer-by-layer executor keeps hot.

    Read off the exported program (not the ``nn.Module``) so that fp16 and int8 models
    count what they deploy.
    """
    stored: dict[int, torch.Tensor] = {}
    tensors = {**program.state_dict, **program.constants}
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor) and not name.endswith("num_batches_tracked"):
            stored.setdefault(id(t), t)  # training bookkeeping, not read by inference
    param_bytes = sum(_tensor_bytes(t) for t in stored.values())
    module = program.module()
    peak = 0

    class Peak(torch.fx.Interpreter):
        def run_node(self, node: torch.fx.Node) -> object:
            nonlocal peak
            out = super().run_node(node)
            if node.op == "call_function":
                inputs = sum(
                    _tensor_bytes(self.env[a]) for a in node.all_input_nodes if a.op != "get_attr"
                )
                peak = max(peak, inputs + _tensor_bytes(out))
            return out

    Peak(module).run(example[:1])
    return {
        "param_bytes": param_bytes,
        "activation_bytes": peak,
        "working_set_bytes": param_bytes + peak,
    }
