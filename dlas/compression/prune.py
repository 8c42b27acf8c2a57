"""Unstructured global magnitude pruning (torch.nn.utils.prune).

All conv and linear weights compete in one global L1 ranking, so layers with many
redundant weights lose more. ``steps > 1`` is the gradual schedule of Zhu & Gupta
(2017) in its geometric form: each step removes the same fraction of what remains,
reaching ``amount`` after the last, with fine-tuning after every step while the
masks hold pruned weights at zero. The masks are then made permanent, so the
model is a plain module whose zeros a sparse data format (layer 4) can exploit;
on its own, unstructured sparsity makes nothing faster.
"""

from __future__ import annotations

from torch.nn.utils import prune

from dlas.compression.base import Compression, prunable_layers, weight_sparsity
from dlas.registry import check_fraction


class UnstructuredPrune(Compression):
    name = "prune"

    def __init__(self, *, amount: float = 0.5, steps: int = 1, **kwargs) -> None:
        super().__init__(**kwargs)
        self._amount = check_fraction("compression.amount", amount)
        if steps < 1:
            raise ValueError(f"compression.steps={steps} must be >= 1")
        self.steps = steps

    def step_amount(self) -> float:
        """Fraction of the *remaining* weights removed at each step."""
        return 1.0 - (1.0 - self._amount) ** (1.0 / self.steps)

    def apply(self, model, data, finetune):
        params = [(m, "weight") for _, m in prunable_layers(model)]
        for _ in range(self.steps):
            prune.global_unstructured(
                params, pruning_method=prune.L1Unstructured, amount=self.step_amount()
            )
            if self.finetune_epochs:
                model = finetune(model, self.finetune_epochs, self.finetune_lr)
        for module, attr in params:
            prune.remove(module, attr)
        weights = [m.weight for _, m in prunable_layers(model)]
        total = sum(w.numel() for w in weights)
        nonzero = sum(int(w.count_nonzero()) for w in weights)
        self.report = {
            "dtype": "float32",
            "prunable_params": total,
            "prunable_nonzero": nonzero,
            "sparsity": 1.0 - nonzero / total,
            "sparsity_per_layer": weight_sparsity(model),
        }
        return model
