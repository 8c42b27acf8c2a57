"""TVM "untuned" as DLAS meant it: default schedules vs the plain loop nests vs eager.

    python benchmarks/untuned.py [--models resnet18 ...] [--stems imagenet compact]
                                 [--algorithms direct gemm spatial_pack winograd]

For each zoo model, stem and layer-4 algorithm: PyTorch eager, TVM with
``compiler.schedule=none`` (TVM 0.27's schedule-less loop nests: dlas's "untuned" before
default schedules) and TVM with the default schedules (``compiler=tvm_untuned`` today).
No tuning: the whole grid takes minutes. Every TVM output is checked against eager
before it is timed; each timing runs in its own process with the stack's protocol. The
table replaces the section between the markers in benchmarks/README.md; raw rows go to
benchmarks/untuned.json.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import tempfile
from pathlib import Path

from compilers import zoo_point  # benchmarks/ is this script's directory
from results import cpu_model, load_rows, save_rows, write_section
from timing import time_baseline, time_tvm

from dlas.algorithms import ALGORITHMS, Algorithm
from dlas.compiler import tvm_relax
from dlas.compiler.measure import Protocol
from dlas.deployment import VerificationError, disagreement
from dlas.hardware import get_device
from dlas.hardware.cores import computing
from dlas.models import ZOO


def time_point(name: str, stem: str, algorithms: list[str], args, work: Path) -> dict:
    program, x, path, expected = zoo_point(name, stem, work)
    device = get_device("cpu", threads=args.threads)
    protocol = Protocol(args.warmup, args.repeat, args.number)
    _, eager_ms = time_baseline("pytorch", path, x.numpy(), device, protocol, f"{name} eager")
    row: dict = {"pytorch": eager_ms}
    for algorithm in algorithms:
        for schedule in ("none", "default"):
            built = tvm_relax.build(
                program,
                x,
                device,
                Algorithm(algorithm),
                work / f"{name}-{algorithm}-{schedule}",
                None,
                schedule,
            )
            label = f"{name} {algorithm} {schedule}"
            output, ms = time_tvm(built.library, x.numpy(), device, protocol, label)
            err, limit = disagreement(output, expected, "float32")
            if err > limit:
                raise VerificationError(f"{label}: max err {err:.2e}")
            row[f"{algorithm}/{schedule}"] = ms
            row[f"{algorithm}/{schedule}/err"] = err
    print(name, stem, row, flush=True)
    return row


def table(rows: dict) -> str:
    algorithms = sorted(
        {k.split("/")[0] for r in rows.values() for k in r if "/" in k}, key=ALGORITHMS.index
    )
    head = (
        "| model (stem) | eager ms | "
        + " | ".join(f"{a} none / default ms" for a in algorithms)
        + " | default / eager (best algorithm) | measured |\n"
    )
    head += "|---" * (len(algorithms) + 4) + "|\n"
    lines = []
    for key, r in rows.items():
        cells = [
            f"{r[f'{a}/none']:.1f} / **{r[f'{a}/default']:.2f}**" if f"{a}/none" in r else "-"
            for a in algorithms
        ]
        best = min((r[f"{a}/default"], a) for a in algorithms if f"{a}/default" in r)
        lines.append(
            f"| {key} | {r['pytorch']:.2f} | "
            + " | ".join(cells)
            + f" | {best[0] / r['pytorch']:.2f}x ({best[1]}) | {r['date']}, {r['cpu']} |"
        )
    return (
        "Median latency, batch 1, 3x32x32, random weights, 2 threads; `none` = "
        "compiler.schedule=none (plain loop nests), `default` = the default schedules "
        "(tvm_untuned). Raw numbers: `untuned.json`.\n\n" + head + "\n".join(lines)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(ZOO))
    parser.add_argument("--stems", nargs="*", default=["imagenet"])
    parser.add_argument("--algorithms", nargs="*", default=list(ALGORITHMS))
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--number", type=int, default=10)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    rows = load_rows("untuned.json", fresh=args.no_write)
    cpu = f"{cpu_model()} ({platform.machine()}), {args.threads or 'all'} threads"
    with tempfile.TemporaryDirectory(prefix="dlas-bench-") as tmp, computing():
        for name in args.models:
            for stem in args.stems:
                row = time_point(name, stem, args.algorithms, args, Path(tmp))
                row.update(date=datetime.date.today().isoformat(), cpu=cpu)
                rows[f"{name} ({stem})"] = row
                if not args.no_write:
                    save_rows("untuned.json", rows)
                    write_section("untuned", table(rows))
    print(table(rows))


if __name__ == "__main__":
    main()
