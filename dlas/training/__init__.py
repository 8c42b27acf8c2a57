"""Training, fine-tuning and evaluation (Lightning + torchmetrics)."""

from dlas.training.fit import Trainer
from dlas.training.module import TaskModule
from dlas.training.tasks import TASKS, Task, get_task

__all__ = ["TASKS", "Task", "TaskModule", "Trainer", "get_task"]
