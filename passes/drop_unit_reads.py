"""The `drop-unit-reads` pass: an operand read through constant-zero dims read without them.

On the passes floor; the last of the canonical rewrites (`compiler/driver.py`). Reads and
rewrites a module: a [C, 1, 1] operand read through (c, 0, 0) is collapsed to [C] and read
through (c), a map the vectorizer handles (maps with constants stay scalar).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from torch_mlir import ir
from torch_mlir.dialects import tensor

from tilecraft.dialects.irutil import ops_named, reassociation_attr
from tilecraft.passes.base import ModulePass, Weights


def drop_unit_reads(module: ir.Module) -> int:
    """An elementwise generic's input read with trailing constant indices into unit dims
    (a per-channel scale [C, 1, 1] read as (c, 0, 0) by an epilogue restated over
    [C, H·W]) is read collapsed instead: [C] through (c). Maps with constants are not
    projected permutations, so the vectorizer left such an op scalar; a pointwise GEMM's
    batch norm in registers then ran as scalar loops on its accumulator tile in memory.
    Returns how many reads were rewritten."""
    ctx = module.context
    done = 0
    for op in ops_named(module.operation, "linalg.generic"):
        maps = [ir.AffineMapAttr(a).value for a in ir.ArrayAttr(op.attributes["indexing_maps"])]
        n_in = len(op.operands) - len(op.results)
        new_maps = list(maps)
        for i in range(n_in):
            v = op.operands[i]
            if not isinstance(v.type, ir.RankedTensorType):
                continue
            shape = list(ir.RankedTensorType(v.type).shape)
            results = list(maps[i].results)
            keep = len(results)
            while keep > 1 and _is_zero(results[keep - 1]) and shape[keep - 1] == 1:
                keep -= 1
            if keep == len(results):
                continue
            groups = [[d] for d in range(keep)]
            groups[-1] += list(range(keep, len(results)))
            with ir.InsertionPoint(op), op.location:
                collapsed_t = ir.RankedTensorType.get(shape[:keep], ir.RankedTensorType(v.type).element_type)
                op.operands[i] = tensor.collapse_shape(collapsed_t, v, reassociation_attr(groups, ctx))
            new_maps[i] = ir.AffineMap.get(maps[i].n_dims, maps[i].n_symbols, results[:keep], ctx)
            done += 1
        if new_maps != maps:
            op.attributes["indexing_maps"] = ir.ArrayAttr.get([ir.AffineMapAttr.get(m) for m in new_maps])
    return done


def _is_zero(expr) -> bool:
    expr = expr.maybe_downcast()
    return isinstance(expr, ir.AffineConstantExpr) and expr.value == 0


@dataclasses.dataclass(frozen=True)
class DropUnitReadsPass(ModulePass):
    name: ClassVar[str] = "drop-unit-reads"
    summary: ClassVar[str] = "a [C, 1, 1] operand read through (c, 0, 0) read as [C] (vectorizable)"

    def apply(self, module: ir.Module, weights: Weights) -> None:
        drop_unit_reads(module)
