"""The analytical cost model: a decision-aware roofline, the baseline learned models must beat.

On the costmodel floor; the fallback model the driver and search can be given
(`model.create("analytical")`) and the initial score the LightGBM model boosts from. Reads
a kernel, a `TileDecision` and a `Target`; writes nothing. Predicts latency as the larger
of compute time and memory time plus loop overhead. Compute time is FLOPs at the core's
peak scaled by how well the register tile feeds the FMA units (vector lanes used, enough
independent accumulators to hide FMA latency, no spills); memory time is the traffic the
cache tiling implies (each operand's tile footprint times the tiles that reload it) at the
bandwidth of the level the working set lives in. Utilization is the roofline bound over
that time, the same definition the measurement harness records.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from tilecraft.backends.cpu.schedule import TileDecision
from tilecraft.corpus.kernels import Kernel

FMA_LATENCY = 4  # cycles; with 2 FMA pipes, 8 independent accumulators keep them busy
REGISTERS = 32
LOOP_OVERHEAD_S = 1e-9  # per register-tile iteration (index math, branches)


def estimate(kernel: Kernel, decision: TileDecision, target, *, maps=None) -> float:
    """Predicted latency in seconds."""
    from tilecraft.costmodel.features import access_maps, footprints

    e = list(kernel.extents)
    n = len(e)
    sizes = kernel.element_bytes
    if maps is None:
        maps = access_maps(kernel.mlir, n) or tuple(tuple((i,) for i in range(n)) for _ in sizes)
    levels = list(decision.tiles) or [tuple(e)]
    cache, reg = (levels[0], levels[-1]) if len(levels) > 1 else (tuple(e), levels[0])
    lanes = target.f32_lanes * 4 // max(sizes[-1] if sizes else 4, 1)

    # Compute: FLOPs at peak, scaled by how well the register tile feeds the FMA pipes.
    out_loops = {i for loops in (maps[-1] if maps else ()) for i in loops} or set(range(n))
    out_fast = maps[-1][-1][0] if maps and maps[-1] and maps[-1][-1] else n - 1
    if decision.vectorize:
        lane_eff = min(reg[out_fast], lanes) / lanes
        accumulators = math.ceil(math.prod(reg[i] for i in out_loops) / lanes)
        ilp = min(1.0, accumulators / (FMA_LATENCY * target.fma_units))
        spill = 0.5 if accumulators > REGISTERS - 4 else 1.0
        eff = lane_eff * ilp * spill
    else:
        eff = 1.0 / (lanes * FMA_LATENCY)
    compute_s = kernel.flops / (target.peak_gflops_f32 * 1e9 * max(eff, 1e-3))

    # Memory: every cache tile reloads the operand footprints it touches.
    trips = math.prod(x / t for x, t in zip(e, cache))
    traffic = 0.0
    for amap, fp in zip(maps, footprints(maps, cache, sizes)):
        used = {i for loops in amap for i in loops}
        reuse = math.prod(x / t for i, (x, t) in enumerate(zip(e, cache)) if i not in used)
        traffic += fp * trips / max(reuse if decision.pack else 1.0, 1.0)
    bytes_moved = kernel.bytes_moved
    traffic = max(traffic, bytes_moved)
    memory_s = traffic / (target.bandwidth_gbs(bytes_moved) * 1e9)

    overhead_s = LOOP_OVERHEAD_S * math.prod(x / t for x, t in zip(e, reg))
    return max(compute_s, memory_s) + overhead_s


class AnalyticalCostModel:
    """`CostModel` interface over `estimate`; nothing to train (`update` is a no-op)."""

    kind = "analytical"

    def __init__(self, target):
        self.target = target

    def predict(self, kernel: Kernel, decisions: Sequence[TileDecision]):
        from tilecraft.costmodel.model import Predictions

        latency = np.array([estimate(kernel, d, self.target) for d in decisions])
        roofline_s = roofline_seconds(kernel, self.target)
        return Predictions(latency_s=latency, utilization=roofline_s / latency, score=-np.log(latency))

    def update(self, records) -> None:
        return None

    def save(self, path: str) -> None:
        raise NotImplementedError("the analytical model has no parameters to save")


def roofline_seconds(kernel: Kernel, target) -> float:
    return kernel.flops / (target.roofline_gflops(kernel.flops, kernel.bytes_moved) * 1e9)
