"""The thread plan: which kernels run on several threads, split along which loop.

On the cost-model floor. With `threads` > 1, every kernel (a fusion group, or an op with
its fills) whose work is large enough to pay for a fork and join is split into `threads`
equal chunks along one parallel loop of its sink (`passes/parallel.py` applies the
`ParallelDecision`s), or, where no loop splits into that many whole tiles, into the most
chunks one does (an OpenMP team of `threads` then leaves some threads idle there). The
loop: among the sink's loops a chunk of the group's tiles could take (for a group, those
every member spans, `fusion.tileable_loops`), the longest one whose extent splits into
whole tiles per thread (outermost on ties: the chunks are then contiguous in memory).

This is the documented heuristic: the learned model does not yet price parallel kernels
(its corpus has no threaded rows), and the fusion and schedule planners rank as on one
thread.
"""

from __future__ import annotations

from collections.abc import Sequence

from tilecraft.passes import fusion
from tilecraft.passes.parallel import ParallelDecision, chunk_ok
from tilecraft.passes.private_fills import private_fills

# Below these a kernel runs on one thread: a fork and join of a hot OpenMP team costs a
# few microseconds, a kernel this small takes a few tens. (Measured on the Xeon, 2 threads:
# 4M/64K beat 2M/32K and 8M/128K on bert_mini and gpt2_block; `bench/e2e.py`.)
MIN_CONTRACTION_FLOPS = 1 << 22
MIN_POINTS = 1 << 16


def plan(module, threads: int, groups: Sequence[fusion.FusionDecision] = ()) -> list[ParallelDecision]:
    """One decision per kernel worth splitting (`groups`: the fusion plan)."""
    if threads < 2:
        return []
    private_fills(module)  # (first: the parallelize pass runs it, and the op ids must not move after planning)
    nodes = fusion.analyze(module)
    kernels: list[tuple[int, tuple[int, ...], tuple[tuple[int, ...], ...]]] = []  # (sink, members, tile levels)
    taken: set[int] = set()
    for g in groups:
        kernels.append((g.sink, tuple(g.members), (tuple(g.tiles), tuple(g.inner))))
        taken |= set(g.ops)
    for op_id, node in nodes.items():
        if op_id not in taken and not fusion.is_fill(node) and node.op.results:
            kernels.append((op_id, (), ()))
    out = []
    for sink, members, tiles in kernels:
        d = decide(nodes, sink, members, tiles, threads)
        if d is not None:
            out.append(d)
    return out


def decide(nodes, sink: int, members: tuple[int, ...], levels, threads: int) -> ParallelDecision | None:
    """`levels`: the group's tile sizes per sink loop, outer then register tiles."""
    info = nodes[sink].info
    infos = [info, *(nodes[m].info for m in members)]
    if any(i.kind in fusion.CONTRACTIONS for i in infos):
        if sum(i.flops for i in infos) < MIN_CONTRACTION_FLOPS:
            return None
    elif max(i.flops for i in infos) < MIN_POINTS:
        return None
    group = {sink, *members}
    if members:
        to_sink = fusion.loops_to_sink(nodes, group, sink)
        if to_sink is None:
            return None
        loops = [i for i, ok in enumerate(fusion.tileable_loops(nodes, group, sink, to_sink)) if ok]
    else:
        loops = [i for i, it in enumerate(info.iterators) if it == "parallel"]
    for chunks in range(threads, 1, -1):  # as many chunks as threads, else the most that fit
        ok = [i for i in loops if chunk_ok(info.extents[i], chunks, *_at(levels, i))]
        if ok:
            loop = max(ok, key=lambda i: (info.extents[i], -i))
            return ParallelDecision(sink, members, loop, chunks)
    return None


def _at(levels, i: int) -> tuple[int, int]:
    """The group's (tile, register tile) along sink loop i (0: not tiled there)."""
    tile, inner = ([lv[i] if i < len(lv) else 0 for lv in levels] + [0, 0])[:2]
    return tile, inner
