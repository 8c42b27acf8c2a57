"""The study's answer: its Pareto-optimal trials as a table and a plot, in a folder and
as the artifacts of a ``search-<study>`` run in ``<experiment>-reports`` (beside the
points, not among them)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pandas as pd
from mlflow import MlflowClient

from dlas.report.artifacts import report_experiment
from dlas.tracking import schema


def pareto_table(study: optuna.Study) -> pd.DataFrame:
    names = study.metric_names or [f"objective_{i}" for i in range(len(study.directions))]
    rows = []
    for t in sorted(study.best_trials, key=lambda t: t.number):
        row = {"trial": t.number, **dict(zip(names, t.values, strict=True))}
        row["point"] = " ".join(t.user_attrs.get("overrides", []))
        row["run_id"] = t.user_attrs.get("run_id", "")
        rows.append(row)
    return pd.DataFrame(rows, columns=["trial", *names, "point", "run_id"])


def write_pareto(study: optuna.Study, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    table = pareto_table(study)
    csv, md = out_dir / "pareto.csv", out_dir / "pareto.md"
    table.to_csv(csv, index=False)
    md.write_text(table.to_markdown(index=False) + "\n")
    files = [csv, md]
    if len(study.directions) in (2, 3) and study.best_trials:
        import warnings

        with warnings.catch_warnings():  # optuna marks its matplotlib plots experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            ax = optuna.visualization.matplotlib.plot_pareto_front(
                study, target_names=study.metric_names
            )
        ax.set_title(f"Pareto front of study {study.study_name!r} ({len(study.trials)} trials)")
        png = out_dir / "pareto_front.png"
        ax.figure.savefig(png, dpi=150, bbox_inches="tight")
        # optuna draws with pyplot: close the figure, or every write keeps one open.
        # No backend is forced here (importing this module must not change a caller's
        # matplotlib); without a display, matplotlib falls back to Agg by itself.
        import matplotlib.pyplot as plt

        plt.close(ax.figure)
        files.append(png)
    return files


def log_pareto(files: list[Path], uri: str, experiment: str, study: optuna.Study) -> str:
    client = MlflowClient(tracking_uri=uri)
    run = client.create_run(
        report_experiment(client, experiment),
        run_name=f"search-{study.study_name}",
        tags={schema.ENTRY: "search", schema.STUDY: study.study_name},
    )
    for path in files:
        client.log_artifact(run.info.run_id, str(path))
    client.log_metric(run.info.run_id, "pareto_trials", len(study.best_trials))
    client.log_metric(run.info.run_id, "trials", len(study.trials))
    client.set_terminated(run.info.run_id, status="FINISHED")
    return run.info.run_id
