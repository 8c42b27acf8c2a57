"""``torch.export`` with a dynamic batch dimension: the one graph format shared by int8
quantization (PT2E), the stage cache and the compilers of layers 4-6."""

from __future__ import annotations

import io

import torch
from torch import nn

BATCH = torch.export.Dim("batch", min=1, max=4096)


def export_model(
    model: nn.Module, example: torch.Tensor, *, train: bool = False
) -> torch.export.ExportedProgram:
    """Export for inference (eval mode: BatchNorm uses its running statistics) unless
    ``train`` (quantization-aware training); the batch dimension stays symbolic."""
    model.train(train)
    if example.shape[0] < 2:
        example = example.expand(2, *example.shape[1:]).contiguous()
    try:
        return torch.export.export(model, (example,), dynamic_shapes=({0: BATCH},))
    except Exception as err:  # torch raises many types; one clear message for the user
        raise RuntimeError(
            f"torch.export could not trace {type(model).__name__}: {err}".splitlines()[0]
        ) from err


def serialized_size(program: torch.export.ExportedProgram) -> int:
    """Bytes of the saved ExportedProgram: the deployable model's on-disk size."""
    buf = io.BytesIO()
    torch.export.save(program, buf)
    return buf.getbuffer().nbytes


def load_program(path) -> torch.export.ExportedProgram:
    """``torch.export.load`` that also reads int8 programs: their quantize/dequantize ops
    (``torch.ops.quantized_decomposed``) exist only once torchao's PT2E module is imported."""
    import torchao.quantization.pt2e  # noqa: F401  (registers quantized_decomposed ops)

    return torch.export.load(path)
