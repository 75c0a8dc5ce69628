"""The fusion planner: which ops of a module fuse into one kernel.

On the costmodel floor. Reads a module analyzed by `passes/fusion.py` (its legal candidate
groups, outlined as functions), prices every candidate with a cost model (`GroupCoster`:
the group's predicted latency, composed from its members' predictions and calibrated per
group class) and chooses the partition with the least predicted latency by an exact
set-partitioning integer program (`costmodel/ilp.py`). Returns `FusionDecision`s, which
`passes/fusion.py`'s `fuse` pass applies, and a report of every candidate's price.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from torch_mlir import ir

from tilecraft.costmodel.ilp import InfeasibleError, solve_binary
from tilecraft.passes import fusion
from tilecraft.passes.fusion import (
    CONTRACTIONS,
    FusionDecision,
    Node,
    analyze,
    apply,
    as_outlined,
    candidates,
    loop_trips,
    outline_group,
)
from tilecraft.passes.private_fills import private_fills


def group_class(kinds: Iterable[str]) -> str:
    """What a group's cost is made of: a matmul, a windowed contraction, or register tiles
    only (with a reduction or not)."""
    kinds = set(kinds)
    if kinds & {"matmul", "batch_matmul"}:
        return "matmul"
    if kinds & CONTRACTIONS:
        return "conv"
    return "reduction" if "reduction" in kinds else "light"


def load_calibration(path: str | None = None) -> dict[str, float]:
    """Per group class, the factor that turns the composed prediction into measured fused
    latency (fitted by `bench/fusion.py --calibrate` on measured zoo groups; 1.0 if absent)."""
    from tilecraft.costmodel.model import SHIPPED_DIR

    path = path or os.path.join(SHIPPED_DIR, "fusion-calibration.json")
    factors = {"matmul": 1.0, "conv": 1.0, "reduction": 1.0, "light": 1.0}
    if os.path.exists(path):
        with open(path) as f:
            doc = json.load(f)
        factors.update({k: float(v) for k, v in doc.get("factors", {}).items() if k in factors})
    return factors


# A group of contractions and fills alone (a matmul and its zero fill, or a tap chain with
# no epilogue) costs the contractions' own prediction, which counts writing the result:
# pricing the result's store again on top made every such pair lose to the fill as a kernel
# of its own, a memset over the result (Winograd's batched GEMMs).
FREE_FILLS = True


class GroupCoster:
    """Predicted latency of a fused group, from the group outlined as its own function and
    fused exactly as `apply` fuses it. Every op still scheduled by the tiling pass (a
    contraction's tile, say) costs what the cost model predicts for its best-ranked
    decision, times the tiles it runs in, scaled by the group class's calibration factor
    (`load_calibration`: fused kernels measured against this prediction). The ops fused
    into register tiles are priced on the scale the unfused alternative is priced by:
    their own unfused predictions times the ratio of their roofline fused (inputs from
    the group read from registers or cache) to the sum of their rooflines alone (`light`,
    which also prices groups of reductions and elementwise ops: softmax, layer norm). A
    group whose matmul runs in registers (`FusionDecision.registers`) costs the matmul's
    own unfused prediction plus its epilogue so priced. Memoized by text and
    decision."""

    def __init__(self, model, target, context: ir.Context, calibration: Mapping[str, float] | None = None):
        self.model, self.target, self.context = model, target, context
        self.calibration = load_calibration() if calibration is None else dict(calibration)
        self.cache: dict[str, float] = {}
        self.picks: dict = {}  # the model's predictions by kernel (`search.pick`'s memo)
        self.evaluated = 0

    def __call__(
        self, text: str, decision: FusionDecision, epilogue: tuple[Sequence[str], float] | None = None
    ) -> float:
        """`epilogue`, for a contraction's group: its register-tile ops, each outlined alone,
        and their summed unfused prediction. They are then priced on the unfused scale
        (as `light` prices a group of light ops, their input from the contraction read
        from cache), and the calibration factor scales the contraction's part only."""
        from tilecraft.corpus import generator
        from tilecraft.costmodel import search

        shape = (decision.tiles, decision.inner, decision.registers)  # (op ids differ between equal groups)
        key = hashlib.sha256(f"{text}|{shape}|{epilogue}".encode()).hexdigest()
        if key in self.cache:
            return self.cache[key]
        self.evaluated += 1
        module = ir.Module.parse(text, context=self.context)
        nodes = analyze(module)
        whole = as_outlined(nodes, decision)
        factor = self.calibration.get(group_class(n.info.kind for n in nodes.values()), 1.0)
        heavy_only = all(n.info.kind in CONTRACTIONS or fusion.is_fill(n) for n in nodes.values())
        if FREE_FILLS and epilogue is None and heavy_only:
            # a contraction and its zero fill alone: nothing runs on its tiles but the matmul,
            # whose own prediction already counts writing its result
            light, light_factor = 0.0, factor
        elif epilogue is None:
            light, light_factor = self._register_tile_seconds(nodes, whole.sink), factor
        else:
            texts, singles_s = epilogue
            alone = sum(self.roofline(t) for t in texts)
            fused = self._register_tile_seconds(nodes, whole.sink, self.target.mem_bandwidth_gbs)
            light, light_factor = (singles_s * fused / alone if alone > 0 else singles_s), 1.0
        if decision.registers:
            # the accumulator tiles run at about the matmul's own speed unfused (the epilogue
            # works on tiles already in registers, as a 128x256 @ 256x1024 + bias shows):
            # the matmul's unfused prediction, on the unfused scale
            contraction = {op for op, n in nodes.items() if n.info.kind in CONTRACTIONS}
            if len(contraction) > 1:  # an accumulation chain: one matmul over the chain's whole K
                m, n, k = nodes[min(contraction)].info.extents
                module = ir.Module.parse(generator.matmul(m, n, k * len(contraction)), context=self.context)
            picks = search.pick(module, self.model, self.target, memo=self.picks)
            heavy = sum(c.predicted_s for c in picks if c.kernel.kind in CONTRACTIONS)
            total = light * light_factor + heavy
            self.cache[key] = total
            return total
        apply(module, [whole])
        trips = loop_trips(module)
        heavy = 0.0
        for choice in search.pick(module, self.model, self.target, memo=self.picks):
            heavy += sum(choice.predicted_s * trips.get(op, 1) for op in choice.op_ids)
        total = light * light_factor + heavy * factor
        self.cache[key] = total
        return total

    def roofline(self, text: str) -> float:
        """Register-tile roofline of an outlined group of light ops (memoized by text)."""
        key = "roofline|" + hashlib.sha256(text.encode()).hexdigest()
        if key not in self.cache:
            module = ir.Module.parse(text, context=self.context)  # alive while its ops are read
            nodes = analyze(module)
            # one bandwidth for the group and for its ops alone: the ratio compares traffic, not
            # which cache level a smaller working set would happen to fit
            dram = self.target.mem_bandwidth_gbs
            self.cache[key] = self._register_tile_seconds(nodes, fusion.topo_order(nodes, set(nodes))[-1], dram)
        return self.cache[key]

    def light(self, texts: Sequence[str], singles_s: float, text: str) -> float:
        """Predicted latency of a fused group of light ops (elementwise, no contraction or
        reduction): the cost model's prediction for its ops unfused (`singles_s`, the
        same numbers the unfused alternative is priced by), scaled by the ratio of the
        fused group's roofline to the sum of its ops' rooflines (`texts`: each op outlined
        alone). Fused and unfused are then priced on one scale: what fusion saves is the
        memory traffic and loop overhead the rooflines count. The ratio is scaled by the
        light class's calibration factor (measured fused/unfused over predicted)."""
        alone = sum(self.roofline(t) for t in texts)
        ratio = self.roofline(text) / alone if alone > 0 else 1.0
        return singles_s * ratio * self.calibration.get("light", 1.0)

    def _register_tile_seconds(self, nodes: Mapping[int, Node], sink: int, bandwidth_gbs: float | None = None) -> float:
        from tilecraft.corpus.kernels import ELEMENT_BYTES

        t = self.target
        heavy = {op for op, n in nodes.items() if n.info.kind in CONTRACTIONS or fusion.is_fill(n)}
        memory_bytes = cache_bytes = 0
        vector_ops = 0.0
        for op, n in nodes.items():
            if op in heavy:
                continue
            inputs = len(n.op.operands) - len(n.op.results)
            for i in range(inputs):
                producer = n.producers.get(i)
                if producer is not None and producer not in heavy:
                    continue  # in registers
                nbytes = math.prod(n.info.shapes[i] or (1,)) * ELEMENT_BYTES.get(n.info.dtypes[i], 4)
                if producer is not None:
                    cache_bytes += nbytes
                else:
                    memory_bytes += nbytes
            body = len(list(n.op.regions[0].blocks[0].operations)) if n.op.regions else 1
            vector_ops += math.prod(n.info.extents) / t.f32_lanes * max(1, body - 1)
        out = nodes[sink].info
        memory_bytes += math.prod(out.shapes[-1] or (1,)) * ELEMENT_BYTES.get(out.dtypes[-1], 4)
        bandwidth = bandwidth_gbs or t.bandwidth_gbs(memory_bytes)
        memory_s = memory_bytes / (bandwidth * 1e9) + cache_bytes / (t.cache_bandwidth_gbs * 1e9)
        return max(memory_s, vector_ops / (t.clock_ghz * 1e9))


def partition(
    module: ir.Module,
    model,
    target,
    *,
    singles: Mapping[int, float] | None = None,
    calibration: Mapping[str, float] | None = None,
) -> tuple[list[FusionDecision], dict]:
    """Choose the fusion groups minimizing total predicted latency. Returns the chosen
    multi-op groups and a report: every candidate with its predicted latency, the
    unfused (all-singletons) prediction and the chosen partition's."""
    from tilecraft.costmodel import search

    private_fills(module)
    nodes = analyze(module)
    coster = GroupCoster(model, target, module.context, calibration)
    if singles is None:
        singles = {}
        infos = [nodes[op].info for op in sorted(nodes)]  # (`analyze` has just tagged the module)
        for c in search.pick(module, model, target, memo=coster.picks, infos=infos):
            for op in c.op_ids:
                singles[op] = c.predicted_s
    cands = candidates(nodes, target)
    state = ir.AsmState(module.operation)
    costs, kept, failed = [], [], []
    single_texts: dict[int, str] = {}  # (an op alone, outlined once for every group it is in)
    printed: dict[int, str] = {}  # (each op's text, printed once for every group it is in)

    def alone_text(op: int) -> str:
        if op not in single_texts:
            single_texts[op] = outline_group(nodes, (op,), state, printed=printed)
        return single_texts[op]

    for g in cands:
        try:
            text = outline_group(nodes, g.ops, state, printed=printed)
            cls = group_class(nodes[o].info.kind for o in g.ops)
            tiles = [o for o in g.ops if nodes[o].info.kind not in CONTRACTIONS and not fusion.is_fill(nodes[o])]
            priced = all(o in singles for o in tiles)
            alone = [alone_text(o) for o in tiles] if priced else []
            if cls in ("light", "reduction") and alone:
                costs.append(coster.light(alone, sum(singles[o] for o in tiles), text))
            elif cls in ("matmul", "conv") and alone:
                costs.append(coster(text, g, (alone, sum(singles[o] for o in tiles))))
            else:
                costs.append(coster(text, g))
            kept.append(g)
        except Exception as exc:  # a group the rewrite or the features cannot handle: not a candidate
            failed.append((g, f"{type(exc).__name__}: {str(exc)[:200]}"))
    ops = sorted(nodes)
    index = {op: i for i, op in enumerate(ops)}
    columns = [((op,), singles.get(op, 0.0)) for op in ops] + [(g.ops, c) for g, c in zip(kept, costs)]
    a = np.zeros((len(ops), len(columns)))
    for j, (members, _) in enumerate(columns):
        for op in members:
            a[index[op], j] = 1
    try:
        chosen, fused_s = solve_binary([c for _, c in columns], equal=(a, 1))
    except InfeasibleError as exc:
        raise RuntimeError(f"fusion partitioning failed: {exc}") from None
    groups = [kept[j - len(ops)] for j in chosen if j >= len(ops)]
    report = {
        "unfused_s": float(sum(singles.get(op, 0.0) for op in ops)),
        "fused_s": fused_s,
        "candidates": [(g, c) for g, c in zip(kept, costs)],
        "singles": dict(singles),
        "evaluated": coster.evaluated,
        "failed": failed,
    }
    return groups, report
