"""The form-follows-function study: several compiled paths timed in one run next to the
network's size and the host's cache, and the preset that sweeps pattern x depth x width."""

from __future__ import annotations

import itertools

import pytest
from conftest import ROOT, TINY_DEPLOY, compose, overrides, runs

from dlas.hardware import last_level_cache_bytes
from dlas.models import PATTERNS
from dlas.models.patterns import param_count
from dlas.stack import run_point

TINY = [*TINY_DEPLOY, "model=residual", "model.depth=1", "model.width=4"]


@pytest.mark.e2e
@pytest.mark.tvm
@pytest.mark.slow
def test_compared_compilers_are_timed_in_the_same_run(workdir):
    compare = "measure.compare=[pytorch,onnxruntime,openvino]"
    metrics = run_point(compose(*overrides(workdir, *TINY, "compiler=tvm_untuned", compare)))
    (run,) = runs(workdir["uri"])
    assert run.info.status == "FINISHED"
    logged = run.data.metrics
    for compiler in ("tvm_untuned", "pytorch", "onnxruntime", "openvino"):
        assert logged[f"{compiler}/latency_ms_median"] > 0
        assert logged[f"{compiler}/max_abs_err_vs_torch"] < 1e-3
        speedup = logged["torch_latency_ms"] / logged[f"{compiler}/latency_ms_median"]
        assert logged[f"{compiler}/speedup_vs_torch"] == pytest.approx(speedup)
    # the main compiler keeps the unprefixed schema every other run has
    assert logged["latency_ms_median"] == logged["tvm_untuned/latency_ms_median"]
    assert metrics["speedup_vs_torch"] == pytest.approx(logged["tvm_untuned/speedup_vs_torch"])
    params = param_count("residual", 1, 4, num_classes=10)
    assert logged["params"] == params
    assert params * 4 <= logged["param_bytes"] <= params * 4 + 1024  # + BatchNorm statistics
    assert logged["working_set_bytes"] > logged["param_bytes"]
    assert logged["llc_bytes"] == last_level_cache_bytes() > 0
    assert (run.data.params["model.depth"], run.data.params["model.width"]) == ("1", "4")


@pytest.mark.parametrize(
    ("compare", "message"),
    [
        ("[tvm]", "unknown compiler 'tvm'; valid choices: onnxruntime, openvino, pytorch"),
        ("[tvm_autoschedule]", "make it the main compiler"),
    ],
)
def test_bad_compare_fails_before_a_run_naming_it(workdir, compare, message):
    cfg = compose(*overrides(workdir, *TINY, f"measure.compare={compare}"))
    with pytest.raises(ValueError, match=message):
        run_point(cfg)
    assert runs(workdir["uri"]) == []  # found before any run opened, so nothing trained


def test_preset_sweeps_every_pattern_at_two_depths_and_widths():
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from dlas.compiler import COMPILERS

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose(
            config_name="config", overrides=["experiment=form_function"], return_hydra_config=True
        )
        grid = {k: str(v).split(",") for k, v in cfg.hydra.sweeper.params.items()}
        assert grid["model"] == list(PATTERNS)
        points = list(itertools.product(*grid.values()))
        assert len(points) == 24
        for values in points:
            point = hydra_compose(
                config_name="config",
                overrides=[
                    "experiment=form_function",
                    *(f"{k}={v}" for k, v in zip(grid, values, strict=True)),
                ],
            )
            assert point.model.name == values[0] and point.model.depth == int(values[1])
            assert point.compiler.name == "tvm_autoschedule" and point.compiler.trials == 0
            assert (
                set(point.measure.compare)
                == {"openvino", "onnxruntime", "torch_compile"}
                < set(COMPILERS.names())
            )
            assert point.tracking.experiment == "dlas-form-function"


@pytest.mark.parametrize(
    ("preset", "experiment"),
    [
        ("form_function_networks", "dlas-form-function"),  # one report with the patterns
        ("form_function_quick", "dlas-form-function-quick"),
    ],
)
def test_network_presets_set_nas_found_beside_hand_crafted(preset, experiment):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from dlas.models import NAS_CELLS, ZOO

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose(
            config_name="config", overrides=[f"experiment={preset}"], return_hydra_config=True
        )
        models = str(cfg.hydra.sweeper.params.model).split(",")
        assert set(NAS_CELLS) <= set(models) and set(models) & set(ZOO)
        for model in models:  # each at its own model file's size, as the sweep runs it
            point = hydra_compose(
                config_name="config", overrides=[f"experiment={preset}", f"model={model}"]
            )
            assert point.model.name == model and point.tracking.experiment == experiment
            assert "openvino" in point.measure.compare
            if model == "darts":  # the paper's CIFAR network
                assert (point.model.depth, point.model.width) == (20, 36)
