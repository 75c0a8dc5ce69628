"""The `sink-expand-shapes` pass: reshapes moved below the elementwise ops that read them.

On the passes floor; one of the canonical rewrites (`compiler/driver.py`). Reads and
rewrites a module: an all-parallel generic reading an `expand_shape` is restated over the
collapsed loops and the expand moves to its result, so a GEMM and its epilogue form one
dataflow chain that fusion can make one kernel of.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

from torch_mlir import ir
from torch_mlir.dialects import tensor

from tilecraft.dialects.irutil import (
    entry_func,
    owner_op,
    reassociation_attr,
    reassociation_of,
    replace_op,
    restated_generic,
)
from tilecraft.passes.base import ModulePass, Weights


# ------------------------------------------------------------- reshapes out of the way
def sink_expand_shapes(module: ir.Module) -> int:
    """Move each `tensor.expand_shape` below the elementwise ops that read it (all-parallel
    `linalg.generic`s, identity output): they are restated on the collapsed loops
    (a pointwise GEMM's [F, H·W] instead of [1, F, H, W]) and the expand moves to their
    result, until an op that cannot be restated (a depthwise convolution) reads it. The
    GEMM and its batch-norm/activation chain are then one dataflow chain that fusion can
    make one kernel of; a reshape in between would keep them apart. Returns how many ops
    were restated."""
    ctx = module.context
    fn = entry_func(module)
    body = fn.regions[0].blocks[0]
    work = [op.operation for op in body.operations if op.operation.name == "tensor.expand_shape"]
    moved = 0
    while work:
        expand = work.pop()
        owners: list[ir.Operation] = []  # each reader once (one may read it twice)
        for use in expand.results[0].uses:
            owner = getattr(use.owner, "operation", use.owner)
            if not any(owner == o for o in owners):
                owners.append(owner)
        for owner in owners:
            with ir.Location.unknown(ctx):
                new_expand = _restate(owner, expand, ctx)
            if new_expand is not None:
                moved += 1
                work.append(new_expand)
        if not list(expand.results[0].uses):
            expand.erase()
    for op in [op.operation for op in body.operations if op.operation.name == "tensor.collapse_shape"]:
        src = owner_op(op.operands[0])  # collapse(expand(x)) with one reassociation: x
        if src is not None and src.name == "tensor.expand_shape" and reassociation_of(src) == reassociation_of(op):
            if src.operands[0].type == op.results[0].type:
                op.results[0].replace_all_uses_with(src.operands[0])
                op.erase()
                if not list(src.results[0].uses):
                    src.erase()
    return moved


def _restate(op, expand: ir.Operation, ctx) -> ir.Operation | None:
    """Restate `op` (an all-parallel generic reading `expand`'s result through a
    permutation: the identity, or a convolution's bias and activation writing NCHW from its
    GEMM's [H·W, F] rows) over the collapsed loops: each group of loops the expand splits
    must be contiguous and in order wherever it is read (or all but one of them unit). The
    loops collapse in its output's order (an NCHW epilogue reads the GEMM's result
    transposed, [F, H·W]); an expand of its result, with the output's own groups, replaces
    it. Returns that expand, or None if `op` cannot be restated."""
    op = getattr(op, "operation", op)
    if op.name != "linalg.generic" or len(op.results) != 1:
        return None
    if any("parallel" not in str(a) for a in ir.ArrayAttr(op.attributes["iterator_types"])):
        return None
    body = list(op.regions[0].blocks[0].operations)
    if any(o.name == "linalg.index" for o in body):
        return None
    maps = [ir.AffineMapAttr(a).value for a in ir.ArrayAttr(op.attributes["indexing_maps"])]
    n_in = len(op.operands) - 1
    out_t = ir.RankedTensorType(op.results[0].type)
    extents = list(out_t.shape)
    identity = ir.AffineMap.get_identity(len(extents), ctx)
    if maps[-1] != identity:
        return None
    reads = [i for i in range(n_in) if op.operands[i] == expand.results[0]]
    dims = _dims(maps[reads[0]]) if reads else None
    if dims is None or sorted(dims) != list(range(len(extents))):
        return None
    if len(body) == 1 and maps[reads[0]] != identity:
        return None  # a bare transpose: left as it is (a transformer's K, 3-D: 2-D ran slower)
    loop_groups = sorted([dims[d] for d in g] for g in reassociation_of(expand))
    if [d for g in loop_groups for d in g] != list(range(len(extents))):
        return None  # a group's loops out of order or apart in the output
    group_of = {d: k for k, g in enumerate(loop_groups) for d in g}
    collapsed = [math.prod(extents[d] for d in g) for g in loop_groups]
    plans = []  # per input: (new map, reassociation of its dims or None)
    for i in range(n_in):
        plan = _collapse_read(maps[i], loop_groups, group_of, extents, ctx)
        if plan is None:
            return None
        plans.append(plan)
    with ir.InsertionPoint(op), op.location:
        operands = []
        for i, (_, reassoc) in enumerate(plans):
            v = op.operands[i]
            if reassoc is None:
                operands.append(v)
                continue
            src = owner_op(v)
            if src is not None and src.name == "tensor.expand_shape" and reassociation_of(src) == reassoc:
                operands.append(src.operands[0])
                continue
            shape = ir.RankedTensorType(v.type).shape
            in_t = ir.RankedTensorType.get(
                [math.prod(shape[d] for d in g) for g in reassoc], ir.RankedTensorType(v.type).element_type
            )
            operands.append(tensor.collapse_shape(in_t, v, reassociation_attr(reassoc, ctx)))
        new_t = ir.RankedTensorType.get(collapsed, out_t.element_type)
        operands.append(tensor.empty(collapsed, out_t.element_type))
        new = restated_generic(op, operands, [m for m, _ in plans], new_t)
        back = tensor.expand_shape(out_t, new.results[0], reassociation_attr(loop_groups, ctx), [], extents)
    replace_op(op, back)
    return back.owner


def _dims(amap: ir.AffineMap) -> list[int] | None:
    """The loop each result of `amap` is, or None if one is not a bare loop."""
    out = []
    for expr in amap.results:
        expr = expr.maybe_downcast()
        if not isinstance(expr, ir.AffineDimExpr):
            return None
        out.append(expr.position)
    return out


def _collapse_read(amap, loop_groups, group_of, extents, ctx):
    """(`amap` over the collapsed loops, the reassociation of the operand's dims, None if
    it keeps them) or None: each run of results must be a whole loop group in order, a
    group's one non-unit loop, or a constant."""
    results, reassoc, k = [], [], 0
    exprs = [e.maybe_downcast() for e in amap.results]
    while k < len(exprs):
        e = exprs[k]
        if isinstance(e, ir.AffineConstantExpr):
            results.append(e)
            reassoc.append([k])
            k += 1
            continue
        if not isinstance(e, ir.AffineDimExpr):
            return None
        g = loop_groups[group_of[e.position]]
        run = [x.position if isinstance(x, ir.AffineDimExpr) else None for x in exprs[k : k + len(g)]]
        if run == g:
            reassoc.append(list(range(k, k + len(g))))
            k += len(g)
        elif all(extents[o] == 1 for o in g if o != e.position):
            reassoc.append([k])
            k += 1
        else:
            return None
        results.append(ir.AffineDimExpr.get(group_of[e.position], ctx))
    keep = all(len(r) == 1 for r in reassoc)
    return ir.AffineMap.get(len(loop_groups), 0, results, ctx), (None if keep else reassoc)


@dataclasses.dataclass(frozen=True)
class SinkExpandShapesPass(ModulePass):
    name: ClassVar[str] = "sink-expand-shapes"
    summary: ClassVar[str] = "expand_shapes moved below the elementwise ops that read them (one GEMM + epilogue chain)"

    def apply(self, module: ir.Module, weights: Weights) -> None:
        sink_expand_shapes(module)
