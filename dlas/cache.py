"""Stage cache: trained and compressed models keyed by the config that produced them.

A sweep over compressions, algorithms and compilers shares its upstream stages: the
baseline depends only on (dataset, model, trainer, seed), the compressed model on
that plus the compression. Each entry is a folder ``<root>/<stage>/<key>/`` written
to a temporary name and renamed into place, so a run killed mid-write never leaves an
entry that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dlas.models.export import load_program

# Bump when a change to training or compression code makes old entries wrong.
CACHE_VERSION = 3


def config_hash(payload: Any) -> str:
    text = json.dumps({"v": CACHE_VERSION, "payload": payload}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Entry:
    """A cached stage result: the eager model (when it is one), its exported program,
    and metadata (metrics, the compression report, timings)."""

    path: Path
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def program_path(self) -> Path:
        return self.path / "model.pt2"

    def model(self) -> nn.Module:
        eager = self.path / "model.pt"
        if eager.exists():
            return torch.load(eager, weights_only=False)
        from torchao.quantization.pt2e import allow_exported_model_train_eval

        module = load_program(self.program_path).module()
        allow_exported_model_train_eval(module)
        return module

    def program(self) -> torch.export.ExportedProgram:
        return load_program(self.program_path)


class StageCache:
    def __init__(self, root: str | os.PathLike, enabled: bool = True) -> None:
        self.root = Path(root)
        self.enabled = enabled

    def load(self, stage: str, key: str) -> Entry | None:
        path = self.root / stage / key
        if not self.enabled or not (path / "meta.json").exists():
            return None
        return Entry(path, json.loads((path / "meta.json").read_text()))

    def save(
        self,
        stage: str,
        key: str,
        *,
        meta: dict[str, Any],
        program: torch.export.ExportedProgram | None = None,
        model: nn.Module | None = None,
    ) -> Entry:
        final = self.root / stage / key
        tmp = final.with_name(f".{key}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.mkdir(parents=True)
        try:
            if model is not None:
                torch.save(model, tmp / "model.pt")
            if program is not None:
                torch.export.save(program, tmp / "model.pt2")
            (tmp / "meta.json").write_text(
                json.dumps(meta, indent=1, default=str)
            )  # last: marks complete
            if final.exists():  # a concurrent run got there first; same key, same content
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return Entry(final, meta)
