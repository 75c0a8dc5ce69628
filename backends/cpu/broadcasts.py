"""Per-row broadcasts without transposes.

On the backends floor; runs in the CPU backend's `cpu-vector` stage, between
bufferization and vector lowering (`lowering.to_vector`), beside
`reductions.split_row_reductions`. Reads the bufferized, vectorized module and rewrites
those transposes in place.

An epilogue in a matmul's accumulator tile that reads one value per row (a pointwise
convolution's per-channel batch norm over [F, H·W]: the scale read through (f, hw) → (f)
into vector<8x32>) is vectorized as a read of vector<8>, broadcast to vector<32x8> and
transposed (`transfer_permutation_patterns`); the transpose then lowers to one 256-element
shuffle per tile. The same value is the vector<8x1> read stretched along its unit dim,
which lowers to one `vbroadcastss` per row.
"""

from __future__ import annotations

from torch_mlir import ir
from torch_mlir.dialects import vector

from tilecraft.backends.cpu import schedule as tiling
from tilecraft.dialects.irutil import owner_op


def rows_without_transposes(module: ir.Module) -> int:
    """Rewrite every `vector.transpose [1, 0]` of a broadcast of a 1-D vector<N> to
    vector<M x N> as the broadcast of vector<N x 1> to vector<N x M>; returns how many."""
    done = 0
    for op in tiling.ops_named(module.operation, "vector.transpose"):
        if [int(p) for p in ir.DenseI64ArrayAttr(op.attributes["permutation"])] != [1, 0]:
            continue
        out = ir.VectorType(op.results[0].type)
        found = _broadcast_column(op.operands[0], list(out.shape)[0])
        if found is None:
            continue
        row, dead = found
        with ir.InsertionPoint(op), op.location:
            if ir.VectorType(row.type).rank == 1:
                row = vector.shape_cast(ir.VectorType.get([list(out.shape)[0], 1], out.element_type), row)
            stretched = vector.broadcast(out, row)
        op.results[0].replace_all_uses_with(stretched)
        op.erase()
        for o in dead:  # (the chain that fed the transpose, users first)
            if not any(len(list(r.uses)) for r in o.results):
                o.erase()
        done += 1
    return done


def _broadcast_column(v: ir.Value, n: int) -> tuple[ir.Value, list[ir.Operation]] | None:
    """The vector<N> or vector<N x 1> that `v` (a vector<M x N>) repeats M times, and the
    ops that made `v` from it, or None. Two spellings: a broadcast of vector<N>, and (a
    read of vector<N x 1>, as a tap of a convolution's window reads its rows) a broadcast
    of vector<N x 1> to vector<M x N x 1> shape-cast to vector<M x N>."""
    owner = owner_op(v)
    if owner is not None and owner.name == "vector.shape_cast":
        inner = owner_op(owner.operands[0])
        if inner is None or inner.name != "vector.broadcast":
            return None
        src = inner.operands[0]
        shape = list(ir.VectorType(inner.results[0].type).shape)
        if isinstance(src.type, ir.VectorType) and list(ir.VectorType(src.type).shape) == [n, 1] == shape[1:]:
            return src, [owner, inner]
        return None
    if owner is None or owner.name != "vector.broadcast":
        return None
    row = owner.operands[0]
    if isinstance(row.type, ir.VectorType) and list(ir.VectorType(row.type).shape) == [n]:
        return row, [owner]
    return None
