"""Polynomial expansions of math ops that LLVM cannot lower to vector code.

Runs on the linalg-on-tensors module before tiling (first step of the CPU `tiled` stage).
`math.erf` (GELU) has no LLVM intrinsic: left alone it becomes one scalar libm call per
vector lane. It is replaced by Abramowitz & Stegun 7.1.26 (|error| ≤ 1.5e-7), built from
arith and `math.exp`, which vectorize.
"""

from __future__ import annotations

from torch_mlir import ir
from torch_mlir.dialects import arith, math

_P = 0.3275911
_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


def expand_erf(module: ir.Module) -> int:
    """Replace every scalar `math.erf` in the module; returns how many were replaced."""
    found: list[ir.Operation] = []

    def walk(op: ir.Operation) -> None:
        for region in op.regions:
            for block in region.blocks:
                for child in block.operations:
                    if child.operation.name == "math.erf":
                        found.append(child.operation)
                    walk(child.operation)

    walk(module.operation)
    for op in found:
        x = op.operands[0]
        with ir.InsertionPoint(op), op.location:
            op.results[0].replace_all_uses_with(_erf(x))
        op.erase()
    return len(found)


def _erf(x: ir.Value) -> ir.Value:
    t = x.type

    def c(v: float) -> ir.Value:
        return arith.constant(t, v)

    ax = math.absf(x)
    u = arith.divf(c(1.0), arith.addf(c(1.0), arith.mulf(c(_P), ax)))
    poly = c(_A[-1])
    for a in reversed(_A[:-1]):
        poly = arith.addf(arith.mulf(poly, u), c(a))
    poly = arith.mulf(poly, u)
    y = arith.subf(c(1.0), arith.mulf(poly, math.exp(arith.negf(arith.mulf(ax, ax)))))
    return math.copysign(y, x)
