"""A run's results on local disk, for when the tracking store stops answering mid-run.

Every param, metric, tag and artifact a run logs is also journaled in memory, marked
``sent`` once the store took it. When the store fails (after MLflow's bounded retries),
the run goes on offline and the journal is written to the run's output folder:
``run.json`` (the run's identity, status and every entry) and ``artifacts/`` (the
artifacts the store never got). ``python -m dlas.tracking.replay <folder>`` sends the
unsent entries once the store is back, into the same run, or into a new one if the
store does not know it.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SPOOL_FILE = "run.json"
REPLAYED_FILE = "replayed.json"


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Entry:
    """One logging call: ``params`` / ``tags`` ({key: value}), ``metrics``
    ([[key, value, timestamp_ms, step], ...]) or ``artifact`` ({"file": path inside the
    spool's artifacts/ folder, or null if it was sent, "dir": artifact path in the run})."""

    kind: str
    data: Any
    sent: bool = False


@dataclass
class Journal:
    uri: str
    experiment_id: str
    experiment: str
    run_id: str
    run_name: str | None
    start_time: int
    entries: list[Entry] = field(default_factory=list)
    status: str = "RUNNING"
    end_time: int | None = None
    offline_reason: str | None = None

    def unsent(self) -> list[Entry]:
        return [e for e in self.entries if not e.sent]

    def params(self) -> dict[str, str]:
        return {k: v for e in self.entries if e.kind == "params" for k, v in e.data.items()}

    def tags(self) -> dict[str, str]:
        return {k: v for e in self.entries if e.kind == "tags" for k, v in e.data.items()}

    def metrics(self) -> list[list[Any]]:
        return [m for e in self.entries if e.kind == "metrics" for m in e.data]


def send(client: Any, run_id: str, entry: Entry, local: Path | None) -> None:
    """Send one entry to the store (``local``: the artifact's file or folder)."""
    from mlflow.entities import Metric, Param, RunTag

    data = entry.data
    if entry.kind == "params":
        client.log_batch(run_id, params=[Param(k, v) for k, v in data.items()])
    elif entry.kind == "tags":
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in data.items()])
    elif entry.kind == "metrics":
        client.log_batch(run_id, metrics=[Metric(k, v, ts, step) for k, v, ts, step in data])
    elif entry.kind == "artifact":
        client.log_artifact(run_id, str(local), data["dir"])
    else:
        raise ValueError(f"unknown journal entry kind {entry.kind!r}")


def spool_artifact(folder: Path, local: Path, artifact_dir: str | None) -> str:
    """Copy ``local`` (a file or a folder) under ``folder/artifacts/<artifact_dir>``;
    returns its path relative to ``folder``."""
    dest = folder / "artifacts" / (artifact_dir or "") / local.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    if local.is_dir():
        shutil.copytree(local, dest, dirs_exist_ok=True)
    else:
        shutil.copy2(local, dest)
    return str(dest.relative_to(folder))


def write(journal: Journal, folder: Path) -> Path:
    """Write ``run.json`` atomically (a crash mid-write leaves the previous one)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SPOOL_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(journal), indent=1, default=str))
    tmp.replace(path)
    return path


def read(folder: Path) -> Journal:
    raw = json.loads((folder / SPOOL_FILE).read_text())
    raw["entries"] = [Entry(**e) for e in raw["entries"]]
    return Journal(**raw)
