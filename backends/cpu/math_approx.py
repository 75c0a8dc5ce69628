"""Polynomial expansions of math ops that LLVM cannot lower to vector code.

Runs on the linalg-on-tensors module before tiling (first step of the CPU `tiled` stage).
`math.erf` (GELU) has no LLVM intrinsic: left alone it becomes one scalar libm call per
vector lane. It is replaced by Abramowitz & Stegun 7.1.26 (|error| ≤ 1.5e-7), built from
arith and `math.exp`. `math.exp` lowers to `llvm.intr.exp`, which x86 also scalarizes into
one `expf` call per lane (softmax, GELU, SiLU); `expand_exp` replaces it (f32) by Cephes'
range reduction and degree-6 polynomial (≤ 2 ulp on [-87, 88.4]; 0 below, never a
subnormal), built from arith ops and `math.roundeven`, which all vectorize.
"""

from __future__ import annotations

from torch_mlir import ir
from torch_mlir.dialects import arith, math

_P = 0.3275911
_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


def expand_erf(module: ir.Module) -> int:
    """Replace every scalar `math.erf` in the module; returns how many were replaced."""
    return _replace(module, "math.erf", _erf)


def expand_exp(module: ir.Module) -> int:
    """Replace every scalar f32 `math.exp` in the module; returns how many were replaced."""
    return _replace(module, "math.exp", _exp)


def _replace(module: ir.Module, name: str, build) -> int:
    found: list[ir.Operation] = []

    def walk(op: ir.Operation) -> None:
        for region in op.regions:
            for block in region.blocks:
                for child in block.operations:
                    if child.operation.name == name and str(child.operation.operands[0].type) == "f32":
                        found.append(child.operation)
                    walk(child.operation)

    walk(module.operation)
    for op in found:
        x = op.operands[0]
        with ir.InsertionPoint(op), op.location:
            op.results[0].replace_all_uses_with(build(x))
        op.erase()
    return len(found)


_LOG2E, _LN2_HI, _LN2_LO = 1.44269504088896341, 0.693359375, -2.12194440e-4
_EXP_P = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)


def _exp(x: ir.Value) -> ir.Value:
    """exp(x) = 2^k · p(r), k = round(x / ln 2), r = x − k ln 2 (two-constant reduction)."""
    t = x.type
    i32 = ir.IntegerType.get_signless(32)

    def c(v: float) -> ir.Value:
        return arith.constant(t, v)

    small = arith.cmpf(arith.CmpFPredicate.OLT, x, c(-87.0))
    x = arith.minimumf(arith.maximumf(x, c(-87.0)), c(88.37626))
    k = math.roundeven(arith.mulf(x, c(_LOG2E)))
    r = arith.subf(arith.subf(x, arith.mulf(k, c(_LN2_HI))), arith.mulf(k, c(_LN2_LO)))
    poly = c(_EXP_P[0])
    for a in _EXP_P[1:]:
        poly = arith.addf(arith.mulf(poly, r), c(a))
    p = arith.addf(arith.addf(arith.mulf(poly, arith.mulf(r, r)), r), c(1.0))
    bits = arith.shli(arith.addi(arith.fptosi(i32, k), arith.constant(i32, 127)), arith.constant(i32, 23))
    # below -87 the result would be subnormal (2^-126 · p): flush to 0, as subnormal
    # arithmetic downstream (a masked softmax's sum and P·V) runs at microcode speed
    return arith.select(small, c(0.0), arith.mulf(p, arith.bitcast(t, bits)))


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
