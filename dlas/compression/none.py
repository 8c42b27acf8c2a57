"""The baseline, unchanged: the reference every other compression is compared with."""

from __future__ import annotations

from dlas.compression.base import Compression


class NoCompression(Compression):
    name = "none"

    def apply(self, model, data, finetune):
        if self.finetune_epochs:
            model = finetune(model, self.finetune_epochs, self.finetune_lr)
        self.report = {"dtype": "float32"}
        return model
