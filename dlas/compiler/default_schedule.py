"""Layer 5's default schedules: what ``tvm_untuned`` runs, in DLAS's sense of "untuned".

TVM 0.27's CPU pipeline schedules nothing (``dlight.cpu`` has GEMV and Reduction rules
only), so without this pass every kernel is its TE compute's plain loop nest, one thread.
DLAS's untuned code was each primitive's hand-written schedule with default knobs; those
schedules live beside their computes in ``dlas.algorithms`` (registered by anchor block
name in ``dlas.algorithms.schedule.ANCHORS``), and this pass applies them through TVM's
own mechanism for default schedules, ``dlight.ApplyDefaultSchedule``:

- a kernel whose anchor block is a layer-4 compute (``conv2d_direct``, ``gemm``, ...) gets
  that compute's schedule, epilogue fused into its tile; the stages before its anchor
  (padding, packing, im2col) get the generic schedule;
- every other kernel (pooling, add, concat, softmax, layout transforms, TVM's own
  ``matmul``) gets the generic one: its injective stages inlined into one loop nest,
  parallel outer loops, vectorized innermost loop; so does any block an anchor's
  schedule leaves standing after it.

The same rule with ``tunable=True`` is MetaSchedule's search space for a layer-4 kernel
(``dlas.compiler.tvm_relax``): one template, default knobs untuned, sampled knobs tuned.
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx

import dlas.algorithms.legalize  # noqa: F401 - imports (so registers) every layer-4 schedule
from dlas.algorithms.schedule import (
    ANCHORS,
    OWN_STAGES,
    Knobs,
    ScheduleError,
    get_block,
    inline_injective,
    is_scheduled,
    root_blocks,
    schedule_stage,
)


def anchor_of(sch: s_tir.Schedule) -> str | None:
    """The name of the kernel's layer-4 anchor block, if it has one."""
    return _anchor_in([sch.get(block).name_hint for block in root_blocks(sch)])


def _anchor_in(names: list[str]) -> str | None:
    return next((name for name in ANCHORS if name in names), None)


def schedule_kernel(
    func: tirx.PrimFunc, target: tvm.target.Target, tunable: bool = False, seed: int = -1
) -> s_tir.Schedule:
    """The default (or, ``tunable``, one sampled) schedule of one kernel."""
    sch = s_tir.Schedule(func, seed=seed) if seed >= 0 else s_tir.Schedule(func)
    apply_schedule(sch, target, tunable)
    return sch


def apply_schedule(sch: s_tir.Schedule, target: tvm.target.Target, tunable: bool) -> None:
    """Schedule the kernel held by ``sch`` in place (MetaSchedule's ``ScheduleFn`` calls
    this on its own schedule, so the template's instructions land in the search trace)."""
    knobs = Knobs.for_target(sch, target, tunable)
    blocks = root_blocks(sch)
    names = [sch.get(b).name_hint for b in blocks]
    anchor = _anchor_in(names)
    if anchor is None:
        inline_injective(sch)
        blocks = root_blocks(sch)
        names = [sch.get(b).name_hint for b in blocks]
    producers = blocks[: names.index(anchor)] if anchor else blocks
    for block, name in zip(producers, names, strict=False):
        if name not in OWN_STAGES:
            schedule_stage(sch, block, knobs)
    if anchor is not None:
        try:
            ANCHORS[anchor](sch, get_block(sch, anchor), knobs)
        except ScheduleError:
            raise
        except Exception as err:  # a schedule primitive refused the layer
            first = str(err).strip().splitlines()
            raise ScheduleError(
                f"default schedule of {anchor!r} cannot apply: {first[-1] if first else err}"
            ) from err
        _schedule_leftovers(sch, names[names.index(anchor) + 1 :], knobs)


def _schedule_leftovers(sch: s_tir.Schedule, after: list[str], knobs: Knobs) -> None:
    """Blocks after the anchor that its schedule neither inlined nor computed inside its
    tile get the generic schedule, so no stage of a kernel stays a serial loop nest (an
    epilogue the anchor could not fuse used to run unscheduled after it)."""
    for name in after:
        try:
            block = sch.get_sblock(name)
        except Exception:  # noqa: BLE001 - TVM's own error type: inlined away
            continue
        loops = sch.get_loops(block)
        if not loops or len(sch.get_child_blocks(loops[0])) != 1:
            continue  # computed inside the anchor's nest
        if any(sch.get(loop).kind != tirx.ForKind.SERIAL for loop in loops):
            continue  # scheduled already (the anchor's fallback for an unfusable epilogue)
        schedule_stage(sch, block, knobs)


def narrow_indices() -> tvm.transform.Pass:
    """Every kernel with int32 loop and buffer indices where its sizes allow (Relax shapes
    are int64): TVM's tensor intrinsics (``vpdpbusd``) are written with int32 indices, and
    ``tensorize`` matches regions by their index type. Runs before tuning, so tuned and
    default schedules see the same kernels."""

    @tvm.transform.module_pass(opt_level=0, name="narrow_indices")
    def apply(mod: tvm.IRModule, _ctx: object) -> tvm.IRModule:
        updates = {}
        for gvar, func in mod.functions_items():
            if isinstance(func, tirx.PrimFunc):
                try:
                    narrowed = tvm.tirx.transform.ForceNarrowIndexToInt32()(
                        tvm.IRModule({"main": func})
                    )["main"]
                except Exception:  # noqa: BLE001 - TVM raises several types; keep int64
                    continue
                updates[gvar] = narrowed
        for gvar, func in updates.items():
            mod[gvar] = func
        return mod

    return apply


def default_schedules(target: tvm.target.Target | None = None) -> tvm.transform.Pass:
    """The pass: every kernel not yet scheduled (e.g. by a tuning database) gets its
    default schedule; a schedule that cannot apply fails naming the kernel."""

    @tvm.transform.module_pass(opt_level=0, name="default_schedules")
    def apply(mod: tvm.IRModule, _ctx: object) -> tvm.IRModule:
        tgt = target or tvm.target.Target.current(allow_none=False)
        if tgt.kind.name != "llvm":
            return mod
        updates = {}
        for gvar, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc) or is_scheduled(func):
                continue
            try:
                sch = schedule_kernel(func, tgt)
            except ScheduleError as err:
                raise ScheduleError(f"kernel {gvar.name_hint}: {err}") from err
            updates[gvar] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
        for gvar, func in updates.items():
            mod[gvar] = func
        return mod

    return apply
