"""Stage cache: trained and compressed models keyed by the config that produced them.

A sweep over compressions, algorithms and compilers shares its upstream stages: the
baseline depends only on (dataset, model, trainer, seed), the compressed model on
that plus the compression. Each entry is a folder ``<root>/<stage>/<key>/``.

What an entry can be trusted for, and how:

* **Written once, atomically.** It is written to a temporary folder, checksummed
  (``manifest.json``, written last) and renamed into place. Writers of one key hold its
  lock (``<root>/<stage>/.<key>.lock``, a ``filelock`` flock that the kernel releases when
  a process dies), so the first writer wins and a later save of the same key is a no-op
  that returns the stored entry: nothing is ever deleted under a reader, and no save fails
  because another one got there first. Temporary folders found while holding the lock
  belong to a writer that was killed, and are removed.
* **One computation per key.** The stack holds the same lock from looking an entry up to
  storing it (:meth:`StageCache.hold`), so when two processes run one point at once, one
  trains and the other waits and then reads the first one's entry.
* **Verified on read.** Every file's size and sha256 are checked before an entry is
  used; a bad entry is reported (a warning naming it and what is wrong), moved aside to
  ``<key>.corrupt-<time>`` for inspection, and treated as missing, so it is rebuilt.
* **Provenance.** The manifest records the MLflow run that computed the entry and when it
  was stored; runs are tagged with it, so the report and resume prefer the run whose
  numbers are the cached model's (:mod:`dlas.tracking.provenance`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout
from torch import nn

from dlas.checksums import verify, write_manifest

log = logging.getLogger("dlas.cache")


@dataclass
class Entry:
    """A cached stage result: the eager model (when it is one), its exported program,
    metadata (metrics, the compression report, timings), and who stored it when."""

    path: Path
    meta: dict[str, Any] = field(default_factory=dict)
    run_id: str | None = None  # the MLflow run that computed it
    written: float | None = None  # when it was stored (unix seconds)

    @property
    def program_path(self) -> Path:
        return self.path / "model.pt2"

    def model(self) -> nn.Module:
        try:
            return self._model()
        except Exception as e:  # a verified file that no longer unpickles (code changed)
            raise RuntimeError(f"cannot load the model of cache entry {self.path}: {e}") from e

    def _model(self) -> nn.Module:
        eager = self.path / "model.pt"
        if eager.exists():
            return torch.load(eager, weights_only=False)
        from torchao.quantization.pt2e import allow_exported_model_train_eval

        module = self.program().module()
        allow_exported_model_train_eval(module)
        return module

    def program(self) -> torch.export.ExportedProgram:
        from dlas.models.export import load_program  # torchvision: seconds, rarely needed

        return load_program(self.program_path)


class StageCache:
    """Entries under ``root``; ``enabled=False`` (``use_cache=false``) computes into a
    private scratch folder instead, so the shared cache is neither read nor written."""

    def __init__(self, root: str | os.PathLike, enabled: bool = True) -> None:
        self.enabled = enabled
        self._scratch = None if enabled else tempfile.TemporaryDirectory(prefix="dlas-nocache-")
        self.root = Path(root) if self._scratch is None else Path(self._scratch.name)

    def _lock(self, stage: str, key: str) -> FileLock:
        folder = self.root / stage
        folder.mkdir(parents=True, exist_ok=True)
        # One instance per path in this process: reentrant in a thread, exclusive across
        # threads and processes.
        return FileLock(folder / f".{key}.lock", is_singleton=True)

    @contextlib.contextmanager
    def hold(self, stage: str, key: str) -> Iterator[None]:
        """Hold the entry's lock: other holders of it, in any process, wait."""
        lock = self._lock(stage, key)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            log.info("waiting for %s: another process is computing this %s stage", lock, stage)
            lock.acquire()
        try:
            self._remove_stale(stage, key)
            yield
        finally:
            lock.release()

    def _remove_stale(self, stage: str, key: str) -> None:
        """Temporary folders of this key seen while holding its lock were left by a writer
        that died (every writer writes inside the lock)."""
        for tmp in (self.root / stage).glob(f".{key}.*.tmp"):
            log.info("removing %s, left by a writer that did not finish", tmp)
            shutil.rmtree(tmp, ignore_errors=True)

    def load(self, stage: str, key: str) -> Entry | None:
        """The verified entry, or None when there is none (or it was bad: set aside)."""
        if not (self.root / stage / key).exists():
            return None
        with self.hold(stage, key):
            return self._verified(stage, key)

    def _verified(self, stage: str, key: str) -> Entry | None:
        path = self.root / stage / key
        if not path.exists():
            return None
        manifest, problem = verify(path)
        if manifest is None:
            aside = path.with_name(
                f"{key}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
            )
            os.rename(path, aside)
            log.warning(
                "cache entry %s is corrupt (%s): moved to %s, rebuilding it", path, problem, aside
            )
            return None
        meta = json.loads((path / "meta.json").read_text())
        return Entry(path, meta, manifest.get("run_id"), manifest.get("written"))

    def save(
        self,
        stage: str,
        key: str,
        *,
        meta: dict[str, Any],
        program: torch.export.ExportedProgram | None = None,
        model: nn.Module | None = None,
        run_id: str | None = None,
    ) -> Entry:
        """Store an entry, or return the one already stored under ``key`` (first wins)."""
        with self.hold(stage, key):
            existing = self._verified(stage, key)
            if existing is not None:
                log.info("%s is already stored (run %s): kept", existing.path, existing.run_id)
                return existing
            final = self.root / stage / key
            tmp = final.with_name(f".{key}.{uuid.uuid4().hex[:8]}.tmp")
            tmp.mkdir()
            try:
                if model is not None:
                    torch.save(model, tmp / "model.pt")
                if program is not None:
                    torch.export.save(program, tmp / "model.pt2")
                (tmp / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
                written = time.time()
                write_manifest(tmp, stage=stage, key=key, run_id=run_id, written=written)
                os.rename(tmp, final)  # final is absent: we hold the lock and checked
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            return Entry(final, meta, run_id, written)
