"""Reads along a strided last dimension as contiguous loads and shuffles.

On the backends floor; runs in the CPU backend's `cpu-vector` stage, between
bufferization and vector lowering (`lowering.to_vector`), beside
`broadcasts.rows_without_transposes`. Reads the bufferized, vectorized module and rewrites
its strided reads in place.

A register tile that reads a tensor through a stride on its last dimension (`x[..., ::2]`:
a subview with last stride 2) is a `vector.transfer_read` of a strided memref, which
upstream lowers element by element: a scalar load and an `insertelement` at a loop-carried
index, spilled through the stack by LLVM. Here such a read (in bounds, unmasked, static
strides, along the last dims) loads each row of its vector contiguously, from the first to
the last element it needs (from the buffer under the memref, flattened at the read's
offset: never past the row's last element), and keeps every s-th lane with one
`vector.shuffle`.

Contiguous loads and a shuffle beat both the element-by-element read and one gather per
tile (`vector.gather`, AVX-512 `vgatherdps`) on `x[..., 0::2] * 2, x[..., 1::2] + 1`.
MobileNet-V2's stride-2 depthwise convolutions as taps read this way (`passes/depthwise.py`)
stay slower than the scalar named op (96 channels, 112² → 56²), so they keep it.
"""

from __future__ import annotations

import itertools

from torch_mlir import ir

from tilecraft.backends.cpu import schedule as tiling
from tilecraft.dialects.irutil import call_helper, inline_helpers


def _strided_read(op: ir.Operation) -> tuple[ir.MemRefType, list[int], list[int]] | None:
    """(memref type, strides, vector shape) of an eligible read, or None."""
    src = op.operands[0]
    if not isinstance(src.type, ir.MemRefType) or not isinstance(op.results[0].type, ir.VectorType):
        return None
    vt, mt = ir.VectorType(op.results[0].type), ir.MemRefType(src.type)
    if not 0 < vt.rank <= mt.rank or str(vt.element_type) != "f32" or len(op.operands) != 2 + mt.rank:
        return None  # (a mask operand)
    if not all(bool(b) for b in ir.ArrayAttr(op.attributes["in_bounds"])):
        return None
    amap = ir.AffineMapAttr(op.attributes["permutation_map"]).value
    if str(amap) != str(ir.AffineMap.get_minor_identity(mt.rank, vt.rank)):
        return None
    strides, _ = mt.get_strides_and_offset()
    dynamic = ir.ShapedType.get_dynamic_stride_or_offset()
    if any(s == dynamic for s in strides) or strides[-1] in (0, 1):
        return None
    return mt, list(strides), list(vt.shape)


def _helper(name: str, mt: ir.MemRefType, strides: list[int], shape: list[int]) -> str:
    """The read as a function of the memref and the read's indices: the buffer under the
    memref flattened at the read's linear offset; per row of the vector (its last dim, n
    lanes `step` apart), one contiguous load of step·(n - 1) + 1 elements and one shuffle
    keeping every step-th; the rows inserted into the result."""
    rank, inner = mt.rank, strides[mt.rank - len(shape) :]
    n, step = shape[-1], inner[-1]
    span = step * (n - 1) + 1
    vec_t = f"vector<{'x'.join(map(str, shape))}xf32>"
    extent = sum((k - 1) * st for k, st in zip(shape, inner)) + 1
    flat_t = f"memref<{extent}xf32, strided<[1], offset: ?>>"
    idx = [f"%i{d}" for d in range(rank)]
    dims = ", ".join(f"d{d}" for d in range(rank))
    linear = " + ".join(["o"] + [f"d{d} * {st}" for d, st in enumerate(strides)])
    index = ", ".join(["index"] * rank)
    lines = [
        f"  %base, %off, %sizes:{rank}, %strides:{rank} = memref.extract_strided_metadata %m",
        f"      : {mt} -> memref<f32>, index, {index}, {index}",
        f"  %at = affine.apply affine_map<(o, {dims}) -> ({linear})>(%off, {', '.join(idx)})",
        f"  %flat = memref.reinterpret_cast %base to offset: [%at], sizes: [{extent}], strides: [1]",
        f"      : memref<f32> to {flat_t}",
    ]
    if len(shape) > 1:  # (the rows are inserted into it)
        lines.append(f"  %r0 = arith.constant dense<0.0> : {vec_t}")
    keep = ", ".join(str(step * i) for i in range(n))
    rows = list(itertools.product(*[range(k) for k in shape[:-1]]))
    for k, at in enumerate(rows):
        lines += [
            f"  %o{k} = arith.constant {sum(i * st for i, st in zip(at, inner))} : index",
            f"  %l{k} = vector.load %flat[%o{k}] : {flat_t}, vector<{span}xf32>",
            f"  %s{k} = vector.shuffle %l{k}, %l{k} [{keep}] : vector<{span}xf32>, vector<{span}xf32>",
        ]
        if len(shape) > 1:
            lines.append(
                f"  %r{k + 1} = vector.insert %s{k}, %r{k} [{', '.join(map(str, at))}] : vector<{n}xf32> into {vec_t}"
            )
    result = f"%r{len(rows)}" if len(shape) > 1 else "%s0"
    body = "\n".join(lines)
    args = ", ".join(f"{i}: index" for i in idx)
    return f"func.func private @{name}(%m: {mt}, {args}) -> {vec_t} {{\n{body}\n  return {result} : {vec_t}\n}}"


def contiguous_strided_reads(module: ir.Module) -> int:
    """Rewrite every eligible strided `vector.transfer_read` as contiguous loads and
    shuffles; returns how many."""
    done = 0
    for k, op in enumerate(tiling.ops_named(module.operation, "vector.transfer_read")):
        found = _strided_read(op)
        if found is None:
            continue
        name = f"__tc_strided_read_{k}"
        memref_and_indices = list(op.operands)[: 1 + found[0].rank]
        call_helper(module, op, _helper(name, *found), name, memref_and_indices)
        done += 1
    if done:
        with module.context:
            inline_helpers(module)
    return done
