"""The `inline-broadcasts` pass: a materialized broadcast read where it is used.

On the passes floor; one of the canonical rewrites (`compiler/driver.py`). Reads and
rewrites a module: the elementwise generics that read a broadcast (a convolution's bias
spread over [C, H, W]) read its source through the composed map instead, and the
broadcast goes when nothing else reads it. A bias broadcast then no longer pins its
layout (the NHWC rewrite sinks transposes through the add) and no spread copy is written.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from torch_mlir import ir

from tilecraft.dialects.irutil import entry_func, owner_op, replace_op
from tilecraft.dialects.opinfo import indexing_maps, positions_any, yields_its_input
from tilecraft.passes.base import ModulePass, Weights


# ------------------------------------------------------------ broadcasts read in place
def _broadcast_source(op: ir.Operation) -> ir.AffineMap | None:
    """The input map of a pure broadcast (an elementwise generic yielding its one input
    unchanged, read through fewer loops in order, and constants; or a `linalg.broadcast`),
    else None."""
    if op.name == "linalg.broadcast":
        added = set(ir.DenseI64ArrayAttr(op.attributes["dimensions"]))
        rank = ir.RankedTensorType(op.results[0].type).rank
        dims = [ir.AffineDimExpr.get(d, op.context) for d in range(rank) if d not in added]
        return ir.AffineMap.get(rank, 0, dims, op.context)
    if not yields_its_input(op):
        return None
    if ir.RankedTensorType(op.operands[0].type).element_type != ir.RankedTensorType(op.results[0].type).element_type:
        return None
    in_map = indexing_maps(op)[0]
    dims = positions_any(in_map)
    if dims is None or len(dims) >= in_map.n_dims or dims != sorted(set(dims)):
        return None  # a copy or a transpose: the layout pass's to move
    return in_map


def inline_broadcasts(module: ir.Module) -> int:
    """Let the elementwise generics that read a materialized broadcast (a convolution's
    bias spread over [C, H, W]) read its source through the composed map instead, and drop
    the broadcast when nothing else reads it. A bias broadcast then no longer pins its
    reader's loops: the reader can be restated over the GEMM's own rows and channels
    (`sink-expand-shapes`, `sink-extract-slices`), and fusion makes it the GEMM's
    epilogue. Returns how many reads were redirected."""
    body = entry_func(module).regions[0].blocks[0]
    moved = 0
    for b in [op.operation for op in body.operations]:
        in_map = _broadcast_source(b)
        if in_map is None:
            continue
        for use in list(b.results[0].uses):
            g = owner_op(use)
            if g is None or g.name != "linalg.generic" or use.operand_number >= len(g.operands) - 1:
                continue
            maps = indexing_maps(g)
            read = maps[use.operand_number]
            if positions_any(read) is None or len(read.results) != in_map.n_dims:
                continue
            results = []
            for expr in in_map.results:
                expr = expr.maybe_downcast()
                results.append(read.results[expr.position] if isinstance(expr, ir.AffineDimExpr) else expr)
            maps[use.operand_number] = ir.AffineMap.get(read.n_dims, 0, results, g.context)
            g.operands[use.operand_number] = b.operands[0]
            g.attributes["indexing_maps"] = ir.ArrayAttr.get([ir.AffineMapAttr.get(m) for m in maps])
            moved += 1
        if not list(b.results[0].uses):
            replace_op(b)
    return moved


# ------------------------------------------------------------------------------ passes
@dataclasses.dataclass(frozen=True)
class InlineBroadcastsPass(ModulePass):
    name: ClassVar[str] = "inline-broadcasts"
    summary: ClassVar[str] = "a materialized broadcast read where it is used, through the composed map"

    def apply(self, module: ir.Module, weights: Weights) -> None:
        inline_broadcasts(module)
