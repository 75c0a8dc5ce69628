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
from tilecraft.costmodel import accel_model, ilp


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
    resident: tuple[tuple[int, int, int], ...] = ()  # (producer, consumer, input-buffer entry) kept on chip

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    def schedule_of(self, name: str) -> L.ConvSchedule:
        return L.ConvSchedule.from_json(self.schedules[self.layers.index(name)])


SPACE_LIMIT = 400  # schedules per layer the cost model ranks (the largest tiles: where the fast ones are)


def candidates(layer: L.ConvLayer, target: AccelTarget, predict, *, fastest: int = 12, widest: int = 24):
    """The schedules the plan weighs for one layer: the `fastest` by predicted cycles and the
    `widest` tiles (the ones that reload least), with cycles and bytes."""
    space = L.space(layer, target, limit=SPACE_LIMIT)
    if not space:
        raise L.ScheduleError(f"layer {layer.name}: no schedule fits the target")
    cycles = np.asarray(predict(layer, space), float)
    order = list(np.argsort(cycles, kind="stable")[:fastest])
    for i in range(min(widest, len(space))):
        if i not in order:
            order.append(i)
    return [(space[i], float(cycles[i]), dram_bytes(layer, space[i], target)) for i in order]


def dram_bytes(layer: L.ConvLayer, s: L.ConvSchedule, target: AccelTarget) -> int:
    """The DRAM bytes a schedule moves, in closed form (equal to the simulator's count)."""
    st = accel_model.program_stats(layer, s, target)
    return int(st["inp_bytes"] + st["wgt_bytes"] + st["other_bytes"] + st["write_bytes"])


def plan_memory(
    layers: Sequence[L.ConvLayer],
    target: AccelTarget,
    predict: Callable[[L.ConvLayer, list[L.ConvSchedule]], np.ndarray],
    *,
    edges: Sequence[tuple[int, int]] = (),
    budget: float = 1.10,
    time_limit: float = 10.0,
    greedy_only: bool = False,
) -> MemoryPlan:
    """`edges`: (producer, consumer) layer indices where the consumer runs right after the
    producer, reads its output as its only use, and has no padding: the output may stay on
    chip in the input buffer (no store, no load) when both layers' tiles leave room."""
    if not layers:
        return MemoryPlan((), (), 0, 0, 0, 0.0, 0.0, "none", 0.0)
    cands = [candidates(layer, target, predict) for layer in layers]
    base = [min(range(len(c)), key=lambda j: (c[j][1], c[j][2])) for c in cands]
    base_cycles = sum(c[j][1] for c, j in zip(cands, base))
    base_bytes = sum(c[j][2] for c, j in zip(cands, base))
    depth, block = target.inp_depth, target.block
    edges = [(a, b) for a, b in edges if layers[b].cin // block * layers[b].h * layers[b].w <= depth]
    for _, b in edges:  # a resident input needs one spatial tile: weigh those schedules too
        have = {s for s, _, _ in cands[b]}
        single = [
            s for s in L.space(layers[b], target) if s.th == layers[b].oh and s.tw == layers[b].ow and s not in have
        ]
        if single:
            cyc = np.asarray(predict(layers[b], single), float)
            for s, cy in sorted(zip(single, cyc), key=lambda z: z[1])[:6]:
                cands[b].append((s, float(cy), dram_bytes(layers[b], s, target)))
    t0 = time.perf_counter()
    choice, resident, solver = None, {}, "highs"
    if not greedy_only:
        choice, resident = _solve(layers, cands, edges, budget * base_cycles, depth, block, target, time_limit)
    if choice is None:
        choice, resident, solver = _greedy(cands, base, budget * base_cycles), {}, "greedy"
    seconds = time.perf_counter() - t0
    compulsory = sum(
        layer.cin * layer.h * layer.w
        + layer.cout * layer.oh * layer.ow * (2 if layer.residual else 1)
        + layer.cout * 16
        + layer.cout * layer.kh * layer.kw * (1 if layer.depthwise else layer.cin)
        for layer in layers
    )
    planned = sum(c[j][2] for c, j in zip(cands, choice))
    for a, b in resident:
        s = cands[b][choice[b]][0]
        tr = L.traffic(layers[b], s, target, resident_in=0)
        planned -= layers[a].cout * layers[a].oh * layers[a].ow + (cands[b][choice[b]][2] - tr["read"] - tr["write"])
    return MemoryPlan(
        schedules=tuple(c[j][0].to_json() for c, j in zip(cands, choice)),
        layers=tuple(layer.name for layer in layers),
        planned_bytes=int(planned),
        baseline_bytes=int(base_bytes),
        compulsory_bytes=int(compulsory),
        planned_cycles=float(sum(c[j][1] for c, j in zip(cands, choice))),
        baseline_cycles=float(base_cycles),
        solver=solver,
        solve_seconds=seconds,
        resident=tuple((a, b, addr) for (a, b), addr in sorted(resident.items())),
    )


def _solve(layers, cands, edges, cycle_cap, depth, block, target, time_limit):
    """The 0/1 program: x[l, s] one schedule per layer; y[e, s] edge e kept on chip with its
    consumer on single-tile schedule s. Minimize bytes; cycles within the cap; the input
    buffer holds the producer's tiles and the kept tensor, or two kept tensors in a row."""
    offsets = np.cumsum([0] + [len(c) for c in cands])
    n_x = int(offsets[-1])
    ycols = []  # (edge index, consumer schedule index)
    for e, (_, b) in enumerate(edges):
        for j, (s, _, _) in enumerate(cands[b]):
            if s.th == layers[b].oh and s.tw == layers[b].ow:
                ycols.append((e, j))
    n = n_x + len(ycols)
    cost = np.zeros(n)
    cyc = np.zeros(n)
    for i, c in enumerate(cands):
        for j, (_, cy, by) in enumerate(c):
            cost[offsets[i] + j], cyc[offsets[i] + j] = by, cy
    size = [layers[b].cin // block * layers[b].h * layers[b].w for _, b in edges]  # input entries
    for k, (e, j) in enumerate(ycols):
        a, b = edges[e]
        s = cands[b][j][0]
        tr = L.traffic(layers[b], s, target, resident_in=0)
        cost[n_x + k] = -(size[e] * block + cands[b][j][2] - tr["read"] - tr["write"])
    eq = np.zeros((len(cands), n))
    for i in range(len(cands)):
        eq[i, offsets[i] : offsets[i + 1]] = 1
    rows, bounds = [cyc], [cycle_cap]
    for k, (e, j) in enumerate(ycols):  # y[e, s] ≤ x[consumer, s]
        r = np.zeros(n)
        r[n_x + k], r[offsets[edges[e][1]] + j] = 1, -1
        rows.append(r)
        bounds.append(0)
    into = {b: e for e, (_, b) in enumerate(edges)}
    for e, (a, _) in enumerate(edges):
        r_e = [n_x + k for k, (ee, _) in enumerate(ycols) if ee == e]
        if not r_e:
            continue
        r_prev = [n_x + k for k, (ee, _) in enumerate(ycols) if ee == into.get(a, -1)]
        for j, (s, _, _) in enumerate(cands[a]):  # x[a, s] + r[e] − r[into a] ≤ 1 when they do not fit
            g = L.check_schedule(layers[a], s, target)
            if g["slots"] * g["inp_tile"] + size[e] > depth:
                r = np.zeros(n)
                r[offsets[a] + j] = 1
                r[r_e] = 1
                r[r_prev] = -1
                rows.append(r)
                bounds.append(1)
        if a in into and r_prev and size[into[a]] + size[e] > depth:  # two kept tensors in a row
            r = np.zeros(n)
            r[r_e] = 1
            r[r_prev] = 1
            rows.append(r)
            bounds.append(1)
    scale = max(float(np.abs(cost).max()), 1.0)
    try:
        chosen, _ = ilp.solve_binary(
            cost / scale, equal=(eq, 1.0), at_most=(np.array(rows), bounds), time_limit=time_limit
        )
    except ilp.InfeasibleError:
        return None, {}
    choice = [None] * len(cands)
    kept = []
    for col in chosen:
        if col < n_x:
            i = int(np.searchsorted(offsets, col, side="right") - 1)
            choice[i] = int(col - offsets[i])
        else:
            kept.append(ycols[col - n_x][0])
    if any(c is None for c in choice):
        return None, {}
    # addresses: a kept tensor sits at the top of the input buffer, or at the bottom when
    # the tensor kept just before it (its producer's input) is at the top
    resident, top_of = {}, {}
    for e in sorted(kept):
        a, b = edges[e]
        prev = into.get(a)
        at_top = not (prev in top_of and top_of[prev])
        top_of[e] = at_top
        resident[(a, b)] = depth - size[e] if at_top else 0
    return choice, resident


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
