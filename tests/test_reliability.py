"""Results you can trust (issue 15): one seed gives one model in any process, one point
trains once however many processes run it, cache writes never fail a run, and a damaged
cache entry is never served."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import FAST, ROOT, compose, overrides, runs, start_entry
from torch import nn

from dlas.cache import StageCache
from dlas.checksums import sha256

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


def manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


# ---------------------------------------------------------------- 1. same seed, same model


@pytest.mark.e2e
@pytest.mark.tvm
@pytest.mark.slow
def test_one_seed_gives_bit_identical_models_and_metrics_in_two_processes(tmp_path):
    procs = []
    for i in range(2):
        (tmp_path / f"mlruns{i}").mkdir()  # a sqlite store's folder must exist
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


# ---------------------------------------------------------------- 2. one point trains once


def _run_at_once(args: list[str], delay_s: float, barrier, index: int) -> None:
    """A child process: run one point, released together with the others, with training
    slowed down so that the runs overlap for certain."""
    import dlas.training.fit as fit
    from dlas.stack import run_point

    original = fit.Trainer.fit

    def slow_fit(self, *a, **k):
        time.sleep(delay_s)
        return original(self, *a, **k)

    fit.Trainer.fit = slow_fit
    barrier.wait(timeout=120)
    run_point(compose(*args))


def start_together(target, *args, n: int = 2) -> list:
    """``n`` spawned processes running ``target(*args, barrier)``, released at once."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(n)
    procs = [ctx.Process(target=target, args=(*args, barrier, i)) for i in range(n)]
    for proc in procs:
        proc.start()
        proc.barrier = barrier  # alive until the children have it (a dead one is unlinked)
    return procs


def join_all(procs: list, timeout: float = 300) -> list[int | None]:
    for proc in procs:
        proc.join(timeout=timeout)
    for proc in procs:
        if proc.exitcode is None:
            proc.kill()
    return [proc.exitcode for proc in procs]


@pytest.mark.e2e
@pytest.mark.tvm
@pytest.mark.slow
def test_two_processes_of_one_point_train_it_once(workdir):
    from dlas.report.load import load_points
    from dlas.tracking.store import setup_experiment
    from dlas.tracking.sweep import finished_run

    procs = start_together(_run_at_once, overrides(workdir, *TINY), 2.0)
    assert join_all(procs) == [0, 0]
    found = runs(workdir["uri"])
    assert sorted(r.info.status for r in found) == ["FINISHED", "FINISHED"]
    assert sorted(r.data.metrics["train_cache_hit"] for r in found) == [0.0, 1.0]
    assert sorted(r.data.metrics["cache_hit"] for r in found) == [0.0, 1.0]
    (trained,) = [r for r in found if r.data.metrics["train_cache_hit"] == 0.0]
    producer = trained.info.run_id
    for stage in ("train", "compress"):
        assert manifest(entry(workdir["cache"], stage))["run_id"] == producer
    meta = json.loads((entry(workdir["cache"], "compress") / "meta.json").read_text())
    for run in found:  # both report the cached model's numbers and say whose it is
        assert run.data.metrics["top1"] == meta["top1"]
        assert run.data.tags["dlas.train_run"] == run.data.tags["dlas.compress_run"] == producer
    (point,) = load_points(workdir["uri"], "dlas").itertuples()
    assert point.run_id == producer
    experiment_id = setup_experiment(workdir["uri"], "dlas", None)
    assert finished_run(experiment_id, trained.data.tags["dlas.config_hash"]).info.run_id == (
        producer
    )


def test_report_and_resume_prefer_the_run_of_the_cached_entry(tmp_path):
    """Of several FINISHED runs of one point, the one whose numbers are the entry now in
    the cache counts, not the newest: here an entry was rebuilt (after corruption) by a run
    that started before another read the old one, and a use_cache=false run came last."""
    import mlflow
    from mlflow.entities import Metric, Param

    from dlas.report.load import load_points
    from dlas.tracking.sweep import finished_run

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment("dlas", artifact_location=str(tmp_path / "a"))
    ids = {}

    def log(name: str, start: int, top1: float, **tags: str) -> None:
        run = client.create_run(experiment_id, start_time=start, tags={"dlas.config_hash": "h"})
        run_id = ids[name] = run.info.run_id
        produced = {k: run_id if v == "self" else ids.get(v, v) for k, v in tags.items()}
        client.log_batch(
            run_id,
            metrics=[Metric("top1", top1, start, 0)],
            params=[Param("model", "plain"), Param("compiler", "pytorch")],
            tags=[mlflow.entities.RunTag(k, v) for k, v in produced.items()],
        )
        client.set_terminated(run_id, "FINISHED", end_time=start + 10)

    def made_by(producer: str, written: str) -> dict[str, str]:
        return {
            "dlas.compress_run": producer,
            "dlas.train_run": producer,
            "dlas.compress_written": written,
            "dlas.train_written": written,
        }

    log("first", 1000, 0.50, **made_by("self", "100.0"))
    log("rebuilt", 2000, 0.60, **made_by("self", "200.0"))  # the entry in the cache now
    log("hit_of_old", 3000, 0.50, **made_by("first", "100.0"))
    log("hit_of_new", 4000, 0.60, **made_by("rebuilt", "200.0"))
    log("uncached", 5000, 0.55)
    (point,) = load_points(uri, "dlas").itertuples()
    assert point.run_id == ids["rebuilt"]
    mlflow.set_tracking_uri(uri)
    assert finished_run(experiment_id, "h").info.run_id == ids["rebuilt"]


# ---------------------------------------------------------------- 3. cache writes never fail


def small_entry() -> dict:
    torch.manual_seed(0)
    return {"model": nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))}


def _save_often(root: Path, saves: int, barrier, index: int) -> None:
    """A writer process: save one key ``saves`` times; record what the cache returned."""
    content = small_entry()
    cache = StageCache(root)
    barrier.wait(timeout=120)
    kept = {cache.save("train", "k", meta={"writer": index}, **content).meta["writer"]}
    for _ in range(saves - 1):
        kept.add(cache.save("train", "k", meta={"writer": index}, **content).meta["writer"])
    (root / f"writer{index}.json").write_text(json.dumps(sorted(kept)))


@pytest.mark.slow
def test_many_concurrent_writers_of_one_key_all_succeed(tmp_path):
    root = tmp_path / "cache"
    stale = root / "train" / ".k.0dead0.tmp"  # a writer killed mid-write
    stale.mkdir(parents=True)
    (stale / "model.pt").write_bytes(b"half a mod")
    writers = 4
    assert join_all(start_together(_save_often, root, 10, n=writers)) == [0] * writers
    # the first save wins; every later one is a no-op that returns the stored entry
    kept = {w for i in range(writers) for w in json.loads((root / f"writer{i}.json").read_text())}
    (winner,) = kept
    stored = StageCache(root).load("train", "k")
    assert stored is not None and stored.meta == {"writer": winner}
    assert torch.equal(stored.model()[0].weight, small_entry()["model"][0].weight)
    assert sorted(p.name for p in (root / "train").iterdir()) == [".k.lock", "k"]


def test_a_killed_writer_leaves_no_lock_and_no_temporary_folder(tmp_path):
    root = tmp_path / "cache"
    holder = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from dlas.cache import StageCache\n"
        "cache = StageCache(sys.argv[1])\n"
        "with cache.hold('train', 'k'):\n"
        "    tmp = Path(sys.argv[1]) / 'train' / '.k.abcd1234.tmp'\n"
        "    tmp.mkdir()\n"
        "    (tmp / 'model.pt').write_bytes(b'partial')\n"
        "    print('writing', flush=True)\n"
        "    time.sleep(120)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", holder, str(root)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "writing"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    start = time.monotonic()
    saved = StageCache(root).save("train", "k", meta={}, run_id="after", **small_entry())
    assert time.monotonic() - start < 30 and saved.run_id == "after"
    assert not list((root / "train").glob("*.tmp"))


# ---------------------------------------------------------------- 4. corrupt entries


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def garble(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 16] = bytes(255 - b for b in data[middle : middle + 16])
    path.write_bytes(bytes(data))


@pytest.mark.e2e
@pytest.mark.tvm
@pytest.mark.slow
@pytest.mark.parametrize(
    "stage, name, damage",
    [
        ("train", "model.pt", truncate),
        ("compress", "model.pt2", garble),
        ("compress", "meta.json", truncate),
        ("train", "model.pt", garble),
    ],
)
def test_a_damaged_entry_is_reported_set_aside_and_rebuilt(workdir, caplog, stage, name, damage):
    import mlflow

    args = overrides(workdir, *TINY, "dataset=synthetic", "dataset.num_samples=48")
    from dlas.stack import run_point

    run_point(compose(*args))
    bad = entry(workdir["cache"], stage)
    damage(bad / name)
    with caplog.at_level(logging.WARNING, logger="dlas.cache"):
        metrics = run_point(compose(*args))
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(bad) in m and "corrupt" in m for m in warned), warned
    (aside,) = (Path(workdir["cache"]) / stage).glob(f"{bad.name}.corrupt-*")
    assert aside.is_dir()  # kept for inspection
    hit = "train_cache_hit" if stage == "train" else "cache_hit"
    assert metrics[hit] == 0.0  # rebuilt, not served
    rebuilt = StageCache(workdir["cache"]).load(stage, bad.name)
    assert rebuilt is not None and rebuilt.path == bad
    latest = max(runs(workdir["uri"]), key=lambda r: r.info.start_time)
    assert latest.info.status == "FINISHED"
    uploaded = Path(
        mlflow.artifacts.download_artifacts(run_id=latest.info.run_id, artifact_path="model")
    )
    program = entry(workdir["cache"], "compress") / "model.pt2"
    assert sha256(uploaded / "model.pt2") == sha256(program)
    assert manifest(program.parent)["files"]["model.pt2"]["sha256"] == sha256(program)


def test_each_identity_has_its_own_version_salt(monkeypatch):
    """Bumping one salt drops one kind of stored result: models, tuning databases, or
    finished points (and sweeps); a template change drops databases and points."""
    import dlas.identity as identity
    from dlas.stack import Point, point_hash, stage_keys
    from dlas.tracking.sweep import sweep_identity

    cfg = compose(*FAST)
    point = Point(cfg, None, None, None)  # type: ignore[arg-type]  # keys read cfg only

    def keys() -> dict[str, object]:
        return {
            "stages": stage_keys(point),
            "tuning": identity.tuning_key({"workload": [1, 2], "threads": 2}),
            "point": point_hash(cfg, "train"),
            "sweep": sweep_identity("train", ["model=vgg16"]),
        }

    before = keys()
    for salt, dropped in (
        ("STAGE_VERSION", {"stages"}),
        ("TUNING_VERSION", {"tuning"}),
        ("POINT_VERSION", {"point", "sweep"}),
        ("TEMPLATE_VERSION", {"tuning", "point", "sweep"}),
    ):
        with monkeypatch.context() as patch:
            patch.setattr(identity, salt, getattr(identity, salt) + 1)
            after = keys()
        assert {k for k in before if after[k] != before[k]} == dropped, salt
    assert keys() == before
