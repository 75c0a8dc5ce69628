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
copied again (MobileNet-V2's stem, 1.6 MB: 1.06x for the model at one thread). A tap
chain's flat result padded for the next convolution is not copied at all: the chain writes
it into the padded buffer, its wrapped-around columns landing on the border, which is filled
after it (`_chain_rows`).
"""

from __future__ import annotations

import dataclasses

from torch_mlir import ir
from torch_mlir.dialects import func, tensor

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
    fills, last = _fill_lines("b", shape, elem, low, high)
    body = "\n".join([f"  %v = arith.constant {value}", f"  %b0 = tensor.empty() : {t}", *fills])
    return f"func.func private @{name}() -> {t} {{\n{body}\n  return {last} : {t}\n}}"


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


# A tap chain's flat result written straight into the padded buffer of its consumer (off
# only to compare).
CHAIN_INTO_PAD = True


@dataclasses.dataclass(frozen=True)
class _Chain:
    """What `_chain_rows` found: the chain's flat result and the op making it, the view and
    slice of it the pad reads, its readers after the pad, the flat row it starts at in the
    buffer and the buffer's shape ([Hp, Wc, C])."""

    flat: ir.Value
    producer: ir.Operation
    expand: ir.Operation
    view: ir.Operation
    later: list
    start: int
    wide: list[int]


def _chain_rows(pad: ir.Operation, low: list[int], high: list[int]) -> _Chain | None:
    """The chain (`_Chain`) when a pad reads a tap chain's result without its wrapped-around columns and its padded rows
    are at most as wide as the chain's (`passes/im2col.py`: a 3x3 convolution's output,
    `[OH·Wc, C]` with `Wc - OW` columns of garbage a row, viewed `[1, OH, Wc, C]` and
    sliced to `[OH, OW, C]`, padded to `[Hp, Wp, C]` for the next 3x3 convolution, where
    `Wp = Wc`; ResNet-18's stem, 112 of 115 columns, padded to 114 for the max pool).

    Written from flat row `lh·Wc + lw` of a buffer viewed `[Hp·Wc, C]`, the chain puts each
    output pixel where the pad would, and its garbage columns onto padded columns (a row's
    last `Wc - lw - OW` and the next row's first `lw`), which the border fill then
    overwrites: the copy of the interior is gone, each element is written once more only on
    the border. Rows narrower than the chain's are a view of the first `Wp` columns (not
    when a consumer collapses them: that view is not contiguous). ResNet-18 (three 3x3
    outputs and the stem's): 1.04x / 1.02x at 1 / 2 threads (`bench/ab.py`)."""
    if not CHAIN_INTO_PAD or len(low) != 3 or low[2] or high[2]:
        return None
    view = owner_op(pad.operands[0])
    if view is None or view.name != "tensor.extract_slice":
        return None
    later = _later_uses(pad, pad.operands[0])
    if len(list(pad.operands[0].uses)) != 1 + len(later):
        return None  # (readers after the pad read the buffer's interior instead: `_chain_into`)
    if (
        list(ir.DenseI64ArrayAttr(view.attributes["static_offsets"])) != [0] * 4
        or set(ir.DenseI64ArrayAttr(view.attributes["static_strides"])) != {1}
        or len(view.operands) != 1
    ):
        return None
    expand = owner_op(view.operands[0])
    if expand is None or expand.name != "tensor.expand_shape":
        return None
    full = ir.RankedTensorType(expand.results[0].type)
    flat_v = expand.operands[0]
    flat = ir.RankedTensorType(flat_v.type)
    if full.rank != 4 or flat.rank != 2 or not full.has_static_shape or full.shape[0] != 1:
        return None
    _, oh, wc, c = full.shape
    out = list(ir.RankedTensorType(pad.operands[0].type).shape)
    if out[0] != oh or out[2] != c or len(list(flat_v.uses)) != 1 or len(list(expand.results[0].uses)) != 1:
        return None
    hp, wp = low[0] + oh + high[0], low[1] + out[1] + high[1]
    start = low[0] * wc + low[1]
    if wp > wc or start + oh * wc > hp * wc:
        return None
    if wp < wc and any(_user_name(u) in ("tensor.collapse_shape", None) for u in pad.results[0].uses):
        return None  # narrower rows read through a view of wider ones: no collapse of them
    producer = owner_op(flat_v)
    if producer is None or producer.block != pad.block:
        return None
    return _Chain(flat_v, producer, expand, view, later, start, [hp, wc, c])


def _user(use) -> ir.Operation | None:
    """The op a use belongs to (None: not an op)."""
    o = getattr(use.owner, "operation", use.owner)
    return o if isinstance(o, ir.Operation) else None


def _user_name(use) -> str | None:
    o = _user(use)
    return o.name if o is not None else None


def _fill_lines(name: str, shape: list[int], elem: str, low, high) -> tuple[list[str], str]:
    """Lines filling every border slab of the tensor `%{name}0` with `%v`; the last name."""
    t = tensor_t(shape, elem)
    lines, last = [], f"%{name}0"
    for k, (offsets, sizes) in enumerate(_slabs(shape, low, high)):
        st = tensor_t(sizes, elem)
        where = f"[{', '.join(map(str, offsets))}] [{', '.join(map(str, sizes))}] [{', '.join(['1'] * len(shape))}]"
        lines += [
            f"  %s{k} = tensor.extract_slice %{name}{k}{where} : {t} to {st}",
            f"  %f{k} = linalg.fill ins(%v : {elem}) outs(%s{k} : {st}) -> {st}",
            f"  %{name}{k + 1} = tensor.insert_slice %f{k} into %{name}{k}{where} : {st} into {t}",
        ]
        last = f"%{name}{k + 1}"
    return lines, last


def _chain_text(name: str, rows: list[int], wide: list[int], shape: list[int], elem: str, spec, start: int) -> str:
    """Insert the chain's flat result `%x` at flat row `start` of the buffer `%b`
    (`[Hp·Wc, C]`), view it `[Hp, Wc, C]`, fill its border and return its first `Wp`
    columns (all of them when `Wc = Wp`)."""
    low, high, value = spec
    x_t, b_t, w_t, t = (tensor_t(s, elem) for s in (rows, [wide[0] * wide[1], wide[2]], wide, shape))
    fills, last = _fill_lines("e", wide, elem, low, [high[0], wide[1] - shape[1] + high[1], high[2]])
    body = [
        f"  %v = arith.constant {value}",
        f"  %i = tensor.insert_slice %x into %b[{start}, 0] [{rows[0]}, {rows[1]}] [1, 1] : {x_t} into {b_t}",
        f"  %e0 = tensor.expand_shape %i [[0, 1], [2]] output_shape [{', '.join(map(str, wide))}] : {b_t} into {w_t}",
        *fills,
    ]
    if wide != shape:
        body.append(f"  %r = tensor.extract_slice {last}{_interior([0, 0, 0], shape)} : {w_t} to {t}")
        last = "%r"
    text = "\n".join(body)
    return f"func.func private @{name}(%x: {x_t}, %b: {b_t}) -> {t} {{\n{text}\n  return {last} : {t}\n}}"


def _chain_into(module: ir.Module, pad: ir.Operation, chain: _Chain, spec, put: str) -> None:
    """Replace `pad` by its buffer, made empty before the chain, with the chain's result
    inserted (`_chain_rows`) and the border filled."""
    low = spec[0]
    rt = ir.RankedTensorType(pad.results[0].type)
    shape, elem = list(rt.shape), str(rt.element_type)
    rows = list(ir.RankedTensorType(chain.flat.type).shape)
    wide = chain.wide
    with ir.InsertionPoint(chain.producer), pad.location:
        buf = tensor.EmptyOp([wide[0] * wide[1], wide[2]], rt.element_type).result
    text = _chain_text(put, rows, wide, shape, elem, spec, chain.start)
    padded = call_helper(module, pad, text, put, [chain.flat, buf])
    if chain.later:
        src = list(ir.RankedTensorType(chain.view.results[0].type).shape)
        _read_interior(module, padded, chain.later, low, src, elem, f"{put}_view")
    chain.view.erase()
    chain.expand.erase()


# The source's other readers after the pad read the padded buffer's interior (off only to
# compare). ResNet-18: two 0.8 MB copies gone; `bench/ab.py` 1.04x / 0.99x at 1 / 2 threads,
# within this machine's noise (unaffected models read 1.03-1.05x in the same run).
INTERIOR_READS = True


def _top(op: ir.Operation, block) -> ir.Operation | None:
    """`op` or the ancestor of it that is in `block` (None: none is)."""
    while op is not None and op.block != block:
        parent = op.parent
        op = getattr(parent, "operation", parent) if parent is not None else None
        if op is not None and op.name == "builtin.module":
            return None
    return op


def _later_uses(pad: ir.Operation, x: ir.Value) -> list:
    """The uses of the pad's source `x` by ops after the pad in its block (or inside them)."""
    if not INTERIOR_READS:
        return []
    out = []
    for use in x.uses:
        owner = _user(use)
        if owner is None or owner == pad:
            continue
        top = _top(owner, pad.block)
        if top is not None and top != pad and pad.is_before_in_block(top):
            out.append((owner, use.operand_number))
    return out


def _read_interior(module: ir.Module, padded: ir.Value, uses, low, src: list[int], elem: str, name: str) -> None:
    """Point each of `uses` (owner, operand number) at the padded buffer's interior: the
    source then has one reader, the insert into the buffer, and bufferization writes it in
    the buffer in place (with a second reader it copied the interior out to a buffer of its
    own and back: ResNet-18's block outputs, read by the next block's padded convolution
    and by its downsampling 1x1)."""
    s_t, t = tensor_t(src, elem), str(padded.type)
    shape = list(ir.RankedTensorType(padded.type).shape)
    u_t = tensor_t([1, *shape], elem)
    reassoc = "[[0, 1]" + "".join(f", [{d + 1}]" for d in range(1, len(shape))) + "]"
    # read through a unit-dim view of the buffer: a slice of the insert's result with its
    # very offsets and sizes would fold back into the source
    text = (
        f"func.func private @{name}(%p: {t}) -> {s_t} {{\n"
        f"  %u = tensor.expand_shape %p {reassoc} output_shape [1, {', '.join(map(str, shape))}] : {t} into {u_t}\n"
        f"  %v = tensor.extract_slice %u{_interior([0, *low], [1, *src])} : {u_t} to {s_t}\n  return %v : {s_t}\n}}"
    )
    append_helper(module, text)
    call_op = owner_op(padded)
    with ir.InsertionPoint.after(call_op), call_op.location:
        view = func.CallOp(
            [ir.Type.parse(s_t, context=module.context)],
            ir.FlatSymbolRefAttr.get(name, context=module.context),
            [padded],
        ).results[0]
    for owner, number in uses:
        owner.operands[number] = view


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
        chain = _chain_rows(pad, low, high)
        if chain is not None:
            _chain_into(module, pad, chain, (low, high, value), put)
            done += 1
            continue
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
            x = pad.operands[0]
            later = _later_uses(pad, x)
            padded = call_helper(module, pad, _insert_text(put, src, shape, elem, low), put, [x, buf])
            if later:
                _read_interior(module, padded, later, low, src, elem, f"__tc_pad_view_{done}")
        done += 1
    if done:
        with ctx:
            inline_helpers(module)
    return done
