"""``python characterize.py``: characterize one stack point's model and log it.

The model is the stack's: ``validated`` checks every value and builds the layers, and
the baseline and the compressed model come from the stage cache under the keys
``train.py`` uses, so a point trained or compressed before is never recomputed (and one
that was not is trained here, exactly as ``train.py`` would, into the same cache).
Everything runs inside the host's core lock (``computing()``), as every dlas job that
computes does.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch.utils.data import DataLoader, Subset

from dlas.characterize.analysis import NETWORK_METRICS, Characterization, characterize_model
from dlas.characterize.config import CharacterizeConf, validate
from dlas.characterize.figures import write_figures
from dlas.data import ImageClassificationData
from dlas.hardware.cores import computing
from dlas.identity import point_key
from dlas.report.tables import write_table
from dlas.stack import Point, point_hash, point_run, previous_result, quality_of, validated
from dlas.tracking import flatten, schema
from dlas.training.tasks import get_task

log = logging.getLogger("dlas.characterize")
ENTRY = "characterize"

# What each network-level metric means (network.md, and docs/characterize.md).
METRIC_DOCS = {
    "act_sparsity": "fraction of input-activation values that are zero (MAC-weighted)",
    "weight_sparsity": "fraction of all conv/linear weights that are zero",
    "mac_sparsity": "fraction of MACs with a zero activation or weight (padding counts as zero)",
    "mac_act_sparsity": "fraction of MACs with a zero activation",
    "mac_weight_sparsity": "fraction of MACs with a zero weight",
    "act_bits_layer": "bits to hold all of a layer's activations: msb - lsb + 1 (+1 sign)",
    "act_bits_group": "mean bits needed by each activation's group of group_size channels",
    "act_effectual_bits": "mean non-zero bits per activation (sign-magnitude)",
    "act_booth_terms": "mean non-zero signed-digit (Booth) terms per activation",
    "weight_bits_layer": "bits to hold all of a layer's weights (averaged over all weights)",
    "weight_bits_group": "mean bits needed by each weight's group of group_size input channels",
    "weight_effectual_bits": "mean non-zero bits per weight",
    "weight_booth_terms": "mean non-zero signed-digit (Booth) terms per weight",
    "speedup_zero_skip": "M / #MACs with both operands non-zero",
    "speedup_zero_skip_act": "M / #MACs with a non-zero activation",
    "speedup_zero_skip_weight": "M / #MACs with a non-zero weight",
    "speedup_layer_precision": "M*B / sum over MACs of the layer's activation precision",
    "speedup_dynamic_precision": "M*B / sum over MACs of the activation's group precision",
    "speedup_bit_serial_act": "M*B / sum over MACs of the activation's non-zero bits",
    "speedup_bit_serial_act_booth": "M*B / sum over MACs of the activation's Booth terms",
    "speedup_bit_serial_both": "M*B^2 / sum over MACs of terms(activation) * terms(weight)",
}


def sample_batches(
    data: ImageClassificationData, samples: int, batch_size: int, dtype: torch.dtype
) -> Callable[[], Iterator[torch.Tensor]]:
    """The first ``samples`` test images, the same ones on every call (both passes)."""
    data.setup()
    test_set = data.test_set
    assert test_set is not None
    subset = Subset(test_set, range(min(samples, len(test_set))))  # type: ignore[arg-type]
    loader = DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=0)

    def batches() -> Iterator[torch.Tensor]:
        for x, _ in loader:
            yield x.to(dtype)

    return batches


def run_name(cfg: DictConfig) -> str:
    """``characterize-<dataset>-<model>-<compression>[<amount>]``: distinct per point, so
    that report folders of different points never overwrite each other."""
    if cfg.tracking.run_name:
        return str(cfg.tracking.run_name)
    amount = cfg.compression.get("amount")
    suffix = f"{amount:g}" if amount else ""
    return f"characterize-{cfg.dataset.name}-{cfg.model.name}-{cfg.compression.name}{suffix}"


def characterization_hash(cfg: DictConfig) -> str:
    """This run's identity for resuming: the point plus the characterize knobs (the
    stack's ``point_hash`` leaves ``characterize`` out, as it is no part of a point)."""
    knobs = OmegaConf.to_container(cfg.characterize, resolve=True)
    return point_key({"point": point_hash(cfg, ENTRY), "characterize": knobs})


def characterize_point(cfg: DictConfig) -> dict[str, float]:
    """Validate, reuse a finished identical run if resuming, else characterize and log."""
    if cfg.get("characterize") is None:
        raise ValueError("no characterize settings: run characterize.py (conf/characterize.yaml)")
    settings = validate(cfg.characterize)
    point, _ = validated(cfg, systems=False)
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        cfg.tracking.run_name = run_name(cfg)
    run_hash = characterization_hash(cfg)
    done = previous_result(cfg, ENTRY, run_hash)
    if done is not None:
        return done
    with computing():
        return _characterize_point(cfg, point, settings, run_hash)


def _characterize_point(
    cfg: DictConfig, point: Point, settings: CharacterizeConf, run_hash: str
) -> dict[str, float]:
    name = str(cfg.tracking.run_name)
    out_dir = Path(settings.out or Path("reports") / "characterize" / name)
    tags = {"dlas.config_hash": run_hash}
    params = flatten("characterize", asdict(settings))
    with point_run(cfg, point, ENTRY, tags, params) as started:
        run = started.run
        _, _, train_hit, compressed, compress_hit = started.stages()
        batches = sample_batches(
            point.data, settings.samples, settings.batch_size, point.compression.input_dtype
        )
        result = characterize_model(
            compressed.model(),
            batches,
            bits=settings.bits,
            group_size=settings.group_size,
            booth=settings.booth,
            baseline_bits=settings.baseline_bits,
        )
        task = get_task(point.data.task)
        metrics = result.network | {
            **{metric: compressed.meta[metric] for metric in task.metrics},  # top1 / miou / psnr
            schema.QUALITY: quality_of(compressed.meta, task),
            "train_cache_hit": float(train_hit),
            "cache_hit": float(compress_hit),
        }
        run.log_metrics(metrics)
        paths = write_outputs(result, name, out_dir)
        for path in paths:
            run.log_artifact(path)
        log.info("characterization of %s: %s", name, out_dir)
    return metrics


def network_table(network: dict[str, float]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"metric": k, "value": network[k], "definition": METRIC_DOCS.get(k, "")}
            for k in NETWORK_METRICS
        ]
        + [{"metric": k, "value": network[k], "definition": ""} for k in ("macs", "samples")]
    )


def write_outputs(result: Characterization, title: str, out_dir: Path) -> list[Path]:
    """``layers.csv/.md`` (a row per layer), ``network.csv/.md`` and the figures."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = write_table(pd.DataFrame(result.layers), out_dir, "layers")
    paths += write_table(network_table(result.network), out_dir, "network")
    paths += write_figures(result.layers, result.network, title, out_dir)
    return paths
