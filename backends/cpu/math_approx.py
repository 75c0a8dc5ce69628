"""Polynomial expansions of math ops that LLVM cannot lower to vector code.

On the backends floor; runs on the linalg-on-tensors module before tiling (first step of
the CPU `cpu-tiled` stage), rewriting the math ops in place.

`math.erf` (GELU) has no LLVM intrinsic: left alone it becomes one scalar libm call per
vector lane. It is replaced by the rational approximation Eigen and XLA use for f32 (x
clamped to [-4, 4], x·P(x²)/Q(x²), degrees 6 and 4 in x²; |error| ≤ 4e-7 measured against
float64): 11 fused multiply-adds and one division, where Abramowitz & Stegun 7.1.26 needed
a division and an exponential. `math.exp` lowers to `llvm.intr.exp`, which x86 also
scalarizes into one `expf` call per lane (softmax, SiLU); `expand_exp` replaces it (f32)
by Cephes' range reduction and degree-6 polynomial (≤ 2 ulp on [-87, 88.4]; 0 below, never
a subnormal), built from `math.fma`, arith ops and `math.roundeven`, which all vectorize.
`reciprocal_constants` turns a division by a constant into a multiplication by its
reciprocal (≤ 1 ulp apart; GELU's x / √2: a `vdivps` is ~10 times a `vmulps`' throughput).
"""

from __future__ import annotations

import struct

from torch_mlir import ir
from torch_mlir.dialects import arith, math

# erf(x) ≈ x·P(x²)/Q(x²) on [-4, 4] (Eigen's `generic_fast_erf_float`, XLA's ErfImpl32),
# coefficients highest degree first
_ERF_P = (
    -2.72614225801306e-10,
    2.77068142495902e-08,
    -2.10102402082508e-06,
    -5.69250639462346e-05,
    -7.34990630326855e-04,
    -2.95459980854025e-03,
    -1.60960333262415e-02,
)
_ERF_Q = (
    -1.45660718464996e-05,
    -2.13374055278905e-04,
    -1.68282697438203e-03,
    -7.37332916720468e-03,
    -1.42647390514189e-02,
)


def expand_erf(module: ir.Module) -> int:
    """Replace every scalar `math.erf` in the module; returns how many were replaced."""
    return _replace(module, "math.erf", _erf)


def expand_exp(module: ir.Module) -> int:
    """Replace every scalar f32 `math.exp` in the module; returns how many were replaced."""
    return _replace(module, "math.exp", _exp)


def reciprocal_constants(module: ir.Module) -> int:
    """Replace every f32 `arith.divf` by a nonzero constant with a multiplication by the
    constant's reciprocal; returns how many were replaced."""

    found = [(op, _constant(op.operands[1])) for op in _ops(module, "arith.divf")]
    found = [(op, v) for op, v in found if v]  # (÷ 0 stays a division)
    for op, divisor in found:
        with ir.InsertionPoint(op), op.location:
            product = arith.mulf(op.operands[0], arith.constant(op.operands[0].type, 1.0 / divisor))
        op.results[0].replace_all_uses_with(product)
        op.erase()
    return len(found)


def _constant(v: ir.Value) -> float | None:
    """The f32 value of a float constant, looking through `arith.truncf`/`extf` (torch-mlir
    writes a Python scalar as an f64 constant truncated in the body), else None."""
    owner = getattr(v.owner, "operation", v.owner)
    while isinstance(owner, ir.Operation) and owner.name in ("arith.truncf", "arith.extf"):
        owner = getattr(owner.operands[0].owner, "operation", owner.operands[0].owner)
    if not (isinstance(owner, ir.Operation) and owner.name == "arith.constant"):
        return None
    attr = owner.attributes["value"]
    if not isinstance(attr, ir.FloatAttr):
        return None
    try:
        return struct.unpack("f", struct.pack("f", ir.FloatAttr(attr).value))[0]
    except OverflowError:  # not representable in f32
        return None


def _ops(module: ir.Module, name: str) -> list[ir.Operation]:
    """Every f32 op named `name` in the module, linalg bodies included."""
    found: list[ir.Operation] = []

    def walk(op: ir.Operation) -> None:
        for region in op.regions:
            for block in region.blocks:
                for child in block.operations:
                    if child.operation.name == name and str(child.operation.operands[0].type) == "f32":
                        found.append(child.operation)
                    walk(child.operation)

    walk(module.operation)
    return found


def _replace(module: ir.Module, name: str, build) -> int:
    found = _ops(module, name)
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
        poly = math.fma(poly, r, c(a))
    p = arith.addf(math.fma(poly, arith.mulf(r, r), r), c(1.0))
    bits = arith.shli(arith.addi(arith.fptosi(i32, k), arith.constant(i32, 127)), arith.constant(i32, 23))
    # below -87 the result would be subnormal (2^-126 · p): flush to 0, as subnormal
    # arithmetic downstream (a masked softmax's sum and P·V) runs at microcode speed
    return arith.select(small, c(0.0), arith.mulf(p, arith.bitcast(t, bits)))


def _erf(x: ir.Value) -> ir.Value:
    t = x.type

    def c(v: float) -> ir.Value:
        return arith.constant(t, v)

    def horner(coefficients, v: ir.Value) -> ir.Value:
        acc = c(coefficients[0])
        for a in coefficients[1:]:
            acc = math.fma(acc, v, c(a))
        return acc

    x = arith.minimumf(arith.maximumf(x, c(-4.0)), c(4.0))  # erf(±4) is ±1 in f32
    x2 = arith.mulf(x, x)
    return arith.divf(arith.mulf(x, horner(_ERF_P, x2)), horner(_ERF_Q, x2))
