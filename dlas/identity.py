"""The identities dlas keys things by, each with a version salt of its own.

Why separate salts: a change that makes one kind of stored result wrong should drop that
kind only. Retraining every model is minutes; re-tuning every model is up to ~25 min per
model on 2 cores; and a sweep resumed after a change to how points are measured must redo
its points without retraining or re-tuning anything.

* :data:`STAGE_VERSION` keys the stage cache (trained and compressed models): bump it
  when training or compression code changes what a stage produces.
* :data:`TUNING_VERSION` keys the MetaSchedule databases (with the schedule templates'
  own ``TEMPLATE_VERSION``): bump it when tuning changes what a database holds.
* :data:`POINT_VERSION` keys a finished point (``dlas.config_hash``, what ``resume``
  reuses) and a sweep's identity: bump it when deployment or measurement changes what a
  point's metrics mean. A point's key includes ``TEMPLATE_VERSION`` too, so a resumed
  sweep re-times points whose kernels' default schedules changed.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

# 4: checksummed entries (manifest.json), seeded model initialisation, deterministic training.
STAGE_VERSION = 4
# 4: databases keyed by thread count and template version (the value of the shared salt
# they were written under, so no database is thrown away by the split).
TUNING_VERSION = 4
# 5: the point's identity includes the schedule templates' version.
POINT_VERSION = 5
#: Bump when a default schedule or a template's knobs change (``dlas.algorithms``):
#: tuning databases are keyed by it (their default-schedule candidate and their sampled
#: traces come from the templates), so a tuning made with older templates is redone, not
#: re-applied, and points are keyed by it, so a resumed sweep re-times them.
#: 2: several output-channel blocks per spatial-pack tile on small maps (never fewer
#: parallel tiles than cores). 3: a spatial-pack tile is one 8-pixel row of several
#: output-channel blocks where a row is 8 wide (was 2 rows of one block).
TEMPLATE_VERSION = 3


def config_hash(payload: Any, version: int) -> str:
    """A short, stable hash of a JSON-able ``payload`` under a version salt."""
    text = json.dumps({"v": version, "payload": payload}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def stage_key(payload: Any) -> str:
    return config_hash(payload, STAGE_VERSION)


def tuning_key(payload: dict[str, Any]) -> str:
    return config_hash(payload | {"templates": TEMPLATE_VERSION}, TUNING_VERSION)


def point_key(payload: Any) -> str:
    return config_hash({"point": payload, "templates": TEMPLATE_VERSION}, POINT_VERSION)
