"""Layers 4-5 on this machine: each algorithm untuned and tuned, against onnxruntime and
the measured peak.

    python benchmarks/tuned.py --models resnet18 --algorithms spatial_pack --budgets 8 32 64
    python benchmarks/tuned.py --models resnet18 --algorithms direct gemm spatial_pack winograd
    python benchmarks/tuned.py --models resnet18 --compression quant --algorithms spatial_pack
    python benchmarks/tuned.py --models resnet18 --compression prune90 --algorithms gemm \\
        --data-formats dense csr bsr

For each zoo model (3x32x32, batch 1, random weights with randomized BatchNorm
statistics, as ``compilers.py``), compression and layer-4 algorithm / data format:
PyTorch eager, onnxruntime (fp32 models), TVM with ``compiler.schedule=none`` (the plain
loop nests), TVM untuned (the default schedules) and TVM tuned by MetaSchedule at each
``--budgets`` trials per task. Each budget tunes into a database of its own
(``<tuning-dir>/per-task-<budget>``), so its tuning time is what that budget costs from
scratch; a re-run re-applies the database and keeps the recorded cost. Every TVM output
is checked against eager before it is timed, each timing runs in its own process with the
stack's protocol, and "% of peak" is 2 x MACs / latency over this host's fp32 FMA peak,
measured by ``peak.py`` in the same run. Rows go to ``tuned.json`` (after each row, so a
stopped run keeps its rows) and the table between the markers in benchmarks/README.md.

Compressions: ``none``; ``quant``, int8 PT2E (u8 activations x s8 weights, calibrated on
16 synthetic images; no fine-tuning, so accuracy is not the point); ``prune90``, 90%
global unstructured L1 pruning of every conv and linear weight, no fine-tuning.
"""

from __future__ import annotations

import argparse
import datetime
import json
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from compilers import zoo_model  # benchmarks/ is this script's directory
from peak import peak_gflops
from results import cpu_model, load_rows, save_rows, write_section
from timing import time_baseline, time_tvm

from dlas.algorithms import ALGORITHMS, DATA_FORMATS, Algorithm
from dlas.compiler import tvm_relax
from dlas.compiler.measure import Protocol
from dlas.compiler.tuning import Tuning
from dlas.deployment import VerificationError, disagreement
from dlas.hardware import get_device
from dlas.hardware.cores import computing
from dlas.metrics import count_macs
from dlas.models import ZOO

COMPRESSIONS = ("none", "quant", "prune90")
LABELS = {"none": "fp32", "quant": "int8", "prune90": "fp32 90% pruned"}  # in row names


def compressed(
    name: str, stem: str, compression: str, work: Path
) -> tuple[torch.export.ExportedProgram, torch.Tensor, Path, np.ndarray, dict, str]:
    """(batch-1 program, input, its saved path, eager output, MACs, compute dtype)."""
    from dlas.compression import get_compression

    model, dtype = zoo_model(name, stem), "float32"
    torch.manual_seed(0)
    x = torch.randn(1, 3, 32, 32)
    macs = count_macs(model, x)  # of the float model: int8 does the same MACs
    if compression == "quant":
        from dlas.data import get_datamodule

        data = get_datamodule(
            "synthetic", num_samples=64, image_size=32, in_channels=3, batch_size=8, seed=0
        )
        data.setup()
        model = get_compression("quant", calibration_batches=2).apply(model, data, None)
        dtype = "int8"
    elif compression == "prune90":
        model = get_compression("prune", amount=0.9).apply(model, None, None)
        macs = count_macs(model, x)  # nonzero_macs: what skipping zeros leaves
    static = torch.export.export(model, (x,))
    path = work / f"{name}-{stem}-{compression}.pt2"
    torch.export.save(static, path)
    with torch.no_grad():
        expected = static.module()(x).numpy()
    return static, x, path, expected, macs, dtype


def time_row(name: str, compression: str, algorithm: str, data_format: str, args, work: Path):
    program, x, path, expected, macs, dtype = compressed(name, args.stem, compression, work)
    device = get_device("cpu", threads=args.threads)
    protocol = Protocol(args.warmup, args.repeat, args.number)
    row: dict[str, Any] = {"macs": macs["macs"], "nonzero_macs": macs.get("nonzero_macs")}

    def check(column: str, output: np.ndarray) -> None:
        err, limit = disagreement(output, expected, dtype)
        row[f"{column}/err"] = err
        if err > limit:
            raise VerificationError(f"{name} {column}: max |out - eager| {err:.2e} > {limit:.0e}")

    # Build first, then time every column in interleaved rounds: this VM's speed drifts
    # by up to ~10% within half an hour (its neighbours), so columns timed minutes apart
    # are not comparable; interleaved, each round sees the same machine, and a column's
    # figure is its fastest round's median (the least disturbed one).
    timers: dict[str, Any] = {}
    kinds = ("pytorch", "onnxruntime") if dtype == "float32" else ("pytorch",)
    for kind in kinds:
        timers[kind] = lambda k=kind: time_baseline(k, path, x.numpy(), device, protocol, k)
    cfg = Algorithm(algorithm, data_format)
    for schedule in ("none", "default"):
        built = tvm_relax.build(
            program, x, device, cfg, work / f"{algorithm}-{schedule}", None, schedule
        )
        timers[schedule] = tvm_timer(built.library, x, device, protocol, schedule)
    for budget in args.budgets:
        tuning = Tuning(0, budget, args.tuning_dir / f"per-task-{budget}")
        built = tvm_relax.build(program, x, device, cfg, work / f"{algorithm}-{budget}", tuning)
        column = f"tuned/{budget}"
        timers[column] = tvm_timer(built.library, x, device, protocol, column)
        row[f"tune_s/{budget}"] = built.info["tuning_cost_s"]
        row[f"trials/{budget}"] = built.info["tuning_trials"]
        row[f"best_from/{budget}"] = dict(Counter(c["best_from"] for c in task_costs(built)))
        # dlas keeps whichever of the tuned and untuned programs is faster end to end
        row[f"end_to_end/{budget}"] = built.info.get("end_to_end")
    rounds: dict[str, list[float]] = {column: [] for column in timers}
    for i in range(args.rounds):
        for column, timer in timers.items():
            output, ms = timer()
            print(f"{name} round {i + 1}/{args.rounds} {column}: {ms:.3f} ms", flush=True)
            check(column, output)
            rounds[column].append(ms)
    for column, times in rounds.items():
        row[column] = min(times)
        row[f"{column}/rounds"] = times
    row["rounds"] = args.rounds
    print(name, compression, algorithm, data_format, row, flush=True)
    return row


def tvm_timer(library: Path, x: torch.Tensor, device: Any, protocol: Protocol, label: str):
    return lambda: time_tvm(library, x.numpy(), device, protocol, label)


def task_costs(built: Any) -> list[dict]:
    """The tuning's ``tasks.json`` (per task: trials, default ms, best ms, best_from)."""
    path = Path(built.info["tuning_dir"]) / "tasks.json"
    return json.loads(path.read_text()) if path.exists() else []


def kept_mark(row: dict, budget: int) -> str:
    """A dagger where the end-to-end check kept the untuned program (its tuned time is
    then the untuned program's), a double dagger where the row predates the check."""
    decided = row.get(f"end_to_end/{budget}")
    if decided is None:
        return "‡"
    return "†" if decided["kept"] == "untuned" else ""


def pct(row: dict, column: str) -> str:
    gflops = 2 * row["macs"] / (row[column] * 1e-3) / 1e9
    return f"{100 * gflops / row['peak_gflops']:.0f}%"


def table(rows: dict[str, dict]) -> str:
    budgets = sorted(
        {
            int(k.split("/")[1])
            for r in rows.values()
            for k in r
            if k.startswith("tuned/") and "/err" not in k
        }
    )
    head = (
        "| point | eager ms | onnxruntime ms | none ms | untuned ms | "
        + "".join(f"tuned {b} ms (tuning s) | " for b in budgets)
        + "best / onnxruntime | % of peak (untuned, best tuned) "
        "| winners (default / template / generic) | measured |\n"
    )
    head += "|---" * (len(budgets) + 9) + "|\n"
    lines = []
    for key, r in rows.items():
        tuned = [b for b in budgets if f"tuned/{b}" in r]
        cells = [
            f"{r[f'tuned/{b}']:.2f}{kept_mark(r, b)} ({r[f'tune_s/{b}']:.0f})"
            if b in tuned
            else "-"
            for b in budgets
        ]
        best = min([r["default"], *(r[f"tuned/{b}"] for b in tuned)])
        ort = f"{best / r['onnxruntime']:.2f}x" if "onnxruntime" in r else "-"
        winners = "-"
        if tuned:
            counts = r[f"best_from/{tuned[-1]}"]
            winners = " / ".join(str(counts.get(s, 0)) for s in ("default", "template", "generic"))
        best_col = (
            "default" if not tuned else min(("default", *(f"tuned/{b}" for b in tuned)), key=r.get)
        )
        lines.append(
            f"| {key} | {r['pytorch']:.2f} | "
            + (f"{r['onnxruntime']:.2f}" if "onnxruntime" in r else "-")
            + f" | {r['none']:.1f} | **{r['default']:.2f}** | "
            + "".join(f"{c} | " for c in cells)
            + f"{ort} | {pct(r, 'default')}, {pct(r, best_col)} | {winners} "
            f"| {r['date']}, {r['cpu']}, peak {r['peak_gflops']:.0f} GFLOP/s, "
            f"{r.get('rounds', 1)} round{'s' if r.get('rounds', 1) > 1 else ''} |"
        )
    return (
        "Median latency, batch 1, 3x32x32, random weights, 2 threads; every column timed in "
        "the row's number of interleaved rounds (last cell), each column's fastest round "
        "kept. `none` = "
        "compiler.schedule=none (plain loop nests), untuned = the default schedules, tuned N "
        "= MetaSchedule at N trials per task from an empty database (its tuning time in "
        "brackets; † the whole tuned model timed slower than the untuned one, so the untuned "
        "program was kept; ‡ measured before that end-to-end check existed: MetaSchedule's "
        "picks as they are). Winners: of the tuned tasks at the largest budget, how many "
        "kept their default schedule, took a sampled template or MetaSchedule's generic "
        "schedule. % of peak = 2 x dense MACs / latency over the fp32 FMA peak measured in "
        "the same run (for int8 rows too: VNNI's int8 peak is 4x that). "
        "Raw numbers: `tuned.json`.\n\n" + head + "\n".join(lines)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=["resnet18"], choices=list(ZOO))
    parser.add_argument("--compression", default="none", choices=COMPRESSIONS)
    parser.add_argument("--algorithms", nargs="*", default=["spatial_pack"], choices=ALGORITHMS)
    parser.add_argument("--data-formats", nargs="*", default=["dense"], choices=DATA_FORMATS)
    parser.add_argument("--budgets", nargs="*", type=int, default=[8], help="trials per task")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--stem", default="imagenet")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--number", type=int, default=5)
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved timing rounds; fastest counts"
    )
    parser.add_argument("--tuning-dir", type=Path, default=Path(".cache/dlas/bench-tuning"))
    parser.add_argument("--no-write", action="store_true", help="print, do not edit README.md")
    args = parser.parse_args()
    rows = load_rows("tuned.json", fresh=args.no_write)
    device = get_device("cpu", threads=args.threads)
    with tempfile.TemporaryDirectory(prefix="dlas-bench-") as tmp, computing():
        peak = peak_gflops(device.threads, device.compile_target)
        print(f"fp32 FMA peak: {peak:.0f} GFLOP/s on {device.threads} threads", flush=True)
        for name in args.models:
            for algorithm in args.algorithms:
                for data_format in args.data_formats:
                    row = time_row(name, args.compression, algorithm, data_format, args, Path(tmp))
                    row.update(
                        date=datetime.date.today().isoformat(),
                        cpu=cpu_model(),
                        peak_gflops=peak,
                        stem=args.stem,
                    )
                    fmt = "" if data_format == "dense" else f" {data_format}"
                    label = LABELS[args.compression]
                    key = f"{name} ({args.stem}) {label} {algorithm}{fmt}"
                    rows[key] = row  # one run's measurement: no columns of an older one
                    if not args.no_write:
                        save_rows("tuned.json", rows)
                        write_section("tuned", table(rows))
    print(table(rows))


if __name__ == "__main__":
    main()
