"""Import a run that a tracking-store outage left on disk (``dlas.tracking.spool``).

    python -m dlas.tracking.replay outputs/<date>/<time>/mlflow/<run_id> [--uri URI]

If the store knows the run (it was created before the outage), the entries it never got
are sent into that same run and its status is set to the recorded one (FINISHED, FAILED
or KILLED; an ``error`` tag the orphan reaper added meanwhile is removed when the run had
none). Otherwise, e.g. ``--uri`` names another store, a new run is created with every
entry and tagged ``dlas.replayed_from``. A folder is replayed once (``replayed.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException

from dlas.errors import ConfigError, UserError
from dlas.tracking import spool
from dlas.tracking.store import setup_experiment


def _known(client: mlflow.MlflowClient, run_id: str) -> bool:
    try:
        client.get_run(run_id)
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise
    return True


def replay(folder: Path, uri: str | None = None) -> str:
    """Send the spooled run in ``folder`` to ``uri`` (default: its own store); returns
    the id of the run that now holds it."""
    done = folder / spool.REPLAYED_FILE
    if done.exists():
        before = json.loads(done.read_text())
        raise ConfigError(
            f"{folder} was already imported as run {before['run_id']} ({before['uri']})"
        )
    journal = spool.read(folder)
    uri = uri or journal.uri
    experiment_id = setup_experiment(uri, journal.experiment)  # checks the store first
    client = mlflow.MlflowClient(uri)
    if _known(client, journal.run_id):
        run_id, entries = journal.run_id, journal.unsent()
    else:
        tags = journal.tags() | {"dlas.replayed_from": journal.run_id}
        created = client.create_run(
            experiment_id, start_time=journal.start_time, tags=tags, run_name=journal.run_name
        )
        run_id, entries = created.info.run_id, journal.entries
    for entry in entries:
        if entry.kind == "artifact":
            if entry.data["file"] is None:  # it reached the original store only
                continue
            spool.send(client, run_id, entry, folder / entry.data["file"])
        else:
            spool.send(client, run_id, entry, None)
    if "error" not in journal.tags() and "error" in client.get_run(run_id).data.tags:
        client.delete_tag(run_id, "error")  # the reaper's "killed": the run did finish
    client.set_terminated(run_id, journal.status, journal.end_time)
    done.write_text(json.dumps({"run_id": run_id, "uri": uri}))
    return run_id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dlas.tracking.replay", description=__doc__)
    parser.add_argument("folder", type=Path, help="the run's spool folder (holds run.json)")
    parser.add_argument("--uri", help="tracking store to import into (default: the run's own)")
    args = parser.parse_args(argv)
    try:
        run_id = replay(args.folder, args.uri)
    except UserError as err:
        print(f"dlas: error: {err}", file=sys.stderr)
        return err.exit_code
    journal = spool.read(args.folder)
    where = args.uri or journal.uri
    print(f"imported {args.folder} into run {run_id} ({journal.status}) at {where}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
