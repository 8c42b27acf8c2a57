"""The run schema: the names of the params, metrics and tags a stack point logs.

Written once for the modules that log them (``dlas.stack``, ``dlas.deployment``) and the
ones that read them back (``dlas.report``, ``dlas.search``, the tests), so that a writer
and a reader cannot drift apart: renaming a metric here renames it on both sides, and a
reader that asks for a name no writer logs fails at import, not in an empty column.
Everything here is a plain string; the module imports nothing.
"""

from __future__ import annotations

# ------------------------------------------------------------------ params
#: every key of these config groups is logged flattened (``model.depth``, ...)
LAYER_GROUPS = ("dataset", "model", "compression", "algorithm", "compiler", "hardware", "trainer")
# ...and one short name per layer choice, which the report and the MLflow UI group by
DATASET = "dataset"
MODEL = "model"
COMPRESSION = "compression"
AMOUNT = "compression.amount"  # 0 where a compression has no ratio knob
ALGORITHM = "algorithm"
DATA_FORMAT = "data_format"
ALGORITHM_LABEL = "algorithm_label"  # "<algorithm>" or "<algorithm>/<format>"
COMPILER = "compiler"
HARDWARE = "hardware"
THREADS = "threads"  # resolved: the cores the point ran on, not the config's 0
SEED = "seed"
TASK = "task"  # the dataset's problem space (dlas.training.tasks)...
QUALITY_METRIC = "quality_metric"  # ...and the metric its quality is: top1, miou
DEPTH = "model.depth"  # form-function patterns: blocks per stage
WIDTH = "model.width"  # form-function patterns: channels of the first stage
# layers 4-6
BATCH_SIZE = "batch_size"
TUNING_TRIALS = "tuning_trials"
COMPUTE_DTYPE = "compute_dtype"  # float32, float16 or int8: the compression's
TARGET = "target"
TUNING_KEPT = "tuning_kept"  # "tuned" or "untuned": which won end to end

# ------------------------------------------------------------------ metrics, layers 1-3
TOP1 = "top1"  # percent, test split, of the compressed model (classification)
TOP5 = "top5"
#: the task's own measure, higher is better (dlas.training.tasks): top1 for
#: classification, miou for segmentation; what fronts and searches compare across tasks
QUALITY = "quality"
BASELINE_QUALITY = "baseline_quality"
PARAMS = "params"
NONZERO_PARAMS = "nonzero_params"
SIZE_BYTES = "size_bytes"  # the serialized exported program
MACS = "macs"
NONZERO_MACS = "nonzero_macs"
SPARSITY = "sparsity"
CHANNELS_KEPT = "channels_kept"
BASELINE_TOP1 = "baseline_top1"
BASELINE_PARAMS = "baseline_params"
BASELINE_MACS = "baseline_macs"
TRAIN_S = "train_s"
COMPRESS_S = "compress_s"
CACHE_HIT = "cache_hit"
TRAIN_CACHE_HIT = "train_cache_hit"
PRUNED = "pruned"  # returned (not logged) by a point a search gate stopped
# the model's memory (dlas.metrics.memory_footprint) beside the host's last-level cache
PARAM_BYTES = "param_bytes"
WORKING_SET_BYTES = "working_set_bytes"
LLC_BYTES = "llc_bytes"

# ------------------------------------------------------------------ metrics, layers 4-6
#: the main compiler's latency statistics are ``latency_ms_<statistic>``
LATENCY = "latency_ms"
LATENCY_MS = "latency_ms_median"  # the latency: median of the timed samples
LATENCY_MS_MEAN = "latency_ms_mean"
LATENCY_MS_STD = "latency_ms_std"
LATENCY_MS_P90 = "latency_ms_p90"
TORCH_LATENCY_MS = "torch_latency_ms"  # eager PyTorch, timed in the same rounds
SPEEDUP = "speedup_vs_torch"  # torch_latency_ms / latency_ms_median
SPEEDUP_LO = "speedup_vs_torch_lo"  # its 95% interval over the rounds
SPEEDUP_HI = "speedup_vs_torch_hi"
LATENCY_CV = "latency_cv"
TORCH_LATENCY_CV = "torch_latency_cv"
CPU_LOAD_BEFORE = "cpu_load_before"
CPU_LOAD_DURING = "cpu_load_during"
MEASURE_ATTEMPTS = "measure_attempts"
MEASURE_ROUNDS = "measure_rounds"
COMPILE_S = "compile_s"
TUNE_S = "tune_s"
MAX_ABS_ERR = "max_abs_err_vs_torch"  # on measure.verify_samples images
VERIFY_TOLERANCE = "verify_tolerance"
COMPILED_TOP1 = "compiled_top1"  # the compiled model's top-1 on those images...
REFERENCE_TOP1 = "reference_top1"  # ...and PyTorch's on the same ones (classification)
COMPILED_QUALITY = "compiled_quality"  # the same for the task's quality, any task
REFERENCE_QUALITY = "reference_quality"
SPARSE_LAYERS = "sparse_layers"
TUNED_END_TO_END_MS = "tuned_end_to_end_ms"
UNTUNED_END_TO_END_MS = "untuned_end_to_end_ms"
#: what every deployed run logs for its timing, whatever its compiler
TIMING = (
    LATENCY_MS,
    TORCH_LATENCY_MS,
    SPEEDUP,
    SPEEDUP_LO,
    SPEEDUP_HI,
    LATENCY_CV,
    TORCH_LATENCY_CV,
    CPU_LOAD_BEFORE,
    CPU_LOAD_DURING,
    MEASURE_ATTEMPTS,
)
#: logged again under ``<compiler>/`` for every compiled path of ``measure.compare``
PER_COMPILER = (LATENCY_MS, SPEEDUP, SPEEDUP_LO, SPEEDUP_HI, LATENCY_CV)
PER_COMPILER_BUILD = (COMPILE_S, TUNE_S, MAX_ABS_ERR)


def of_compiler(compiler: str, metric: str) -> str:
    """A compared compiler's own copy of ``metric`` (``onnxruntime/latency_ms_median``)."""
    return f"{compiler}/{metric}"


# ------------------------------------------------------------------ tags
ENTRY = "dlas.entry"  # train, deploy, characterize; report and search for their own runs
CONFIG_HASH = "dlas.config_hash"  # the point's identity (dlas.stack.point_hash)
SWEEP_ID = "dlas.sweep_id"
NOISY = "dlas.noisy"  # why a latency is not to be trusted (busy machine)
PRUNED_TAG = "dlas.pruned"  # why a search gate stopped the point before deployment
STUDY = "dlas.study"
TRIAL = "dlas.trial"
ERROR = "error"  # a FAILED run's exception, one line
REPORT_OF = "dlas.report_of"  # the experiment a report run summarizes
RUN_NAME = "mlflow.runName"
