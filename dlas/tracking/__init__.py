"""Experiment tracking (MLflow): one run per stack point, one schema for all."""

from dlas.tracking.mlflow_run import RunLogger, flatten, setup_experiment, tracked_run

__all__ = ["RunLogger", "flatten", "setup_experiment", "tracked_run"]
