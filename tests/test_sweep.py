"""Sweeps: identity tags, resume after kill -9, orphaned runs, and the host's core lock."""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from conftest import ROOT, overrides, run_entry, runs, start_entry, statuses

from dlas.hardware import cores
from dlas.tracking import setup_experiment
from dlas.tracking.sweep import reap_orphaned_runs, sweep_identity


def _sweep(workdir, *extra):
    return [
        "-m",
        *overrides(workdir, "dataset=synthetic", "dataset.num_samples=48", *extra),
        f"hydra.sweep.dir={workdir['tmp']}/multirun",
    ]


@pytest.mark.e2e
@pytest.mark.slow
def test_killed_sweep_resumes_with_one_finished_run_per_point(workdir):
    args = _sweep(workdir, "compression=none,prune,channel_prune")
    proc = start_entry("train.py", *args, log=Path(workdir["tmp"]) / "sweep.log")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # kill -9 once one point finished and one runs
        status = statuses(workdir["uri"])
        if "FINISHED" in status and "RUNNING" in status:
            break
        assert proc.poll() is None, (Path(workdir["tmp"]) / "sweep.log").read_text()[-3000:]
        time.sleep(0.2)
    else:
        pytest.fail("the sweep never reached its second point")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {r.info.run_id: r for r in runs(workdir["uri"])}
    finished = [i for i, r in before.items() if r.info.status == "FINISHED"]
    orphan = [i for i, r in before.items() if r.info.status == "RUNNING"]
    assert len(finished) == 1 and len(orphan) == 1  # killed: nothing closed the run

    again = run_entry("train.py", *args)
    assert again.returncode == 0, again.stderr[-3000:]
    after = runs(workdir["uri"])
    done = [r for r in after if r.info.status == "FINISHED"]
    points = sorted(r.data.params["compression"] for r in done)
    assert points == ["channel_prune", "none", "prune"]  # exactly one FINISHED per point
    assert finished[0] in {r.info.run_id for r in done}  # the finished point was not redone
    killed = next(r for r in after if r.info.run_id == orphan[0])
    assert killed.info.status == "KILLED" and "kill -9" in killed.data.tags["error"]
    sweep_ids = {r.data.tags["dlas.sweep_id"] for r in done}
    assert len(sweep_ids) == 1  # the same command is the same sweep
    (sweep_id,) = sweep_ids
    assert all(r.data.tags[f"dlas.sweep.{sweep_id}"] == "true" for r in done)
    assert "skipping" in again.stdout + again.stderr


def test_sweep_identity_ignores_override_order():
    a = sweep_identity("train", ["model=resnet18,vgg16", "compression=prune,quant"])
    b = sweep_identity("train", ["compression=prune,quant", "model=resnet18,vgg16"])
    assert a == b != sweep_identity("deploy", ["model=resnet18,vgg16", "compression=prune,quant"])
    assert a != sweep_identity("train", ["model=resnet18", "compression=prune,quant"])


def test_only_runs_of_dead_local_processes_are_reaped(workdir):
    experiment_id = setup_experiment(workdir["uri"], "dlas")
    client = mlflow.MlflowClient()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    host = socket.gethostname()
    cases = {
        "dead": {"dlas.host": host, "dlas.pid": str(gone.pid)},
        "alive": {"dlas.host": host, "dlas.pid": str(os.getpid())},
        "elsewhere": {"dlas.host": "another-node", "dlas.pid": str(gone.pid)},
        "untagged": {},
    }
    ids = {name: client.create_run(experiment_id, tags=t).info.run_id for name, t in cases.items()}
    assert reap_orphaned_runs(experiment_id) == [ids["dead"]]
    status = {name: client.get_run(i).info.status for name, i in ids.items()}
    assert status == {
        "dead": "KILLED",
        "alive": "RUNNING",
        "elsewhere": "RUNNING",
        "untagged": "RUNNING",
    }


def _try_lock(path, mode) -> bool:
    """Whether another process could take the lock file in ``mode`` right now."""
    code = (
        "import fcntl, os, sys\n"
        f"fd = os.open({str(path)!r}, os.O_RDWR)\n"
        f"try:\n    fcntl.flock(fd, {int(mode)} | fcntl.LOCK_NB)\n"
        "except BlockingIOError:\n    sys.exit(1)\n"
    )
    return subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_measurement_excludes_every_other_job_on_the_host(tmp_path):
    path = tmp_path / "cores.lock"
    with cores.exclusive():  # outside computing(): a no-op, nothing to wait for
        pass
    with cores.computing(path):
        assert _try_lock(path, fcntl.LOCK_SH)  # others may compute alongside
        assert not _try_lock(path, fcntl.LOCK_EX)  # but not measure
        with cores.exclusive():
            assert not _try_lock(path, fcntl.LOCK_SH)  # nobody computes while we measure
        assert _try_lock(path, fcntl.LOCK_SH)
    assert _try_lock(path, fcntl.LOCK_EX)  # released on exit


@pytest.mark.slow
def test_dlas_grid_preset_is_a_48_point_grid_of_valid_points():
    import itertools

    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from dlas.algorithms import check_combination

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose(
            config_name="config", overrides=["experiment=dlas_grid"], return_hydra_config=True
        )
        grid = {k: str(v).split(",") for k, v in cfg.hydra.sweeper.params.items()}
        assert len(list(itertools.product(*grid.values()))) == 48
        for values in itertools.product(*grid.values()):
            point = hydra_compose(
                config_name="config",
                overrides=[
                    "experiment=dlas_grid",
                    *(f"{k}={v}" for k, v in zip(grid, values, strict=True)),
                ],
            )
            a = point.algorithm
            check_combination(a.name, a.data_format, a.fallback)  # no impossible pair
            assert point.dataset.name == "mnist5k" and point.measure.verify_samples == 64
