"""The operands of every convolution and linear layer, as a model runs.

Two kinds of model come out of the stage cache, so there are two ways in:

* eager ``nn.Module`` s (float, pruned, channel-pruned, fp16): forward pre-hooks on each
  ``nn.Conv2d`` / ``nn.Linear`` read the input and the layer's weight;
* int8 models: a PT2E ``GraphModule`` whose convs and linears are float aten ops fed by
  ``dequantize`` nodes. An FX interpreter runs it and, at each conv/linear, reads the
  integers *behind* the dequantize (the uint8 activation its ``quantize`` produced and
  the int8 weight constant), which are what an integer engine multiplies (as
  ``dlas.compiler.int8`` does). An operand without a dequantize stays float.

A linear layer is handed on as the 1x1 convolution it is (rows become batch entries),
so the analysis has one geometry to handle.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, fx, nn
from torch.nn.modules.utils import _pair

from dlas.characterize.formats import IntFormat


@dataclass(frozen=True)
class Geometry:
    """What a convolution does with its input, beyond the weight's shape."""

    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1


@dataclass
class Operands:
    """One call of one layer: NCHW activations and OIHW weights.

    A format of None means float values, to be put in the characterized fixed point;
    otherwise ``act`` / ``weight`` already hold the integers the model stores.
    """

    layer: str
    kind: str  # "conv" or "linear"
    act: Tensor
    weight: Tensor
    geometry: Geometry
    act_format: IntFormat | None = None
    weight_format: IntFormat | None = None


Sink = Callable[[Operands], None]


def linear_as_conv(x: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
    """``x @ w.T`` over the last dim == a 1x1 conv of the rows as a batch of 1x1 images."""
    return x.reshape(-1, x.shape[-1], 1, 1), weight.reshape(*weight.shape, 1, 1)


def conv_geometry(module: nn.Conv2d) -> Geometry:
    if isinstance(module.padding, str) or module.padding_mode != "zeros":
        raise NotImplementedError(
            f"characterize supports explicit zero padding only; {module} uses "
            f"padding={module.padding!r}, padding_mode={module.padding_mode!r}"
        )
    return Geometry(
        _pair(module.stride), _pair(module.padding), _pair(module.dilation), module.groups
    )


@contextmanager
def hooked(model: nn.Module, sink: Sink) -> Iterator[None]:
    """Forward pre-hooks on every Conv2d and Linear of an eager model while inside."""

    def hook_for(name: str, module: nn.Module) -> Callable[..., None]:
        def hook(mod: nn.Module, args: tuple[Any, ...]) -> None:
            x, w = args[0].detach(), mod.weight.detach()
            if isinstance(mod, nn.Linear):
                x, w = linear_as_conv(x, w)
                sink(Operands(name, "linear", x, w, Geometry()))
            else:
                sink(Operands(name, "conv", x, w, conv_geometry(mod)))

        return hook

    handles = [
        module.register_forward_pre_hook(hook_for(name, module))
        for name, module in model.named_modules()
        if isinstance(module, (nn.Conv2d, nn.Linear))
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


# ------------------------------------------------------------------ int8 (PT2E) graphs

_aten = torch.ops.aten
CONV_TARGETS = {_aten.conv2d.default, _aten.convolution.default}
LINEAR_TARGETS = {_aten.linear.default}
DEQUANTIZE_NAMES = {
    "dequantize_per_tensor.default",
    "dequantize_per_tensor.tensor",
    "dequantize_per_tensor.tensor2",
    "dequantize_per_channel.default",
}


def is_quantized_graph(model: nn.Module) -> bool:
    """A PT2E-converted GraphModule: it holds quantized_decomposed dequantize ops."""
    return isinstance(model, fx.GraphModule) and any(_is_dequantize(n) for n in model.graph.nodes)


def _is_dequantize(node: Any) -> bool:
    return (
        isinstance(node, fx.Node)
        and node.op == "call_function"
        and isinstance(node.target, torch._ops.OpOverload)
        and node.target.namespace == "quantized_decomposed"
        and node.target.__name__ in DEQUANTIZE_NAMES
    )


def _layer_name(node: fx.Node) -> str:
    """The eager module a node came from (``layer1.0.conv1``), else the node's name."""
    stack = node.meta.get("nn_module_stack")
    if stack:
        return list(stack.values())[-1][0].split("#")[0]
    return node.name


class _OperandInterpreter(fx.Interpreter):
    """Runs a quantized GraphModule node by node, handing each conv/linear's operands to
    the sink just before the op runs (its inputs are in ``self.env`` by then)."""

    def __init__(self, module: fx.GraphModule, sink: Sink) -> None:
        super().__init__(module)
        self.sink = sink
        # dequantize node -> the integers it read and their format. Kept here because the
        # interpreter frees a value after its last use, which for the integers is the
        # dequantize itself, before the conv that we characterize runs.
        self.behind: dict[fx.Node, tuple[Tensor, IntFormat]] = {}

    def value(self, arg: Any) -> Any:
        return self.env[arg] if isinstance(arg, fx.Node) else arg

    def stored(self, arg: Any) -> tuple[Tensor, IntFormat | None]:
        """The integers behind a dequantize and their format, else the float value."""
        if arg in self.behind:
            return self.behind[arg]
        return self.value(arg), None

    def read_dequantize(self, arg: fx.Node) -> tuple[Tensor, IntFormat]:
        a = arg.normalized_arguments(self.module, normalize_to_only_use_kwargs=True).kwargs
        integers = self.value(a["input"])
        zero_point = self.value(a.get("zero_point", a.get("zero_points")))
        if isinstance(zero_point, Tensor):
            flat = zero_point.flatten()
            if flat.numel() and bool((flat != flat[0]).any()):
                raise NotImplementedError(
                    f"{arg.name}: per-channel zero points differ; padding has no single value"
                )
            zero_point = int(flat[0]) if flat.numel() else 0
        fmt = IntFormat(
            bits=torch.iinfo(integers.dtype).bits,
            signed=integers.dtype.is_signed,
            zero_point=int(zero_point or 0),
        )
        return integers, fmt

    def run_node(self, n: fx.Node) -> Any:
        if _is_dequantize(n):
            self.behind[n] = self.read_dequantize(n)
        elif n.op == "call_function" and n.target in CONV_TARGETS | LINEAR_TARGETS:
            self.capture(n)
        return super().run_node(n)

    def capture(self, n: fx.Node) -> None:
        a = n.normalized_arguments(self.module, normalize_to_only_use_kwargs=True).kwargs
        act, act_format = self.stored(a["input"])
        weight, weight_format = self.stored(a["weight"])
        if n.target in LINEAR_TARGETS:
            act, weight = linear_as_conv(act, weight)
            kind, geometry = "linear", Geometry()
        else:
            if a.get("transposed", False):
                raise NotImplementedError(f"{n.name}: transposed convolutions")
            kind = "conv"
            geometry = Geometry(
                _pair(self.value(a.get("stride", 1))),
                _pair(self.value(a.get("padding", 0))),
                _pair(self.value(a.get("dilation", 1))),
                int(self.value(a.get("groups", 1))),
            )
        self.sink(Operands(_layer_name(n), kind, act, weight, geometry, act_format, weight_format))


@torch.no_grad()
def run_capturing(model: nn.Module, batches: Iterable[Tensor], sink: Sink) -> int:
    """Run ``batches`` through ``model``, handing every conv/linear call to ``sink``;
    returns the number of samples run."""
    model.eval()
    samples = 0
    if is_quantized_graph(model):
        interpreter = _OperandInterpreter(model, sink)  # type: ignore[arg-type]
        for x in batches:
            interpreter.run(x)
            samples += len(x)
        return samples
    with hooked(model, sink):
        for x in batches:
            model(x)
            samples += len(x)
    return samples
