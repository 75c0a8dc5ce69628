"""Multiplies and adds of vectors as fused multiply-adds.

On the backends floor; runs in the CPU backend's `cpu-vector` stage, after
`broadcasts.rows_without_transposes` and before vector lowering (`lowering.to_vector`).

A contraction written as a `linalg.generic` (a convolution's window as a chain of taps,
`passes/im2col.py`) and an affine epilogue (batch norm's scale and shift) vectorize as an
`arith.mulf` whose one user is an `arith.addf`. Without fast-math flags LLVM keeps them
two instructions (`vmulps`, `vaddps`), twice the floating-point work of one `vfmadd`, where
a matmul's `vector.contract` lowers to `vector.fma`. Rewritten here as `math.fma` (the
product rounded once with the sum: at least as exact, as oneDNN's and ATen's kernels
compute it), where the host has FMA; elsewhere LLVM would call `fmaf`.
"""

from __future__ import annotations

from torch_mlir import ir
from torch_mlir.dialects import math as math_d

from tilecraft.backends.cpu import schedule as tiling
from tilecraft.backends.cpu.target import host

ENABLED = True  # (off only to compare)


def fused_multiply_adds(module: ir.Module) -> int:
    """Rewrite each vector `addf(mulf(a, b), c)` (either order) whose product has no other
    use as `math.fma(a, b, c)`; returns how many."""
    if not ENABLED or not host().has("fma"):
        return 0
    done = 0
    for mul in tiling.ops_named(module.operation, "arith.mulf"):
        if not isinstance(mul.results[0].type, ir.VectorType) or _fastmath(mul):
            continue
        uses = list(mul.results[0].uses)
        if len(uses) != 1:
            continue
        add = uses[0].owner
        add = getattr(add, "operation", add)
        if add.name != "arith.addf" or _fastmath(add) or add.operands[0] == add.operands[1]:
            continue
        other = add.operands[1 - uses[0].operand_number]
        with ir.InsertionPoint(add), add.location:
            fused = math_d.fma(mul.operands[0], mul.operands[1], other)
        add.results[0].replace_all_uses_with(fused)
        add.erase()
        mul.erase()
        done += 1
    return done


def _fastmath(op: ir.Operation) -> bool:
    """Whether `op` carries fast-math flags (their own contract: left as they are)."""
    return "fastmath" in op.attributes and str(op.attributes["fastmath"]) != "#arith.fastmath<none>"
