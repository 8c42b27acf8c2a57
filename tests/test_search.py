"""search.py: the conditional space, bad search configs, and real studies through the
entry point (trials, failures, interruption, two workers on one study)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import optuna
import pytest
from conftest import ROOT, overrides, run_entry, runs, start_entry, statuses
from omegaconf import OmegaConf

from dlas.search import check_search, suggest_point
from dlas.search.study import gate


def search_cfg(*extra: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import dlas  # noqa: F401

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name="search", overrides=list(extra))


def test_sparse_formats_are_asked_only_of_pruned_models():
    space = search_cfg().search.space
    pruned = optuna.trial.FixedTrial(
        {
            "model": "resnet18",
            "compression": "prune",
            "prune.amount": 0.9,
            "compiler": "tvm_untuned",
            "data_format": "csr",
            "sparsity_threshold": 0.5,
            "threads": 2,
        }
    )
    got = suggest_point(pruned, space)
    assert "algorithm=gemm" in got and "algorithm.data_format=csr" in got
    assert "compression.amount=0.9000" in got
    # FixedTrial raises on any question it has no answer for: these trials prove that a
    # dense model is never asked for a format, a framework never for an algorithm, an
    # int8 model never offered Winograd, and trials_per_task only for MetaSchedule.
    dense = {"model": "vgg16", "compression": "none", "compiler": "tvm_autoschedule"}
    got = suggest_point(
        optuna.trial.FixedTrial(
            dense | {"algorithm": "winograd", "trials_per_task": 2, "threads": 1}
        ),
        OmegaConf.merge(space, {"model": ["vgg16"]}),
    )
    assert got == [
        "model=vgg16",
        "compression=none",
        "compiler=tvm_autoschedule",
        "algorithm=winograd",
        "compiler.trials=0",
        "compiler.trials_per_task=2",
        "hardware.threads=1",
    ]
    framework = {"model": "resnet18", "compression": "quant", "compiler": "tvm_untuned"}
    with pytest.raises(ValueError, match="winograd"):  # not among the int8 choices
        suggest_point(
            optuna.trial.FixedTrial(framework | {"algorithm_int8": "winograd", "threads": 1}),
            space,
        )
    got = suggest_point(
        optuna.trial.FixedTrial(
            {"model": "resnet18", "compression": "quant", "compiler": "onnxruntime", "threads": 1}
        ),
        OmegaConf.merge(space, {"compiler": ["onnxruntime"]}),
    )
    assert not any(o.startswith("algorithm") for o in got)


@pytest.mark.parametrize(
    "bad, message",
    [
        (["search.space.model=[resnet18,alexnet]"], "alexnet"),
        (["search.space.compiler=[tvm]"], "valid choices"),
        (["search.metrics=[top1]"], "same length"),
        (["search.metrics=[top1,speed]"], "speed"),
        (["search.directions=[maximize,smaller]"], "smaller"),
        (["deploy=false"], "deploy=false"),
        (["search.sampler=random"], "nsga2, tpe"),
        (["search.space.amount.prune=[0.5,1.5]"], "within"),
        (["search.space.compression=[none,zip]"], "zip"),
        # a segmentation dataset: top-1 means nothing there, nor do classifiers
        (
            ["dataset=digit_canvases", "search.space.model=[unet]", "search.metrics=[top1,macs]"],
            "min_quality",
        ),
        (
            ["dataset=digit_canvases", "search.metrics=[quality,latency_ms_median]"],
            "model=resnet18 is a classification network",
        ),
    ],
)
def test_bad_search_config_is_rejected_naming_the_value(bad, message):
    with pytest.raises(ValueError, match=message):
        check_search(search_cfg(*bad))


def test_a_compression_override_replaces_the_choices_and_keeps_the_ranges():
    space = search_cfg("search.space.compression=[none,prune]").search.space
    assert list(space.compression) == ["none", "prune"]
    assert list(space.amount.prune) == [0.5, 0.95]
    got = suggest_point(
        optuna.trial.FixedTrial(
            {"model": "resnet18", "compression": "quant", "compiler": "pytorch", "threads": 1}
        ),
        OmegaConf.merge(space, {"compression": ["quant"], "compiler": ["pytorch"]}),
    )
    assert got == ["model=resnet18", "compression=quant", "compiler=pytorch", "hardware.threads=1"]


def test_best_is_offered_to_metaschedule_only():
    space = search_cfg("search.space.algorithm=[direct,best]").search.space
    point = {"model": "resnet18", "compression": "none", "threads": 1}
    tuned = point | {"compiler": "tvm_autoschedule", "algorithm": "best", "trials_per_task": 1}
    assert "algorithm=best" in suggest_point(optuna.trial.FixedTrial(tuned), space)
    untuned = point | {"compiler": "tvm_untuned", "algorithm_untuned": "direct"}
    assert "algorithm=direct" in suggest_point(optuna.trial.FixedTrial(untuned), space)
    with pytest.raises(ValueError, match="best"):  # not among the untuned choices
        suggest_point(
            optuna.trial.FixedTrial(
                point | {"compiler": "tvm_untuned", "algorithm_untuned": "best"}
            ),
            space,
        )


def test_constraints_known_after_compression_stop_the_point():
    check = gate(OmegaConf.create({"min_top1": 90.0, "max_size_bytes": 1e6}))
    assert "min_top1" in check({"quality": 80.0, "top1": 80.0, "size_bytes": 1.0})
    assert "max_size_bytes" in check({"quality": 95.0, "top1": 95.0, "size_bytes": 2e6})
    assert check({"quality": 95.0, "top1": 95.0, "size_bytes": 1e5}) is None
    # min_quality is the task's own metric: a segmentation point's mIoU, no top1 needed
    check = gate(OmegaConf.create({"min_quality": 50.0, "max_size_bytes": None}))
    assert "min_quality 50.0" in check({"quality": 42.0, "miou": 42.0, "size_bytes": 1.0})
    assert check({"quality": 61.0, "miou": 61.0, "size_bytes": 1.0}) is None


def _search_args(workdir, *extra):
    return [
        *overrides(workdir, "dataset=synthetic", "dataset.num_samples=48"),
        f"search.storage=sqlite:///{workdir['tmp']}/optuna.db",
        f"search.out_dir={workdir['tmp']}/reports",
        "search.metrics=[top1,size_bytes]",
        "search.space.model=[resnet18]",
        "search.space.compression=[none,prune]",
        "search.space.amount.prune=[0.5,0.9]",
        *extra,
    ]


def _study(workdir):
    return optuna.load_study(
        study_name="dlas-codesign", storage=f"sqlite:///{workdir['tmp']}/optuna.db"
    )


@pytest.mark.e2e
@pytest.mark.slow
def test_search_runs_trials_as_tagged_runs_and_resumes_after_interrupt(workdir):
    # 8 trials: after the first one the rest are cache hits of a second or two each, and
    # the Ctrl-C must land while some are still to come
    args = _search_args(workdir, "search.n_trials=8", "search.seed=0")
    log = Path(workdir["tmp"]) / "search.log"
    proc = start_entry("search.py", *args, log=log)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # Ctrl-C once the first trial's run has finished
        if "FINISHED" in statuses(workdir["uri"]):
            break
        assert proc.poll() is None, log.read_text()[-3000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) != 0, log.read_text()[-3000:]
    assert len(_study(workdir).get_trials(states=[optuna.trial.TrialState.COMPLETE])) < 8

    rerun = run_entry("search.py", *args)  # the same study, topped up to 8 answers
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    study = _study(workdir)
    complete = study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
    assert len(complete) == 8 and len(study.best_trials) >= 1
    tagged = [r for r in runs(workdir["uri"]) if r.data.tags.get("dlas.study") == "dlas-codesign"]
    finished = {r.info.run_id for r in tagged if r.info.status == "FINISHED"}
    assert {t.user_attrs["run_id"] for t in complete} <= finished
    assert {int(r.data.tags["dlas.trial"]) for r in tagged} >= {t.number for t in complete}
    assert (ROOT / workdir["tmp"] / "reports" / "dlas-codesign" / "pareto_front.png").exists()


@pytest.mark.e2e
@pytest.mark.tvm
@pytest.mark.slow
def test_failing_trials_are_fail_in_optuna_and_open_no_mlflow_run(workdir):
    # pytorch runs on hardware=cpu only: every point fails its checks, before a run.
    args = _search_args(
        workdir,
        "search.n_trials=2",
        "deploy=true",
        "hardware=cuda",
        "search.space.compiler=[pytorch]",
    )
    result = run_entry("search.py", *args)
    assert result.returncode == 0, result.stderr[-3000:]  # the study went on
    trials = _study(workdir).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.FAIL] * 2
    assert all("CUDA" in t.user_attrs["error"] or "cuda" in t.user_attrs["error"] for t in trials)
    assert runs(workdir["uri"]) == []


@pytest.mark.e2e
@pytest.mark.slow
def test_two_workers_share_one_study(workdir):
    args = _search_args(workdir, "search.n_trials=4")
    logs = [Path(workdir["tmp"]) / f"worker{i}.log" for i in range(2)]
    workers = [start_entry("search.py", *args, log=log) for log in logs]
    for worker, log in zip(workers, logs, strict=True):
        assert worker.wait(timeout=600) == 0, log.read_text()[-3000:]
    # Which worker gets how many trials is a race (the first may answer all four before
    # the second is up); what must hold whatever the interleaving: each worker stops once
    # the study holds 4 answered trials, so at most one more than that is started (the
    # other worker's last, begun before the fourth ended); no trial is lost or run twice
    # (each one started in one worker's log, and each with its own MLflow run).
    trials = _study(workdir).get_trials()
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert 4 <= len(complete) <= len(trials) <= 5
    started = [
        int(line.split("trial ", 1)[1].split(":", 1)[0])
        for log in logs
        for line in log.read_text().splitlines()
        if "dlas.search" in line and "] - trial " in line
    ]
    assert sorted(started) == [t.number for t in trials]
    run_ids = [t.user_attrs["run_id"] for t in complete]
    assert len(set(run_ids)) == len(complete)
    by_trial = {r.data.tags.get("dlas.trial"): r.info.run_id for r in runs(workdir["uri"])}
    assert all(by_trial[str(t.number)] == t.user_attrs["run_id"] for t in complete)
    assert {t.user_attrs["worker"].rsplit(":", 1)[1] for t in trials} <= {
        str(w.pid) for w in workers
    }
