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

A weight stored as column panels (`passes/panel_weights.py`) is read as a stream: its rows
are adjacent. The hardware follows a stream only as fast as it is read, and the row tiles
of a chunk after the first read it from L1: memory then sits idle while they compute. So
such a load prefetches the next chunk of its panel, spread over all the row tiles
(`STREAM`), every cache line of the vector.
"""

from __future__ import annotations

from torch_mlir import ir
from torch_mlir.dialects import arith
from torch_mlir.dialects import memref as memref_d

from tilecraft.backends.cpu.target import host
from tilecraft.dialects import tc
from tilecraft.dialects.irutil import ops_named, owner_op, static_loop
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
# A contiguous stream (a column panel read down K) is prefetched a chunk ahead, spread over
# the loop around: the register tile's k loop (n steps of a K chunk) inside a loop over row
# tiles (T trips) that all read the same chunk prefetches, at step g = (row tile)·n + k of
# the T·n, row floor(g / T) of the next chunk: the next chunk arrives at the pace this one
# is consumed, and memory is busy while every row tile computes (not only the first). With
# no such loop, the next chunk at the k loop's own pace. ResNet-18's 49×4608 @ 4608×512
# alone, weight evicted, chunks of 256: 2.36 → 1.82 ms (the same in C, with and without:
# 2.37 → 1.64). `bench/ab.py tilecraft.backends.cpu.prefetch STREAM` (5 rounds): resnet18
# 1.03x / 1.08x (1 / 2 threads), mobilenet_v2 1.07x / 1.01x, bert_mini 1.09x / 1.00x,
# gpt2_block 0.99x / 1.01x, mlp 0.99x / 0.97x.
STREAM = True
ROWS = True  # the rows of a strided B, DISTANCE steps ahead (off only to compare)
STREAM_LOCALITY = 3  # prefetcht0: the chunk is read from L1
# views a prefetch may look through to the argument (same buffer, the load's own indices)
_VIEWS = ("memref.subview", "memref.reinterpret_cast", "memref.cast")


def _root(v: ir.Value) -> ir.Value | None:
    """The function argument a memref value is a view of, or None."""
    while (op := owner_op(v)) is not None:
        if op.name not in _VIEWS:
            return None
        v = op.operands[0]
    return v if v.owner.owner.operation.name == "func.func" else None


def _bound_panels(v: ir.Value) -> bool:
    """Whether a memref value is a view of a bound weight stored as column panels: one of
    the function's `tc.bound_args` leading arguments, [N/P, K, P]."""
    root = _root(v)
    if root is None or len(ir.MemRefType(root.type).shape) != 3:
        return False
    return ir.BlockArgument(root).arg_number < tc.bound_args(root.owner.owner.operation)


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


def _inside(op: ir.Operation | None, loop: ir.Operation) -> bool:
    """Whether `op` is `loop` or nested in it."""
    while op is not None:
        if op == loop:
            return True
        parent = op.parent
        op = parent.operation if parent is not None and parent.operation.name != "builtin.module" else None
    return False


def _outside(v: ir.Value, loop: ir.Operation) -> bool:
    """Whether `v` is defined outside `loop` (by an op, or as a block argument of an op,
    not nested in it): loop-invariant for it."""
    op = owner_op(v)
    return not _inside(op if op is not None else v.owner.owner.operation, loop)


def _stream_row(loop: ir.Operation, body: ir.Block, moving: ir.Value, mem: ir.Value, indices, dim: int):
    """The row of a panel stream to prefetch (see `STREAM`), built before the current
    insertion point, or None where the loops' bounds are not static."""
    own = static_loop(loop)
    if own is None or own[2] == 0:
        return None
    lb, st, n = own
    idx = ir.IndexType.get()

    def c(x: int) -> ir.Value:
        return arith.ConstantOp(idx, x).result

    def iteration(iv: ir.Value, lb: int, st: int) -> ir.Value:
        return iv if (lb, st) == (0, 1) else arith.DivUIOp(arith.SubIOp(iv, c(lb)).result, c(st)).result

    parent = loop.parent.operation if loop.parent is not None else None
    outer = None
    if parent is not None and parent.name == "scf.for":
        o_iv = parent.regions[0].blocks[0].arguments[0]
        src = owner_op(moving)
        fixed = [mem, *(x for i, x in enumerate(indices) if i != dim)]
        if (
            str(o_iv.type) == "index"  # (an i32 loop: its own pace)
            and all(_outside(x, parent) for x in fixed)
            and moving != o_iv
            and not (src is not None and any(x == o_iv for x in src.operands))
        ):
            outer = static_loop(parent)
    if outer is None or outer[2] <= 1:  # the next chunk at this loop's own pace
        return arith.AddIOp(moving, c(n * st)).result
    k_iter = iteration(body.arguments[0], lb, st)
    o_lb, o_st, trips = outer
    g = arith.AddIOp(arith.MulIOp(iteration(o_iv, o_lb, o_st), c(n)).result, k_iter).result  # among trips x n
    ahead = arith.SubIOp(arith.AddIOp(arith.DivUIOp(g, c(trips)).result, c(n)).result, k_iter).result
    return arith.AddIOp(moving, arith.MulIOp(ahead, c(st)).result).result


def weight_prefetches(module: ir.Module) -> int:
    """Insert the prefetches (see the module docstring); returns how many."""
    if not ENABLED or DISTANCE <= 0:
        return 0
    added = 0
    vector = min(LANES, host().f32_lanes)  # a vector register of the host the code is compiled for (8 on AVX2)
    for loop in ops_named(module.operation, "scf.for"):
        body = loop.regions[0].blocks[0]
        ops = [o.operation for o in body.operations]
        if any(o.name == "scf.for" for o in ops):
            continue
        iv, step = body.arguments[0], loop.operands[2]
        if str(iv.type) != "index":
            continue
        ahead = None  # DISTANCE steps, made before the loop's first prefetched load
        rows: dict = {}  # a stream's prefetch row, per load position (memref and indices)
        for op in ops:
            if op.name != "vector.load" or ir.VectorType(op.results[0].type).shape[-1:] < [vector]:
                continue
            mem, indices = op.operands[0], list(op.operands[1:])
            moving = [i for i, x in enumerate(indices[:-1]) if _moves_with(x, iv)]
            if len(moving) != 1 or _root(mem) is None:
                continue
            dim = moving[0]
            if _streams(mem, dim, op):
                if not STREAM or not _bound_panels(mem):
                    continue  # (an activation's rows: the hardware follows them, no next panel)
                with ir.InsertionPoint(op), op.location:
                    key = (mem, *indices)
                    if key not in rows:
                        rows[key] = _stream_row(loop, body, indices[dim], mem, indices, dim)
                    if rows[key] is None:
                        continue
                    indices[dim] = rows[key]
                    vec = ir.VectorType(op.results[0].type)
                    line = max(1, 512 // vec.element_type.width)  # elements of a 64-byte cache line
                    for lane in range(0, vec.shape[-1], line):  # every cache line of the vector
                        at = list(indices)
                        if lane:
                            at[-1] = arith.AddIOp(at[-1], arith.ConstantOp(ir.IndexType.get(), lane).result).result
                        memref_d.PrefetchOp(mem, at, False, STREAM_LOCALITY, True)
                        added += 1
                continue
            if not ROWS:
                continue
            with ir.InsertionPoint(op), op.location:
                if ahead is None:
                    ahead = arith.MulIOp(step, arith.ConstantOp(ir.IndexType.get(), DISTANCE).result).result
                indices[dim] = arith.AddIOp(indices[dim], ahead).result
                memref_d.PrefetchOp(mem, indices, False, LOCALITY, True)
            added += 1
    return added
