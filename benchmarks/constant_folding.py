"""Constant folding before and after ``fold_constants_numpy`` (dlas/compiler/folds.py).

TVM's ``FoldConstant`` compiles and runs each foldable call with LLVM; BatchNorm's scale
and shift are hundreds of such calls. This times, in one process, ``FoldConstant`` alone
against ``fold_constants_numpy`` then ``FoldConstant`` on each model's graph after the
pipeline's earlier folds, with BatchNorm statistics like a trained network's (random
weights give BatchNorms identical constants, which TVM deduplicates), and says whether
the two modules are structurally equal. Run it with the machine otherwise idle:

    TVM_NUM_THREADS=2 .venv/bin/python benchmarks/constant_folding.py --models resnet18
"""

from __future__ import annotations

import argparse
import time

import torch
import tvm
import tvm_ffi
from tvm import relax

from dlas.compiler import folds, tvm_relax
from dlas.compiler.pipeline import PipelineLog
from dlas.models import get_model


def graph_before_folding(name: str, size: int) -> tvm.IRModule:
    torch.manual_seed(0)
    model = get_model(name, num_classes=10, in_channels=3, input_size=size, stem="compact")
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-1, 1)
    x = torch.randn(1, 3, size, size)
    mod, dtype = tvm_relax.to_relax(torch.export.export(model.eval(), (x,)), x)
    steps = tvm_relax.graph_passes(dtype)
    before = [n for n, _ in steps].index("fold_constants_numpy")
    with tvm.target.Target("llvm"):
        return PipelineLog(quiet=True).run(steps[:before], mod)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v2", "densenet121"])
    parser.add_argument("--size", type=int, default=16)
    args = parser.parse_args()
    print("| model | FoldConstant alone s | numpy + FoldConstant s | structurally equal |")
    print("|---|---|---|---|")
    for name in args.models:
        mod = graph_before_folding(name, args.size)
        with tvm.target.Target("llvm"):
            start = time.perf_counter()
            alone = relax.transform.FoldConstant()(mod)
            alone_s = time.perf_counter() - start
            start = time.perf_counter()
            both = relax.transform.FoldConstant()(folds.fold_constants_numpy()(mod))
            both_s = time.perf_counter() - start
        same = tvm_ffi.structural_equal(alone, both)
        print(f"| {name} | {alone_s:.2f} | {both_s:.2f} | {same} |", flush=True)


if __name__ == "__main__":
    main()
