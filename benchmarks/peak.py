"""This host's fp32 peak, measured: register-resident fused multiply-adds, no memory.

    python benchmarks/peak.py [--threads 2] [--mcpu x86-64-v3]

A TVM kernel keeps ``J`` independent accumulator vectors per thread (more than the FMA
latency x ports, so the chains never stall) and runs ``K`` multiply-adds on each from
operands that stay in L1; no fast-math, so LLVM cannot fold the chains away. GFLOP/s =
2 x threads x J x lanes x K / time. "% of peak" in benchmarks/README.md divides a model's
2 x MACs / latency by this number (measured, not taken from a datasheet).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import tvm
from results import cpu_model  # benchmarks/ is on sys.path
from tvm import te

from dlas.algorithms.schedule import vector_bits
from dlas.hardware import host_cpu


def peak_gflops(threads: int, target: tvm.target.Target, steps: int = 1 << 14) -> float:
    lanes = vector_bits(target) // 32
    chains, depth = 16, 8
    a = te.placeholder((depth, lanes), name="a")
    b = te.placeholder((depth, lanes), name="b")
    r = te.reduce_axis((0, steps * depth), name="r")
    c = te.compute(
        (threads, chains, lanes),
        lambda t, j, v: te.sum(a[r % depth, v] * b[(r + j) % depth, v], axis=r),
        name="c",
    )
    func = te.create_prim_func([a, b, c])
    sch = tvm.s_tir.Schedule(func)
    block = sch.get_sblock("c")
    t, j, v, r_loop = sch.get_loops(block)
    ro, ri = sch.split(r_loop, factors=[None, depth])
    sch.reorder(t, ro, ri, j, v)
    sch.parallel(t)
    sch.unroll(ri)
    sch.unroll(j)
    sch.vectorize(v)
    sch.decompose_reduction(block, ro)
    lib = tvm.compile(sch.mod, target=target)
    dev = tvm.cpu()
    rng = np.random.default_rng(0)
    args = [
        tvm.runtime.tensor(rng.uniform(0.9, 1.1, (depth, lanes)).astype("float32"), dev),
        tvm.runtime.tensor(rng.uniform(0.9, 1.1, (depth, lanes)).astype("float32"), dev),
        tvm.runtime.tensor(np.zeros((threads, chains, lanes), "float32"), dev),
    ]
    seconds = lib.mod.time_evaluator("main", dev, number=5, repeat=5)(*args).median
    return 2 * threads * chains * lanes * steps * depth / seconds / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mcpu", default=host_cpu())
    args = parser.parse_args()
    target = tvm.target.Target({"kind": "llvm", "mcpu": args.mcpu, "num-cores": args.threads})
    result = {
        "cpu": cpu_model(),
        "mcpu": args.mcpu,
        "threads": args.threads,
        "vector_bits": vector_bits(target),
        "gflops": round(peak_gflops(args.threads, target), 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
