"""Where runs are stored: an explicit sqlite database (MLflow 3 refuses plain file stores)
with artifacts in a folder beside it, so ``mlflow ui --backend-store-uri <uri>`` finds
everything; or a tracking server (``http(s)://``). Kept free of Lightning so that light
tools (``dlas.report``, ``search.py``) share these rules without paying its import.

The store is checked before a run opens, in seconds: MLflow's own client retries an
unreachable server for ~4.5 minutes per call (7 retries, exponential backoff) and then
prints a long traceback. dlas bounds MLflow's HTTP retries (unless the environment sets
them) so that a store dying mid-run costs seconds, after which the run goes on offline
(``dlas.tracking.mlflow_run``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
from filelock import FileLock

from dlas.errors import StoreUnavailableError

#: MLflow's HTTP client settings dlas uses unless the environment sets them (MLflow's
#: defaults: 7 retries, backoff factor 2, 120 s timeout). A refused connection then
#: fails after ~3 s, a server that accepts but never answers after ~1 min.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}
#: The up-front check: one attempt, a few seconds.
CHECK_TIMEOUT_S = 5


def sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None


def bound_http_retries() -> None:
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)


def one_line(err: BaseException) -> str:
    """The gist of an MLflow/requests failure: its innermost reason on one line."""
    text = " ".join(str(err).split())
    for pattern in (
        r"Connection refused",
        r"Name or service not known",
        r"No route to host",
        r"timed out",
        r"error code \d+ != 200",
    ):
        found = re.search(pattern, text)
        if found:
            return found.group(0)
    return text[:300]


@contextmanager
def _environment(**values: str) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def check_store(uri: str) -> None:
    """Fail in seconds, naming ``uri``, when runs cannot be stored there.

    A sqlite store must be in an existing folder: creating one where the user meant an
    existing store (a typo, another working directory) would silently start a fresh,
    empty history, and resume and reports would find nothing. Any other store gets one
    request without retries (``CHECK_TIMEOUT_S``) through MLflow's own client.
    """
    bound_http_retries()
    db = sqlite_path(uri)
    if db is not None:
        if not db.parent.is_dir():
            raise StoreUnavailableError(
                f"tracking.uri={uri}: the folder {db.parent.resolve()} does not exist; dlas "
                "does not start a new empty store where an existing one may be meant: create "
                f"the folder (mkdir -p {db.parent}) or fix tracking.uri / MLFLOW_TRACKING_URI"
            )
        return
    retries = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    timeout = {"MLFLOW_HTTP_REQUEST_TIMEOUT": str(CHECK_TIMEOUT_S)}
    try:
        with _environment(**retries, **timeout):
            mlflow.MlflowClient(uri).search_experiments(max_results=1)
    except Exception as err:
        hint = ""
        if uri.startswith(("http://", "https://")):
            hint = (
                "; start one (mlflow server --host <host> --port <port> --backend-store-uri "
                "sqlite:///mlruns/mlflow.db) or"
            )
        raise StoreUnavailableError(
            f"tracking.uri={uri}: no MLflow tracking store answers there ({one_line(err)})"
            f"{hint or ';'} set tracking.uri= / MLFLOW_TRACKING_URI to one that does"
        ) from err


def setup_experiment(uri: str, experiment: str, artifact_root: str | None = None) -> str:
    """Check the store, point MLflow at ``uri`` and return the id of ``experiment``,
    created if missing.

    For a sqlite store this runs under a file lock beside the database: MLflow creates
    and migrates its tables on first use, and two processes doing that at once (parallel
    sweep jobs, search workers) fail with "table already exists".
    """
    check_store(uri)
    db = sqlite_path(uri)
    if db is None:
        return _get_or_create(uri, experiment, artifact_root)
    if artifact_root is None:
        artifact_root = str((db.parent / "artifacts").resolve())
    with FileLock(str(db) + ".lock"):
        return _get_or_create(uri, experiment, artifact_root)


def _get_or_create(uri: str, experiment: str, artifact_root: str | None) -> str:
    mlflow.set_tracking_uri(uri)
    found = mlflow.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    location = os.path.join(artifact_root, experiment) if artifact_root else None
    try:
        return mlflow.create_experiment(experiment, artifact_location=location)
    except mlflow.exceptions.MlflowException:  # created meanwhile by another process
        found = mlflow.get_experiment_by_name(experiment)
        if found is None:
            raise
        return found.experiment_id
