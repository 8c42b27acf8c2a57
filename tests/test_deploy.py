"""Layers 4-6 through the real entry points: compile, verify against PyTorch, time, log;
bad systems choices fail before a run opens, with a named error, while a sweep goes on."""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from conftest import GPU, TINY_DEPLOY, compose, overrides, run_entry, runs

from dlas.errors import UserError
from dlas.models.export import export_model
from dlas.stack import run_point
from dlas.tracking import schema

TINY = TINY_DEPLOY
# Two stages of one residual block: a stride-2 conv (Winograd falls back on it) and a
# projection shortcut, at a fraction of resnet18's compile time, for the tests that
# compile a model several times without asking for a zoo model.
SMALL = [*TINY, "model=residual", "model.depth=1", "model.width=4", "model.stages=2"]
LATENCY = {
    *schema.TIMING,
    schema.LATENCY_MS_MEAN,
    schema.LATENCY_MS_STD,
    schema.LATENCY_MS_P90,
    schema.COMPILE_S,
    schema.TUNE_S,
    schema.MAX_ABS_ERR,
    schema.COMPILED_TOP1,
    schema.REFERENCE_TOP1,
}


def layers_of(run) -> list[dict]:
    path = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="layers.json")
    with open(path) as f:
        return json.load(f)["layers"]


@pytest.mark.e2e
@pytest.mark.tvm
@pytest.mark.slow
def test_default_point_compiles_verifies_and_times(workdir):
    metrics = run_point(compose(*overrides(workdir, *TINY)))
    assert set(metrics) >= LATENCY
    assert metrics["max_abs_err_vs_torch"] < 1e-3
    assert metrics["latency_ms_median"] > 0 and metrics["speedup_vs_torch"] > 0
    (run,) = runs(workdir["uri"])
    assert run.info.status == "FINISHED"
    assert {schema.BATCH_SIZE, schema.TUNING_TRIALS, schema.COMPUTE_DTYPE} <= set(run.data.params)
    records = layers_of(run)
    assert records and all(r["algorithm"] == "direct" for r in records if r["op"] == "conv2d")
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"compiled", "model", "layers.json", "latencies.json", "pipeline.json"} <= artifacts
    steps = json.loads(
        Path(
            mlflow.artifacts.download_artifacts(
                run_id=run.info.run_id, artifact_path="pipeline.json"
            )
        ).read_text()
    )["tvm_untuned"]
    names = [s["step"] for s in steps]
    assert names[0] == "import_exported_program" and "layer4_algorithms" in names
    assert "default_schedules" in names and names[-1] == "build_library_llvm"
    path = mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path="latencies.json"
    )
    with open(path) as f:
        timing = json.load(f)
    # the raw samples behind the logged medians: measure.repeat of them per runtime
    for runtime, median in (("tvm_untuned", "latency_ms_median"), ("pytorch", "torch_latency_ms")):
        samples = [s for r in timing["samples"][runtime] for s in r]
        assert len(samples) == 3
        assert float(np.median(samples)) == pytest.approx(metrics[median])
    assert len(timing["attempts"]) == metrics["measure_attempts"]
    # how long each worker waited for its threads to go idle after a round
    assert set(timing["settle_ms_max"]) == {"tvm_untuned", "pytorch"}
    assert all(0 < ms <= 2000 for ms in timing["settle_ms_max"].values())


@pytest.mark.e2e
@pytest.mark.tvm
@pytest.mark.slow
def test_deploy_sweeps_algorithms_and_compilers_without_retraining(workdir):
    assert run_entry("train.py", *overrides(workdir, *SMALL, "deploy=false")).returncode == 0
    sweep = run_entry(
        "deploy.py",
        "-m",
        *overrides(workdir, *SMALL),
        "algorithm=gemm,winograd",  # direct: the default point's test; spatial_pack: test_schedules
        "compiler=tvm_untuned",
        f"hydra.sweep.dir={workdir['tmp']}/multirun",
    )
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    framework = run_entry("deploy.py", *overrides(workdir, *SMALL), "compiler=pytorch")
    assert framework.returncode == 0, framework.stderr[-3000:]
    deployed = [r for r in runs(workdir["uri"]) if r.data.tags.get("dlas.entry") == "deploy"]
    assert len(deployed) == 3 and {r.info.status for r in deployed} == {"FINISHED"}
    assert {r.data.params["compiler"] for r in deployed} == {"tvm_untuned", "pytorch"}
    for r in deployed:
        assert r.data.metrics["max_abs_err_vs_torch"] < 1e-3
        assert not any(k.startswith("train-") for k in r.data.metrics)  # nothing trained
    winograd = next(
        r
        for r in deployed
        if r.data.params["algorithm"] == "winograd" and r.data.params["compiler"] == "tvm_untuned"
    )
    chosen = {r["algorithm"] for r in layers_of(winograd) if r["op"] == "conv2d"}
    assert "winograd" in chosen and len(chosen) > 1  # strided convs fell back, recorded


@pytest.mark.e2e
@pytest.mark.tvm
@pytest.mark.slow
def test_deploy_needs_a_trained_model(workdir):
    result = run_entry("deploy.py", *overrides(workdir, *TINY, "model=vgg16"))
    assert result.returncode != 0 and "run train.py with the same overrides first" in result.stderr
    assert "Traceback" not in result.stderr
    assert runs(workdir["uri"]) == []  # found missing before a run opened


@pytest.mark.parametrize(
    "bad, message",
    [
        ("algorithm=winograd algorithm.data_format=csr", "winograd"),
        pytest.param(
            "hardware=cuda",
            "hardware=cuda",
            marks=[pytest.mark.gpu, pytest.mark.skipif(GPU, reason="a GPU is visible here")],
        ),
        ("hardware=rpc hardware.port=1", "127.0.0.1:1"),
        ("compiler.name=tvm_fast", "valid choices"),
        ("compiler=onnxruntime hardware=cuda", "runs on hardware=cpu only"),
        ("algorithm=best", "needs compiler=tvm_autoschedule"),
        (
            "algorithm=best compiler=tvm_autoschedule measure.compare=[tvm_untuned]",
            "untuned in measure.compare (here: tvm_untuned)",
        ),
        ("algorithm=best algorithm.candidates=[direct,fft]", "'best': candidates"),
    ],
)
def test_bad_systems_choices_fail_before_a_run_with_the_reason(workdir, bad, message):
    # a bad value (ConfigError) or hardware that is not here (HardwareUnavailableError):
    # both are user errors, printed as one line
    with pytest.raises(UserError, match=re.escape(message)):
        run_point(compose(*overrides(workdir, *TINY, *bad.split())))
    assert not (Path(workdir["tmp"]) / "mlruns" / "mlflow.db").exists()  # no run, no store


@pytest.mark.e2e
@pytest.mark.tvm
@pytest.mark.slow
def test_a_sweep_goes_on_past_a_failed_point(workdir):
    result = run_entry(
        "train.py",
        "-m",
        *overrides(workdir, *TINY),
        "algorithm=winograd",
        "algorithm.data_format=csr,dense",
        f"hydra.sweep.dir={workdir['tmp']}/multirun",
    )
    assert result.returncode != 0  # the sweep reports its failure at the end
    assert "dlas: error: " in result.stderr and "winograd" in result.stderr
    statuses = {r.data.params["data_format"]: r.info.status for r in runs(workdir["uri"])}
    assert statuses == {"dense": "FINISHED"}  # the bad point opened no run


def test_untraceable_model_is_named():
    class DataDependent(torch.nn.Module):
        def forward(self, x):
            return x * 2 if x.sum() > 0 else x  # control flow on values

    with pytest.raises(RuntimeError, match="torch.export could not trace DataDependent"):
        export_model(DataDependent(), torch.randn(2, 3))


@pytest.mark.tuning
@pytest.mark.e2e
@pytest.mark.tvm
@pytest.mark.slow
def test_autoschedule_reuses_its_database(workdir):
    args = overrides(
        workdir,
        *SMALL,
        "model.stages=1",  # fewer tasks: every task's default schedule is timed first
        "compiler=tvm_autoschedule",
        "compiler.trials=4",
        "compiler.trials_per_task=2",
    )
    first = run_point(compose(*args))
    second = run_point(compose(*args))
    assert first["tune_s"] > 0 and second["tune_s"] == 0
    assert first["max_abs_err_vs_torch"] < 1e-3 and second["max_abs_err_vs_torch"] < 1e-3
    # the end-to-end check of tuned vs untuned is logged, once measured, then re-applied
    assert second["tuned_end_to_end_ms"] == first["tuned_end_to_end_ms"] > 0
    kept = {r.data.params["tuning_kept"] for r in runs(workdir["uri"])}
    assert len(kept) == 1 and kept <= {"tuned", "untuned"}


@pytest.mark.tuning
@pytest.mark.e2e
@pytest.mark.tvm
@pytest.mark.slow
def test_best_gives_each_layer_its_fastest_tuned_candidate(workdir):
    # two candidates and one stage keep the tuning to a few tasks (each MetaSchedule
    # round has a fixed cost, whatever its size); the choice rule itself is unit-tested
    args = overrides(
        workdir,
        *TINY,
        "model=residual",
        "model.depth=1",
        "model.width=4",
        "model.stages=1",
        "algorithm=best",
        "algorithm.candidates=[direct,winograd]",
        "compiler=tvm_autoschedule",
        "compiler.trials_per_task=1",
    )
    first = run_point(compose(*args))
    assert first["max_abs_err_vs_torch"] < 1e-3 and first["tune_s"] > 0
    (run,) = runs(workdir["uri"])
    convs = [r for r in layers_of(run) if r["op"] == "conv2d"]
    assert convs
    for layer in convs:
        assert layer["requested"] == "best" and set(layer["candidate_ms"]) == {"direct", "winograd"}
        timed = {k: v for k, v in layer["candidate_ms"].items() if v is not None}
        assert timed, layer  # the layer's kernels were tuned under some candidate
        assert timed[layer["algorithm"]] == min(timed.values()), layer


@pytest.mark.e2e
@pytest.mark.tvm
@pytest.mark.slow
@pytest.mark.parametrize("compression, dtype", [("quant", "int8"), ("fp16", "float16")])
def test_int8_and_fp16_points_compile_and_verify(workdir, compression, dtype):
    metrics = run_point(
        compose(
            *overrides(
                workdir,
                *TINY,
                f"compression={compression}",
                "compression.calibration_batches=2" if compression == "quant" else "seed=0",
            )
        )
    )
    (run,) = runs(workdir["uri"])
    assert run.info.status == "FINISHED" and run.data.params["compute_dtype"] == dtype
    assert metrics["max_abs_err_vs_torch"] <= metrics["verify_tolerance"]
    if dtype == "int8":
        records = layers_of(run)
        assert records  # the integer convs were legalized like any other


def test_outputs_over_tolerance_or_not_finite_fail_verification():
    import numpy as np
    from omegaconf import OmegaConf

    from dlas.deployment import Compiled, VerificationError, disagreement, verify
    from dlas.training import get_task

    ref = np.array([[1.0, -4.0]], dtype=np.float32)
    assert disagreement(ref + 2e-4, ref, "float32") == pytest.approx((2e-4, 1e-3), rel=1e-3)
    assert disagreement(ref + np.nan, ref, "float32")[0] == float("inf")
    cfg = OmegaConf.create(
        {"measure": {"tolerance": None}, "algorithm": {"name": "direct", "data_format": "dense"}}
    )
    task = get_task("classification")
    score = functools.partial(
        task.quality_of, target=np.array([0]), num_classes=2, ignore_index=None
    )

    def compiled(outputs: np.ndarray) -> Compiled:
        return Compiled(outputs, None, 0.0, 0.0, 0, [], None)  # type: ignore[arg-type]

    got = verify("tvm_untuned", cfg, compiled(ref + 2e-4), ref, score, task, "float32")
    assert got["max_abs_err_vs_torch"] == pytest.approx(2e-4, rel=1e-3)
    assert got["compiled_top1"] == got["compiled_quality"] == 100.0
    for bad in (ref + 1e-2, ref * np.nan):
        with pytest.raises(VerificationError, match="compiler=tvm_untuned algorithm=direct"):
            verify("tvm_untuned", cfg, compiled(bad), ref, score, task, "float32")


# A compiler from outside dlas: one module and one YAML file, nothing else touched.
PLUGIN_MODULE = '''
"""PyTorch eager on channels-last tensors: a layer-5 option dlas does not ship."""
import time

from dlas.compiler.base import Compiled, Compiler, register_compiler
from dlas.compiler.measure import Loaded, Worker, sample_callable
from dlas.hardware.cores import exclusive
from dlas.hardware.threads import set_threads


def _channels_last(path, x):
    import torch

    from dlas.compiler.baselines import load_module

    module = load_module(path).to(memory_format=torch.channels_last)
    tensor = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)
    return lambda: module(tensor)


def _open(program_path, static_path, inputs, example, threads):
    import torch

    resolved, started = set_threads(threads), time.perf_counter()
    with torch.inference_mode():
        outputs = _channels_last(program_path, inputs)().numpy()
        run = _channels_last(static_path, example)
        run()

    def timer(protocol):
        with torch.inference_mode():
            return sample_callable(run, protocol)

    return Loaded(outputs, timer, time.perf_counter() - started, resolved)


@register_compiler("channels_last")
class ChannelsLast(Compiler):
    def compile_and_open(self, cfg, device, inputs, out_dir, tuning_root, cores):
        worker = Worker("verify and time channels_last", timeout=inputs.timeout_s, cores=cores)
        with exclusive():
            outputs = worker.start(
                _open, inputs.program_path, inputs.static_path, inputs.x, inputs.example,
                device.threads,
            )
        layers = [{"layer": "all", "algorithm": "channels_last kernels", "format": "dense"}]
        return Compiled(outputs, None, worker.setup_s, 0.0, 0, layers, inputs.static_path, worker)
'''

PLUGIN_YAML = """\
defaults:
  - /schema/compiler/base@_here_
  - _self_
_target_: dlas_channels_last.ChannelsLast
name: channels_last
"""


@pytest.mark.e2e
@pytest.mark.tvm
@pytest.mark.slow
def test_a_new_compiler_is_one_module_and_one_yaml(workdir, tmp_path):
    (tmp_path / "dlas_channels_last.py").write_text(PLUGIN_MODULE)
    (tmp_path / "conf" / "compiler").mkdir(parents=True)
    (tmp_path / "conf" / "compiler" / "channels_last.yaml").write_text(PLUGIN_YAML)
    result = run_entry(
        "train.py",
        *overrides(workdir, *TINY, "compiler=channels_last"),
        f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
        env={"PYTHONPATH": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = runs(workdir["uri"])
    assert run.info.status == "FINISHED"
    assert run.data.params["compiler"] == "channels_last"
    assert set(run.data.metrics) >= LATENCY
    assert run.data.metrics["max_abs_err_vs_torch"] < 1e-3  # verified like every compiler
    assert layers_of(run) == [
        {"layer": "all", "algorithm": "channels_last kernels", "format": "dense"}
    ]
    # named only in measure.compare, it is found from its YAML's _target_ too; and a point
    # it cannot run on fails before a run opens, as the built-in ones do
    compared_only = ["compiler=tvm_untuned", "measure.compare=[channels_last]"]
    bad = run_entry(
        "train.py",
        *overrides(workdir, *TINY, *compared_only, "hardware=rpc"),
        f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
        env={"PYTHONPATH": str(tmp_path)},
    )
    assert bad.returncode != 0 and "compiler=channels_last runs on hardware=cpu only" in bad.stderr
    assert len(runs(workdir["uri"])) == 1
