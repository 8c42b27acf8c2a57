"""Time every zoo model under every compiler at 32x32, batch 1, on this machine.

    python benchmarks/compilers.py --trials-per-task 8 [--models resnet18 vgg16] [--stem imagenet]
                                   [--algorithm best]

For each model (random weights: dense inference time does not depend on their values;
BatchNorm statistics are randomized so that folding is real work): PyTorch eager,
torch.compile, onnxruntime, OpenVINO, TVM untuned and TVM auto-scheduled (MetaSchedule with the
stated budget: by default every convolution/linear task gets ``--trials-per-task``; the
database is cached, so a re-run only re-applies it). ``--algorithm`` is layer 4's choice
for both TVM columns (``direct`` by default; ``best`` tunes every candidate algorithm
and gives each layer the fastest, so its untuned column uses ``direct``); rows of other
algorithms than ``direct`` are named ``model (algorithm)``. Each timing runs
in its own process with the stack's protocol (warm-up, then repeat x number), after the
same process checked the compiled output against eager PyTorch's (a compiler that gets
the model wrong stops the run instead of giving it a row). The table,
with ratios to eager and to onnxruntime and the tuning time each row cost, replaces the
section between the markers in benchmarks/README.md; raw rows accumulate in
benchmarks/compilers.json (one model at a time, so a stopped run keeps its rows).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from results import load_rows, save_rows, write_section  # benchmarks/ is on sys.path
from timing import time_baseline, time_tvm

from dlas.algorithms import BEST, CHOICES, Algorithm
from dlas.compiler import tvm_relax
from dlas.compiler.measure import Protocol
from dlas.compiler.tuning import Tuning
from dlas.deployment import VerificationError, disagreement
from dlas.hardware import get_device, host_cpu
from dlas.hardware.cores import computing
from dlas.models import ZOO, get_model

#: the framework columns, eager first (the reference of every ratio)
FRAMEWORKS = ("pytorch", "torch_compile", "onnxruntime", "openvino")


def _ms(row: dict, kind: str) -> str:
    """A column's latency, or a dash for rows measured before the column existed."""
    return f"{row[kind]:.2f}" if kind in row else "-"


def dense(algorithm: str) -> Any:
    """Layer 4's config for one algorithm: the schema's defaults (dense weights, fallback
    direct, every algorithm a candidate of ``best``)."""
    return Algorithm(algorithm)


def zoo_model(name: str, stem: str) -> torch.nn.Module:
    """A zoo model for 3x32x32 inputs with random weights (seed 0) and randomized
    BatchNorm statistics, so that folding is real work."""
    torch.manual_seed(0)
    model = get_model(name, num_classes=10, in_channels=3, input_size=32, stem=stem).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model


def zoo_point(
    name: str, stem: str, work: Path
) -> tuple[torch.export.ExportedProgram, torch.Tensor, Path, np.ndarray]:
    """:func:`zoo_model` exported at batch 1 and saved under ``work``; with its input and
    eager's output."""
    model = zoo_model(name, stem)
    x = torch.randn(1, 3, 32, 32)
    program = torch.export.export(model, (x,))
    path = work / f"{name}-{stem}.pt2"
    torch.export.save(program, path)
    with torch.no_grad():
        expected = model(x).numpy()
    return program, x, path, expected


def time_model(name: str, args: argparse.Namespace, work: Path) -> dict[str, float]:
    program, x, path, expected = zoo_point(name, args.stem, work)
    device = get_device("cpu", threads=args.threads)
    protocol = Protocol(args.warmup, args.repeat, args.number)
    row: dict[str, float] = {}

    def check(compiler: str, output: np.ndarray) -> None:
        """A latency is only worth a row if the program computes the model."""
        err, limit = disagreement(output, expected, "float32")
        row[f"err_{compiler}"] = err
        if err > limit:
            raise VerificationError(f"{name} {compiler}: max |out - eager| {err:.2e} > {limit:.0e}")

    for kind in FRAMEWORKS:
        output, row[kind] = time_baseline(kind, path, x.numpy(), device, protocol, f"{name} {kind}")
        check(kind, output)
    untuned = "direct" if args.algorithm == BEST else args.algorithm
    for compiler, algorithm, tuning in (
        ("tvm_untuned", untuned, None),
        (
            "tvm_autoschedule",
            args.algorithm,
            Tuning(args.trials, args.trials_per_task, args.tuning_dir),
        ),
    ):
        built = tvm_relax.build(
            program, x, device, dense(algorithm), work / f"{name}-{compiler}", tuning
        )
        output, row[compiler] = time_tvm(
            built.library, x.numpy(), device, protocol, f"{name} {compiler}"
        )
        check(compiler, output)
        if tuning is not None:
            row["tune_s"] = built.info["tuning_cost_s"]  # also when the database is reused
            row["trials"] = built.info["tuning_trials"]
            convs = [r["algorithm"] for r in built.layers if r["op"] == "conv2d"]
            row["conv_algorithms"] = dict(Counter(convs))
    print(name, row, flush=True)
    return row


def _err(row: dict) -> str:
    """Largest |TVM - eager| of the row (rows measured before verification have none)."""
    errs = [row[k] for k in ("err_tvm_untuned", "err_tvm_autoschedule") if k in row]
    return f"{max(errs):.1e}" if errs else "not checked"


def table(rows: dict[str, dict]) -> str:
    head = (
        "| model | eager ms | torch.compile ms | onnxruntime ms | OpenVINO ms | TVM untuned ms | "
        "TVM tuned ms | tuned / eager | tuned / onnxruntime | trials (per task) | tuning s "
        "| TVM max err | measured |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['pytorch']:.2f} | {r['torch_compile']:.2f} | {r['onnxruntime']:.2f} "
            f"| {_ms(r, 'openvino')} "
            f"| {r['tvm_untuned']:.2f} | {r['tvm_autoschedule']:.2f} "
            f"| {r['tvm_autoschedule'] / r['pytorch']:.2f}x "
            f"| {r['tvm_autoschedule'] / r['onnxruntime']:.2f}x "
            f"| {r['trials']:.0f} ({r['trials_per_task']}) | {r['tune_s']:.0f} | {_err(r)} "
            f"| {r['date']}, {r['machine']}, `--stem {r['stem']}` |"
        )
    return (
        "Median latency, batch 1, 3x32x32, random weights; each compiler in its own process "
        "(warm-up, then repeat x number timed runs). Ratios below 1 mean TVM tuned is faster. "
        "Raw numbers: `compilers.json`.\n\n" + head + "\n".join(lines)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(ZOO))
    parser.add_argument("--trials", type=int, default=0, help="0: tasks x per task")
    parser.add_argument("--trials-per-task", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--stem", default="imagenet")
    parser.add_argument("--algorithm", default="direct", choices=CHOICES)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--number", type=int, default=10)
    parser.add_argument("--tuning-dir", type=Path, default=Path(".cache/dlas/tuning"))
    parser.add_argument("--no-write", action="store_true", help="print, do not edit README.md")
    args = parser.parse_args()
    rows = load_rows("compilers.json", fresh=args.no_write)
    machine = f"{platform.machine()} {host_cpu()}, {args.threads or 'all'} threads"
    # Hold the host's core lock: other dlas jobs wait while this measures or tunes.
    with tempfile.TemporaryDirectory(prefix="dlas-bench-") as tmp, computing():
        for name in args.models:
            row = time_model(name, args, Path(tmp))
            row.update(
                date=datetime.date.today().isoformat(),
                machine=machine,
                stem=args.stem,
                trials_per_task=args.trials_per_task,
                algorithm=args.algorithm,
            )
            rows[name if args.algorithm == "direct" else f"{name} ({args.algorithm})"] = row
            if not args.no_write:  # one model at a time: a stopped run keeps what it measured
                save_rows("compilers.json", rows)
                write_section("compilers", table(rows))
    print(table(rows))


if __name__ == "__main__":
    main()
