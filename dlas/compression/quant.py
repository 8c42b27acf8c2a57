"""int8 static quantization through torchao's PT2E flow.

``torch.export`` -> ``prepare_pt2e`` with the X86 Inductor quantizer (int8 per-channel
symmetric weights, uint8 per-tensor activations, conv+bn+relu and conv+add+relu fused)
-> calibration on training batches -> ``convert_pt2e``. With ``qat=true`` and
``finetune_epochs > 0`` the observers are inserted for quantization-aware training and
the model is fine-tuned before conversion. The result is a GraphModule holding int8
weights and quantize/dequantize nodes with the calibrated scales: the graph that
layer 5 lowers to integer kernels.
"""

from __future__ import annotations

import torch
from torch import fx, nn

from dlas.compression.base import Compression
from dlas.models.export import export_model


def split_reused_modules(gm: fx.GraphModule) -> fx.GraphModule:
    """Give each *call* of a module its own partition name.

    PT2E's pattern matcher groups nodes by the module they came from. A module called
    twice (torchvision's ResNet blocks apply one ``self.relu`` twice) becomes one
    partition with two outputs and the X86 quantizer rejects it. A call is a run of
    nodes from one module fed by each other, so a node of module ``m`` whose inputs
    include no node of ``m`` opens a new call, renamed ``m#k``.
    """
    calls: dict[str, int] = {}
    label: dict[fx.Node, tuple[str, int]] = {}
    for node in gm.graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if node.op != "call_function" or not stack:
            continue
        key, (fqn, cls) = list(stack.items())[-1]
        # inputs not labelled (placeholders, weights) belong to no call, not even the root's
        # (fqn ""): a top-level ``x + net(x)`` must not read its placeholder as a call
        mine = next(
            (label[a] for a in node.all_input_nodes if a in label and label[a][0] == fqn), None
        )
        if mine is None:
            mine = (fqn, calls.get(fqn, 0))
            calls[fqn] = mine[1] + 1
        label[node] = mine
        if mine[1]:
            node.meta["nn_module_stack"] = {**stack, key: (f"{fqn}#{mine[1]}", cls)}
    return gm


def drop_unused_attributes(gm: fx.GraphModule) -> fx.GraphModule:
    """``convert_pt2e`` folds weights into int8 constants but leaves the float originals
    registered; drop them so the saved model is int8-sized, not bigger than float."""
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    for name in [n for n, _ in gm.named_parameters()] + [n for n, _ in gm.named_buffers()]:
        if name not in used:
            owner_name, _, attr = name.rpartition(".")
            owner = gm.get_submodule(owner_name)
            owner._parameters.pop(attr, None)
            owner._buffers.pop(attr, None)
    gm.delete_all_unused_submodules()
    return gm


class Int8Quantization(Compression):
    name = "quant"
    compute_dtype = "int8"  # u8 activations x s8 weights, s32 accumulators

    def __init__(self, *, calibration_batches: int = 8, qat: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        if calibration_batches < 1:
            raise ValueError(f"compression.calibration_batches={calibration_batches} must be >= 1")
        self.calibration_batches = calibration_batches
        self.qat = qat

    def apply(self, model: nn.Module, data, finetune):
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
        from torchao.quantization.pt2e import allow_exported_model_train_eval
        from torchao.quantization.pt2e.quantize_pt2e import (
            convert_pt2e,
            prepare_pt2e,
            prepare_qat_pt2e,
        )

        qat = self.qat and self.finetune_epochs > 0
        example = data.example_batch(2)[0]
        graph = export_model(model, example, train=qat)
        gm = split_reused_modules(graph.module())
        quantizer = xiq.X86InductorQuantizer().set_global(
            xiq.get_default_x86_inductor_quantization_config(is_qat=qat)
        )
        prepared = (prepare_qat_pt2e if qat else prepare_pt2e)(gm, quantizer)
        allow_exported_model_train_eval(prepared)
        if qat:
            prepared = finetune(prepared, self.finetune_epochs, self.finetune_lr)
        prepared.eval()
        calibration = data.calibration_batches(self.calibration_batches)
        with torch.no_grad():
            for x in calibration:
                prepared(x)
        converted = drop_unused_attributes(convert_pt2e(prepared))
        allow_exported_model_train_eval(converted)
        int8_weights = [n for n, t in converted.state_dict().items() if t.dtype == torch.int8]
        self.report = {
            "dtype": "int8",
            "scheme": "static, per-channel symmetric int8 weights, per-tensor uint8 activations",
            "qat": qat,
            "int8_tensors": len(int8_weights),
            "calibration_images": sum(len(x) for x in calibration),
        }
        return converted
