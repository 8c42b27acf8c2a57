"""Shared fixtures: an isolated MLflow store and stage cache per test, tiny data, and
helpers that run the real entry point (``train.py``) in a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

# The presets of conf/debug/, which a user can run too (python train.py debug=fast):
# a point that trains in seconds, layers 1-3 only (tests of layers 4-6 add TINY_DEPLOY:
# 16x16 synthetic images, a few verification images and timed runs).
FAST = ["debug=fast"]
TINY_DEPLOY = ["debug=tiny_deploy"]

torch.set_num_threads(2)

#: tests that expect hardware=cuda to be missing skip where a GPU is visible (marker gpu)
GPU = torch.cuda.is_available()


@pytest.fixture
def workdir(tmp_path: Path) -> dict[str, str]:
    """A tracking URI and cache dir private to one test. The store's folder exists (dlas
    refuses to create a sqlite store in a missing folder); its database does not yet."""
    (tmp_path / "mlruns").mkdir()
    return {
        "uri": f"sqlite:///{tmp_path}/mlruns/mlflow.db",
        "cache": str(tmp_path / "cache"),
        "tmp": str(tmp_path),
    }


def overrides(workdir: dict[str, str], *extra: str) -> list[str]:
    return [f"tracking.uri={workdir['uri']}", f"cache_dir={workdir['cache']}", *FAST, *extra]


def compose(*args: str):
    """The same config train.py would get for these overrides."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import dlas  # noqa: F401

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(args))


def _env() -> dict[str, str]:
    env = {**os.environ, "CI": "1", "HYDRA_FULL_ERROR": "0"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def start_entry(script: str, *args: str, log: Path) -> subprocess.Popen:
    """Start an entry point in the background, in its own process group (a test can
    kill -9 the whole tree), its output going to ``log`` (a pipe nobody reads fills up).

    SIGINT is reset to its default first: a shell without job control starts background
    jobs (CI's pytest among them) with SIGINT ignored, children inherit that, and Python
    then never raises KeyboardInterrupt, so a test's Ctrl-C would be silently lost."""
    out = log.open("w")
    return subprocess.Popen(
        [sys.executable, str(ROOT / script), *args],
        cwd=ROOT,
        stdout=out,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(),
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def run_entry(
    script: str, *args: str, timeout: int = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run an entry point to its end; ``env`` adds to (or overrides) the test environment."""
    env = _env() | (env or {})
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def runs(uri: str, experiment: str = "dlas"):
    import mlflow

    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(experiment_names=[experiment], output_format="list")


def statuses(uri: str) -> list[str]:
    """Run statuses in ``uri``, or none while the entry point has not created the store."""
    try:
        return [r.info.status for r in runs(uri)]
    except Exception:
        return []
