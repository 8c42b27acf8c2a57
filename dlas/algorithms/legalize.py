"""The layer-4 dispatcher: pick a compute and a weight data format for every layer.

Why a mutator of our own rather than ``LegalizeOps(customize_legalize_map=...)``:
LegalizeOps lowers *every* operator at once, while this pass must touch only the
convolutions (and, for the sparse formats, the linear layers), leave everything else
for the compiler layer's own pipeline (BatchNorm folding, fusion, MetaSchedule), name
each layer, record what it got and why, and look through ``permute_dims`` to find a
linear layer's constant weight. The result is still ordinary Relax: each legalized layer
is a ``call_tir`` of a TE-generated PrimFunc, which MetaSchedule can tune like any other.

Weight layout changes (flattening for GEMM, packing for spatial pack, Winograd's
``G g G^T``, CSR/BSR) are done here, in numpy, on the constant weights: compile-time
work, never repeated per inference.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import tvm
from tvm import relax, te
from tvm.ir import Expr
from tvm.relax.expr_functor import PyExprMutator, mutator

from . import direct, im2col_gemm, linear, spatial_pack, winograd  # noqa: F401 - linear: its schedule
from .common import Conv2dSpec
from .direct import conv2d_direct
from .schedule import target_has, target_lanes
from .sparse import SparseTensors, conv2d_sparse, dense_sparse, sparsity, to_bsr, to_csr

_CONV2D = tvm.ir.Op.get("relax.nn.conv2d")
_MATMUL = tvm.ir.Op.get("relax.matmul")
_PERMUTE_DIMS = tvm.ir.Op.get("relax.permute_dims")
_ASTYPE = tvm.ir.Op.get("relax.astype")


@dataclass(frozen=True)
class Options:
    """What the user asked for (already validated by ``check_combination``)."""

    algorithm: str
    data_format: str
    sparsity_threshold: float
    block_size: int
    fallback: str
    per_layer: tuple[str, ...] = ()  # algorithm="best": the algorithm of each conv, in order
    plain_layouts: bool = False  # compiler.schedule=none: the loop nests' own layouts


@dataclass(frozen=True)
class Choice:
    """What one layer gets: the compute, the weight format, and why if not as requested."""

    algorithm: str
    data_format: str
    reason: str | None = None


def choose_conv(spec: Conv2dSpec, weight: np.ndarray | None, opts: Options) -> Choice:
    """The per-layer rules, in priority order (pure: no TVM objects involved)."""
    if weight is None and (opts.algorithm != "direct" or opts.data_format != "dense"):
        return Choice(
            "direct",
            "dense",
            "weight is not a constant (import with keep_params_as_input=False): "
            "weight layouts are transformed at compile time",
        )
    if spec.groups > 1:
        kind = "depthwise" if spec.is_depthwise else "grouped"
        asked = (opts.algorithm, opts.data_format) != ("direct", "dense")
        why = (
            f"{kind} conv (groups={spec.groups}) always uses the direct compute "
            "(channel-blocked when depthwise, grouped otherwise)"
        )
        return Choice("direct", "dense", why if asked else None)
    if opts.data_format != "dense":
        assert weight is not None
        return _choose_sparse(weight.shape[0], spec.reduction, sparsity(weight), opts)
    if opts.algorithm == "winograd":
        why = winograd.applicable(spec)
        if why is None and weight is not None and not np.issubdtype(weight.dtype, np.floating):
            why = f"winograd's transformed weights are fractional, not {weight.dtype}"
        if why is not None:
            return Choice(opts.fallback, "dense", f"{why}; used fallback {opts.fallback!r}")
    return Choice(opts.algorithm, "dense")


def _choose_sparse(rows: int, cols: int, weight_sparsity: float, opts: Options) -> Choice:
    """Sparse only when pruning made it worth it; BSR only when the blocks tile the matrix."""
    if weight_sparsity < opts.sparsity_threshold:
        return Choice(
            "gemm",
            "dense",
            f"weight sparsity {weight_sparsity:.3f} < sparsity_threshold "
            f"{opts.sparsity_threshold:g}: kept dense",
        )
    if opts.data_format == "bsr" and (rows % opts.block_size or cols % opts.block_size):
        return Choice(
            "gemm",
            "csr",
            f"bsr needs the weight matrix ({rows}x{cols}) to divide into "
            f"{opts.block_size}x{opts.block_size} blocks: used csr",
        )
    return Choice("gemm", opts.data_format)


def static_ints(shape: relax.Expr | None, skip_first: bool = False) -> list[int] | None:
    """A tensor's dims as ints, or None when its shape is unknown or symbolic."""
    values = getattr(shape, "values", None)
    if values is None:
        return None
    values = list(values)[1 if skip_first else 0 :]
    if not all(isinstance(v, tvm.tirx.IntImm) for v in values):
        return None
    return [int(v) for v in values]


def _dims_text(values: list[Expr]) -> str:
    """Static dims as ints, a symbolic batch by its name: ``"1,3,32,32"`` or ``"batch,400"``."""
    return ",".join(str(int(v)) if isinstance(v, tvm.tirx.IntImm) else str(v) for v in values)


@mutator
class _Legalizer(PyExprMutator):
    """Rewrites conv2d (and constant-weight matmul) calls into call_te of our computes."""

    def __init__(self, mod: tvm.IRModule, opts: Options) -> None:
        super().__init__(mod)
        self.opts = opts
        self.records: list[dict] = []
        self._count = {"conv2d": 0, "dense": 0}

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if isinstance(call, relax.Call) and isinstance(call.op, tvm.ir.Op):
            if call.op.same_as(_CONV2D):
                return self._conv2d(call)
            if call.op.same_as(_MATMUL):
                return self._matmul(call)
        return call

    # -- helpers ---------------------------------------------------------------------

    def _resolve(self, expr: relax.Expr) -> relax.Expr:
        """Follow variable bindings back to the expression that defines them."""
        while isinstance(expr, relax.Var):
            bound = self.lookup_binding(expr)
            if bound is None:
                break
            expr = bound
        return expr

    def _constant(self, expr: relax.Expr) -> np.ndarray | None:
        """The value of a constant weight, also through ``astype`` (ToMixedPrecision's fp16)."""
        expr = self._resolve(expr)
        if isinstance(expr, tvm.ir.GenericConst):
            return expr.value.numpy()
        if isinstance(expr, relax.Call) and expr.op.same_as(_ASTYPE):
            value = self._constant(expr.args[0])
            return None if value is None else value.astype(str(expr.attrs.dtype))
        return None

    def _record(
        self, op: str, shape: str, choice: Choice, weight: np.ndarray | None, out: relax.Expr
    ) -> relax.Expr:
        """Note what the layer got, and which kernel (PrimFunc) computes it, if ours."""
        name = f"{op}_{self._count[op]}"
        self._count[op] += 1
        callee = out.args[0] if isinstance(out, relax.Call) and out.args else None
        kernel = callee.name_hint if isinstance(callee, tvm.ir.GlobalVar) else None
        self.records.append(
            {
                "layer": name,
                "op": op,
                "shape": shape,
                "algorithm": choice.algorithm,
                "requested": self.opts.algorithm,
                "fallback_reason": choice.reason,
                "format": choice.data_format,
                "weight_sparsity": None if weight is None else sparsity(weight),
                "kernel": kernel,
            }
        )
        return out

    def _sparse(self, matrix: np.ndarray, fmt: str) -> tuple[list[relax.Expr], int]:
        """CSR/BSR arrays as Relax constants (int64 indptr kept), and the row bound."""
        sm = to_csr(matrix) if fmt == "csr" else to_bsr(matrix, self.opts.block_size)
        return [relax.const(a, str(a.dtype)) for a in sm], sm.max_row

    # -- conv2d ----------------------------------------------------------------------

    def _conv2d(self, call: relax.Call) -> relax.Expr:
        attrs = call.attrs
        data, weight_expr = call.args
        data_shape = static_ints(data.ty.shape, skip_first=True)
        w_shape = static_ints(weight_expr.ty.shape)
        layouts = (attrs.data_layout, attrs.kernel_layout, attrs.out_layout)
        if layouts != ("NCHW", "OIHW", "NCHW") or data_shape is None or w_shape is None:
            why = f"layouts {layouts} / shapes not static NCHW-OIHW: left to TVM's legalization"
            return self._record("conv2d", "?", Choice("tvm_default", "dense", why), None, call)

        c, h, w = data_shape
        spec = Conv2dSpec(
            in_channels=c,
            height=h,
            width=w,
            out_channels=w_shape[0],
            kernel_h=w_shape[2],
            kernel_w=w_shape[3],
            stride=tuple(int(s) for s in attrs.strides),
            padding=tuple(int(p) for p in attrs.padding),
            dilation=tuple(int(d) for d in attrs.dilation),
            groups=int(attrs.groups),
        )
        weight = self._constant(weight_expr)
        opts = self.opts
        if opts.per_layer:  # "best": this layer's algorithm was chosen from tuned candidates
            opts = replace(opts, algorithm=opts.per_layer[self._count["conv2d"]])
        choice = choose_conv(spec, weight, opts)
        out = self._emit_conv(data, weight_expr, weight, spec, choice, str(call.ty.dtype))
        shape = spec.describe(_dims_text(data.ty.shape.values[:1]))
        return self._record("conv2d", shape, choice, weight, out)

    def _emit_conv(
        self,
        data: relax.Expr,
        weight_expr: relax.Expr,
        weight: np.ndarray | None,
        spec: Conv2dSpec,
        choice: Choice,
        out_dtype: str,
    ) -> relax.Expr:
        bb = self.builder_
        # One vector of output channels per packed block, or none for the plain loop nests
        # (their innermost loop is the reduction: contiguous along K, 8-wide spatial pack).
        plain = self.opts.plain_layouts
        lanes = 8 if plain else target_lanes(out_dtype)

        def emit(name: str, compute: Callable[..., te.Tensor], *args: relax.Expr) -> relax.Expr:
            return bb.call_te(compute, data, *args, primfunc_name_hint=f"conv2d_{name}")

        if choice.data_format != "dense":
            fmt = choice.data_format
            arrays, max_row = self._sparse(im2col_gemm.weight_matrix(weight), fmt)
            return emit(
                f"im2col_{fmt}",
                lambda x, d, i, p: conv2d_sparse(
                    x,
                    SparseTensors(d, i, p, max_row, spec.reduction),
                    spec,
                    out_dtype,
                    fmt,
                    pixels_contiguous=not plain,
                ),
                *arrays,
            )
        if choice.algorithm == "direct":
            vc = None if plain or weight is None else direct.depthwise_block(spec, lanes)
            if vc is not None:
                return emit(
                    "depthwise_packed",
                    lambda x, k: direct.conv2d_depthwise_packed(x, k, spec, out_dtype, vc),
                    relax.const(direct.pack_depthwise_kernel(weight, vc)),
                )
            return emit("direct", lambda x, k: conv2d_direct(x, k, spec, out_dtype), weight_expr)
        if choice.algorithm == "gemm":
            return emit(
                "im2col_gemm",
                lambda x, k: im2col_gemm.conv2d_im2col_gemm(x, k, spec, out_dtype),
                relax.const(
                    im2col_gemm.gemm_weight(
                        weight, 1 if plain else im2col_gemm.panel_width(spec.out_channels, lanes)
                    )
                ),
            )
        if choice.algorithm == "spatial_pack" and spatial_pack.vnni_applicable(
            spec, str(data.ty.dtype), str(weight.dtype), not plain and target_has("avx512vnni")
        ):
            return emit(
                "spatial_pack_vnni",
                lambda x, k: spatial_pack.conv2d_spatial_pack_vnni(x, k, spec, out_dtype),
                relax.const(spatial_pack.pack_kernel_vnni(weight)),
            )
        if choice.algorithm == "spatial_pack":
            packed = spatial_pack.pack_kernel(
                weight, spatial_pack.tile_sizes(spec, lanes, not plain)[2]
            )
            return emit(
                "spatial_pack",
                lambda x, k: spatial_pack.conv2d_spatial_pack(
                    x, k, spec, out_dtype, lanes, not plain
                ),
                relax.const(packed),
            )
        if choice.algorithm == "winograd":
            m = winograd.tile_size(spec)
            return emit(
                f"winograd_{m}x{m}",
                lambda x, u: winograd.conv2d_winograd(
                    x, u, spec, out_dtype, m, channels_last=not plain
                ),
                relax.const(winograd.transform_weight(weight, m, channels_last=not plain)),
            )
        raise AssertionError(f"unhandled algorithm {choice.algorithm!r}")

    # -- linear layers ---------------------------------------------------------------

    def _matmul(self, call: relax.Call) -> relax.Expr:
        """x @ W^T with a constant W: sparse when asked and worth it, else left as is."""
        x, rhs = call.args
        weight = self._linear_weight(rhs)
        if weight is None or x.ty.ndim < 2:
            return call  # activations times activations (attention): not a layer weight
        out_features, in_features = weight.shape
        shape = f"{_dims_text(x.ty.shape.values)}->{out_features},{in_features}"
        if self.opts.data_format == "dense":
            asked = self.opts.algorithm != "gemm"
            why = "a fully connected layer is a GEMM (TVM's matmul legalization)" if asked else None
            choice = Choice("gemm", "dense", why)
        else:
            choice = _choose_sparse(out_features, in_features, sparsity(weight), self.opts)
        if choice.data_format == "dense":
            return self._record("dense", shape, choice, weight, call)
        fmt, out_dtype = choice.data_format, str(call.ty.dtype)
        arrays, max_row = self._sparse(weight, fmt)
        out = self.builder_.call_te(
            lambda t, d, i, p: dense_sparse(
                t, SparseTensors(d, i, p, max_row, in_features), out_features, out_dtype, fmt
            ),
            x,
            *arrays,
            primfunc_name_hint=f"dense_{fmt}",
        )
        return self._record("dense", shape, choice, weight, out)

    def _linear_weight(self, rhs: relax.Expr) -> np.ndarray | None:
        """The (O, K) weight of ``x @ rhs``: rhs is permute_dims(W) (torch's linear) or W^T."""
        value = self._constant(rhs)  # a constant (K, O) matrix
        if value is not None:
            return np.ascontiguousarray(value.T) if value.ndim == 2 else None
        resolved = self._resolve(rhs)
        if (
            isinstance(resolved, relax.Call)
            and resolved.op.same_as(_PERMUTE_DIMS)
            and (resolved.attrs.axes is None or [int(a) for a in resolved.attrs.axes] == [1, 0])
        ):
            value = self._constant(resolved.args[0])
            return value if value is not None and value.ndim == 2 else None
        return None


def legalize(mod: tvm.IRModule, opts: Options) -> tuple[tvm.IRModule, list[dict]]:
    """Run the mutator over every Relax function, then drop the now-unused weight copies."""
    legalizer = _Legalizer(mod, opts)
    for gvar, func in mod.functions_items():
        if isinstance(func, relax.Function):
            legalizer.builder_.update_func(gvar, legalizer.visit_expr(func))
    new_mod = relax.transform.DeadCodeElimination()(legalizer.builder_.get())
    return new_mod, legalizer.records
