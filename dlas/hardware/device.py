"""Layer 6 door: ``get_device(name, ...)`` -> :class:`Device`, the hardware a point is
compiled for and measured on, checked when it is built so a sweep fails before compiling.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

import tvm

from dlas.hardware.rpc import (
    DEFAULT_RPC_KEY,
    HardwareUnavailableError,
    request_session,
    wait_for_key,
)
from dlas.hardware.targets import (
    TargetSpec,
    host_target,
    parse_target,
    target_summary,
    with_num_cores,
)
from dlas.hardware.threads import available_cores

DEVICES = ("cpu", "cuda", "rpc")
DEFAULT_TRACKER_PORT = 9190


@dataclass
class Device:
    """Where code runs: the TVM target to compile for and how to reach the hardware.

    Picklable (targets pickle), so a Device can be handed to a measurement subprocess;
    an RPC session is opened per measurement by :meth:`session`, never stored.
    """

    name: str
    target: tvm.target.Target
    target_host: tvm.target.Target | None = None
    threads: int = 0
    host: str | None = None
    port: int | None = None
    key: str | None = None
    timeout: float = 10.0
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def is_remote(self) -> bool:
        return self.name == "rpc"

    @property
    def compile_target(self) -> tvm.target.Target:
        """The target ``tvm.compile`` should get: ``target`` with its host attached."""
        if self.target_host is None:
            return self.target
        return tvm.target.Target(self.target, host=self.target_host)

    @property
    def device_type(self) -> int:
        """DLPack device type of ``target`` (1 = CPU, 2 = CUDA, ...)."""
        return int(self.target.get_target_device_type())

    def session(self, session_timeout: float = 0) -> Any:
        """A fresh ``RPCSession`` on a server with this device's key (RPC devices only)."""
        if not self.is_remote:
            raise ValueError(f"hardware={self.name} is local; only hardware=rpc has a session")
        assert self.host is not None and self.port is not None and self.key is not None
        return request_session(self.host, self.port, self.key, session_timeout=session_timeout)

    def runtime_device(self, session: Any = None) -> Any:
        """The ``tvm.runtime.Device`` to run on: local, or on ``session`` for RPC."""
        if session is not None:
            return session.device(self.device_type, 0)
        return tvm.runtime.device(self.device_type, 0)

    def describe(self) -> dict[str, Any]:
        """Flat params for tracking: hardware name, threads, target (short form)."""
        params: dict[str, Any] = {
            "hardware": self.name,
            "threads": self.threads,
            "target": target_summary(self.target),
        }
        if self.target_host is not None:
            params["target_host"] = target_summary(self.target_host)
        if self.is_remote:
            params["rpc"] = f"{self.key}@{self.host}:{self.port}"
        return params


def _cpu(threads: int, target: TargetSpec, target_host: TargetSpec) -> Device:
    resolved = threads or available_cores()
    tgt = (
        host_target(resolved) if target is None else with_num_cores(parse_target(target), resolved)
    )
    host = None if target_host is None else parse_target(target_host)
    return Device("cpu", tgt, host, threads=resolved, info={"cores": available_cores()})


def _cuda(threads: int, target: TargetSpec, target_host: TargetSpec) -> Device:
    import torch

    visible = {
        "tvm.cuda().exist": bool(tvm.cuda(0).exist),
        "tvm.runtime.enabled('cuda')": bool(tvm.runtime.enabled("cuda")),
        "torch.cuda.is_available()": bool(torch.cuda.is_available()),
    }
    if not (visible["tvm.cuda().exist"] and visible["tvm.runtime.enabled('cuda')"]):
        facts = ", ".join(f"{k}={v}" for k, v in visible.items())
        raise HardwareUnavailableError(
            f"hardware=cuda: no CUDA GPU usable by TVM on this machine ({facts}); "
            f"valid choices: {', '.join(DEVICES)} (hardware=cpu runs here, hardware=rpc "
            "measures on a remote board)"
        )
    if target is None:
        arch = "sm_" + str(tvm.cuda(0).compute_version).replace(".", "")
        tgt = tvm.target.Target({"kind": "cuda", "arch": arch})
    else:
        tgt = parse_target(target)
    host = host_target(threads) if target_host is None else parse_target(target_host)
    resolved = threads or available_cores()
    return Device("cuda", tgt, host, threads=resolved, info={"gpu": tvm.cuda(0).device_name})


def _rpc(
    threads: int,
    target: TargetSpec,
    target_host: TargetSpec,
    *,
    host: str | None,
    port: int | None,
    key: str | None,
    timeout: float,
) -> Device:
    host = host or "127.0.0.1"
    port = int(port or DEFAULT_TRACKER_PORT)
    key = key or DEFAULT_RPC_KEY
    summary = wait_for_key(host, port, key, timeout=timeout)  # fails fast naming host:port
    if target is None:
        # Same-machine assumption (loopback, or an identical board): say so, since code for
        # this CPU may not run on another one.
        tgt = host_target(threads)
        print(
            f"dlas: hardware=rpc without a target: compiling for this host "
            f"({target_summary(tgt)}); set hardware.target to cross-compile",
            file=sys.stderr,
        )
    else:
        tgt = with_num_cores(parse_target(target), threads)
    tgt_host = None if target_host is None else parse_target(target_host)
    return Device(
        "rpc",
        tgt,
        tgt_host,
        threads=threads,
        host=host,
        port=port,
        key=key,
        timeout=timeout,
        info={"servers": len(summary.get("server_info", []))},
    )


def get_device(
    name: str,
    *,
    threads: int = 0,
    target: TargetSpec = None,
    target_host: TargetSpec = None,
    host: str | None = None,
    port: int | None = None,
    key: str | None = None,
    timeout: float = 10.0,
    emulates: str | None = None,
) -> Device:
    """Layer 6 by name: ``cpu`` (this host, target detected), ``cuda`` (a visible GPU) or
    ``rpc`` (a TVM tracker at ``host:port`` serving ``key``; checked now, within
    ``timeout`` seconds, so a sweep fails before compiling anything).

    ``threads`` 0 means every core for ``cpu``, and the remote server's own setting for
    ``rpc``. ``target`` / ``target_host`` accept dicts, JSON, tags or legacy strings.
    ``emulates`` (the ISA presets') labels what narrower CPU the target stands for: it is
    logged with the run's params, and changes nothing here.
    """
    if threads < 0:
        raise ValueError(f"threads={threads} must be >= 0 (0 = every core)")
    if name == "cpu":
        return _cpu(threads, target, target_host)
    if name == "cuda":
        return _cuda(threads, target, target_host)
    if name == "rpc":
        return _rpc(threads, target, target_host, host=host, port=port, key=key, timeout=timeout)
    raise ValueError(f"unknown hardware {name!r}; valid choices: {', '.join(DEVICES)}")
