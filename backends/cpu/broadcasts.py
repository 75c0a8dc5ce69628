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


def rows_without_transposes(module: ir.Module) -> int:
    """Rewrite every `vector.transpose [1, 0]` of a broadcast of a 1-D vector<N> to
    vector<M x N> as the broadcast of vector<N x 1> to vector<N x M>; returns how many."""
    done = 0
    for op in tiling.ops_named(module.operation, "vector.transpose"):
        src = op.operands[0]
        owner = getattr(src.owner, "operation", src.owner)
        if not isinstance(owner, ir.Operation) or owner.name != "vector.broadcast":
            continue
        row = owner.operands[0]
        if [int(p) for p in ir.DenseI64ArrayAttr(op.attributes["permutation"])] != [1, 0]:
            continue
        if not isinstance(row.type, ir.VectorType) or ir.VectorType(row.type).rank != 1:
            continue
        out = ir.VectorType(op.results[0].type)
        n = ir.VectorType(row.type).shape[0]
        if list(out.shape)[0] != n:
            continue
        with ir.InsertionPoint(op), op.location:
            column = vector.shape_cast(ir.VectorType.get([n, 1], out.element_type), row)
            stretched = vector.broadcast(out, column)
        op.results[0].replace_all_uses_with(stretched)
        op.erase()
        if not list(owner.results[0].uses):
            owner.erase()
        done += 1
    return done
