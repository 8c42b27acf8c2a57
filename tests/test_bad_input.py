"""Bad values fail before the first run opens, as one line naming the value and what is
valid, with no traceback (HYDRA_FULL_ERROR=1 keeps it); a deploy of a run that holds no
model says so instead of MLflow's "Failed to download artifacts"."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from conftest import TINY_DEPLOY, compose, overrides, run_entry, runs

from dlas.stack import deploy_point, run_point


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def _assert_one_line(result, *needles: str) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = _error_lines(result.stderr)
    assert len(lines) == 1, result.stderr[-3000:]
    (line,) = lines
    assert line.startswith("dlas: error: ")
    for needle in needles:
        assert needle in line, line
    return line


@pytest.mark.e2e
@pytest.mark.tvm
@pytest.mark.slow
@pytest.mark.parametrize(
    ("bad", "needles"),
    [
        (["trainer.max_epochs=-1"], ["trainer.max_epochs=-1 must be >= 0"]),
        (
            ["trainer.optimizer=adamm"],
            ["trainer.optimizer='adamm'", "valid choices: sgd, adamw"],
        ),
        (
            ["trainer.scheduler=cosin"],
            ["trainer.scheduler='cosin'", "valid choices: onecycle, cosine, none"],
        ),
        ([*TINY_DEPLOY, "measure.repeat=0"], ["measure.repeat=0 must be >= 1"]),
    ],
    ids=["max_epochs", "optimizer", "scheduler", "repeat"],
)
def test_a_bad_value_is_one_line_before_any_run(workdir, bad, needles):
    result = run_entry("train.py", *overrides(workdir, *bad), timeout=180)
    _assert_one_line(result, *needles)
    assert result.returncode == 2  # a usage error
    assert not (Path(workdir["tmp"]) / "mlruns" / "mlflow.db").exists()  # no run, no store


@pytest.mark.e2e
@pytest.mark.slow
def test_the_traceback_is_behind_hydra_full_error(workdir):
    result = run_entry(
        "train.py",
        *overrides(workdir, "trainer.optimizer=adamm"),
        timeout=180,
        env={"HYDRA_FULL_ERROR": "1"},
    )
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "valid choices: sgd, adamw" in result.stderr


@pytest.mark.e2e
@pytest.mark.slow
def test_a_sweep_with_a_bad_point_runs_the_others(workdir):
    result = run_entry(
        "train.py",
        "-m",
        *overrides(workdir, "dataset=synthetic", "dataset.num_samples=32"),
        "trainer.optimizer=sgd,adamm",
        f"hydra.sweep.dir={workdir['tmp']}/multirun",
        timeout=300,
    )
    assert result.returncode != 0  # the sweep reports its failed point at the end
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "dlas: error: trainer.optimizer='adamm'; valid choices: sgd, adamw" in result.stderr
    (run,) = runs(workdir["uri"])  # the bad point opened no run
    assert run.info.status == "FINISHED" and run.data.params["trainer.optimizer"] == "sgd"


@pytest.mark.e2e
@pytest.mark.tvm
@pytest.mark.slow
def test_deploying_a_run_without_a_model_names_its_status(workdir):
    mlflow.set_tracking_uri(workdir["uri"])
    client = mlflow.MlflowClient(workdir["uri"])
    experiment = client.create_experiment("dlas")
    failed = client.create_run(experiment, run_name="resnet18-none-direct-tvm_untuned")
    client.set_tag(failed.info.run_id, "error", "RuntimeError: compiler exploded")
    client.set_terminated(failed.info.run_id, "FAILED")
    uri = f"runs:/{failed.info.run_id}/model"
    result = run_entry("deploy.py", *overrides(workdir, *TINY_DEPLOY, f"model_uri={uri}"))
    _assert_one_line(
        result,
        f"model_uri={uri}",
        f"run {failed.info.run_id} is FAILED",
        "compiler exploded",
        "has no model.pt2",
    )
    assert [r.info.run_id for r in runs(workdir["uri"])] == [failed.info.run_id]  # no new run


@pytest.mark.e2e
@pytest.mark.tvm
@pytest.mark.slow
def test_deploying_a_run_that_does_not_exist_names_the_store(workdir):
    mlflow.MlflowClient(workdir["uri"]).create_experiment("dlas")  # a store, without that run
    uri = "runs:/0123456789abcdef/model"
    result = run_entry("deploy.py", *overrides(workdir, *TINY_DEPLOY, f"model_uri={uri}"))
    _assert_one_line(result, f"model_uri={uri}", "has no run '0123456789abcdef'", workdir["uri"])


@pytest.mark.e2e
@pytest.mark.tvm
@pytest.mark.slow
def test_deploying_the_model_of_a_finished_run_works(workdir):
    run_point(compose(*overrides(workdir, *TINY_DEPLOY, "deploy=false")))
    (trained,) = runs(workdir["uri"])
    uri = f"runs:/{trained.info.run_id}/model"
    metrics = deploy_point(
        compose(*overrides(workdir, *TINY_DEPLOY, "compiler=pytorch", f"model_uri={uri}"))
    )
    assert metrics["max_abs_err_vs_torch"] < 1e-3
    deployed = next(r for r in runs(workdir["uri"]) if r.info.run_id != trained.info.run_id)
    assert deployed.info.status == "FINISHED" and deployed.data.tags["dlas.model_uri"] == uri
