"""algorithm=best's choice rule, on made-up tuned times: the winner per layer is the
fastest candidate's kernel under its real name, ties keep the earlier candidate, and a
layer with no tuned time keeps what the first candidate gave it."""

from __future__ import annotations

import math

import pytest

from dlas.compiler import per_layer
from dlas.compiler.per_layer import Candidate


def candidate(name: str, algorithms: list[str]) -> Candidate:
    records = [{"op": "conv2d", "algorithm": a} for a in algorithms]
    return Candidate(name, None, records + [{"op": "dense", "algorithm": "gemm"}])  # type: ignore[arg-type]


@pytest.fixture
def times(monkeypatch):
    table: dict[str, list[float]] = {}
    monkeypatch.setattr(per_layer, "conv_costs", lambda c, _dir, _target: table[c.algorithm])
    return table


def test_each_layer_gets_its_fastest_candidate(times) -> None:
    # layer 0: winograd wins; layer 1 is strided, so winograd's candidate fell back to
    # direct (same kernel, same time): the tie keeps direct, and it is named direct
    # either way; layer 2: gemm wins
    candidates = [
        candidate("direct", ["direct", "direct", "direct"]),
        candidate("gemm", ["gemm", "gemm", "gemm"]),
        candidate("winograd", ["winograd", "direct", "winograd"]),
    ]
    times |= {
        "direct": [3e-3, 1e-3, 4e-3],
        "gemm": [2e-3, 2e-3, 1e-3],
        "winograd": [1e-3, 1e-3, 5e-3],
    }
    chosen, notes = per_layer.choose(candidates, None, None)  # type: ignore[arg-type]
    assert chosen == ["winograd", "direct", "gemm"]
    assert notes[0] == {"direct": 3.0, "gemm": 2.0, "winograd": 1.0}


def test_a_layer_without_tuned_times_keeps_the_first_candidates_choice(times) -> None:
    candidates = [candidate("winograd", ["direct"]), candidate("gemm", ["gemm"])]
    times |= {"winograd": [math.inf], "gemm": [math.inf]}
    chosen, notes = per_layer.choose(candidates, None, None)  # type: ignore[arg-type]
    assert chosen == ["direct"] and notes == [{"winograd": None, "gemm": None}]


@pytest.mark.tvm
@pytest.mark.slow
def test_every_conv_layer_finds_its_fused_kernel_even_out_of_order() -> None:
    """A residual block with a strided 1x1 shortcut: FuseOps emits the shortcut's group
    before the main branch's last conv, and two layers share one conv kernel."""
    import torch
    import tvm
    from omegaconf import OmegaConf
    from torch import nn
    from tvm import relax

    from dlas.compiler import tvm_relax
    from dlas.hardware import get_device

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(4, 4, 3, padding=1)
            self.b = nn.Conv2d(4, 4, 3, padding=1)  # same shape as a: same kernel
            self.down = nn.Conv2d(4, 8, 3, stride=2, padding=1)
            self.c = nn.Conv2d(8, 8, 3, padding=1)
            self.shortcut = nn.Conv2d(4, 8, 1, stride=2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.relu(self.b(torch.relu(self.a(x))))
            return torch.relu(self.c(torch.relu(self.down(x))) + self.shortcut(x))

    x = torch.randn(1, 4, 8, 8)
    mod, dtype = tvm_relax.to_relax(torch.export.export(Block().eval(), (x,)), x)
    cfg = {"data_format": "dense", "sparsity_threshold": 0.0, "block_size": 4, "fallback": "direct"}
    algorithms = tvm_relax._Algorithms(OmegaConf.create(cfg | {"name": "direct"}))
    with get_device("cpu").compile_target:
        for _, step in tvm_relax.graph_passes(dtype) + tvm_relax.kernel_passes(algorithms):
            mod = step(mod)
    records = algorithms.records
    callees = per_layer._conv_callees(mod, records)
    for record, callee in zip(records, callees, strict=True):
        assert callee.startswith(f"fused_{record['kernel']}_"), (record, callee)
    # a and b are the same fused kernel, called twice; the other three are distinct
    assert callees[0] == callees[1] and len(set(callees)) == 4
    assert "add" in callees[-1] and records[-1]["shape"].endswith("1,1 s2 p0 g1")
    order = [
        b.value.args[0].name_hint
        for block in mod["main"].body.blocks
        for b in block.bindings
        if isinstance(b.value, relax.Call) and isinstance(b.value.args[0], tvm.ir.GlobalVar)
    ]
    # the case this guards: the shortcut (legalized last) is called before c
    assert order.index(callees[4]) < order.index(callees[3])


@pytest.mark.tvm
def test_building_best_without_a_tuning_budget_says_what_it_needs(tmp_path) -> None:
    """The library call gives the message check_layers gives a config (one source)."""
    import torch

    from dlas.algorithms import get_algorithm
    from dlas.compiler import tvm_relax
    from dlas.hardware import get_device

    model = torch.nn.Conv2d(3, 4, 3).eval()
    x = torch.randn(1, 3, 6, 6)
    with pytest.raises(ValueError, match="needs compiler=tvm_autoschedule"):
        tvm_relax.build(
            torch.export.export(model, (x,)), x, get_device("cpu"), get_algorithm("best"), tmp_path
        )
