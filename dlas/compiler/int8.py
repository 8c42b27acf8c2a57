"""Import a PT2E-quantized ``ExportedProgram`` into TVM Relax as real integer arithmetic.

What comes in: torchao's PT2E flow (``dlas.compression.quant``) leaves a graph in the
"reference" QDQ form: every quantized tensor is ``quantize_per_tensor`` (float -> uint8)
followed by ``dequantize_per_tensor`` (uint8 -> float), weights are int8 constants behind
``dequantize_per_channel``, and the conv / linear / add / relu / pool ops in between are
ordinary *float* aten ops. Imported naively (were the frontend to accept the q/dq ops)
that is fake quantization: TVM would run float convolutions on dequantized values.

What goes out: a Relax module in which every conv / linear whose input and weight both
come straight from a dequantize runs as ``conv2d(uint8, int8, out_dtype="int32")`` /
``matmul(uint8, int8, out_dtype="int32")`` followed by requantization in float
(``acc * s_x * s_w[c] + bias``, then the graph's own relu / add / ``quantize``, which
TVM's operator fusion folds into the convolution's epilogue). Everything the quantizer
left in float (residual adds, pools, flatten, the head between q/dq pairs) stays float.

Route chosen, and why. Three were possible:

(a) the TVM torch frontend, taught the q/dq ops and the integer conv / linear through
    its ``custom_convert_map`` hook, deciding per FX node;
(b) a Relax graph built by hand from the FX graph;
(c) a QDQ ONNX export through TVM's ONNX frontend.

This module is (a). The frontend already converts several hundred aten ops (every
model in the zoo goes through it in fp32), so only the handful of ops that carry
quantization need new code: the q/dq ops themselves and the two consumers that matter
for speed (convolution and linear, in each spelling the ExportedProgram decomposition
can produce: ``convolution``/``conv2d``, ``addmm``/``mm``/``linear``). The integer
decision is taken on the FX graph, where "this conv's input and weight are both
dequantize nodes of a constant int8 weight and a per-tensor activation" is read off
the node arguments, rather than pattern-matched afterwards in Relax, where the
frontend's spelling of bias adds, permutes and reshapes would have to be matched
too. (b) would duplicate the frontend for every op in every model (hardtanh, dropout,
adaptive pools, flatten, cat, ...) and break on the first model that uses one more.
(c) gains nothing: TVM 0.27's ONNX frontend maps QuantizeLinear / DequantizeLinear to
``relax.op.quantize`` / ``dequantize`` and has no QLinearConv or ConvInteger, so a QDQ
ONNX model imports as the same fake-quant float graph and would need the same
dq -> conv rewrite, after an extra ``torch.onnx`` export of custom-namespace ops.

Arithmetic, exactly. With ``x_f = s_x (x_q - z_x)`` and ``w_f = s_w[c] w_q`` (weights
are symmetric, ``z_w = 0``)::

    conv(x_f, w_f)[c] = s_x s_w[c] (conv(x_q, w_q)[c] - z_x * sum(w_q[c]))

which holds at the borders only if the padding value is ``z_x`` (a float zero is
``z_x`` in the quantized domain), so an activation with ``z_x != 0`` is padded
explicitly with ``z_x`` before a padding-free integer convolution. Products of a
uint8 and an int8 value accumulate exactly in int32 (``255*128*K`` stays below
``2**31`` for ``K < 65000``, i.e. up to 512 channels x 11x11 kernels).
The result equals PyTorch's fake-quant reference up to float32 rounding, which can
flip a value sitting at a rounding boundary of the next ``quantize`` by one step.

Scope, with clear errors: per-tensor activations, symmetric (per-channel or per-tensor)
constant weights, 2-D non-transposed convolutions and linears. An integer pattern
outside that scope (asymmetric weights, transposed or 1-D/3-D quantized convs, dynamic
quantization via ``choose_qparams``, torchao's affine-quantization ops) raises
:class:`Int8LoweringError` naming the op, rather than silently computing in float.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

QUANT_NAMESPACE = "quantized_decomposed"
# quantized_decomposed ops this module lowers, by the frontend's key (``OpOverload.__name__``).
QUANTIZE_OPS = {
    "quantize_per_tensor.default",
    "quantize_per_tensor.tensor",
    "quantize_per_tensor.tensor2",
    "quantize_per_channel.default",
}
DEQUANTIZE_OPS = {
    "dequantize_per_tensor.default",
    "dequantize_per_tensor.tensor",
    "dequantize_per_tensor.tensor2",
    "dequantize_per_channel.default",
}
CONV_OPS = {"convolution.default", "conv2d.default"}
MATMUL_OPS = {"addmm.default", "mm.default", "linear.default"}


class Int8LoweringError(NotImplementedError):
    """A quantized pattern this importer cannot turn into integer arithmetic."""


def _is_quant_op(node: torch.fx.Node) -> bool:
    """A quantization primitive: PT2E's ``quantized_decomposed`` ops, or torchao's own
    affine ``quantize``/``dequantize``/``choose_qparams`` ops."""
    if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
        return False
    namespace = node.target.namespace
    name = node.target.__name__
    return namespace == QUANT_NAMESPACE or (
        namespace == "torchao" and ("quantize" in name or "qparams" in name)
    )


def is_quantized(program: torch.export.ExportedProgram) -> bool:
    """True if the program holds quantize/dequantize ops (i.e. came out of PT2E), so that
    the compiler must import it with :func:`import_int8` rather than the float frontend,
    which rejects these ops."""
    return any(_is_quant_op(node) for node in program.graph.nodes)


def _key(node: torch.fx.Node) -> str:
    """The frontend's name for a node's op (``OpOverload.__name__``, e.g. ``conv2d.default``)."""
    return getattr(node.target, "__name__", str(node.target))


def _args(node: torch.fx.Node) -> dict[str, Any]:
    """Arguments by schema name, defaults filled in: the q/dq ops and convolutions are
    called positionally or by keyword depending on who built the graph."""
    schema = node.target._schema
    out: dict[str, Any] = {}
    for i, arg in enumerate(schema.arguments):
        if i < len(node.args):
            out[arg.name] = node.args[i]
        elif arg.name in node.kwargs:
            out[arg.name] = node.kwargs[arg.name]
        elif arg.has_default_value():
            out[arg.name] = arg.default_value
    return out


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    value = [int(v) for v in value]
    return (value[0], value[0]) if len(value) == 1 else (value[0], value[1])


class _Importer:
    """One import: the torch frontend with our converters for the quantization ops.

    The frontend's converters get ``(node, importer)`` and read/write ``importer.env``
    (FX node -> Relax expression) and ``importer.block_builder``; ours do the same. The
    frontend's own converters for conv / linear are kept to handle the float ones.
    """

    def __init__(self, program: torch.export.ExportedProgram) -> None:
        from tvm.relax.frontend.torch.exported_program_translator import (
            ExportedProgramImporter,
        )

        self.program = program
        self.frontend = ExportedProgramImporter()
        self.float_convert: dict[str, Callable] = dict(self.frontend.convert_map)
        # Placeholder name -> tensor, for the parameters, buffers and constants that
        # carry int8 weights, scales and zero points.
        state = program.state_dict
        self.constants: dict[str, torch.Tensor] = {}
        for spec in program.graph_signature.input_specs:
            if spec.target is None or not hasattr(spec.arg, "name"):
                continue
            value = state.get(spec.target, program.constants.get(spec.target))
            if isinstance(value, torch.Tensor):
                self.constants[spec.arg.name] = value.detach()

    # ----------------------------------------------------------------- helpers

    def constant(self, value: Any, what: str, node: torch.fx.Node) -> np.ndarray:
        """A numpy array for a scale / zero point / weight argument, which must be known
        at import time (the integer path folds them into constants)."""
        if isinstance(value, int | float):
            return np.asarray(value)
        if isinstance(value, torch.fx.Node):
            if value.op == "placeholder" and value.name in self.constants:
                return self.constants[value.name].cpu().numpy()
            if value.op == "get_attr":
                return getattr(self.program.graph_module, value.target).detach().cpu().numpy()
        raise Int8LoweringError(
            f"{_key(node)} ({node.name}): {what} is computed at run time ({value}); "
            "only constant (calibrated) quantization parameters and weights are supported"
        )

    def qparams(self, node: torch.fx.Node) -> dict[str, Any]:
        """Scale, zero point, axis, range and integer dtype of a q/dq node."""
        a = _args(node)
        per_channel = "scales" in a
        scale = self.constant(a["scales" if per_channel else "scale"], "scale", node)
        zp_arg = a["zero_points" if per_channel else "zero_point"]
        zero_point = (
            np.zeros_like(scale, dtype=np.int64)
            if zp_arg is None
            else self.constant(zp_arg, "zero point", node)
        )
        return {
            "scale": scale.astype(np.float64),
            "zero_point": zero_point.astype(np.int64),
            "axis": int(a["axis"]) if per_channel else None,
            "qmin": int(self.constant(a["quant_min"], "quant_min", node)),
            "qmax": int(self.constant(a["quant_max"], "quant_max", node)),
            "dtype": str(a["dtype"]).removeprefix("torch."),
        }

    def emit(self, expr: Any, name: str = "") -> Any:
        return self.frontend.block_builder.emit(expr, name_hint=name)

    # ------------------------------------------------------------- q / dq ops

    def quantize(self, node: torch.fx.Node, _importer: Any = None) -> Any:
        """``clamp(round(x * (1/scale)) + zp)``, spelled as PyTorch computes it.

        ``relax.op.quantize`` divides by the scale instead. The two differ by an ulp,
        enough to move a value lying on a rounding boundary by one step, and in an
        untrained net one step compounds downstream: with ``relax.op.quantize`` all of
        4 resnet18 test images deviated from ``q(x)`` (0.3-0.8 % of the logit range),
        with this spelling 3 of 4 were identical. ``relax.op.round`` rounds half to
        even on LLVM targets, like ``torch.round``. The elementwise chain fuses into the
        producing convolution's kernel all the same: this is the requantization step.
        """
        from tvm import relax

        qp = self.qparams(node)
        x = self.frontend.env[node.args[0]]
        shape = [1] * len(x.ty.shape.values)
        if qp["axis"] is not None:
            shape[qp["axis"]] = -1
        inv_scale = (1.0 / qp["scale"]).astype("float32").reshape(shape or ())
        zero_point = qp["zero_point"].astype("float32").reshape(shape or ())
        scaled = relax.op.round(relax.op.multiply(x, relax.const(inv_scale)))
        clamped = relax.op.clip(
            relax.op.add(scaled, relax.const(zero_point)), float(qp["qmin"]), float(qp["qmax"])
        )
        return self.emit(relax.op.astype(clamped, qp["dtype"]), node.name)

    def dequantize(self, node: torch.fx.Node, _importer: Any = None) -> Any:
        """Float view of a quantized tensor, for the consumers that stay float. Convs and
        linears read the integer tensor behind it instead; an unused dequantize is
        removed by dead-code elimination at the end."""
        from tvm import relax

        qp = self.qparams(node)
        out_dtype = _args(node).get("out_dtype")
        if out_dtype not in (None, torch.float32):
            raise Int8LoweringError(f"{_key(node)} ({node.name}): out_dtype={out_dtype}")
        axis = -1 if qp["axis"] is None else qp["axis"]
        return self.emit(
            relax.op.dequantize(
                self.frontend.env[node.args[0]],
                relax.const(qp["scale"].astype("float32")),
                relax.const(qp["zero_point"].astype("int32")),
                axis=axis,
                out_dtype="float32",
            ),
            node.name,
        )

    # ------------------------------------------------------- integer operands

    def _dequantized(self, arg: Any) -> torch.fx.Node | None:
        if isinstance(arg, torch.fx.Node) and _key(arg) in DEQUANTIZE_OPS:
            return arg
        return None

    def _transposed(self, arg: Any) -> torch.fx.Node | None:
        """The dequantize behind ``w.T`` (how decomposed ``linear`` reads its weight)."""
        if not isinstance(arg, torch.fx.Node):
            return None
        key = _key(arg)
        if key == "t.default" or (key == "permute.default" and list(arg.args[1]) == [1, 0]):
            return self._dequantized(arg.args[0])
        if key == "transpose.int" and {int(arg.args[1]) % 2, int(arg.args[2]) % 2} == {0, 1}:
            return self._dequantized(arg.args[0])
        return None

    def activation(self, dq: torch.fx.Node, node: torch.fx.Node) -> tuple[Any, float, int]:
        """Integer tensor, scale and zero point of a per-tensor quantized input."""
        qp = self.qparams(dq)
        if qp["axis"] is not None or qp["scale"].size != 1:
            raise Int8LoweringError(
                f"{_key(node)} ({node.name}): per-channel quantized activations are not supported"
            )
        xq = self.frontend.env[dq.args[0]]
        if xq.ty.dtype not in ("uint8", "int8"):
            raise Int8LoweringError(
                f"{_key(node)} ({node.name}): activation dtype {xq.ty.dtype} is not 8-bit"
            )
        return xq, float(qp["scale"].reshape(())), int(qp["zero_point"].reshape(()))

    def weight(self, dq: torch.fx.Node, node: torch.fx.Node) -> tuple[np.ndarray, np.ndarray]:
        """Integer weight (constant) and per-output-channel scale (symmetric only)."""
        qp = self.qparams(dq)
        w = self.constant(dq.args[0], "weight", node)
        if w.dtype not in (np.int8, np.uint8):
            raise Int8LoweringError(f"{_key(node)} ({node.name}): weight dtype {w.dtype}")
        if np.any(qp["zero_point"] != 0):
            raise Int8LoweringError(
                f"{_key(node)} ({node.name}): asymmetric weights (non-zero zero point) need a "
                "data-dependent correction; only symmetric weight quantization is supported"
            )
        if qp["axis"] not in (None, 0):
            raise Int8LoweringError(
                f"{_key(node)} ({node.name}): weights quantized along axis {qp['axis']}; "
                "only per-output-channel (axis 0) or per-tensor scales factor out of the sum"
            )
        scale = np.broadcast_to(qp["scale"].reshape(-1), (w.shape[0],))
        return w, scale

    # ------------------------------------------------------------ conv / matmul

    def convolution(self, node: torch.fx.Node, _importer: Any = None) -> Any:
        from tvm import relax

        from dlas.algorithms.legalize import static_ints
        from dlas.compiler import folds

        a = _args(node)
        x_dq, w_dq = self._dequantized(a["input"]), self._dequantized(a["weight"])
        if x_dq is None or w_dq is None:  # not a quantized conv: the float converter
            return self.float_convert[_key(node)](node)
        if a.get("transposed", False):
            raise Int8LoweringError(f"{_key(node)} ({node.name}): quantized transposed conv")
        if isinstance(a["padding"], str):
            raise Int8LoweringError(f"{_key(node)} ({node.name}): padding={a['padding']!r}")
        w, w_scale = self.weight(w_dq, node)
        if w.ndim != 4:
            raise Int8LoweringError(
                f"{_key(node)} ({node.name}): quantized {w.ndim - 2}-D convolution; only 2-D"
            )
        xq, x_scale, x_zp = self.activation(x_dq, node)
        ph, pw = _pair(a["padding"])
        padding = (ph, pw, ph, pw)  # top, left, bottom, right
        strides, dilation = _pair(a["stride"]), _pair(a["dilation"])
        shape = static_ints(xq.ty.shape)
        cropped = (
            None if shape is None else folds.crop_kernel(w, shape[2:], padding, strides, dilation)
        )
        if cropped is not None:  # taps that read only padding (folds.crop_padding_only_taps)
            w, padding = cropped
        if x_zp != 0 and any(padding):
            # A float zero at the border is x_zp in the quantized domain.
            top, left, bottom, right = padding
            pad = [0, 0, 0, 0, top, bottom, left, right]
            xq = self.emit(relax.op.nn.pad(xq, pad, pad_value=x_zp))
            padding = (0, 0, 0, 0)
        acc = self.emit(
            relax.op.nn.conv2d(
                xq,
                relax.const(w),
                strides=strides,
                padding=padding,
                dilation=dilation,
                groups=int(a["groups"]),
                out_dtype="int32",
            ),
            f"{node.name}_int",
        )
        shape = (1, -1, 1, 1)
        correction = x_zp * w.astype(np.int64).sum(axis=(1, 2, 3))
        return self.requantize(node, acc, correction, x_scale * w_scale, a.get("bias"), shape)

    def matmul(self, node: torch.fx.Node, _importer: Any = None) -> Any:
        """``linear(x, w, b)``, ``addmm(b, x, w.T)`` or ``mm(x, w.T)`` with both operands
        dequantized: a uint8 x int8 matmul against the constant transposed weight."""
        from tvm import relax

        a = _args(node)
        key = _key(node)
        if key == "linear.default":
            x_arg, w_dq, bias = a["input"], self._dequantized(a["weight"]), a["bias"]
        elif key == "mm.default":
            x_arg, w_dq, bias = a["self"], self._transposed(a["mat2"]), None
        else:  # addmm(bias, x, w.T); scaled variants stay float
            x_arg, w_dq, bias = a["mat1"], self._transposed(a["mat2"]), a["self"]
            if a.get("alpha", 1) != 1 or a.get("beta", 1) != 1:
                w_dq = None
        x_dq = self._dequantized(x_arg)
        if x_dq is None or w_dq is None:
            return self.float_convert[key](node)
        w, w_scale = self.weight(w_dq, node)
        if w.ndim != 2:
            raise Int8LoweringError(f"{key} ({node.name}): weight of rank {w.ndim}")
        xq, x_scale, x_zp = self.activation(x_dq, node)
        acc = self.emit(
            relax.op.matmul(xq, relax.const(np.ascontiguousarray(w.T)), out_dtype="int32"),
            f"{node.name}_int",
        )
        correction = x_zp * w.astype(np.int64).sum(axis=1)
        return self.requantize(node, acc, correction, x_scale * w_scale, bias, (-1,))

    def requantize(
        self,
        node: torch.fx.Node,
        acc: Any,
        correction: np.ndarray,
        scale: np.ndarray,
        bias: Any,
        shape: tuple[int, ...],
    ) -> Any:
        """int32 accumulator -> float: subtract the zero-point term, scale per output
        channel, add the float bias. The graph's own relu/add/quantize follow."""
        from tvm import relax

        if np.any(correction):
            acc = self.emit(
                relax.op.subtract(acc, relax.const(correction.astype("int32").reshape(shape)))
            )
        out = self.emit(
            relax.op.multiply(
                relax.op.astype(acc, "float32"),
                relax.const(scale.astype("float32").reshape(shape)),
            )
        )
        if isinstance(bias, torch.fx.Node):
            b = self.frontend.env[bias]
            out = relax.op.add(out, relax.op.reshape(b, shape) if len(shape) > 1 else b)
            out = self.emit(out)
        return out

    # ------------------------------------------------------------------ driver

    def convert_map(self) -> dict[str, Callable]:
        ours: dict[str, Callable] = {}
        ours.update(dict.fromkeys(QUANTIZE_OPS, self.quantize))
        ours.update(dict.fromkeys(DEQUANTIZE_OPS, self.dequantize))
        ours.update(dict.fromkeys(CONV_OPS, self.convolution))
        ours.update(dict.fromkeys(MATMUL_OPS, self.matmul))
        return ours

    def run(self) -> Any:
        from tvm import relax

        unsupported = sorted(
            {
                str(node.target)
                for node in self.program.graph.nodes
                if _is_quant_op(node) and _key(node) not in QUANTIZE_OPS | DEQUANTIZE_OPS
            }
        )
        if unsupported:
            raise Int8LoweringError(
                f"quantization ops with no integer lowering: {', '.join(unsupported)} "
                "(only static per-tensor / per-channel quantize-dequantize is supported)"
            )
        mod = self.frontend.from_exported_program(
            self.program,
            keep_params_as_input=False,
            unwrap_unit_return_tuple=True,
            no_bind_return_tuple=False,
            custom_convert_map=self.convert_map(),
        )
        # The float dequantize of every weight (and activation) read by an integer
        # kernel is now unused.
        return relax.transform.DeadCodeElimination(["main"])(mod)


def import_int8(program: torch.export.ExportedProgram, batch_size: int | None = None) -> Any:
    """Relax IRModule with a "main" function taking the float32 NCHW input and returning
    float32 logits, computing convs/linears in int8 with int32 accumulation.

    ``batch_size`` binds a dynamic batch dimension (the stack saves programs with one)
    to a static size, which MetaSchedule needs; a static program keeps its shapes.
    Raises :class:`Int8LoweringError` naming the op for patterns it cannot lower.
    """
    from tvm import relax, tirx

    if not is_quantized(program):
        raise ValueError("import_int8 needs a quantized (PT2E) program; this one has no q/dq ops")
    # Decompose to core aten here (not inside the frontend) so that the nodes our
    # converters see and the constants they read come from the same program.
    decomposed = program.run_decompositions()
    mod = _Importer(decomposed).run()
    if batch_size is not None:
        main = mod["main"]
        symbolic = {
            dim
            for param in main.params
            for dim in param.ty.shape.values[:1]
            if isinstance(dim, tirx.Var)
        }
        if symbolic:
            mod = relax.transform.BindSymbolicVars(dict.fromkeys(symbolic, batch_size))(mod)
            main = mod["main"]
            for attr in ("tir_var_lower_bound", "tir_var_upper_bound"):
                if main.attrs is not None and attr in main.attrs:
                    main = main.without_attr(attr)
            mod["main"] = main
    return mod


def int8_layer_records(mod: Any) -> list[dict[str, Any]]:
    """Per conv2d / matmul of an imported (not yet legalized) module: the dtypes it got.

    ``integer`` is True for an 8-bit x 8-bit kernel accumulating in int32; a False row
    is a layer the quantizer left in float (or that was not recognised), which is what
    one wants to see when an int8 run is not faster than fp32.
    """
    import tvm
    from tvm import relax

    records: list[dict[str, Any]] = []
    for gvar, func in mod.functions.items():
        if not isinstance(func, relax.Function):
            continue
        body = func.body
        for block in getattr(body, "blocks", []):
            for binding in block.bindings:
                call = binding.value
                if not isinstance(call, relax.Call) or not isinstance(call.op, tvm.ir.Op):
                    continue
                name = call.op.name
                if name not in ("relax.nn.conv2d", "relax.matmul"):
                    continue
                data_dtype = call.args[0].ty.dtype
                weight_dtype = call.args[1].ty.dtype
                out_dtype = binding.var.ty.dtype
                records.append(
                    {
                        "function": gvar.name_hint,
                        "name": binding.var.name,
                        "op": name.removeprefix("relax.").removeprefix("nn."),
                        "data_dtype": str(data_dtype),
                        "weight_dtype": str(weight_dtype),
                        "out_dtype": str(out_dtype),
                        "shape": [_dim(d) for d in binding.var.ty.shape.values],
                        "groups": int(call.attrs.groups) if name == "relax.nn.conv2d" else 1,
                        "integer": str(data_dtype) in ("uint8", "int8")
                        and str(weight_dtype) in ("uint8", "int8")
                        and str(out_dtype) == "int32",
                    }
                )
    return records


def _dim(dim: Any) -> int | str:
    """A static extent as int, a symbolic one (dynamic batch) by name."""
    return int(dim.value) if hasattr(dim, "value") else str(dim)
