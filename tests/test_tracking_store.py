"""Tracking-store outages: an unreachable server or a sqlite store in a missing folder
fails in seconds as one line naming it; a server that dies mid-run costs the run's
results nothing (they are written to its output folder, and one command imports them)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest
from conftest import ROOT, overrides, run_entry, start_entry
from mlflow.exceptions import MlflowException

from dlas.errors import StoreUnavailableError
from dlas.tracking import spool
from dlas.tracking.mlflow_run import tracked_run
from dlas.tracking.replay import replay
from dlas.tracking.store import check_store


def _closed_port() -> int:
    with socket.socket() as sock:  # bound, then released: nothing listens there
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _one_error_line(result) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("dlas: error: ")]
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0]


def test_an_unreachable_server_is_named_in_seconds():
    uri = f"http://127.0.0.1:{_closed_port()}"
    start = time.monotonic()
    with pytest.raises(StoreUnavailableError, match="no MLflow tracking store answers") as err:
        check_store(uri)
    assert time.monotonic() - start < 10  # MLflow alone: ~4.5 min of retries
    assert f"tracking.uri={uri}" in str(err.value) and "Connection refused" in str(err.value)


@pytest.mark.e2e
@pytest.mark.slow
def test_an_unreachable_server_fails_the_entry_point_in_one_line(workdir):
    uri = f"http://127.0.0.1:{_closed_port()}"
    start = time.monotonic()
    result = run_entry("train.py", *overrides(workdir, f"tracking.uri={uri}"), timeout=120)
    elapsed = time.monotonic() - start
    line = _one_error_line(result)
    assert f"tracking.uri={uri}" in line and "Connection refused" in line
    assert elapsed < 90, elapsed  # start-up and validation included; the check itself ~0 s


@pytest.mark.e2e
@pytest.mark.slow
def test_a_sqlite_store_in_a_missing_folder_is_an_error(workdir):
    missing = Path(workdir["tmp"]) / "typo" / "mlflow.db"
    result = run_entry(
        "train.py", *overrides(workdir, f"tracking.uri=sqlite:///{missing}"), timeout=120
    )
    line = _one_error_line(result)
    assert f"the folder {missing.parent} does not exist" in line
    assert not missing.parent.exists()  # no fresh, empty store was started


def _failing_after(calls: int):
    """A stand-in for ``spool.send`` whose store dies after ``calls`` calls."""
    real, count = spool.send, [0]

    def send(client, run_id, entry, local):
        count[0] += 1
        if count[0] > calls:
            raise MlflowException("API request to http://127.0.0.1:1/x failed with exception boom")
        real(client, run_id, entry, local)

    return send


def test_a_run_whose_store_dies_is_spooled_and_replayed(workdir, tmp_path, monkeypatch):
    monkeypatch.setattr(spool, "send", _failing_after(2))
    report = tmp_path / "report.txt"
    report.write_text("a file artifact")
    opened = tracked_run(workdir["uri"], "dlas", run_name="p", spool_root=tmp_path / "out")
    with pytest.raises(StoreUnavailableError, match="dlas.tracking.replay") as err, opened as run:
        run.log_params({"model": "resnet18"})  # call 1: reaches the store
        run.log_metrics({"top1": 91.5})  # call 2: reaches the store
        run.log_metrics({"latency_ms_median": 3.25})  # the store is gone from here on
        run.set_tag("cache_hit", "false")
        run.log_dict({"layers": []}, "layers.json")
        run.log_artifact(report, "notes")
    folder = tmp_path / "out" / run.run_id
    assert str(folder) in str(err.value)
    journal = spool.read(folder)
    assert journal.status == "FINISHED" and journal.offline_reason
    assert journal.params() == {"model": "resnet18"} and journal.tags()["cache_hit"] == "false"
    assert (folder / "artifacts" / "notes" / "report.txt").exists()
    client = mlflow.MlflowClient(workdir["uri"])
    assert client.get_run(run.run_id).info.status == "RUNNING"  # nothing could close it

    monkeypatch.undo()
    assert replay(folder) == run.run_id  # the store knows the run: the same run is completed
    got = client.get_run(run.run_id)
    assert got.info.status == "FINISHED" and got.data.tags["cache_hit"] == "false"
    assert got.data.metrics == {"top1": 91.5, "latency_ms_median": 3.25}
    names = {a.path for a in client.list_artifacts(run.run_id)}
    assert {"layers.json", "notes"} <= names
    with pytest.raises(Exception, match="already imported"):
        replay(folder)


def _start_server(tmp: Path, port: int) -> subprocess.Popen:
    """A real MLflow tracking server on loopback, artifacts written by the client itself."""
    log = (tmp / "server.log").open("w")
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{tmp}/server.db",
            "--default-artifact-root",
            str(tmp / "server-artifacts"),
            "--no-serve-artifacts",
        ],
        cwd=tmp,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its workers too are stopped by its process group
    )


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _wait_healthy(url: str, server: subprocess.Popen, deadline: float) -> None:
    while time.monotonic() < deadline:
        assert server.poll() is None, "the MLflow server exited"
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail("the MLflow server did not come up")


@pytest.mark.e2e
@pytest.mark.slow
def test_a_server_dying_mid_run_leaves_the_results_on_disk(workdir, monkeypatch, request):
    tmp = Path(workdir["tmp"])
    monkeypatch.setenv("TMPDIR", str(tmp))  # a private core lock: other jobs cannot delay us
    started = time.monotonic()
    port = _closed_port()
    url = f"http://127.0.0.1:{port}"
    server = _start_server(tmp, port)
    try:
        _wait_healthy(url, server, started + 60)
        args = [
            *overrides(workdir, f"tracking.uri={url}"),
            "dataset=synthetic",
            "dataset.num_samples=48",
            "dataset.image_size=16",
            "model=plain",  # a tiny network: epochs of a fraction of a second
            "model.depth=1",
            "model.width=8",
            "trainer.max_epochs=12",
            f"hydra.run.dir={tmp}/out",
        ]
        log = tmp / "train.log"
        proc = start_entry("train.py", *args, log=log)
        request.addfinalizer(lambda: _stop(proc))  # bounded: never left running
        client = mlflow.MlflowClient(url)
        training_by = time.monotonic() + 90
        while time.monotonic() < training_by:  # until the run is training
            assert proc.poll() is None, log.read_text()[-3000:]
            experiment = client.get_experiment_by_name("dlas")
            found = client.search_runs([experiment.experiment_id]) if experiment else []
            if found and any(k.startswith("train-") for k in found[0].data.metrics):
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"the run never started training:\n{log.read_text()[-3000:]}")
        run_id = found[0].info.run_id
    finally:
        os.killpg(server.pid, signal.SIGKILL)  # the store dies mid-run
        server.wait()
    killed = time.monotonic()
    code = proc.wait(timeout=60)
    stopped = time.monotonic() - killed
    text = log.read_text()
    assert code != 0, text[-3000:]
    assert stopped < 60, stopped
    folder = tmp / "out" / "mlflow" / run_id
    assert f"python -m dlas.tracking.replay {folder}" in text
    journal = spool.read(folder)  # the results, on disk
    assert journal.status == "FINISHED"
    assert {"dataset", "model", "trainer.max_epochs"} <= set(journal.params())
    assert "dlas.config_hash" in journal.tags()
    assert {"top1", "params", "size_bytes"} <= {m[0] for m in journal.metrics()}

    server_db = f"sqlite:///{tmp}/server.db"  # the dead server's own database
    imported = subprocess.run(  # the command the error line gave
        [sys.executable, "-m", "dlas.tracking.replay", str(folder), "--uri", server_db],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert imported.returncode == 0, imported.stderr[-3000:]
    run = mlflow.MlflowClient(server_db).get_run(run_id)
    assert run.info.status == "FINISHED" and "top1" in run.data.metrics
    timings = {"store_died_to_exit_s": stopped, "test_s": time.monotonic() - started}
    print(json.dumps({k: round(v, 1) for k, v in timings.items()}))
