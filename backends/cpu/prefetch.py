"""Software prefetches for rows of a function argument read down a register tile's k loop.

On the backends floor; runs at the end of the CPU backend's vector stage
(`lowering.to_vector`), on the bufferized module. A matmul's register tile steps down K
reading one row segment of B per iteration (`vector.load %B[%k, %n]`: 32 floats of a row
whose rows are a row stride apart). When B is a bound weight, it was last read one
inference ago and comes from L3 or memory, and the rows of a 32-column panel are
2–20 KB apart: the hardware prefetchers, which follow streams within a 4 KB page, miss
almost every one, so each row is a demand miss the FMAs wait on (ResNet-18's layer-4
GEMM, 49×512×4608: 3.0 ms in the model against 1.7 with its weight in L3).

Each such load gets a `memref.prefetch` of the same columns DISTANCE iterations ahead:
for every `vector.load` of at least a vector (LANES elements) in an innermost `scf.for`
whose memref is a function argument (through views: a weight's padded slice) and one of
whose indices other than the last moves with the loop. The last index moving is a
contiguous stream the hardware follows already. A prefetch never faults and changes no
value: an address past the end of the buffer (the last iterations') is harmless.
"""

from __future__ import annotations

from torch_mlir import ir
from torch_mlir.dialects import arith
from torch_mlir.dialects import memref as memref_d

from tilecraft.dialects.irutil import ops_named, owner_op
from tilecraft.dialects.opinfo import LANES

ENABLED = True  # (off only to compare)
# Iterations ahead: with k tiles of 64 rows, the same columns of the next k tile, read
# after this tile's slab of B went by. 32 and 64 gained alike on ResNet-18 (1.11x at 1
# thread); `bench/ab.py tilecraft.backends.cpu.prefetch DISTANCE --values 64,128`:
# mobilenet_v2 0.95x, resnet18 and bert_mini within noise; 192 no better.
DISTANCE = 64
# prefetcht1: into L2, not L1. The row is read a k tile later, after a whole slab of B went
# through L1 (`bench/ab.py ... LOCALITY --values 3,2`: resnet18 1.01x / 1.08x, bert_mini
# 1.10x / 1.02x, mobilenet_v2 1.02x / 1.03x at 1 / 2 threads over prefetcht0).
LOCALITY = 2
# views a prefetch may look through to the argument (same buffer, the load's own indices)
_VIEWS = ("memref.subview", "memref.reinterpret_cast", "memref.cast")


def _argument_root(v: ir.Value) -> bool:
    """Whether a memref value is a view of a function argument."""
    while (op := owner_op(v)) is not None:
        if op.name not in _VIEWS:
            return False
        v = op.operands[0]
    return v.owner.owner.operation.name == "func.func"


def _moves_with(index: ir.Value, iv: ir.Value) -> bool:
    """The index is the loop's induction variable or computed from it directly."""
    op = owner_op(index)
    return index == iv or (op is not None and any(x == iv for x in op.operands))


def _streams(mem: ir.Value, dim: int, load: ir.Operation) -> bool:
    """Consecutive steps read adjacent memory: the moving dim's stride is the loaded
    vector's own bytes (a weight stored as column panels, `passes/panel_weights.py`), a
    stream the hardware prefetchers follow."""
    strides, _ = ir.MemRefType(mem.type).get_strides_and_offset()
    vec = ir.VectorType(load.results[0].type)
    return 0 < strides[dim] <= vec.shape[-1]


def weight_prefetches(module: ir.Module) -> int:
    """Insert the prefetches (see the module docstring); returns how many."""
    if not ENABLED or DISTANCE <= 0:
        return 0
    added = 0
    for loop in ops_named(module.operation, "scf.for"):
        body = loop.regions[0].blocks[0]
        ops = [o.operation for o in body.operations]
        if any(o.name == "scf.for" for o in ops):
            continue
        iv, step = body.arguments[0], loop.operands[2]
        if str(iv.type) != "index":
            continue
        ahead = None  # DISTANCE steps, made before the loop's first prefetched load
        for op in ops:
            if op.name != "vector.load" or ir.VectorType(op.results[0].type).shape[-1:] < [LANES]:
                continue
            mem, indices = op.operands[0], list(op.operands[1:])
            moving = [i for i, x in enumerate(indices[:-1]) if _moves_with(x, iv)]
            if len(moving) != 1 or not _argument_root(mem) or _streams(mem, moving[0], op):
                continue
            with ir.InsertionPoint(op), op.location:
                if ahead is None:
                    ahead = arith.MulIOp(step, arith.ConstantOp(ir.IndexType.get(), DISTANCE).result).result
                indices[moving[0]] = arith.AddIOp(indices[moving[0]], ahead).result
                memref_d.PrefetchOp(mem, indices, False, LOCALITY, True)
            added += 1
    return added
