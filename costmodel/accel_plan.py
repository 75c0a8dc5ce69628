"""The accelerator's memory plan: how each layer's tiles share the on-chip buffers, chosen
over the whole model by an integer program to minimize DRAM traffic.

On the costmodel floor; reads `backends/accel/lower.py`'s layers and schedule space and a
cycle predictor (the accelerator cost model), writes a `MemoryPlan` record. Each layer's
schedule decides how much of the input, weight and accumulator buffers its tiles take,
whether they are double-buffered, and which tile stays while the others stream — and so
how often each tensor's bytes cross the DRAM bus beyond the compulsory once. Layer by
layer, a latency-first scheduler takes the fastest schedule of each layer on its own; the
plan takes, over all layers at once, the schedules that move the fewest bytes while the
predicted cycles of the model stay within `budget` × the latency-first total (a 0/1 program:
one schedule per layer, one knapsack row for the cycles) — HiGHS through scipy, with a time
limit and a greedy fallback (the best bytes saved per cycle added, while the budget holds).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence

import numpy as np

from tilecraft.backends.accel import lower as L
from tilecraft.backends.accel.target import AccelTarget
from tilecraft.costmodel import ilp


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    schedules: tuple[dict, ...]  # per layer, in program order (ConvSchedule JSON)
    layers: tuple[str, ...]
    planned_bytes: int  # DRAM traffic of the plan (closed form, as the simulator counts)
    baseline_bytes: int  # layer by layer, latency-first
    compulsory_bytes: int  # every tensor and weight once
    planned_cycles: float  # predicted
    baseline_cycles: float
    solver: str  # "highs" | "greedy"
    solve_seconds: float

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    def schedule_of(self, name: str) -> L.ConvSchedule:
        return L.ConvSchedule.from_json(self.schedules[self.layers.index(name)])


def candidates(layer: L.ConvLayer, target: AccelTarget, predict, *, fastest: int = 12, widest: int = 24):
    """The schedules the plan weighs for one layer: the `fastest` by predicted cycles and the
    `widest` tiles (the ones that reload least), with cycles and bytes."""
    space = L.space(layer, target)
    if not space:
        raise L.ScheduleError(f"layer {layer.name}: no schedule fits the target")
    cycles = np.asarray(predict(layer, space), float)
    order = list(np.argsort(cycles, kind="stable")[:fastest])
    for i in range(min(widest, len(space))):
        if i not in order:
            order.append(i)
    out = []
    for i in order:
        tr = L.traffic(layer, space[i], target)
        out.append((space[i], float(cycles[i]), tr["read"] + tr["write"]))
    return out


def plan_memory(
    layers: Sequence[L.ConvLayer],
    target: AccelTarget,
    predict: Callable[[L.ConvLayer, list[L.ConvSchedule]], np.ndarray],
    *,
    budget: float = 1.10,
    time_limit: float = 10.0,
    greedy_only: bool = False,
) -> MemoryPlan:
    cands = [candidates(layer, target, predict) for layer in layers]
    base = [min(range(len(c)), key=lambda j: (c[j][1], c[j][2])) for c in cands]
    base_cycles = sum(c[j][1] for c, j in zip(cands, base))
    base_bytes = sum(c[j][2] for c, j in zip(cands, base))
    t0 = time.perf_counter()
    choice, solver = None, "highs"
    if not greedy_only:
        n = sum(len(c) for c in cands)
        cost = np.concatenate([[b for _, _, b in c] for c in cands])
        eq = np.zeros((len(cands), n))
        cyc = np.concatenate([[cy for _, cy, _ in c] for c in cands])
        col = 0
        for i, c in enumerate(cands):
            eq[i, col : col + len(c)] = 1
            col += len(c)
        try:
            chosen, _ = ilp.solve_binary(
                cost / max(cost.max(), 1),
                equal=(eq, 1.0),
                at_most=(cyc[None, :], budget * base_cycles),
                time_limit=time_limit,
            )
            offsets = np.cumsum([0] + [len(c) for c in cands])
            choice = [int(j - offsets[np.searchsorted(offsets, j, side="right") - 1]) for j in sorted(chosen)]
            if len(choice) != len(cands):
                choice = None
        except ilp.InfeasibleError:
            choice = None
    if choice is None:
        choice, solver = _greedy(cands, base, budget * base_cycles), "greedy"
    seconds = time.perf_counter() - t0
    compulsory = sum(
        layer.cin * layer.h * layer.w
        + layer.cout * layer.oh * layer.ow * (2 if layer.residual else 1)
        + layer.cout * 16
        + layer.cout * layer.kh * layer.kw * (1 if layer.depthwise else layer.cin)
        for layer in layers
    )
    return MemoryPlan(
        schedules=tuple(c[j][0].to_json() for c, j in zip(cands, choice)),
        layers=tuple(layer.name for layer in layers),
        planned_bytes=int(sum(c[j][2] for c, j in zip(cands, choice))),
        baseline_bytes=int(base_bytes),
        compulsory_bytes=int(compulsory),
        planned_cycles=float(sum(c[j][1] for c, j in zip(cands, choice))),
        baseline_cycles=float(base_cycles),
        solver=solver,
        solve_seconds=seconds,
    )


def _greedy(cands, base, cycle_cap: float) -> list[int]:
    choice = list(base)
    total = sum(c[j][1] for c, j in zip(cands, choice))
    while True:
        best = None
        for i, c in enumerate(cands):
            cur = c[choice[i]]
            for j, (_, cy, b) in enumerate(c):
                saved, added = cur[2] - b, cy - cur[1]
                if saved <= 0 or total + added > cycle_cap:
                    continue
                score = saved / max(added, 1.0)
                if best is None or score > best[0]:
                    best = (score, i, j, added)
        if best is None:
            return choice
        _, i, j, added = best
        choice[i] = j
        total += added
