"""Padded buffers filled only along their borders.

On the backends floor; runs in the CPU backend's `cpu-vector` stage (`lowering.to_vector`),
on the tiled module, before bufferization. Rewrites each static `tensor.pad` whose padding
value is a constant in place.

Upstream's destination-passing rewrite of a `tensor.pad` fills the whole padded buffer and
then copies the source into its interior: every element of the buffer is written twice.
MobileNet-V2 pads the input of each depthwise layer (96 channels at 114², 5 MB, among
them): the memsets alone took 7.7% of its time. Here the buffer is made empty, each border
slab is filled (per padded dim d, the rows before and after the source along d, the dims
before d restricted to the interior: the border exactly once) and the source is inserted
into the interior. The buffer and its fills are placed before the op that makes the source
(followed back through reshapes, in the same block) so that empty-tensor elimination can
still make that op write the interior in place. A row pad of a collapsed slice (a tap
chain's result without its wrapped-around columns, padded flat for an NHWC depthwise
layer) is instead one copy of the slice into the interior viewed in the slice's shape:
collapsed on its own, the slice was first compacted into a buffer of its own and then
copied again (MobileNet-V2's stem, 1.6 MB: 1.06x for the model at one thread).
"""

from __future__ import annotations

from torch_mlir import ir
from torch_mlir.dialects import func

from tilecraft.dialects.irutil import append_helper, call_helper, inline_helpers, owner_op, tensor_t, walk_ops

_RESHAPES = ("tensor.expand_shape", "tensor.collapse_shape")
_FLOATS = ("f32", "bf16", "f16", "f64")


def _static_pad(op: ir.Operation) -> tuple[list[int], list[int], str] | None:
    """(low, high, padding value as MLIR text) of a pad this rewrites, else None."""
    src, res = op.operands[0].type, op.results[0].type
    if not (isinstance(src, ir.RankedTensorType) and isinstance(res, ir.RankedTensorType)):
        return None
    if not (ir.RankedTensorType(src).has_static_shape and ir.RankedTensorType(res).has_static_shape):
        return None
    if len(op.operands) != 1:  # (dynamic low or high operands)
        return None
    low = list(ir.DenseI64ArrayAttr(op.attributes["static_low"]))
    high = list(ir.DenseI64ArrayAttr(op.attributes["static_high"]))
    if any(x < 0 for x in low + high) or not any(low + high):
        return None
    block = op.regions[0].blocks[0]
    yielded = list(block.operations)[-1].operands[0]
    const = owner_op(yielded)
    if const is None or const.name != "arith.constant" or str(yielded.type) not in _FLOATS:
        return None
    return low, high, str(const.attributes["value"])


def _slabs(shape: list[int], low: list[int], high: list[int]):
    """(offsets, sizes) of the border slabs of a buffer of `shape` padded by low/high."""
    n = [s - lo - hi for s, lo, hi in zip(shape, low, high)]
    for d in range(len(shape)):
        for off, size in ((0, low[d]), (low[d] + n[d], high[d])):
            if size == 0:
                continue
            offsets = [low[k] if k < d else 0 for k in range(d)] + [off] + [0] * (len(shape) - d - 1)
            sizes = [n[k] for k in range(d)] + [size] + shape[d + 1 :]
            yield offsets, sizes


def _buffer_text(name: str, shape: list[int], elem: str, low, high, value: str) -> str:
    t = tensor_t(shape, elem)
    lines = [f"  %v = arith.constant {value}", f"  %b0 = tensor.empty() : {t}"]
    for k, (offsets, sizes) in enumerate(_slabs(shape, low, high)):
        st = tensor_t(sizes, elem)
        where = f"[{', '.join(map(str, offsets))}] [{', '.join(map(str, sizes))}] [{', '.join(['1'] * len(shape))}]"
        lines += [
            f"  %s{k} = tensor.extract_slice %b{k}{where} : {t} to {st}",
            f"  %f{k} = linalg.fill ins(%v : {elem}) outs(%s{k} : {st}) -> {st}",
            f"  %b{k + 1} = tensor.insert_slice %f{k} into %b{k}{where} : {st} into {t}",
        ]
        last = k + 1
    body = "\n".join(lines)
    return f"func.func private @{name}() -> {t} {{\n{body}\n  return %b{last} : {t}\n}}"


def _interior(low, src: list[int]) -> str:
    """The offsets, sizes and strides of the buffer's interior (slice syntax)."""
    return f"[{', '.join(map(str, low))}] [{', '.join(map(str, src))}] [{', '.join(['1'] * len(src))}]"


def _insert_text(name: str, src: list[int], shape: list[int], elem: str, low) -> str:
    s, t = tensor_t(src, elem), tensor_t(shape, elem)
    where = _interior(low, src)
    return (
        f"func.func private @{name}(%x: {s}, %b: {t}) -> {t} {{\n"
        f"  %r = tensor.insert_slice %x into %b{where} : {s} into {t}\n  return %r : {t}\n}}"
    )


def _copy_in_text(name: str, src: list[int], view: list[int], reassoc: str, shape: list[int], elem: str, low) -> str:
    """Insert `%x` (of shape `view`, collapsed to `src` by `reassoc`) into the buffer's
    interior by one copy into the interior expanded to `view`."""
    x_t, s_t, t = tensor_t(view, elem), tensor_t(src, elem), tensor_t(shape, elem)
    where = _interior(low, src)
    return (
        f"func.func private @{name}(%x: {x_t}, %b: {t}) -> {t} {{\n"
        f"  %i = tensor.extract_slice %b{where} : {t} to {s_t}\n"
        f"  %ie = tensor.expand_shape %i {reassoc} output_shape [{', '.join(map(str, view))}] : {s_t} into {x_t}\n"
        f"  %c = linalg.copy ins(%x : {x_t}) outs(%ie : {x_t}) -> {x_t}\n"
        f"  %cf = tensor.collapse_shape %c {reassoc} : {x_t} into {s_t}\n"
        f"  %r = tensor.insert_slice %cf into %b{where} : {s_t} into {t}\n  return %r : {t}\n}}"
    )


COPY_INTO_ROWS = True  # a collapsed slice copied into the padded buffer once (off only to compare)


def _strided_rows(pad: ir.Operation, low: list[int], high: list[int]) -> ir.Operation | None:
    """The `tensor.collapse_shape` a row pad of a 2-D tensor reads when it collapses a
    slice (`passes/depthwise.py`'s flat padding of a tap chain's result without its
    wrapped-around columns): collapsed on its own, that slice is first copied into a
    buffer of its own, then into the padded one."""
    src = owner_op(pad.operands[0])
    if not COPY_INTO_ROWS or src is None or src.name != "tensor.collapse_shape" or len(low) != 2 or low[1] or high[1]:
        return None
    view = owner_op(src.operands[0])
    if view is None or view.name != "tensor.extract_slice" or len(list(pad.operands[0].uses)) != 1:
        return None
    return src


def _anchor(pad: ir.Operation) -> ir.Operation:
    """Where the buffer is made: before the op that makes the pad's source (through
    reshapes), if it is in the pad's block; else before the pad."""
    v, block = pad.operands[0], pad.block
    while True:
        op = owner_op(v)
        if op is None or op.block != block:
            return pad
        if op.name in _RESHAPES:
            v = op.operands[0]
            continue
        return op


def border_fills(module: ir.Module) -> int:
    """Rewrite every eligible `tensor.pad` (see the module docstring); returns how many."""
    pads: list[ir.Operation] = []
    walk_ops(module.operation, lambda op: pads.append(op) if op.name == "tensor.pad" else None)
    ctx, done = module.context, 0
    for pad in pads:
        spec = _static_pad(pad)
        if spec is None:
            continue
        low, high, value = spec
        rt = ir.RankedTensorType(pad.results[0].type)
        shape, elem = list(rt.shape), str(rt.element_type)
        src = list(ir.RankedTensorType(pad.operands[0].type).shape)
        make, put = f"__tc_pad_buffer_{done}", f"__tc_pad_insert_{done}"
        append_helper(module, _buffer_text(make, shape, elem, low, high, value))
        with ir.InsertionPoint(_anchor(pad)), pad.location:
            buf = func.CallOp([rt], ir.FlatSymbolRefAttr.get(make, context=ctx), []).results[0]
        collapse = _strided_rows(pad, low, high)
        if collapse is not None:
            view = list(ir.RankedTensorType(collapse.operands[0].type).shape)
            reassoc = str(collapse.attributes["reassociation"])
            text = _copy_in_text(put, src, view, reassoc, shape, elem, low)
            call_helper(module, pad, text, put, [collapse.operands[0], buf])
            collapse.erase()
        else:
            call_helper(module, pad, _insert_text(put, src, shape, elem, low), put, [pad.operands[0], buf])
        done += 1
    if done:
        with ctx:
            inline_helpers(module)
    return done
