"""Run one point of the stack (or a sweep with -m): data -> train -> compress -> fine-tune
-> evaluate, logged to MLflow.  python train.py model=vgg16 compression=prune"""

import hydra
from omegaconf import DictConfig

import dlas  # noqa: F401  (registers the config schemas)
from dlas.cli import entry, task


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
@task
def main(cfg: DictConfig) -> float:
    from dlas.stack import run_point

    return run_point(cfg)["quality"]  # top1 for classification, miou for segmentation


if __name__ == "__main__":
    entry(main)
