"""Characterize the ineffectual computations of one stack point's model (or a sweep with
-m): value sparsity, precision and bit sparsity per layer, and ideal accelerator
speedups, logged to MLflow.  python characterize.py compression=prune compression.amount=0.9"""

import hydra
from omegaconf import DictConfig

import dlas  # noqa: F401  (registers the config schemas)
import dlas.characterize  # noqa: F401  (registers the characterize schema)
from dlas.cli import entry, task


@hydra.main(version_base="1.3", config_path="conf", config_name="characterize")
@task
def main(cfg: DictConfig) -> float:
    from dlas.characterize.run import characterize_point

    return characterize_point(cfg)["mac_sparsity"]


if __name__ == "__main__":
    entry(main)
