"""The `private-fills` pass: every use of a `linalg.fill` gets a fill of its own.

On the passes floor; the fusion rewrite runs it first (`passes/fusion.py`'s `fuse`), and
the fusion planner analyzes the module after it. Reads and rewrites a module: a
contraction's zero-initialized accumulator is then fused (recomputed per tile) with the
contraction, never shared, and aliases no other op's output.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from torch_mlir import ir

from tilecraft.dialects.irutil import walk_ops
from tilecraft.passes.base import ModulePass, Weights


def private_fills(module: ir.Module) -> None:
    """Give every use of a `linalg.fill` its own copy, filling its own empty tensor: a
    contraction's zero-initialized accumulator is then fused (recomputed per tile) with
    the contraction, never shared, and aliases no other op's output (an accumulator tile
    fused into registers is then never stored)."""
    fills: list[ir.Operation] = []
    walk_ops(module.operation, lambda op: fills.append(op) if op.name == "linalg.fill" else None)
    for fill in list(fills):
        for use in list(fill.results[0].uses)[1:]:
            clone = fill.clone(ir.InsertionPoint(fill))
            use.owner.operands[use.operand_number] = clone.results[0]
            fills.append(clone)
    for fill in fills:
        init = fill.operands[1]
        owner = getattr(init.owner, "operation", init.owner)
        if isinstance(owner, ir.Operation) and owner.name == "tensor.empty" and len(list(init.uses)) > 1:
            fill.operands[1] = owner.clone(ir.InsertionPoint(fill)).results[0]


@dataclasses.dataclass(frozen=True)
class PrivateFillsPass(ModulePass):
    name: ClassVar[str] = "private-fills"
    summary: ClassVar[str] = "every use of a linalg.fill gets its own fill of its own empty tensor"

    def apply(self, module: ir.Module, weights: Weights) -> None:
        private_fills(module)
