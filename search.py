"""Search the stack for the best trade-off with Optuna (multi-objective by default).
python search.py search.n_trials=8 [search.sampler=tpe] [search.constraints.min_top1=90]"""

import hydra
from omegaconf import DictConfig

import dlas  # noqa: F401  (registers the config schemas)
from dlas.cli import entry, task


@hydra.main(version_base="1.3", config_path="conf", config_name="search")
@task
def main(cfg: DictConfig) -> None:
    from pathlib import Path

    from hydra.core.hydra_config import HydraConfig

    from dlas.search import log_pareto, run_search, write_pareto

    overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith("search.")]
    study = run_search(cfg, overrides)
    files = write_pareto(study, Path(cfg.search.out_dir) / study.study_name)
    log_pareto(files, cfg.tracking.uri, cfg.tracking.experiment, study)
    print((Path(cfg.search.out_dir) / study.study_name / "pareto.md").read_text())


if __name__ == "__main__":
    entry(main)
