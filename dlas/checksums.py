"""Checksummed folders: a manifest of every file's sha256 and size, verified on read.

A cache entry that is truncated (a full disk, a killed copy) or garbled (a bad sector, a
stray edit) would otherwise be served as if it were the model that was trained: a
truncated ``model.pt`` fails deep inside ``torch.load`` with no path, a garbled
``model.pt2`` may even load. Hashing every file when the folder is written, and again
before it is used, turns both into one clear answer: this folder is not what was written.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
_CHUNK = 1 << 20


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(folder: Path, **extra: Any) -> dict[str, Any]:
    """Hash every file of ``folder`` into ``folder/manifest.json`` (plus ``extra`` fields,
    e.g. who wrote it). Written last, so its presence also marks the folder complete."""
    files = {
        p.name: {"sha256": sha256(p), "bytes": p.stat().st_size}
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != MANIFEST
    }
    manifest = {**extra, "files": files}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


def verify(folder: Path) -> tuple[dict[str, Any] | None, str | None]:
    """``(manifest, None)`` when every listed file is there with its size and sha256, else
    ``(None, what is wrong)``. Sizes are checked first: a truncated file costs no hashing."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files = manifest["files"]
    except FileNotFoundError:
        return None, f"no {MANIFEST} (written by an older dlas, or not completely)"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return None, f"unreadable {MANIFEST}: {e}"
    for name, want in files.items():
        path = folder / name
        try:
            size = path.stat().st_size
        except OSError as e:
            return None, f"{name}: {e.strerror or e}"
        if size != want["bytes"]:
            return None, f"{name} is {size} bytes, {want['bytes']} were written"
    for name, want in files.items():
        if sha256(folder / name) != want["sha256"]:
            return None, f"{name} does not match its sha256"
    return manifest, None
