"""Vectorizable transcendental functions for the default-scheduled kernels.

LLVM lowers TVM's ``exp`` (and ``sigmoid``, which TVM writes as ``1 / (1 + exp(-x))``) to
the C library's scalar ``expf``: a vectorized epilogue is split back into one call per
lane. On efficientnet_b0, whose every conv ends in SiLU (``x * sigmoid(x)``), that made
the epilogues cost more than the convolutions (the 16 -> 96 expand conv at 16x16: 0.13 ms,
of which ~0.12 in ``expf``). TVM ships the cure as
``relax.transform.FastMathTransform``: ``exp``, ``tanh``, ``erf`` and ``softmax`` become
TOPI's polynomial versions, which are plain arithmetic and vectorize like any other
expression (what oneDNN and onnxruntime's MLAS do too). It has no rule for ``sigmoid``;
:func:`fast_sigmoid` adds one on the same ``topi.fast_exp``.

Accuracy: ``topi.fast_exp`` reduces ``x = n ln2 + r`` with one rounded ``ln2`` and a
degree-7 polynomial; its relative error against float64 is below 5e-6 on [-87, 88]
(``tests/test_schedules.py`` measures it), far inside the stack's fp32 tolerance. It
clamps its input to +-88.38: below that it returns ~4e-39 instead of a smaller denormal
(absolute error < 1e-38; sigmoid there is 0 either way). Our sigmoid rule rewrites
float32 only; what ``FastMathTransform`` does with other dtypes is TOPI's choice
(``fast_exp`` keeps ``exp`` for them).
"""

from __future__ import annotations

import tvm
from tvm import relax, te, topi
from tvm.relax.expr_functor import PyExprMutator, mutator


def sigmoid_te(x: te.Tensor) -> te.Tensor:
    """``1 / (1 + e^-x)`` with TOPI's polynomial ``exp``: one elementwise stage that the
    schedules inline into the epilogue of the conv that produced ``x``."""
    exp_neg = topi.fast_exp(topi.negative(x))
    one = tvm.tirx.const(1.0, x.dtype)
    return te.compute(
        x.shape, lambda *i: one / (one + exp_neg(*i)), name="fast_sigmoid", tag="elemwise"
    )


@mutator
class _SigmoidRewriter(PyExprMutator):
    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        op = getattr(call, "op", None)
        if isinstance(op, tvm.ir.Op) and op.name == "relax.sigmoid":
            x = call.args[0]
            if getattr(x.ty, "dtype", None) == "float32":
                return self.builder_.call_te(sigmoid_te, x, primfunc_name_hint="fast_sigmoid")
        return call


def fast_sigmoid() -> tvm.transform.Pass:
    """Every float32 ``relax.sigmoid`` as :func:`sigmoid_te` (before legalization)."""

    @tvm.transform.module_pass(opt_level=0, name="fast_sigmoid")
    def apply(mod: tvm.IRModule, _ctx: object) -> tvm.IRModule:
        rewriter = _SigmoidRewriter(mod)
        for gvar, func in mod.functions_items():
            if isinstance(func, relax.Function):
                rewriter.builder_.update_func(gvar, rewriter.visit_expr(func))
        return rewriter.builder_.get()

    return apply


def fast_math() -> tvm.transform.Pass:
    """TVM's ``FastMathTransform`` (exp, tanh, erf, softmax), then the sigmoid rule."""
    return tvm.transform.Sequential(
        [relax.transform.FastMathTransform(), fast_sigmoid()], name="fast_math"
    )
