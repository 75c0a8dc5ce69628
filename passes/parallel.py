"""The parallelize pass: each kernel's work split into one chunk per thread.

On the passes floor. In the flow (`compiler/driver.py`) it runs after the fusion plan is
recorded and before the `fuse` rewrite: a `ParallelDecision` (written by the planner,
`costmodel/parallel_plan.py`, as `tc.parallel` records) names a kernel — its sink and the
members of its fusion group, or one op — a parallel loop of the sink and a number of
chunks. The sink is tiled over that loop by an `scf.forall` of `chunks` iterations
(`transform.structured.tile_using_forall`), and the group's members and the fills of its
accumulators are fused into it, nearest producer first. Everything after (the fusion
rewrite, the schedules, vectorization) then runs inside each chunk exactly as it ran on
the whole op, on a static slice; bufferization gives every chunk its own temporaries,
and the CPU backend's LLVM stage runs the forall's iterations on OpenMP threads.

A chunk is a whole number of the fusion group's tiles along the loop, so the group's
tiles stay legal; the planner only picks such loops (`chunk_ok`).

The low-precision contractions (`tc.amx`: lowered whole by the AMX or AVX-512 dot kernels,
so they have no op id and no decision) are split here too, along their rows into chunks of
whole 16-row tiles, one a thread, with their zero fills (`split_marked`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import ClassVar

from torch_mlir import ir

from tilecraft.dialects import opinfo, tc
from tilecraft.dialects.irutil import ANY, apply_transform, entry_func, named_sequence, walk_ops
from tilecraft.dialects.islands import apply_transform_in_islands
from tilecraft.passes import fusion
from tilecraft.passes.base import ModulePass, Weights
from tilecraft.passes.private_fills import private_fills


@dataclasses.dataclass(frozen=True)
class ParallelDecision:
    """Kernel `sink` (with `members`, nearest producer first) split along sink loop
    `loop` into `chunks` equal chunks, one a thread."""

    sink: int
    members: tuple[int, ...]
    loop: int
    chunks: int

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @staticmethod
    def from_json(text: str | dict) -> ParallelDecision:
        d = json.loads(text) if isinstance(text, str) else dict(text)
        if set(d) != {"sink", "members", "loop", "chunks"}:
            raise ValueError(f"not a ParallelDecision: {text!r}")
        return ParallelDecision(int(d["sink"]), tuple(int(m) for m in d["members"]), int(d["loop"]), int(d["chunks"]))


def chunk_ok(extent: int, chunks: int, tile: int = 0, inner: int = 0, *, peeled: bool = False) -> bool:
    """`extent` splits into `chunks` equal chunks, each a whole number of the group's tile
    along the loop and at least two of its register tile (0: not tiled there). A tile as
    large as the chunk is dropped (`_drop_chunk_tiles`): only where a register tile stays
    to fuse the group into. `peeled`: the register tile leaves a remainder along the loop
    anyway (`fusion.ragged_dims`), so a chunk may too."""
    if chunks < 2 or extent % chunks:
        return False
    chunk = extent // chunks
    if inner and (inner >= chunk or (chunk % inner and not peeled)):
        return False
    return not tile or (chunk % tile == 0 and (tile < chunk or bool(inner)))


def script(decisions: Sequence[ParallelDecision], nodes: Mapping[int, fusion.Node]) -> str:
    """Match every op first (op ids stay valid), then per kernel: the sink tiled by a
    forall over its chunks, the members and their fills fused into it."""
    body: list[str] = []
    order: list[tuple[ParallelDecision, list[int]]] = []
    for d in decisions:
        ops = [d.sink, *d.members]
        fills = [p for op in ops for p in nodes[op].producers.values() if fusion.is_fill(nodes[p]) and p not in ops]
        fused = [*d.members, *dict.fromkeys(fills)]
        order.append((d, fused))
        for op in (d.sink, *fused):
            body.append(
                f"    %m{op} = transform.structured.match attributes{{{tc.OP_ID} = {op} : i64}} in %root"
                f" : ({ANY}) -> {ANY}"
            )
    for d, fused in order:
        ext = nodes[d.sink].info.extents
        tiles = [0] * len(ext)
        tiles[d.loop] = ext[d.loop] // d.chunks
        body.append(
            f"    %t{d.sink}, %f{d.sink} = transform.structured.tile_using_forall %m{d.sink}"
            f" tile_sizes [{', '.join(map(str, tiles))}] : ({ANY}) -> ({ANY}, {ANY})"
        )
        loop = f"%f{d.sink}"
        body.append(f"    %fn{d.sink} = transform.get_parent_op %f{d.sink} {{isolated_from_above}} : ({ANY}) -> {ANY}")
        for m in fused:
            body.append(  # (CSE first: two members' slices of one producer become one, fused once)
                f"    transform.apply_cse to %fn{d.sink} : {ANY}\n"
                f"    %g{m}, %c{m} = transform.structured.fuse_into_containing_op %m{m} into {loop}"
                f" : ({ANY}, {ANY}) -> ({ANY}, {ANY})"
            )
            loop = f"%c{m}"
    body.append(
        f"""    %fn = transform.structured.match ops{{["func.func"]}} in %root : ({ANY}) -> {ANY}
    transform.apply_patterns to %fn {{
      transform.apply_patterns.canonicalization
      transform.apply_patterns.linalg.tiling_canonicalization
    }} : {ANY}"""
    )
    return named_sequence("\n".join(body), consumed=False)


def apply(module: ir.Module, decisions: Sequence[ParallelDecision], *, reproduce: str = "parallelize") -> dict:
    """Split every kernel `decisions` name; returns the nodes as they were before."""
    decisions = [d for d in decisions if d.chunks > 1]
    nodes = fusion.analyze(module)
    if not decisions:
        return nodes
    for d in decisions:
        if d.sink not in nodes or any(m not in nodes for m in d.members):
            raise ValueError(f"parallelize: kernel {d.sink} names ops the module does not have")
        ext = nodes[d.sink].info.extents
        if not 0 <= d.loop < len(ext) or nodes[d.sink].info.iterators[d.loop] != "parallel":
            raise ValueError(f"parallelize: loop {d.loop} of op {d.sink} is not a parallel loop")
        if not chunk_ok(ext[d.loop], d.chunks):
            raise ValueError(f"parallelize: loop {d.loop} of op {d.sink} ({ext[d.loop]}) in {d.chunks} chunks")
    kernels = [[nodes[op].op for op in (d.sink, *d.members)] for d in decisions]  # (in islands: see fusion.apply)
    apply_transform_in_islands(module, script(decisions, nodes), kernels, stage="parallelize", reproduce=reproduce)
    dead = True
    while dead:  # an original fused into a chunk that canonicalization kept (its body asserts)
        dead = [op for op in ops_with_ids(module) if op.results and all(not list(r.uses) for r in op.results)]
        for op in reversed(dead):
            op.erase()
    return nodes


SPLIT = "tc.amx_split"  # (a low-precision contraction's mark while `split_marked` tiles it)
AMX_ROWS = 16  # a chunk of an AMX contraction holds whole tiles of rows
# (resnet18 --precision auto, 2 threads: 7.04 -> 6.28 ms; bert_mini 1.68 -> 1.44: the AMX
# contractions ran on one thread while the other spun, 27% of its samples)
SPLIT_MARKED = True


def split_marked(module: ir.Module, chunks: int) -> int:
    """Each low-precision contraction (`tc.amx`, lowered whole by the AMX or AVX-512 dot
    kernels: no op id, so no `ParallelDecision`) at the top level of the entry function
    split along its first loop (rows, or a batched one's batch) into `chunks` chunks of
    whole 16-row tiles, one a thread, its zero fill fused into each; returns how many.
    The kernels take any strided operand, so each chunk calls one on its slices."""
    if chunks < 2 or not SPLIT_MARKED:
        return 0
    body = entry_func(module).regions[0].blocks[0]
    split = []
    for op in body.operations:
        op = op.operation
        if tc.AMX not in op.attributes or op.name != "linalg.generic":
            continue
        extents = [int(x) for x in ir.ShapedType(op.operands[2].type).shape]
        batched = len(extents) == 3 and len(ir.ShapedType(op.operands[0].type).shape) == 4
        rows = extents[0]
        quantum = 1 if batched else AMX_ROWS
        if rows % (chunks * quantum) == 0:
            split.append((op, rows // chunks))
    if not split:
        return 0
    i64 = ir.IntegerType.get_signless(64, context=module.context)
    lines = []
    for i, (op, tile) in enumerate(split):
        op.attributes[SPLIT] = ir.IntegerAttr.get(i64, i)
        loops = len(ir.ArrayAttr(op.attributes["iterator_types"]))
        sizes = ", ".join([str(tile)] + ["0"] * (loops - 1))
        lines.append(
            f"    %s{i} = transform.structured.match attributes{{{SPLIT} = {i} : i64}} in %root : ({ANY}) -> {ANY}\n"
            f"    %t{i}, %f{i} = transform.structured.tile_using_forall %s{i} tile_sizes [{sizes}]"
            f" : ({ANY}) -> ({ANY}, {ANY})"
        )
        init = op.operands[2].owner
        if isinstance(init, ir.Operation) and init.name == "linalg.fill" and tc.AMX_INIT in init.attributes:
            init.attributes[SPLIT] = ir.IntegerAttr.get(i64, i)
            lines.append(
                f'    %z{i} = transform.structured.match ops{{["linalg.fill"]}} attributes{{{SPLIT} = {i} : i64}}'
                f" in %root : ({ANY}) -> {ANY}\n"
                f"    %g{i}, %c{i} = transform.structured.fuse_into_containing_op %z{i} into %f{i}"
                f" : ({ANY}, {ANY}) -> ({ANY}, {ANY})"
            )
    apply_transform(module, named_sequence("\n".join(lines), consumed=False), stage="parallelize-marked")
    walk_ops(module.operation, lambda op: op.attributes.__delitem__(SPLIT) if SPLIT in op.attributes else None)
    return len(split)


@dataclasses.dataclass(frozen=True)
class ParallelizePass(ModulePass):
    name: ClassVar[str] = "parallelize"
    summary: ClassVar[str] = "split each kernel the module's tc.parallel records name into one forall chunk a thread"
    marked: int = 0  # chunks of each low-precision contraction (`split_marked`; 0: left whole)

    def apply(self, module: ir.Module, weights: Weights) -> None:
        split_marked(module, self.marked)
        private_fills(module)  # (a fill shared by two kernels would be cloned into one of them)
        records = tc.read_records(module, tc.PARALLEL) or []
        decisions = [ParallelDecision.from_json(r) for r in records]
        nodes = apply(module, decisions, reproduce=self.spec())
        if records:
            tc.take_records(module, tc.PARALLEL, tc.PARALLELIZED)
            _drop_chunk_tiles(module, decisions, nodes)
            _renumber(module)


def _renumber(module: ir.Module) -> None:
    """Op ids in the new program order (the fused members and fills moved into the
    chunks' foralls; every later pass tags ops in walk order), and the fusion and
    parallel records rewritten to match."""
    old = "tc.op_id_before"
    seen: set[int] = set()
    for op in ops_with_ids(module):
        op_id = ir.IntegerAttr(op.attributes[tc.OP_ID]).value
        if op_id in seen:  # (a producer fused into a chunk twice: the records could name one)
            raise ValueError(f"parallelize: op {op_id} was fused into a chunk twice")
        seen.add(op_id)
        op.attributes[old] = op.attributes[tc.OP_ID]
    opinfo.number_ops(module)  # (the ids `tag_ops` would give, without describing every op)
    new_of: dict[int, int] = {}
    for op in ops_with_ids(module):
        if old in op.attributes:
            new_of[ir.IntegerAttr(op.attributes[old]).value] = ir.IntegerAttr(op.attributes[tc.OP_ID]).value
            del op.attributes[old]
    for name in (tc.FUSION, tc.PARALLELIZED):
        records = tc.read_records(module, name)
        if records is None:
            continue
        for r in records:
            r["sink"] = new_of[r["sink"]]
            r["members"] = [new_of[m] for m in r["members"]]
        tc.set_records(module, name, [json.dumps(r, sort_keys=True) for r in records])


def ops_with_ids(module: ir.Module) -> list[ir.Operation]:
    out: list[ir.Operation] = []
    walk_ops(module.operation, lambda op: out.append(op) if tc.OP_ID in op.attributes else None)
    return out


def _drop_chunk_tiles(module: ir.Module, decisions: Sequence[ParallelDecision], nodes) -> None:
    """A fusion group whose tile along the split loop is the whole chunk: that tile
    dropped from its `tc.fusion` record (the chunk already is the tile; tiling a loop by
    its own extent leaves no slice to fuse through)."""
    groups = tc.read_records(module, tc.FUSION)
    if groups is None:
        return
    split = {d.sink: d for d in decisions}
    out = []
    for record in groups:
        g = fusion.FusionDecision.from_json(record)
        d = split.get(g.sink)
        if d is not None and d.loop < len(g.tiles):
            chunk = nodes[d.sink].info.extents[d.loop] // d.chunks
            if g.tiles[d.loop] == chunk:
                g = dataclasses.replace(g, tiles=tuple(0 if i == d.loop else t for i, t in enumerate(g.tiles)))
        out.append(g.to_json())
    tc.set_records(module, tc.FUSION, out)
