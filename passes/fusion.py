"""The fusion pass: which structured ops become one kernel, and the rewrite that fuses them.

On the passes floor. In the flow (`compiler/driver.py`) it sits after the `im2col` stage's
rewrites and before the schedules are decided: the fusion planner
(`costmodel/fusion_plan.py`) reads the legal groups found here and writes its choice as
`tc.fusion` records, which the `fuse` pass reads back and applies.

Reads a linalg-on-tensors module; writes the same module with each fusion group turned
into one loop nest: the group's sink (its one op whose result leaves the group) is tiled
over its parallel loops (`transform.structured.tile_using_for`) and every other member
is fused into those tiles (`fuse_into_containing_op`), so intermediates live in
cache-sized tiles instead of whole tensors in memory. The tiling pass then schedules
every op inside the tiles (register tiles, vectorization) exactly as it schedules
unfused ops.

Decisions are data: a `FusionDecision` (sink, members, tile sizes) per group. Legal
groups (`candidates`): elementwise chains, contraction + epilogue (bias, activation,
residual, folded batch-norm), reduction + elementwise (softmax, layer norm); a member's
result must only feed the group (multi-consumer producers are materialized: they end a
group), every use inside the group must index the producer by a projected permutation,
at most one contraction per group (or an accumulation chain: matmuls of one shape each
accumulating into the next, `passes/im2col.py`'s tap chains) and no reduction beside it,
and only sink loops every member spans are tiled (so nothing is recomputed across tiles).
A contraction with no epilogue still takes its zero fill when its accumulators stay in
registers. Unit dims are folded first (`fold_unit_dims`), so that a reduction's [S]
result is indexed by loops, not an [S, 1] one by a constant. `partition` picks the groups minimizing the
total latency the cost model predicts for the fused kernels (an exact set-partitioning
integer program, HiGHS through `scipy.optimize.milp`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import ClassVar

import networkx as nx
from torch_mlir import ir

from tilecraft.dialects import opinfo, tc
from tilecraft.dialects.irutil import (
    ANY,
    captured,
    named_sequence,
    peel_parent_loop,
    print_op,
    static_loop,
    walk_ops,
)
from tilecraft.dialects.islands import apply_transform_in_islands
from tilecraft.passes.base import ModulePass, Weights
from tilecraft.passes.private_fills import private_fills

CONTRACTIONS = {"matmul", "batch_matmul", "conv2d", "depthwise_conv2d", "pooling"}
MAX_GROUP = 8  # ops per group (fills not counted)
MAX_CLOSURE = 24  # ops per group grown greedily (`_closure`; a tap chain's links count as one)
# (rows, columns) of a matmul's accumulator tile held in registers (16 zmm, as the tiling
# pass's own 8x32 register tiles)
MATMUL_REGISTERS = (8, 32)
# The same on 8-lane targets (AVX2: 16 ymm): 8×8, 8 accumulators. 8×32 spilled there (32
# accumulators), and 8×16 fills all 16 registers (`schedule.accumulator_cap`).
MATMUL_REGISTERS_8_LANES = (8, 8)
# ... unless its rows may leave a remainder: then 6×16 (12 accumulators, two vectors a row:
# whole 64-byte lines of B), the rows that do not fill a tile peeled into a loop of their
# own (`PEEL_ROWS`). A [16, 49, 256, 256] batched matmul (ResNet-18's Winograd GEMMs at
# 7×7) ran at 42 GFLOP/s as 7×8 tiles and 64 as 6×16 on 54 rows (AVX2 Zen 3, 1 thread).
PEEL_ROWS = True
PEELED_ACCUMULATORS = 12  # of 16 registers (as `schedule.accumulator_cap`): 6×16 on AVX2


def matmul_registers(target) -> tuple[int, int]:
    lanes = _lanes(target)
    return MATMUL_REGISTERS if lanes >= opinfo.LANES else (MATMUL_REGISTERS_8_LANES[0], lanes)


def peels_rows(target) -> bool:
    """Whether a matmul group's accumulator rows are tiled by about 6 (12 one vector wide)
    whatever their count, the rest peeled (`PEEL_ROWS`; targets with 16 vector registers
    only: AVX-512's 8×32 tiles divide the rows as they are)."""
    return PEEL_ROWS and _lanes(target) < opinfo.LANES


def _peeled_register_tile(rows: int, cols: int, lanes: int) -> tuple[int, int] | None:
    """(rows, columns) of a 16-register target's accumulator tile over `rows` × `cols`:
    two vectors of columns (one where two do not divide them) and rows for 12 accumulators
    (`opinfo.peeled_row_tile`: 6, or 5 or 4 where 6 leaves a remainder of one row); a tile
    that does not divide `rows` leaves a remainder, peeled (`fusion_script`). None where
    the columns are not whole vectors (a classifier's 10)."""
    c = 2 * lanes if cols % (2 * lanes) == 0 else lanes
    if cols % c:
        return None
    return opinfo.peeled_row_tile(rows, c // lanes, PEELED_ACCUMULATORS), c


def ragged_dims(tiles: Sequence[int], inner: Sequence[int], extents: Sequence[int]) -> list[int]:
    """Sink loops along which a group's register tile does not divide its cache tile (the
    rest is peeled)."""
    within = [t or x for t, x in zip(tiles, extents)] if tiles else list(extents)
    return [d for d, (i, w) in enumerate(zip(inner, within)) if i and w % i]


def _lanes(target) -> int:
    """f32 lanes of the target's vectors, at most `opinfo.LANES` (16; 8 on AVX2)."""
    return min(opinfo.LANES, getattr(target, "f32_lanes", opinfo.LANES))


MATMUL_ROWS = 64  # rows of a matmul's cache tile (as the backends' default schedule has them)
MAX_CANDIDATES_PER_SINK = 12
CONV_TILE = 131072  # output elements per tile of a convolution group (512 KB: L2-resident)
FUSED = tc.FUSED
# A light group with a member reading more tensors than this (a depthwise convolution's
# taps, `passes/depthwise.py`) takes small register tiles: each tap is a vector of the
# tile, live until its product is summed, so a tile of the whole vector budget (8×112 at
# 112² wide rows) keeps too many vectors live. Rows a multiple of 16 (8 on AVX2): one
# vector. Other rows: whole rows, about MANY_OPERANDS_BUDGET elements (half on AVX2; a
# 16-element budget cut a 56-wide row in 14s, each a vector of 8 + 4 + 2 lanes).
MANY_OPERANDS = 8
MANY_OPERANDS_BUDGET = 128
# Register tiles of a group with no contraction: about 128 elements (8 zmm per value). A
# tile of the whole vector budget (1024) keeps 64 registers per value live across the
# group's ops, and spills (a batch norm + residual add + ReLU, a SiLU·y); softmax and
# layer norm do not change.
LIGHT_BUDGET = 128
# (output channel, output row, output column) loops of the windowed contractions
CONV_LOOPS = {"conv2d": (1, 2, 3), "depthwise_conv2d": (3, 1, 2), "pooling": (1, 2, 3)}


@dataclasses.dataclass(frozen=True)
class FusionDecision:
    """One kernel made of several structured ops: `sink` is tiled by `tiles` (one size per
    sink loop, 0 = untiled) and `members` (op ids, nearest producer first) are fused into
    those tiles. With a contraction in the group, `tiles` is its cache tile and `inner`
    tiles the sink's tile again into register tiles, into which the elementwise members
    are fused a second time (the epilogue then runs on vectors in registers); without
    one, `tiles` is already a register tile and `inner` is empty. `registers`: the
    contraction (a matmul) and its zero fill are fused into the register tiles too, so
    each accumulator tile is computed over the whole K in vector registers and the
    epilogue consumes it there (nothing but the sink's result is stored)."""

    sink: int
    members: tuple[int, ...]
    tiles: tuple[int, ...]
    inner: tuple[int, ...] = ()
    registers: bool = False

    @property
    def ops(self) -> tuple[int, ...]:
        return (self.sink, *self.members)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @staticmethod
    def from_json(text: str | dict) -> FusionDecision:
        d = json.loads(text) if isinstance(text, str) else dict(text)
        if not {"sink", "members", "tiles"} <= set(d) <= {"sink", "members", "tiles", "inner", "registers"}:
            raise ValueError(f"not a FusionDecision: {text!r}")
        return FusionDecision(
            int(d["sink"]),
            tuple(int(x) for x in d["members"]),
            tuple(int(x) for x in d["tiles"]),
            tuple(int(x) for x in d.get("inner", ())),
            bool(d.get("registers", False)),
        )


# ------------------------------------------------------------------ dataflow analysis
def _op_id(op) -> int | None:
    op = getattr(op, "operation", op)
    if isinstance(op, ir.Operation) and tc.OP_ID in op.attributes:
        return ir.IntegerAttr(op.attributes[tc.OP_ID]).value
    return None


def dataflow_graph(module: ir.Module) -> nx.DiGraph:
    """One node per structured op (`info`: its OpInfo); an edge producer → consumer for
    every tensor one op's result feeds into another's operand, looking through tensor
    reshapes and slices. Tags the ops (`tc.op_id`)."""
    infos = {info.op_id: info for info in opinfo.tag_ops(module)}
    graph = nx.DiGraph()
    for op_id, info in infos.items():
        graph.add_node(op_id, info=info)

    def producers(value, depth: int = 0) -> set[int]:
        owner = getattr(value.owner, "operation", value.owner)
        found = _op_id(owner)
        if found is not None:
            return {found}
        if depth > 8 or not isinstance(owner, ir.Operation) or not owner.name.startswith("tensor."):
            return set()
        return set().union(*(producers(v, depth + 1) for v in owner.operands)) if owner.operands else set()

    def visit(op: ir.Operation) -> None:
        consumer = _op_id(op)
        if consumer is not None:
            for value in op.operands:
                for producer in producers(value):
                    if producer != consumer:
                        graph.add_edge(producer, consumer)

    walk_ops(module.operation, visit)
    return graph


def _map_dims(attr: ir.Attribute) -> tuple[int | None, ...]:
    """Per result of an affine map: the loop it is (a bare `dN`), else None."""
    amap = ir.AffineMapAttr(attr).value
    out = []
    for e in amap.results:
        m = re.fullmatch(r"d(\d+)", str(e).strip())
        out.append(int(m.group(1)) if m else None)
    return tuple(out)


def _named_maps(info: opinfo.OpInfo) -> tuple[tuple[int | None, ...], ...] | None:
    """Operand → loop maps of the named ops (None entries: not a bare loop)."""
    k = info.kind
    if k == "matmul":
        return ((0, 2), (2, 1), (0, 1))
    if k == "batch_matmul":
        return ((0, 1, 3), (0, 3, 2), (0, 1, 2))
    if k == "conv2d":  # (n, f, oh, ow, c, kh, kw)
        return ((0, 4, None, None), (1, 4, 5, 6), (0, 1, 2, 3))
    if k == "depthwise_conv2d":  # (n, oh, ow, c, kh, kw)
        return ((0, 3, None, None), (3, 4, 5), (0, 3, 1, 2))
    if k == "pooling":  # (n, c, oh, ow, kh, kw)
        return ((0, 1, None, None), (4, 5), (0, 1, 2, 3))
    if info.name == "linalg.fill":
        return ((), tuple(range(len(info.extents))))
    return None


@dataclasses.dataclass
class Node:
    op: ir.Operation
    info: opinfo.OpInfo
    maps: tuple[tuple[int | None, ...], ...]  # per operand (inputs then inits)
    producers: dict[int, list[int]]  # operand index → producer op id (direct SSA use)
    users: list[int | None]  # consumer op ids of the result (None: not a structured op)

    @property
    def out_map(self) -> tuple[int | None, ...]:
        return self.maps[-1] if self.maps else ()

    @functools.cached_property
    def captured(self) -> list[ir.Value]:
        """Values the op's body reads from outside it (`irutil.captured`), found once: the
        fusion planner outlines each op in every candidate group it prices."""
        return captured(self.op)


def analyze(module: ir.Module) -> dict[int, Node]:
    """Nodes of the direct-use dataflow graph (fusion follows SSA uses, not reshapes)."""
    nodes: dict[int, Node] = {}
    infos = {i.op_id: i for i in opinfo.tag_ops(module)}

    def visit(op: ir.Operation) -> None:
        op_id = _op_id(op)
        if op_id is None:
            return
        info = infos[op_id]
        if "indexing_maps" in op.attributes:
            maps = tuple(_map_dims(a) for a in ir.ArrayAttr(op.attributes["indexing_maps"]))
        else:
            maps = _named_maps(info) or ()
        producers = {}
        for i, v in enumerate(op.operands):
            p = _op_id(v.owner)
            if p is not None:
                producers[i] = p
        users = [_op_id(u.owner) for r in op.results for u in r.uses]
        nodes[op_id] = Node(op, info, maps, producers, users)

    walk_ops(module.operation, visit)
    return nodes


# --------------------------------------------------------------------- legal groups
def is_fill(node: Node) -> bool:
    return node.info.name == "linalg.fill"


def loops_to_sink(nodes: Mapping[int, Node], group: set[int], sink: int) -> dict[int, dict[int, int]] | None:
    """For each member, its loop → sink loop map (through the uses inside the group), or
    None when two paths disagree or a use is not a projected permutation."""
    to_sink: dict[int, dict[int, int]] = {sink: {i: i for i in range(len(nodes[sink].info.extents))}}
    order = [n for n in topo_order(nodes, group) if n != sink][::-1]  # consumers before producers
    for p in order:
        pnode = nodes[p]
        mapping: dict[int, int] | None = None
        for c in group:
            cnode = nodes[c]
            for idx, prod in cnode.producers.items():
                if prod != p or c not in to_sink:
                    continue
                use_map = cnode.maps[idx] if idx < len(cnode.maps) else ()
                if not use_map or any(d is None for d in use_map) or len(pnode.out_map) != len(use_map):
                    return None
                m: dict[int, int] = {}
                for pos, ploop in enumerate(pnode.out_map):
                    if ploop is None:
                        return None
                    cloop = use_map[pos]
                    if cloop in to_sink[c]:
                        m[ploop] = to_sink[c][cloop]
                if mapping is not None and any(mapping.get(k, v) != v for k, v in m.items()):
                    return None
                mapping = {**(mapping or {}), **m}  # (a path through a reduction maps fewer loops)
        if mapping is None:
            return None
        to_sink[p] = mapping
    return to_sink


def topo_order(nodes: Mapping[int, Node], group: Iterable[int]) -> list[int]:
    """The group's ops, producers first, the smallest op id first among the ready ones
    (op ids number the ops in program order, so that is almost always the ids sorted)."""
    group = set(group)
    if all(p < c for c in group for p in nodes[c].producers.values() if p in group):
        return sorted(group)  # (the lexicographic topological order, without building a graph)
    g = nx.DiGraph()
    g.add_nodes_from(group)
    for c in group:
        for p in nodes[c].producers.values():
            if p in group:
                g.add_edge(p, c)
    return list(nx.lexicographical_topological_sort(g))


def group_tiles(
    nodes: Mapping[int, Node], group: set[int], sink: int, target=None
) -> tuple[tuple[int, ...], tuple[int, ...], bool] | None:
    """(tiles, inner, registers) of the sink for a group (see `FusionDecision`), or None if
    the group is not fusable. Only sink loops every member spans are tiled (nothing is
    recomputed across tiles). With a contraction: its cache tile (matmul) or ≤ 64 channels
    of whole rows (conv, pooling), then register tiles inside (a matmul's accumulator
    tiles, when `_in_registers`); without: register tiles (the vector budget) directly."""
    to_sink = loops_to_sink(nodes, group, sink)
    if to_sink is None:
        return None
    s = nodes[sink].info
    tileable = tileable_loops(nodes, group, sink, to_sink)
    ones = _broadcast_loops(nodes, group, to_sink)
    if ones is None or any(not tileable[d] for d in ones):
        return None
    contraction = [m for m in group if nodes[m].info.kind in CONTRACTIONS]
    if not contraction:
        tiles = _transposed_tiles(nodes, group, to_sink, s, tileable, target)
        if tiles is None:
            many = any(len(nodes[m].op.operands) > MANY_OPERANDS for m in group)
            # (on 8-lane targets, AVX2's 16 ymm, half the elements: as many registers a value)
            lanes = _lanes(target)
            budget = LIGHT_BUDGET * lanes // opinfo.LANES
            if many:
                budget = lanes if s.extents[-1] % lanes == 0 else MANY_OPERANDS_BUDGET * lanes // opinfo.LANES
            tiles = _budget(s.extents, tileable, budget, ones)
        return (tiles, (), False) if any(tiles) else None
    if any(nodes[m].info.kind == "reduction" for m in group):
        # a reduction along the contraction's columns makes its cache tile span them all,
        # and such groups (bert_mini's matmul + layer norm, batch matmul + softmax) lost to
        # the contraction and the reduction as kernels of their own
        return None
    if any(_feeds(nodes, group, c) for c in contraction):
        return None  # a producer of the contraction's inputs: fused ops are its epilogue only
    c = nodes[contraction[0]].info
    if c.kind == "matmul" and c.extents[1] * c.extents[2] * 4 > getattr(target, "l2_bytes", 1 << 20):
        # B larger than L2: alone, the tiling pass packs it; a fused group reads it as it is
        # (rows far apart, conflicting in the caches), which costs more than fusing saves
        # (ResNet-18's 7×7 GEMMs, 49×512×4608, with batch norm and ReLU; 64×512 @ 512×2048)
        return None
    at = to_sink[contraction[0]]
    tiles = [0] * len(s.extents)
    if c.kind in ("matmul", "batch_matmul"):  # the contraction's own cache tile, up to 256 columns wide
        n_loop = len(c.extents) - 2
        for cloop, sloop in at.items():
            if tileable[sloop] and c.iterators[cloop] == "parallel":
                t = 1 if cloop < n_loop - 1 else opinfo.divisor_at_most(c.extents[cloop], MATMUL_ROWS)  # batch: 1
                if cloop == n_loop:  # wider tiles: fewer passes over A (measured: 256 beats 128)
                    t = opinfo.divisor_at_most(c.extents[cloop], 256, multiple_of=16)
                elif cloop == n_loop - 1:  # rows: whole register tiles (a tap chain's 3248: 56, not 58)
                    t = opinfo.divisor_at_most(c.extents[cloop], t, multiple_of=matmul_registers(target)[0])
                tiles[sloop] = t if t < s.extents[sloop] else 0
    else:  # conv/pool: up to 64 output channels, whole rows while the tile fits CONV_TILE
        f_loop, oh_loop, ow_loop = CONV_LOOPS[c.kind]
        f_t = opinfo.divisor_at_most(c.extents[f_loop], 64, multiple_of=16)
        oh_t = opinfo.divisor_at_most(c.extents[oh_loop], max(1, CONV_TILE // (f_t * c.extents[ow_loop])))
        for cloop, t in ((f_loop, f_t), (oh_loop, oh_t)):
            if cloop in at and tileable[at[cloop]] and t < s.extents[at[cloop]]:
                tiles[at[cloop]] = t
    if not any(tiles) and c.kind not in ("matmul", "batch_matmul"):
        # one cache tile holds the whole convolution: split its rows (not its channels, which
        # its register tiles block), to have a loop to fuse into
        oh = CONV_LOOPS[c.kind][1]
        if oh in at and tileable[at[oh]] and c.extents[oh] > 1:
            tiles[at[oh]] = opinfo.divisor_at_most(c.extents[oh], c.extents[oh] // 2)
    if not any(tiles):  # one cache tile holds it all: split it, to have a loop to fuse into
        tiles = _split(s.extents, tileable)
        if tiles is None:
            return None
    tiles = tuple(tiles)
    within = [t or x for t, x in zip(tiles, s.extents)]
    if _in_registers(c, at, tileable, ones, target):
        inner = [0] * len(s.extents)
        rows = len(c.extents) - 3  # (a batched matmul's batch loops: 1 each, as its cache tile has them)
        for b in range(rows):
            inner[at[b]] = 1 if s.extents[at[b]] > 1 else 0
        lanes = _lanes(target)
        picked = _peeled_register_tile(within[at[rows]], within[at[rows + 1]], lanes) if peels_rows(target) else None
        if picked is None:
            picked = tuple(
                opinfo.divisor_at_most(within[at[cloop]], regs, multiple_of=lanes if cloop > rows else 1)
                for cloop, regs in zip((rows, rows + 1), matmul_registers(target))
            )
        for cloop, t in zip((rows, rows + 1), picked):
            inner[at[cloop]] = t if t < s.extents[at[cloop]] else 0
        if any(inner):
            return tiles, tuple(inner), True
    inner = _budget(within, tileable, opinfo.VECTOR_BUDGET, ones)
    return tiles, inner if any(inner) else (), False


def tileable_loops(nodes: Mapping[int, Node], group: set[int], sink: int, to_sink) -> list[bool]:
    """Which sink loops a group may be tiled along: parallel loops every member spans
    (`to_sink`: `loops_to_sink` of the group)."""
    tileable = [it == "parallel" for it in nodes[sink].info.iterators]
    for m in group:
        if is_fill(nodes[m]):
            continue
        spanned = set(to_sink[m].values())
        tileable = [t and i in spanned for i, t in enumerate(tileable)]
    return tileable


# Column panels (`passes/panel_weights.py`: A broadcast over the panels, a 2-D operand)
# larger than L2 come from L3 or memory at every call: such a batched matmul runs K in
# chunks (its cache tile), every row tile of a chunk reading the chunk from L1 while the
# next chunk is prefetched (`backends/cpu/prefetch.py`), instead of each row tile's
# accumulators running down its whole panel in registers, the panel read again per row
# tile and memory idle meanwhile. ResNet-18's 49x512x4608 layers with batch norm and ReLU.
CHUNK_STREAMED_PANELS = True


def _streamed_panels(c: opinfo.OpInfo, target) -> bool:
    """A batched matmul over column panels (A broadcast: 2-D) larger than L2."""
    panels = c.kind == "batch_matmul" and len(c.shapes) > 1 and len(c.shapes[0]) == 2
    return CHUNK_STREAMED_PANELS and panels and math.prod(c.shapes[1]) * 4 > getattr(target, "l2_bytes", 1 << 20)


def _in_registers(c: opinfo.OpInfo, at: Mapping[int, int], tileable: Sequence[bool], ones: set[int], target) -> bool:
    """Whether a matmul group keeps its accumulator tiles in registers over the whole K:
    both parallel loops tileable in the sink, the columns not a broadcast loop of the
    epilogue (`_broadcast_loops`: an input read across them would be a shuffle), and B
    (K x N) fits L2 (the condition under which the tiling pass leaves B unpacked; a
    register tile then reads its K x 32 panel of B from L2. A larger B, such as
    64x512 @ 512x2048's, whose 8 KB-strided rows conflict in L1 and L2 alike, runs
    slower this way than unfused and packed).

    The rows may be a broadcast loop: a per-row input (a pointwise convolution's
    per-channel batch norm on [F, H·W]) is one value per accumulator row, so the epilogue
    runs on 8×32 accumulator tiles instead of 1-row tiles after the matmul's cache tile
    (MobileNet-V2's expansions, 16→96 channels at 112², 24→144 at 56², 32→192 at 28², with
    batch norm and ReLU6; an earlier lowering had measured the other way)."""
    if c.kind not in ("matmul", "batch_matmul") or not all(
        loop in at and tileable[at[loop]] for loop in range(len(c.extents) - 1)
    ):
        return False
    m_loop, n_loop = len(c.extents) - 3, len(c.extents) - 2
    if at[n_loop] in ones or (at[m_loop] in ones and not getattr(target, "row_broadcasts_in_registers", True)):
        return False
    *_, n, k = c.extents
    if _streamed_panels(c, target):
        return False  # column panels streamed from memory: K in chunks (CHUNK_STREAMED_PANELS)
    return k * n * 4 <= getattr(target, "l2_bytes", 1 << 20)


def _transposed_tiles(nodes, group, to_sink, s: opinfo.OpInfo, tileable, target=None) -> tuple[int, ...] | None:
    """Register tiles of a light group that reads a tensor from outside it transposed (a
    full permutation whose contiguous dim is not the sink's innermost loop: an im2col
    GEMM's [N, OH, OW, F] result read as NCHW): 16 along the tensor's contiguous dim by up
    to 8 along the sink's, 1 elsewhere, so both the reads and the writes are vectors
    (the 1-element tiles `_broadcast_loops` alone gives such a group, a 64→64 channel
    layer's transpose + batch norm + ReLU at 56², read and write scalars).
    None when there is no such read or these loops cannot be tiled."""
    inner = len(s.extents) - 1
    for m in group:
        n = nodes[m]
        if n.info.kind in CONTRACTIONS or is_fill(n):
            continue
        loops = len(n.info.extents)
        for i, amap in enumerate(n.maps[: len(n.op.operands) - len(n.op.results)]):
            if n.producers.get(i) in group or None in amap or sorted(amap) != list(range(loops)):
                continue
            if amap[-1] == loops - 1 or amap[-1] not in to_sink[m]:
                continue
            along = to_sink[m][amap[-1]]
            lanes = _lanes(target)  # (8 × 8 on AVX2)
            if along == inner or not (tileable[along] and tileable[inner]) or s.extents[along] % lanes:
                return None
            if any(not t and x > 1 for t, x in zip(tileable, s.extents)):
                return None
            tiles = [1 if x > 1 else 0 for x in s.extents]
            tiles[along] = lanes if s.extents[along] > lanes else 0
            tiles[inner] = opinfo.divisor_at_most(s.extents[inner], 8)
            return tuple(tiles)
    return None


def _broadcast_loops(nodes, group, to_sink) -> set[int] | None:
    """Sink loops a register tile must not span: loops along which some register-tiled
    member reads an input that is not contiguous along its innermost loop (a per-channel
    scale, a row's maximum). With those at 1 the input is one value per tile (a cheap
    broadcast) instead of a shuffle. None when such a loop is not the sink's to tile."""
    out: set[int] = set()
    for m in group:
        n = nodes[m]
        if n.info.kind in CONTRACTIONS or is_fill(n):
            continue
        loops = len(n.info.extents)
        for amap in n.maps[: len(n.op.operands) - len(n.op.results)]:
            while amap and amap[-1] is None:  # trailing constant indices: a [C, 1, 1] scale
                amap = amap[:-1]  # read as (c, 0, 0) is contiguous along c
            if not amap or amap[-1] == loops - 1:
                continue
            for d in amap:
                if d is not None and n.info.extents[d] > 1:
                    if d not in to_sink[m]:
                        return None
                    out.add(to_sink[m][d])
    return out


def _feeds(nodes: Mapping[int, Node], group: set[int], op: int) -> bool:
    """Whether some member other than a fill, or a matmul accumulating into `op` (an
    accumulation chain, `_accumulation_chain`), is an ancestor of `op` inside the group."""
    stack, seen = [op], set()
    while stack:
        node = nodes[stack.pop()]
        for idx, p in node.producers.items():
            if p in group and p not in seen:
                if not (is_fill(nodes[p]) or _accumulates(node, idx, nodes[p])):
                    return True
                seen.add(p)
                stack.append(p)
    return False


def _accumulates(consumer: Node, operand: int, producer: Node) -> bool:
    """Whether `producer` is a matmul whose result is `consumer`'s accumulator (`consumer`
    a matmul too, `operand` its init)."""
    return consumer.info.kind == producer.info.kind == "matmul" and operand == 2


def _accumulation_chain(nodes: Mapping[int, Node], group: set[int], contractions: Sequence[int]) -> bool:
    """Whether the group's contractions are matmuls of one shape each accumulating into the
    next (the last one's result leaves the chain; `passes/im2col.py`'s tap chains): their
    accumulator tiles then stay in registers across the whole chain."""
    if any(
        nodes[c].info.kind != "matmul" or nodes[c].info.extents != nodes[contractions[0]].info.extents
        for c in contractions
    ):
        return False
    fed = [
        c
        for c in contractions
        if any(_accumulates(nodes[c], i, nodes[p]) for i, p in nodes[c].producers.items() if p in group)
    ]
    return len(fed) == len(contractions) - 1


def _split(extents: Sequence[int], tileable: Sequence[bool]) -> tuple[int, ...] | None:
    """Two or more tiles along the outermost tileable loop longer than 1 (a loop to fuse
    into: a tile as large as the loop is folded away), or None if there is none."""
    for d, t in enumerate(tileable):
        if t and extents[d] > 1:
            tiles = [0] * len(extents)
            tiles[d] = opinfo.divisor_at_most(extents[d], extents[d] // 2)
            return tuple(tiles)
    return None


def _budget(
    extents: Sequence[int], tileable: Sequence[bool], budget: int, ones: set[int] = frozenset()
) -> tuple[int, ...]:
    """Tile sizes (0 = whole) holding about `budget` elements: innermost tileable loops
    whole while they fit, then a dividing slice; loops that cannot be tiled stay whole;
    loops in `ones` get tile 1."""
    tiles = [0] * len(extents)
    room = budget
    for d in reversed(range(len(extents))):
        if d in ones and tileable[d]:
            tiles[d] = 1 if extents[d] > 1 else 0
            continue
        if not tileable[d]:
            room = max(1, room // extents[d])
            continue
        t = opinfo.divisor_at_most(extents[d], room)
        tiles[d] = t if t < extents[d] else 0
        room = max(1, room // t)
    if not any(tiles):  # fits one tile: a one-trip loop over the outermost tileable loop
        tiles = list(_split(extents, tileable) or tiles)
    return tuple(tiles)


def candidates(nodes: Mapping[int, Node], target=None) -> list[FusionDecision]:
    """Every legal multi-op group (bounded per sink), grown upwards from each sink, and per
    sink its closure (`_closure`: every producer that can join, a layer norm's whole
    two-pass chain)."""
    out: list[FusionDecision] = []
    for sink, snode in nodes.items():
        if is_fill(snode) or not snode.op.results or _chain_link(nodes, sink):
            continue
        seen: set[frozenset[int]] = set()
        frontier = [frozenset({sink})]
        found = 0
        while frontier and found < MAX_CANDIDATES_PER_SINK:
            group = frontier.pop(0)
            for p in _fusable_producers(nodes, group):
                if nodes[p].info.kind in CONTRACTIONS and any(nodes[m].info.kind in CONTRACTIONS for m in group):
                    continue  # accumulation chains: whole, as the sink's closure below
                bigger = set(group | {p})
                bigger |= _fills_of(nodes, p)
                key = frozenset(bigger)
                if key in seen or sum(1 for m in bigger if not is_fill(nodes[m])) > MAX_GROUP:
                    continue
                seen.add(key)
                decision = _decision(nodes, bigger, sink, target)
                if decision is None:
                    continue
                out.append(decision)
                found += 1
                frontier.append(key)
        if snode.info.kind in CONTRACTIONS and _fills_of(nodes, sink):
            # a matmul and its zero fill alone, when its accumulator tiles stay in registers:
            # each starts at zero there instead of a pass over the whole result (with the
            # fill at each cache tile instead, a 512→512 im2col GEMM at 7² lost, so only in
            # registers)
            own = _decision(nodes, {sink} | _fills_of(nodes, sink), sink, target)
            if own is not None and own.registers:
                out.append(own)
        closure = _closure(nodes, sink, target)
        if closure is not None and frozenset(closure.ops) not in seen:
            out.append(closure)
    return out


def _chain_link(nodes: Mapping[int, Node], op: int) -> bool:
    """Whether `op` is a matmul whose result only accumulates into other matmuls (not a
    chain's last link: no group ends there)."""
    users = nodes[op].users
    return bool(users) and all(
        u is not None and any(_accumulates(nodes[u], i, nodes[op]) for i, p in nodes[u].producers.items() if p == op)
        for u in users
    )


def _decision(nodes: Mapping[int, Node], group: set[int], sink: int, target) -> FusionDecision | None:
    """The group as a `FusionDecision`, or None when it is not a legal group."""
    contractions = [m for m in group if nodes[m].info.kind in CONTRACTIONS]
    if len(contractions) > 1 and not _accumulation_chain(nodes, group, contractions):
        return None
    if any("i1" in nodes[m].info.dtypes for m in group):
        return None  # i1 tensors are not vectorized: the chain would not stay in registers
    tiles = group_tiles(nodes, group, sink, target)
    if tiles is None:
        return None
    members = tuple(m for m in reversed(topo_order(nodes, group)) if m != sink)
    return FusionDecision(sink, members, *tiles)


def _closure(nodes: Mapping[int, Node], sink: int, target) -> FusionDecision | None:
    """The sink's largest group grown greedily: every fusable producer that keeps the group
    legal joins, until none does (up to MAX_CLOSURE ops). Reaches the groups the bounded
    search above cannot: a layer norm is 16 ops (two reductions, its f64 variance) that
    only as one group read their row once."""
    group = {sink}
    rejected: set[int] = set()
    decision = None
    while True:
        grown = False
        for p in _fusable_producers(nodes, frozenset(group)):
            if p in rejected:
                continue
            bigger = group | {p} | _fills_of(nodes, p)
            d = None
            if _closure_size(nodes, bigger) <= MAX_CLOSURE:
                d = _decision(nodes, bigger, sink, target)
            if d is None:
                rejected.add(p)
                continue
            group, decision, grown = bigger, d, True
        if not grown:
            return decision


def _closure_size(nodes: Mapping[int, Node], group: set[int]) -> int:
    """Ops in a group, fills not counted and an accumulation chain's matmuls counted as
    one (a 7×7 stem is a chain of 49: split, its accumulator tiles would leave registers
    between the parts)."""
    ops = [m for m in group if not is_fill(nodes[m])]
    links = sum(1 for m in ops if nodes[m].info.kind in CONTRACTIONS)
    return len(ops) - max(0, links - 1)


def maximal(nodes: Mapping[int, Node], target=None, *, keep=None) -> list[FusionDecision]:
    """Without a cost model: the largest legal group of each sink, taken from the last op
    backwards, skipping groups that overlap ones already taken (what the rewrite does to
    every fusable chain; for tests and for inspecting the rewrite). `keep`: a predicate
    on groups, those it rejects are never taken."""
    by_sink: dict[int, FusionDecision] = {}
    for g in candidates(nodes, target):
        if keep is not None and not keep(g):
            continue
        if len(g.ops) > len(by_sink.get(g.sink, FusionDecision(g.sink, (), ())).ops):
            by_sink[g.sink] = g
    taken: set[int] = set()
    out = []
    for sink in reversed(topo_order(nodes, set(nodes))):
        g = by_sink.get(sink)
        if g is not None and not taken & set(g.ops):
            out.append(g)
            taken |= set(g.ops)
    return out


def _fills_of(nodes: Mapping[int, Node], op_id: int) -> set[int]:
    return {p for p in nodes[op_id].producers.values() if is_fill(nodes[p])}


def _fusable_producers(nodes: Mapping[int, Node], group: frozenset[int]) -> list[int]:
    out = []
    for c in group:
        for p in nodes[c].producers.values():
            pn = nodes[p]
            if p in group or is_fill(pn) or not pn.op.results:
                continue
            if any(u is None or u not in group for u in pn.users):
                continue  # used outside the group: materialized
            out.append(p)
    return sorted(set(out))


# ------------------------------------------------------------------------ the rewrite
def fusion_script(
    decisions: Sequence[FusionDecision], kinds: Mapping[int, str], ragged: Mapping[int, Sequence[int]] | None = None
) -> str:
    """Transform script: match every op first (op ids stay valid), then per group tile
    the sink and fuse the members into its outermost loop, nearest producer first; with
    `inner`, tile the sink's tile again and fuse the non-contraction members into that.
    (`registers`: every member, the contraction included). `kinds`: op id → OpInfo.kind.
    `ragged`: per sink, the loops along which its register tile leaves a remainder
    (`ragged_dims`): each such loop is peeled (`transform.loop.peel`), its last, partial
    tile a loop of its own, which canonicalization at the end folds into static shapes
    (so both vectorize)."""
    ragged = ragged or {}
    body: list[str] = []

    def peel(g: FusionDecision, tile: str) -> None:
        if g.sink in ragged:  # (one loop, the innermost ragged one: the rows)
            d = max(ragged[g.sink])
            nth = sum(1 for t in g.inner[d:] if t)  # the loop's distance from the register tile
            body.append(peel_parent_loop(tile, nth, f"{g.sink}_{d}"))

    for g in decisions:
        for op in g.ops:
            body.append(
                f"    %m{op} = transform.structured.match attributes{{{tc.OP_ID} = {op} : i64}} in %root"
                f" : ({ANY}) -> {ANY}"
            )

    def tile_and_fuse(tag: str, sink: str, tiles, members: Sequence[tuple[int, str]]) -> tuple[str, dict[int, str]]:
        loops = sum(1 for t in tiles if t)
        types = ", ".join([ANY] * (loops + 1))
        body.append(
            f"    %{tag}s, %{tag}l:{loops} = transform.structured.tile_using_for {sink} "
            f"tile_sizes [{', '.join(map(str, tiles))}] : ({ANY}) -> ({types})"
        )
        loop, fused = f"%{tag}l#0", {}
        for m, handle in members:
            body.append(
                f"    %{tag}f{m}, %{tag}c{m} = transform.structured.fuse_into_containing_op {handle} into {loop}"
                f" : ({ANY}, {ANY}) -> ({ANY}, {ANY})"
            )
            loop, fused[m] = f"%{tag}c{m}", f"%{tag}f{m}"
        return f"%{tag}s", fused

    for g in decisions:
        if kinds[g.sink] in CONTRACTIONS:
            # a contraction and its zero fill: the fill is its destination, which only
            # `structured.fuse` follows (through the loops' iter_args) into the tiles
            handle = f"%m{g.sink}"
            for tag, tiles in (("a", g.tiles), ("b", g.inner if g.registers else ())):
                loops = sum(1 for t in tiles if t)
                if not loops:
                    continue
                types = ", ".join([ANY] * (loops + 1))
                body.append(
                    f"    %{tag}{g.sink}s, %{tag}{g.sink}l:{loops} = transform.structured.fuse {handle} "
                    f"tile_sizes [{', '.join(map(str, tiles))}] : ({ANY}) -> ({types})"
                )
                handle = f"%{tag}{g.sink}s"
                if tag == "b":
                    peel(g, handle)
            continue
        if any(g.tiles):
            sink, fused = tile_and_fuse(f"a{g.sink}", f"%m{g.sink}", g.tiles, [(m, f"%m{m}") for m in g.members])
        else:  # (a thread's chunk is the group's tile: `passes/parallel.py` dropped it)
            sink, fused = f"%m{g.sink}", {m: f"%m{m}" for m in g.members}
        if g.inner:
            light = [
                (m, fused[m]) for m in g.members if g.registers or (kinds[m] not in CONTRACTIONS and kinds[m] != "fill")
            ]
            inner_tile, _ = tile_and_fuse(f"b{g.sink}", sink, g.inner, light)
            peel(g, inner_tile)
    body.append(
        f"""    %fn = transform.structured.match ops{{["func.func"]}} in %root : ({ANY}) -> {ANY}
    transform.apply_patterns to %fn {{
      transform.apply_patterns.canonicalization
      transform.apply_patterns.linalg.tiling_canonicalization
    }} : {ANY}
    transform.apply_cse to %fn : {ANY}"""
    )
    return named_sequence("\n".join(body), consumed=False)


def apply(module: ir.Module, decisions: Sequence[FusionDecision], *, reproduce: str = "fuse") -> ir.Module:
    """Fuse every group (`decisions` name op ids as tagged by `analyze`). Ops that end up
    in register tiles (every member but a contraction and its fill, unless `registers`)
    are marked `tc.fused`: the tiling pass schedules each as one whole vectorized tile
    (a matmul: its k loop around one), so the chain stays in vector registers."""
    # (a group split into chunks a thread whose chunk is its tile keeps only register tiles)
    split = {r["sink"] for r in tc.read_records(module, tc.PARALLELIZED) or []}
    decisions = [d for d in decisions if d.members and (any(d.tiles) or (d.sink in split and any(d.inner)))]
    if not decisions:
        return module
    nodes = analyze(module)
    kinds = {op: ("fill" if is_fill(n) else n.info.kind) for op, n in nodes.items()}
    for g in decisions:
        for op in g.ops:
            if g.registers or (kinds[op] not in CONTRACTIONS and kinds[op] != "fill"):
                nodes[op].op.attributes[FUSED] = ir.UnitAttr.get(module.context)
    ragged = {g.sink: dims for g in decisions if (dims := ragged_dims(g.tiles, g.inner, nodes[g.sink].info.extents))}
    groups = [[nodes[op].op for op in g.ops] for g in decisions]  # (in islands: each fusion costs its kernel's size)
    apply_transform_in_islands(
        module, fusion_script(decisions, kinds, ragged), groups, stage="fuse", reproduce=reproduce
    )
    return module


# ------------------------------------------------------------------ group extraction
VIEW_OPS = ("tensor.extract_slice", "tensor.collapse_shape", "tensor.expand_shape")


def outline_group(
    nodes: Mapping[int, Node],
    group: Sequence[int],
    state: ir.AsmState,
    *,
    views: bool = False,
    printed: dict[int, str] | None = None,
) -> str:
    """The group's ops as one `func.func @kernel` (external values → arguments, captured
    constants copied in, the sink's result returned). SSA names are canonical, so equal
    groups print equally. With `views`, operands that are views (slices, reshapes) of
    another value are outlined with their views, so the function takes what they view: a
    tap chain then reads its taps from one input, as in the model (without, each tap is
    an argument of its own; the cost model's features are computed that way). `printed`:
    each member's text by op id, kept by a caller outlining many groups of one module
    that it does not change meanwhile (a fusion plan's candidates)."""
    order = topo_order(nodes, group)
    inside = {r for m in order for r in nodes[m].op.results}
    args: list[ir.Value] = []
    consts: list[str] = []
    texts = []

    def take(op: ir.Operation, reads: list[ir.Value] | None = None) -> None:
        for v in [*op.operands, *(captured(op) if reads is None else reads)]:
            owner = getattr(v.owner, "operation", v.owner)
            if v in inside:
                continue
            if isinstance(owner, ir.Operation) and owner.name == "arith.constant":
                consts.append(print_op(owner, state).strip())
            elif v not in args:
                args.append(v)

    if views:
        pulled: list[ir.Operation] = []

        def pull(v: ir.Value) -> None:
            owner = getattr(v.owner, "operation", v.owner)
            if v in inside or not isinstance(owner, ir.Operation) or owner.name not in VIEW_OPS:
                return
            for x in owner.operands:
                pull(x)
            inside.update(owner.results)
            pulled.append(owner)

        for m in order:
            for v in nodes[m].op.operands:
                pull(v)
        for owner in pulled:
            texts.append(print_op(owner, state))
            take(owner)
    printed = {} if printed is None else printed
    for m in order:
        op = nodes[m].op
        if m not in printed:
            tag = op.attributes[tc.OP_ID]
            del op.attributes[tc.OP_ID]
            try:
                printed[m] = print_op(op, state)
            finally:
                op.attributes[tc.OP_ID] = tag
        texts.append(printed[m])
        take(op, nodes[m].captured)
    body = "\n".join([*dict.fromkeys(consts), *texts])
    names: dict[str, str] = {v.get_name(state): f"%arg{i}" for i, v in enumerate(args)}
    result = nodes[order[-1]].op.results[0]
    rtype = str(result.type)
    body += f"\nfunc.return {result.get_name(state)} : {rtype}"

    def rename(mt: re.Match) -> str:  # every SSA value, block arguments included, first seen first
        return names.setdefault(mt.group(0), f"%v{len(names)}")

    body = re.sub(r"%[\w.$-]+(?:#\d+)?", rename, body)
    text = (
        f"func.func @kernel({', '.join(f'%arg{i}: {v.type}' for i, v in enumerate(args))}) -> {rtype} {{\n{body}\n}}\n"
    )
    return text


def as_outlined(nodes: Mapping[int, Node], decision: FusionDecision) -> FusionDecision:
    """`decision` restated over the op ids of its group outlined as one function
    (`outline_group`, re-analyzed): the whole function is the group."""
    order = topo_order(nodes, set(nodes))
    return dataclasses.replace(decision, sink=order[-1], members=tuple(reversed(order[:-1])))


# ---------------------------------------------------------------- predicted latency
def loop_trips(module: ir.Module) -> dict[int, int]:
    """Per tagged op: how many times it runs (product of enclosing constant-bound loops)."""
    trips: dict[int, int] = {}

    def walk(op: ir.Operation, mult: int) -> None:
        for region in op.regions:
            for block in region.blocks:
                for child in block.operations:
                    child = child.operation
                    op_id = _op_id(child)
                    if op_id is not None:
                        trips[op_id] = mult
                        continue
                    inner = mult
                    if child.name == "scf.for" and (bounds := static_loop(child)) is not None:
                        inner = mult * max(1, bounds[2])
                    walk(child, inner)

    walk(module.operation, 1)
    return trips


# ------------------------------------------------------------------------------ passes
@dataclasses.dataclass(frozen=True)
class TargetFacts:
    """What the group legality needs to know of a target (a backend's target description
    has the same fields)."""

    f32_lanes: int = 16
    l2_bytes: int = 1 << 20
    row_broadcasts_in_registers: bool = True


@dataclasses.dataclass(frozen=True)
class FusePass(ModulePass):
    name: ClassVar[str] = "fuse"
    summary: ClassVar[str] = (
        "tile each group's sink and fuse its members (strategy=decided: the module's tc.fusion groups; "
        "maximal: every sink's largest legal group, no model)"
    )
    strategy: str = "decided"
    f32_lanes: int = 16
    l2_bytes: int = 1 << 20
    row_broadcasts_in_registers: bool = True

    def apply(self, module: ir.Module, weights: Weights) -> None:
        private_fills(module)
        if self.strategy == "maximal":
            facts = TargetFacts(self.f32_lanes, self.l2_bytes, self.row_broadcasts_in_registers)
            groups = maximal(analyze(module), facts)
        elif self.strategy == "decided":  # (moved to tc.fused_groups once applied: a failure's input keeps them)
            groups = [FusionDecision.from_json(r) for r in tc.read_records(module, tc.FUSION) or []]
        else:
            raise ValueError(f"fuse{{strategy={self.strategy}}}: one of decided, maximal")
        apply(module, groups, reproduce=self.spec())
        if self.strategy == "decided":
            tc.take_records(module, tc.FUSION, tc.FUSED_GROUPS)
