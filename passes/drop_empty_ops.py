"""The `drop-empty-ops` pass: a linalg op over a zero-size tensor computes nothing.

On the passes floor; the first of the canonical rewrites (`compiler/driver.py`). Reads and
rewrites a module. A structured op reads or writes every operand at every point of its
iteration domain, so when any operand has no elements the domain is empty: the op's
results are its `outs` operands, untouched (an elementwise op on [0, 8] yields its empty
init; a matmul with K = 0 yields its zero fill). Without this, zero extents reached the
tiling decisions and the cost model's features (a tile of 0 elements).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from torch_mlir import ir

from tilecraft.dialects.irutil import erase_if_dead, walk_ops
from tilecraft.passes.base import ModulePass, Weights


def _empty(v: ir.Value) -> bool:
    return isinstance(v.type, ir.RankedTensorType) and 0 in ir.RankedTensorType(v.type).shape


def drop_empty_ops(module: ir.Module) -> int:
    """Replace every linalg op with a zero-size operand by its inits; returns how many."""
    found: list[ir.Operation] = []

    def visit(op: ir.Operation) -> None:
        n_out = len(op.results)
        if not op.name.startswith("linalg.") or not n_out or len(op.operands) < n_out:
            return
        inits = list(op.operands)[-n_out:]
        if all(i.type == r.type for i, r in zip(inits, op.results)) and any(_empty(v) for v in op.operands):
            found.append(op)

    walk_ops(module.operation, visit)
    for op in found:
        inits = list(op.operands)[-len(op.results) :]
        producers = [v.owner for v in op.operands]
        for r, init in zip(op.results, inits):
            r.replace_all_uses_with(init)
        op.erase()
        for p in producers:
            erase_if_dead(p)
    return len(found)


@dataclasses.dataclass(frozen=True)
class DropEmptyOpsPass(ModulePass):
    name: ClassVar[str] = "drop-empty-ops"
    summary: ClassVar[str] = "a linalg op with a zero-size operand (an empty iteration domain) replaced by its inits"

    def apply(self, module: ir.Module, weights: Weights) -> None:
        drop_empty_ops(module)
