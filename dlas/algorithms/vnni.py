"""AVX-512 VNNI as a TVM tensor intrinsic: 16 int32 lanes += 4 uint8 x 4 int8 each.

Why our own and not TVM's ``dot_16x4_vnni``: TVM 0.27 calls
``llvm.x86.avx512.vpdpbusd.512`` with ``<16 x i32>`` operands, but the LLVM it is built
with declares the intrinsic with ``<64 x i8>`` operands (the signature LLVM changed), so
any kernel tensorized with TVM's version fails to compile ("Call parameter type does not
match function signature"). The description is TVM's; only the implementation passes
the operands as the byte vectors LLVM now expects.
"""

from __future__ import annotations

import contextlib
from functools import cache

NAME = "dlas_dot_16x4_vnni"


@cache
def register() -> str:
    """Register the intrinsic once per process; returns its name for ``tensorize``."""
    from dlas.compiler.fast_tvmscript import install

    install()  # TVMScript parsing below, cheap
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def desc(
        A: T.Buffer((4,), "uint8", offset_factor=1),
        B: T.Buffer((16, 4), "int8", offset_factor=1),
        C: T.Buffer((16,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16])
            for i in T.serial(0, 16):
                for k in T.serial(0, 4):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((4,), "uint8", offset_factor=1),
        B: T.Buffer((16, 4), "int8", offset_factor=1),
        C: T.Buffer((16,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16])
            a_i32 = T.reinterpret(A.vload([0], "uint8x4"), dtype="int32")
            a_u8x64 = T.reinterpret(T.broadcast(a_i32, 16), dtype="uint8x64")
            b_i8x64 = B.vload([0, 0], dtype="int8x64")
            C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
                C.vload([0], dtype="int32x16"),
                a_u8x64,
                b_i8x64,
                dtype="int32x16",
            )

    # Already registered when a second import path got here first.
    with contextlib.suppress(Exception):
        TensorIntrin.register(NAME, desc, impl)
    return NAME
