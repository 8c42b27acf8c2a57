"""Training, fine-tuning and evaluation (Lightning + torchmetrics)."""

from dlas.training.classifier import Classifier
from dlas.training.fit import Trainer

__all__ = ["Classifier", "Trainer"]
