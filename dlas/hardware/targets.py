"""TVM targets for layer 6: what code is generated for, detected from the host or read from
the config.

TVM 0.27 only accepts targets as dicts, JSON, or tag / kind names; the old CLI form
``"llvm -mcpu=skylake"`` raises. Configs and papers still use that form, so
:func:`parse_target` translates it instead of failing, and every other form goes to
``tvm.target.Target`` unchanged.

The CPU model comes from LLVM's own host detection (the one ``Target.from_device("cpu")``
uses), so the generated code uses every vector extension the host has (AVX-512 on this
machine kind) instead of LLVM's generic x86-64 baseline.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import tvm

from dlas.hardware.threads import available_cores

TargetSpec = Any
"""Anything :func:`parse_target` accepts: a ``tvm.target.Target``, a mapping (also an
OmegaConf ``DictConfig``), a JSON string, a tag or kind name, or a legacy CLI string."""

# Options that LLVM / TVM take as lists: "-mattr=+avx2,+fma" -> ["+avx2", "+fma"].
_LIST_OPTIONS = {"mattr", "libs", "keys", "cl-opt"}


def host_cpu() -> str:
    """The host CPU model as LLVM names it (``znver5``, ``skylake-avx512``, ...), or
    ``"generic"`` when LLVM does not know it."""
    name = str(tvm.get_global_func("tvm.codegen.llvm.GetHostCPUName")())
    triple = str(tvm.get_global_func("tvm.codegen.llvm.GetDefaultTargetTriple")())
    if not name or not tvm.target.codegen.llvm_is_valid_cpu(name, triple):
        return "generic"
    return name


def host_target(threads: int = 0) -> tvm.target.Target:
    """LLVM target for this machine; ``num-cores`` is the thread count the code will run
    with (0 = every available core), which MetaSchedule uses to size parallel loops."""
    config: dict[str, Any] = {"kind": "llvm", "num-cores": threads or available_cores()}
    cpu = host_cpu()
    if cpu != "generic":
        config["mcpu"] = cpu
    return tvm.target.Target(config)


def _plain(value: Any) -> Any:
    """OmegaConf containers -> dict / list, without importing omegaconf."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return [_plain(v) for v in value]
    return value


def _option_value(key: str, raw: str) -> Any:
    if key in _LIST_OPTIONS:
        return [part for part in raw.split(",") if part]
    if raw.lstrip("-").isdigit():
        return int(raw)
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    return raw


def legacy_string_to_dict(spec: str) -> dict[str, Any]:
    """``"llvm -mcpu=cortex-a72 -mattr=+neon -num-cores=4"`` -> the dict TVM 0.27 wants.

    A flag without ``=`` (``-system-lib``) becomes ``True``.
    """
    kind, *options = spec.split()
    config: dict[str, Any] = {"kind": kind}
    for option in options:
        if not option.startswith("-"):
            raise ValueError(f"cannot parse target {spec!r}: option {option!r} lacks a leading '-'")
        key, sep, raw = option.lstrip("-").partition("=")
        config[key] = _option_value(key, raw) if sep else True
    return config


def parse_target(spec: TargetSpec) -> tvm.target.Target:
    """Any config form of a target -> ``tvm.target.Target``, with a message naming the spec
    when TVM rejects it."""
    if isinstance(spec, tvm.target.Target):
        return spec
    value = _plain(spec)
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            value = json.loads(text)
        elif len(text.split()) > 1:
            value = legacy_string_to_dict(text)
    host = value.pop("host", None) if isinstance(value, dict) else None
    try:
        if host is not None:
            return tvm.target.Target(value, host=parse_target(host))
        return tvm.target.Target(value)
    except Exception as err:  # TVM raises several types for a bad target
        raise ValueError(f"invalid TVM target {spec!r}: {err}".splitlines()[0]) from err


def with_num_cores(target: tvm.target.Target, threads: int) -> tvm.target.Target:
    """Set ``num-cores`` on a CPU target unless the config already chose one."""
    if threads <= 0 or target.kind.name != "llvm" or "num-cores" in target.attrs:
        return target
    config = dict(target.export())
    config["num-cores"] = threads
    return tvm.target.Target(config)


def target_summary(target: tvm.target.Target) -> str:
    """Short human form for logs and MLflow params: ``llvm mcpu=znver5 num-cores=2``."""
    attrs = target.attrs
    parts = [target.kind.name]
    for key in ("mtriple", "mcpu", "arch", "mattr", "num-cores"):
        if key in attrs:
            value = attrs[key]
            if not isinstance(value, str | int) and hasattr(value, "__iter__"):
                value = ",".join(str(v) for v in value)
            parts.append(f"{key}={value}")
    return " ".join(parts)
