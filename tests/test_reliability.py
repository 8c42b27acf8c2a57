"""Results you can trust (issue 15): one seed gives one model in any process."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import FAST, compose, overrides, runs, start_entry
from torch import nn

# A network that trains in a second; seed 30 is the one of the report.
TINY = ["model=plain", "model.depth=1", "model.width=8", "seed=30"]
# Layers 1-3 with a compression that fine-tunes, so both stages train.
PRUNED = [*TINY, "compression=prune", "compression.finetune_epochs=1"]


@pytest.fixture(autouse=True)
def private_core_lock(tmp_path, monkeypatch):
    """This host's core lock (dlas.hardware.cores) in the test's own temp dir, for this
    process and its children: on a shared machine another user's measurement holds the
    host's lock exclusively for minutes, which is no part of what these tests check."""
    import dlas.hardware.cores as cores

    private = tmp_path / "tmp"
    private.mkdir()
    monkeypatch.setenv("TMPDIR", str(private))
    monkeypatch.setattr(cores, "default_lock_path", lambda: private / "dlas-cores.lock")


def entry(cache: str | Path, stage: str) -> Path:
    (path,) = [p for p in (Path(cache) / stage).iterdir() if p.is_dir() and "." not in p.name]
    return path


def state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path / "model.pt", weights_only=False).state_dict()


# ---------------------------------------------------------------- 1. same seed, same model


def test_one_seed_gives_bit_identical_models_and_metrics_in_two_processes(tmp_path):
    procs = []
    for i in range(2):
        args = [
            f"tracking.uri=sqlite:///{tmp_path}/mlruns{i}/mlflow.db",
            f"cache_dir={tmp_path}/cache{i}",
            *FAST,
            *PRUNED,
        ]
        procs.append(start_entry("train.py", *args, log=tmp_path / f"{i}.log"))
    for i, proc in enumerate(procs):
        assert proc.wait(timeout=300) == 0, (tmp_path / f"{i}.log").read_text()[-3000:]
    for stage in ("train", "compress"):
        a, b = (state(entry(tmp_path / f"cache{i}", stage)) for i in range(2))
        assert a.keys() == b.keys()
        different = [k for k in a if not torch.equal(a[k], b[k])]
        assert not different, f"{stage}: {different} differ between processes"
    (one,), (two,) = (runs(f"sqlite:///{tmp_path}/mlruns{i}/mlflow.db") for i in range(2))
    timings = {"train_s", "compress_s"}
    measured = {k: v for k, v in one.data.metrics.items() if k not in timings}
    assert measured == {k: v for k, v in two.data.metrics.items() if k not in timings}
    assert any(k.startswith("train-") for k in measured)  # the curves agree too


def test_the_seed_alone_decides_the_initial_weights(workdir):
    """In one process too: building a point seeds first, whatever ran before."""
    from dlas.stack import build_point

    def weights(seed: int) -> list[torch.Tensor]:
        torch.rand(7)  # whatever the process drew before must not matter
        cfg = compose(*overrides(workdir, *TINY, f"seed={seed}"))
        return list(build_point(cfg).model.state_dict().values())

    first, again, other = weights(30), weights(30), weights(31)
    assert all(torch.equal(x, y) for x, y in zip(first, again, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(first, other, strict=True))


def test_training_is_deterministic_by_default_and_only_while_it_runs(workdir):
    from dlas.stack import build_point
    from dlas.training import Trainer

    cfg = compose(*overrides(workdir, *TINY, "dataset=synthetic", "dataset.num_samples=32"))
    assert cfg.trainer.deterministic is True
    seen = {}

    class Probe(nn.Module):  # records torch's mode while Lightning trains it
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen["mode"] = torch.are_deterministic_algorithms_enabled()
            seen["warn_only"] = torch.is_deterministic_algorithms_warn_only_enabled()
            return self.inner(x)

    point = build_point(cfg)
    Trainer(cfg.trainer, point.data).fit(Probe(point.model), 1)
    assert seen == {"mode": True, "warn_only": False}
    assert not torch.are_deterministic_algorithms_enabled()  # export and timing run as usual
