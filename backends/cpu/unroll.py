"""Data-movement loops LLVM does not unroll.

On the backends floor; `rolled_copies` runs at the start of the CPU backend's LLVM stage
(`lowering.prepare_llvm`, before `dedup` and the two-core split).

A copy (a pad's interior, a transpose's rows, a concatenation's slices) or a fill reaches
LLVM as loops of vector loads and stores with constant trip counts, and LLVM unrolls them
as far as its thresholds allow: ResNet-18's copy of its 3×224×224 input into the padded
stem buffer became 2,688 `vmovups` and 0.24 s of LLVM; a 28×28×64 copy 0.11 s. Unrolled
or not, such a loop waits on memory: its loop counter costs nothing measurable. So the
loops of a kernel that only moves data carry LLVM's `unroll disable` (0.016 s each).
Kernels that compute are left to LLVM: its unrolling of their loops is worth having (a
global `-unroll-threshold=20` cost the MLP 25% and ResNet-18 1-6%).
"""

from __future__ import annotations

from torch_mlir import ir

from tilecraft.dialects.irutil import kernel_ops

ENABLED = True  # (off only to compare)
# A loop's attribute holding an LLVM-dialect value: `convert-scf-to-cf` carries it to the
# loop's back edge, and the branch's conversion to `llvm.br`/`llvm.cond_br` makes it that
# op's own `loop_annotation`, the one the translation to LLVM IR reads.
ANNOTATION = "loop_annotation"
NO_UNROLL = "#llvm.loop_annotation<unroll = #llvm.loop_unroll<disable = true>>"
# The ops a data-movement kernel is made of: loops, views, index arithmetic, loads and
# stores (a fill stores a constant vector).
MOVES = frozenset(
    (
        "scf.for",
        "scf.yield",
        "scf.forall",
        "scf.forall.in_parallel",
        "memref.subview",
        "memref.collapse_shape",
        "memref.expand_shape",
        "memref.load",
        "memref.store",
        "memref.prefetch",
        "vector.load",
        "vector.store",
        "vector.transfer_read",
        "vector.transfer_write",
        "vector.broadcast",
        "affine.apply",
        "affine.min",
        "affine.max",
        "arith.constant",
        "arith.addi",
        "arith.subi",
        "arith.muli",
        "arith.index_cast",
        "ub.poison",
    )
)


def rolled_copies(module: ir.Module) -> int:
    """Mark every loop of each top-level data-movement kernel of the module's functions
    `unroll disable`; returns how many kernels."""
    if not ENABLED:
        return 0
    attr = ir.Attribute.parse(NO_UNROLL, module.context)
    done = 0
    for op in kernel_ops(module):
        loops = _moves_only(op) if op.name in ("scf.for", "scf.forall") else []
        for loop in loops:
            loop.attributes[ANNOTATION] = attr
        done += bool(loops)
    return done


def _moves_only(op: ir.Operation) -> list[ir.Operation]:
    """The `scf.for` loops in `op` if every op in it moves data (`MOVES`), else []."""
    loops: list[ir.Operation] = []
    ok = True

    def visit(o: ir.Operation):
        nonlocal ok
        if o.name not in MOVES:
            ok = False
            return ir.WalkResult.INTERRUPT
        if o.name == "scf.for":
            loops.append(o)
        return ir.WalkResult.ADVANCE

    op.walk(visit, ir.WalkOrder.PRE_ORDER)
    return loops if ok else []
