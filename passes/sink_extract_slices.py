"""The `sink-extract-slices` pass: a tap chain's trailing slice moved below its epilogue.

On the passes floor; one of the canonical rewrites (`compiler/driver.py`), after the
transposes are sunk. Reads and rewrites a module: a slice that drops a tap chain's
wrapped-around columns moves below the elementwise ops that read it through the identity,
so the chain's batch norm and activation run on its accumulator (one kernel, in
registers) and the slice is taken once at the end.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from torch_mlir import ir
from torch_mlir.dialects import tensor

from tilecraft.dialects.irutil import entry_func, owner_op, replace_op
from tilecraft.dialects.opinfo import indexing_maps, is_elementwise, is_live, positions_any
from tilecraft.passes.base import ModulePass, Weights

# ----------------------------------------------------------------- slices out of the way
MAX_SLICE_WASTE = 0.1  # extra elements an op restated over a slice's source may compute


def _static_slice(op: ir.Operation) -> tuple[list[int], list[int], list[int]]:
    keys = ("static_offsets", "static_sizes", "static_strides")
    return tuple(list(ir.DenseI64ArrayAttr(op.attributes[k])) for k in keys)


def _sinkable_slice(s: ir.Operation) -> list[int] | None:
    """The sliced dims of `s` if it is a slice worth sinking: static, offsets 0, unit
    strides, not rank-reducing, of a computed tensor at most MAX_SLICE_WASTE larger (a tap
    chain's output rows with their wrapped-around columns, `passes/im2col.py`)."""
    if s.name != "tensor.extract_slice" or len(s.operands) != 1:
        return None
    offsets, sizes, strides = _static_slice(s)
    src_shape = list(ir.RankedTensorType(s.operands[0].type).shape)
    out_shape = list(ir.RankedTensorType(s.results[0].type).shape)
    if any(offsets) or any(x != 1 for x in strides) or out_shape != sizes or len(src_shape) != len(sizes):
        return None
    src = owner_op(s.operands[0])
    if src is None or src.name not in ("tensor.expand_shape", "linalg.generic"):
        return None
    n_src, n_out = 1, 1
    for a, b in zip(src_shape, sizes):
        n_src, n_out = n_src * a, n_out * b
    if n_src > (1 + MAX_SLICE_WASTE) * n_out:
        return None
    return [d for d, (a, b) in enumerate(zip(src_shape, sizes)) if a != b]


def sink_extract_slices(module: ir.Module) -> int:
    """Move each such slice below the elementwise ops that read it through the identity
    (their other operands broadcast along the sliced dims): they compute the whole source
    and the slice moves to their result. A tap chain's batch norm and activation then read
    the chain's accumulator as it is, and fusion can make them its epilogue. Returns how
    many ops were restated."""
    with ir.Location.unknown(module.context):
        return _sink_extract_slices(module)


def _sink_extract_slices(module: ir.Module) -> int:
    body = entry_func(module).regions[0].blocks[0]
    work = [op.operation for op in body.operations if _sinkable_slice(op.operation) is not None]
    moved = 0
    while work:
        s = work.pop()
        sliced = _sinkable_slice(s)
        if sliced is None or not is_live(s):
            continue
        src = s.operands[0]
        src_t = ir.RankedTensorType(src.type)
        for use in list(s.results[0].uses):
            g = owner_op(use)
            if g is None or not is_elementwise(g):
                continue
            maps = indexing_maps(g)
            n_in = len(g.operands) - 1
            identity = ir.AffineMap.get_identity(maps[-1].n_dims, g.context)
            if ir.RankedTensorType(g.results[0].type).shape != ir.RankedTensorType(s.results[0].type).shape:
                continue
            if ir.RankedTensorType(g.results[0].type).element_type != src_t.element_type:
                continue
            ok = True
            for i in range(n_in):
                if g.operands[i] == s.results[0]:
                    ok = ok and maps[i] == identity
                else:
                    used = positions_any(maps[i])
                    ok = ok and used is not None and not set(used) & set(sliced)
            if not ok:
                continue
            with ir.InsertionPoint(g), g.location:
                init = tensor.empty(src_t.shape, src_t.element_type)
                new = g.clone()
                for i in range(n_in):
                    if g.operands[i] == s.results[0]:
                        new.operands[i] = src
                new.operands[n_in] = init
                new.results[0].set_type(src_t)
                back = s.clone()
                back.operands[0] = new.results[0]
            replace_op(g, back.results[0])
            moved += 1
            work.append(back)
        if not list(s.results[0].uses):
            s.erase()
    return moved


@dataclasses.dataclass(frozen=True)
class SinkExtractSlicesPass(ModulePass):
    name: ClassVar[str] = "sink-extract-slices"
    summary: ClassVar[str] = "a tap chain's trailing slice moved below its epilogue (the epilogue on the accumulator)"

    def apply(self, module: ir.Module, weights: Weights) -> None:
        sink_extract_slices(module)
