"""The thread plan: which kernels run on several threads, split along which loop.

On the cost-model floor. With `threads` > 1, every kernel (a fusion group, or an op with
its fills) whose work is large enough to pay for a fork and join is split into `threads`
equal chunks along one parallel loop of its sink (`passes/parallel.py` applies the
`ParallelDecision`s), or, where no loop splits into that many whole tiles, into the most
chunks one does (an OpenMP team of `threads` then leaves some threads idle there). The
loop: among the sink's loops a chunk of the group's tiles could take (for a group, those
every member spans, `fusion.tileable_loops`), the outermost one whose extent splits into
whole tiles per thread (`OUTERMOST`: consecutive kernels then hand each thread its own
rows), or for a matmul much wider than tall (`WIDE`) the longest one.

A depthwise or pooling window is priced by its points as an elementwise op is (memory-bound:
MobileNet-V2's stride-2 depthwise layers, under 4 MFLOP, take 0.1-0.8 ms). A group whose tile
along the chosen loop does not fit a chunk a whole number of times gets a smaller tile that
does (`fit_tile`), and one whose register tile does not divide a chunk a halved register
tile (`fit_levels`); the fusion plan is rewritten with them.

This is the documented heuristic: the learned model does not yet price parallel kernels
(its corpus has no threaded rows), and the fusion and schedule planners rank as on one
thread.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from tilecraft.dialects.opinfo import LANES
from tilecraft.passes import fusion
from tilecraft.passes.parallel import ParallelDecision, chunk_ok
from tilecraft.passes.private_fills import private_fills

# Below these a kernel runs on one thread: a fork and join of a hot OpenMP team costs a
# few microseconds, a kernel this small takes a few tens. (Measured on the Xeon, 2 threads:
# 4M/64K beat 2M/32K and 8M/128K on bert_mini and gpt2_block; `bench/e2e.py`. Since each
# softmax row's scratch stopped going through the shared heap pool, `backends/cpu/scratch.py`,
# 2M flops: the autoencoder's 64→16 tap GEMMs, 2.2 MFLOP each, split too: conv_autoencoder
# 2 threads 1.11-1.15x, bert_mini, gpt2_block, mobilenet_v2 and resnet18 within noise.)
MIN_CONTRACTION_FLOPS = 1 << 21
# Elementwise, depthwise and pooling kernels from 16K points (was 64K, before the scratch
# fix): mobilenet_v2 2 threads 1.05-1.12x, bert_mini 1.04x, gpt2_block 1.05x,
# conv_autoencoder 1.03x, resnet18 within noise (A/B, 7 interleaved rounds).
MIN_POINTS = 1 << 14
GEMMS = ("matmul", "batch_matmul", "conv2d")  # (priced by flops; depthwise and pooling windows by points)

# Split the outermost loop that takes whole tiles per thread, so that consecutive kernels
# give each thread the same rows (NHWC: the same image rows; a token stream: the same
# tokens) and each thread reads what it wrote itself, from its own L2. Splitting each
# kernel along its longest loop instead mixed channel splits (a 1x1 expansion to 384
# channels) with row splits (the depthwise layer after it), and every such hand-over
# crossed cores. `bench/ab.py tilecraft.costmodel.parallel_plan OUTERMOST --threads 2`
# (7 rounds): mobilenet_v2 1.18x, bert_mini 1.08x, resnet18 1.06x, conv_autoencoder 1.03x,
# mlp 1.02x, gpt2_block within noise.
OUTERMOST = True
# ... except a matmul with more than WIDE times as many columns as rows: a weight-bound
# layer (mlp's 32 x 256 @ 256 x 512), whose threads would each read the whole weight when
# split by rows; it keeps the longest loop, the columns (pure outermost: mlp 0.93x).
WIDE = 8


def _wide(infos) -> bool:
    """The kernel's matmul has more than WIDE times as many columns as rows (a weight in
    column panels, `passes/panel_weights.py`: all its panels' columns)."""
    mm = [i for i in infos if i.kind in ("matmul", "batch_matmul")]
    if not mm:
        return False
    columns = mm[0].extents[-2] * (mm[0].extents[0] if _panels(mm[0]) else 1)
    return columns > WIDE * mm[0].extents[-3]


def _panels(info) -> bool:
    """A batched matmul over a weight's column panels: its A is [M, K], broadcast."""
    return info.kind == "batch_matmul" and len(info.shapes[0]) == 2


def plan(
    module, threads: int, groups: Sequence[fusion.FusionDecision] = (), *, fit: bool = True
) -> tuple[list[ParallelDecision], list[fusion.FusionDecision]]:
    """One decision per kernel worth splitting (`groups`: the fusion plan), and the fusion
    plan again, with the tile of a group along its split loop cut where whole tiles did
    not fit a chunk (`fit_tile`; with `fit` off, as for pinned groups, such a kernel
    stays whole)."""
    groups = list(groups)
    if threads < 2:
        return [], groups
    private_fills(module)  # (first: the parallelize pass runs it, and the op ids must not move after planning)
    nodes = fusion.analyze(module)
    kernels: list[tuple[int, tuple[int, ...], tuple[tuple[int, ...], ...], int | None]] = []
    taken: set[int] = set()
    for k, g in enumerate(groups):  # (sink, members, tile levels, index in `groups`)
        kernels.append((g.sink, tuple(g.members), (tuple(g.tiles), tuple(g.inner)), k))
        taken |= set(g.ops)
    for op_id, node in nodes.items():
        if op_id not in taken and not fusion.is_fill(node) and node.op.results:
            kernels.append((op_id, (), (), None))
    out = []
    for sink, members, levels, k in kernels:
        d = decide(nodes, sink, members, levels, threads, fit=fit)
        if d is None:
            continue
        out.append(d)
        ext = nodes[sink].info.extents
        tile, inner = fit_levels(ext[d.loop], d.chunks, *_at(levels, d.loop), peeled=d.loop in _peeled(levels, ext))
        if k is not None and (tile, inner) != _at(levels, d.loop):
            g = groups[k]
            tiles = tuple(tile if i == d.loop else t for i, t in enumerate(g.tiles))
            inners = tuple(inner if i == d.loop else t for i, t in enumerate(g.inner))
            groups[k] = dataclasses.replace(g, tiles=tiles, inner=inners)
    return out, groups


def decide(
    nodes, sink: int, members: tuple[int, ...], levels, threads: int, *, fit: bool = True
) -> ParallelDecision | None:
    """`levels`: the group's tile sizes per sink loop, outer then register tiles."""
    info = nodes[sink].info
    infos = [info, *(nodes[m].info for m in members)]
    if any(i.kind in GEMMS for i in infos):
        if sum(i.flops for i in infos) < MIN_CONTRACTION_FLOPS:
            return None
    elif max(i.flops for i in infos) < MIN_POINTS:  # (depthwise, pooling: memory-bound, as elementwise ops)
        return None
    group = {sink, *members}
    if members:
        to_sink = fusion.loops_to_sink(nodes, group, sink)
        if to_sink is None:
            return None
        loops = [i for i, ok in enumerate(fusion.tileable_loops(nodes, group, sink, to_sink)) if ok]
    else:
        loops = [i for i, it in enumerate(info.iterators) if it == "parallel"]
    peeled = _peeled(levels, info.extents)
    for chunks in range(threads, 1, -1):  # as many chunks as threads, else the most that fit
        ok = [i for i in loops if chunk_ok(info.extents[i], chunks, *_at(levels, i), peeled=i in peeled)]
        if not ok and fit:  # a loop whose chunk takes whole tiles once the group's tile is cut
            ok = [
                i for i in loops if fit_levels(info.extents[i], chunks, *_at(levels, i), peeled=i in peeled) is not None
            ]
        if ok:
            wide = _wide(infos)
            loop = ok[0] if OUTERMOST and not wide else max(ok, key=lambda i: (info.extents[i], -i))
            panels = [m for m in (sink, *members) if _panels(nodes[m].info)]
            if wide and panels:  # split the panels: each thread reads its own part of the weight
                j = to_sink[panels[0]].get(0) if members else 0
                loop = j if j in ok else loop
            return ParallelDecision(sink, members, loop, chunks)
    return None


def fit_tile(extent: int, chunks: int, tile: int, inner: int, *, peeled: bool = False) -> int | None:
    """The group's tile along a loop split into `chunks`: as it is where a chunk takes
    whole tiles (`chunk_ok`), else the largest smaller size that does (a multiple of the
    register tile `inner`, at least half the tile: a much smaller tile changes the
    kernel the fusion plan priced); None if none does."""
    if chunk_ok(extent, chunks, tile, inner, peeled=peeled):
        return tile
    if not tile or chunks < 2 or extent % chunks:
        return None
    step = 1 if peeled else inner or (LANES if tile % LANES == 0 else 1)  # (whole register tiles, vectors)
    for t in range(tile - 1, (tile + 1) // 2 - 1, -1):
        if t % step == 0 and t >= inner and chunk_ok(extent, chunks, t, inner, peeled=peeled):
            return t
    return None


# A group whose register tile along a loop does not divide a chunk of it may halve that
# tile (down to one vector of 16) to be split: MobileNet-V2's 7x7 projections, 960 -> 160
# channels (49 x 160 x 960), whose 7x32 accumulator tiles fit neither 49 rows nor 80
# columns per thread, ran serial at 2 threads (30% of the main thread's serial time) and
# split along the columns as 7x16 tiles instead.
HALVE_REGISTER_TILES = True


def fit_levels(extent: int, chunks: int, tile: int, inner: int, *, peeled: bool = False) -> tuple[int, int] | None:
    """The group's (tile, register tile) along a loop split into `chunks`: `fit_tile`
    with the register tile as it is, else halved while it stays whole vectors
    (`HALVE_REGISTER_TILES`); None if none fits."""
    while True:
        t = fit_tile(extent, chunks, tile, inner, peeled=peeled)
        if t is not None:
            return t, inner
        if not (HALVE_REGISTER_TILES and inner >= 2 * LANES and inner % (2 * LANES) == 0):
            return None
        inner //= 2


def _peeled(levels, extents) -> set[int]:
    """Sink loops along which the group's register tile leaves a remainder, peeled
    (`fusion.ragged_dims`)."""
    return set(fusion.ragged_dims(*levels, extents)) if len(levels) == 2 and levels[1] else set()


def _at(levels, i: int) -> tuple[int, int]:
    """The group's (tile, register tile) along sink loop i (0: not tiled there)."""
    tile, inner = ([lv[i] if i < len(lv) else 0 for lv in levels] + [0, 0])[:2]
    return tile, inner
