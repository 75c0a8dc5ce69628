"""Vector reductions along a row, split into whole-register partial reductions.

On the backends floor; runs in the CPU backend's `cpu-vector` stage, between
bufferization and vector lowering (`lowering.to_vector`). Reads the bufferized, vectorized
module and rewrites its row reductions in place.

A fused reduction tile (a layer norm's or a softmax's row: `vector.multi_reduction` of
vector<1x256> over its last dim) would otherwise lower, under the `innerparallel` strategy
the contractions want, to one scalar extract and one dependent scalar add per element (256
in a row: ~1,000 cycles of latency per reduction, for every row). Each such reduction
becomes: the row cut into register-wide chunks (16 f32 / 8 f64), the chunks combined
pairwise (a tree of vector ops), and one `vector.reduction` of the last register,
reassociated (`fastmath<reassoc>`: LLVM reduces it with a shuffle tree). The sum is
reassociated, as every vectorized reduction (eager's included) is.
"""

from __future__ import annotations

from torch_mlir import ir
from torch_mlir.dialects import arith, vector

from tilecraft.backends.cpu import schedule as tiling

REGISTER_BITS = 512
MAX_CHUNKS = 64  # registers per row combined as a tree (longer rows are left alone)

# reduction kind → the elementwise op combining two partial results
_COMBINE = {
    "add": arith.addf,
    "mul": arith.mulf,
    "maxnumf": arith.maxnumf,
    "minnumf": arith.minnumf,
    "maximumf": arith.maximumf,
    "minimumf": arith.minimumf,
}


def split_row_reductions(module: ir.Module) -> int:
    """Rewrite every eligible `vector.multi_reduction` (float, over the innermost dim only,
    leading dims all 1, row a whole number of registers, more than one); returns how many."""
    found = [op for op in tiling.ops_named(module.operation, "vector.multi_reduction") if _eligible(op)]
    for op in found:
        with ir.InsertionPoint(op), op.location:
            result = _split(op)
        op.results[0].replace_all_uses_with(result)
        op.erase()
    return len(found)


def _kind(op: ir.Operation) -> str:
    text = str(op.attributes["kind"])  # #vector.kind<add>
    return text[text.index("<") + 1 : text.index(">")]


def _eligible(op: ir.Operation) -> bool:
    source = ir.VectorType(op.operands[0].type)
    if _kind(op) not in _COMBINE or not isinstance(source.element_type, (ir.F32Type, ir.F64Type)):
        return False
    shape = list(source.shape)
    dims = [int(d) for d in ir.DenseI64ArrayAttr(op.attributes["reduction_dims"])]
    if dims != [len(shape) - 1] or any(d != 1 for d in shape[:-1]):
        return False
    lanes = REGISTER_BITS // source.element_type.width
    return shape[-1] % lanes == 0 and 1 < shape[-1] // lanes <= MAX_CHUNKS


def _split(op: ir.Operation) -> ir.Value:
    src, acc = op.operands[0], op.operands[1]
    source = ir.VectorType(src.type)
    elem = source.element_type
    lanes = REGISTER_BITS // elem.width
    chunks = source.shape[-1] // lanes
    rows = vector.shape_cast(ir.VectorType.get([chunks, lanes], elem), src)
    parts = [vector.extract(rows, [], [i]) for i in range(chunks)]
    combine = _COMBINE[_kind(op)]
    while len(parts) > 1:  # pairwise: a tree of depth log2(chunks), not a chain
        parts = [combine(a, b) for a, b in zip(parts[::2], parts[1::2])] + parts[len(parts) & ~1 :]
    scalar_acc = acc
    if isinstance(acc.type, ir.VectorType):
        scalar_acc = vector.extract(acc, [], [0] * ir.VectorType(acc.type).rank)
    reduced = vector.ReductionOp(
        elem, op.attributes["kind"], parts[0], acc=scalar_acc, fastmath=ir.Attribute.parse("#arith.fastmath<reassoc>")
    ).result
    if isinstance(op.results[0].type, ir.VectorType):
        return vector.broadcast(op.results[0].type, reduced)
    return reduced
