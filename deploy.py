"""Layers 4-6 alone on an already trained and compressed model: compile, verify, time.
python deploy.py -m algorithm=direct,gemm,spatial_pack,winograd compiler=tvm_untuned,pytorch"""

import hydra
from omegaconf import DictConfig

import dlas  # noqa: F401  (registers the config schemas)
from dlas.cli import entry, task


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
@task
def main(cfg: DictConfig) -> float:
    from dlas.stack import deploy_point

    return deploy_point(cfg)["latency_ms_median"]


if __name__ == "__main__":
    entry(main)
