"""Channels-last between convolutions: transposes sunk through elementwise ops and cancelled.

On the passes floor; sits in the `im2col` stage (`compiler/driver.py`), after the
convolution rewrites and before the reshapes are sunk. Reads a linalg-on-tensors module;
writes it back with transposes sunk and cancelled (the ops they cross restated on NHWC),
a tap chain's trailing slice sunk below its epilogue (`sink_extract_slices`) and
materialized broadcasts read in place (`inline_broadcasts`); the bound weights are not
touched.

Each convolution `passes/im2col.py` rewrites computes [N, OH, OW, F] and transposes it
back to NCHW; the next one pads its input and transposes it to [N, H, W, C] again. Between
the two sit elementwise ops (batch norm, activation, residual add) that do not care about
the layout. `sink_transposes` moves each NHWC → NCHW transpose below the elementwise ops
that read it (each restated over the loops in the transpose's source order: it reads the
NHWC tensor through the identity map and writes NHWC, its other operands read through the
permuted maps), and cancels it against an NCHW → NHWC transpose that reads it through
`tensor.pad`s (the pads restated on NHWC). A max pooling the transpose reaches (through
its -inf pads) on the way to an inverse is restated on NHWC as the max of its window's
strided slices, vectorized along the channels, and the transpose moves below it
(`_pool_nhwc`). A transpose that meets anything else (a depthwise convolution's slices,
the result) stays, once, where it is first needed.

Then a convolution's epilogue reads its GEMM's [N·OH·OW, F] result through the identity
(after `sink-expand-shapes`), like a Linear's: fusion makes the GEMM, batch norm,
activation and residual add one kernel, and no transpose is left between two
convolutions, fused or not. A transpose is only sunk along paths that reach its inverse:
into a pooling or the result it stays where it was, fused into the epilogue that reads it.

Unfused, every transpose left between two convolutions is a pass over memory of its own,
which this removes; fused, a transpose already runs inside the epilogue that reads it, so
ResNet-18 gains mostly unfused (the other zoo models have no transposes that meet).
An elementwise op reading a transpose's result through the inverse permutation (a residual
add restated on NHWC for its shortcut, reading the NCHW batch norm of a downsampling block's
second convolution) counts as an inverse: it reads the source through the identity
(`_fold_into_reads`), and the batch norm is restated on NHWC and joins its GEMM's registers
(ResNet-18's downsampling stages). ResNet-18's max pooling restated on NHWC lets its stem's
epilogue join the stem's tap chain.
"""

from __future__ import annotations

import dataclasses
import struct
from typing import ClassVar

from torch_mlir import ir
from torch_mlir.dialects import tensor

from tilecraft.dialects.irutil import (
    call_helper,
    entry_func,
    erase_if_dead,
    inline_helpers,
    owner_op,
    pad_value,
    replace_op,
    tensor_t,
)
from tilecraft.dialects.opinfo import indexing_maps, is_elementwise, is_live, positions_any, yields_its_input
from tilecraft.passes.base import ModulePass, Weights
from tilecraft.passes.im2col import FOLD_BACK  # (a biased convolution's transpose, split from its add)


def _positions(amap: ir.AffineMap) -> list[int] | None:
    """The loop each result of a permutation map reads, or None."""
    out = positions_any(amap)
    return out if out is not None and sorted(out) == list(range(amap.n_dims)) else None


def _inverts(perm_u: list[int], perm_t: list[int]) -> bool:
    """Whether transpose `perm_u` undoes transpose `perm_t` (u's input dim k is its loop
    perm_u[k]; t's source dim k is its loop perm_t[k]): u(t(x)) is x."""
    return len(perm_u) == len(perm_t) and all(perm_u[perm_t[k]] == k for k in range(len(perm_t)))


def _through_pads(op: ir.Operation | None) -> ir.Operation | None:
    """`op`, or the op a chain of single-use pads starting at it feeds."""
    while op is not None and op.name == "tensor.pad" and len(list(op.results[0].uses)) == 1:
        op = owner_op(next(iter(op.results[0].uses)))
    return op


def transpose_of(op: ir.Operation) -> list[int] | None:
    """`perm` if `op` is a pure transpose (a generic yielding its one input, read through a
    permutation map that is not the identity), else None: its input's dim k is its loop
    (= result dim) perm[k]."""
    if not yields_its_input(op):
        return None
    perm = _positions(indexing_maps(op)[0])
    if perm is None or perm == list(range(len(perm))):
        return None
    return perm


def _substitute(amap: ir.AffineMap, new_dim: list[int], ctx) -> ir.AffineMap | None:
    """`amap` with old loop i renamed new_dim[i] (dims and constants only)."""
    results = []
    for expr in amap.results:
        expr = expr.maybe_downcast()
        if isinstance(expr, ir.AffineDimExpr):
            results.append(ir.AffineDimExpr.get(new_dim[expr.position], ctx))
        elif isinstance(expr, ir.AffineConstantExpr):
            results.append(expr)
        else:
            return None
    return ir.AffineMap.get(amap.n_dims, 0, results, ctx)


def _restate(g: ir.Operation, t: ir.Operation, perm: list[int]) -> ir.Operation | None:
    """Restate elementwise `g` (reading transpose `t`'s result through the identity) over
    the loops in `t`'s source order; returns the transpose of its new result (a clone of
    `t`), which replaces `g`'s uses, or None if it cannot be."""
    ctx = g.context
    if not is_elementwise(g):
        return None
    maps = indexing_maps(g)
    n_in = len(g.operands) - 1
    t_out = ir.RankedTensorType(t.results[0].type)
    if ir.RankedTensorType(g.results[0].type).shape != t_out.shape:
        return None
    identity = ir.AffineMap.get_identity(len(perm), ctx)
    new_dim = _new_dims(perm)
    src = t.operands[0]
    operands, new_maps = [], []
    for i in range(n_in):
        v = g.operands[i]
        other = owner_op(v)
        if maps[i] == identity and (v == t.results[0] or (other is not None and transpose_of(other) == perm)):
            operands.append(other.operands[0])  # a transpose's source, read as it is
            new_maps.append(identity)
            continue
        m = _substitute(maps[i], new_dim, ctx)
        if m is None:
            return None
        operands.append(v)
        new_maps.append(m)
    elem = ir.RankedTensorType(g.results[0].type).element_type
    out_t = ir.RankedTensorType.get(ir.RankedTensorType(src.type).shape, elem)
    with ir.InsertionPoint(g), g.location:
        operands.append(tensor.empty(out_t.shape, out_t.element_type))
        new = g.clone()
        for i, v in enumerate(operands):
            new.operands[i] = v
        new.attributes["indexing_maps"] = ir.ArrayAttr.get([ir.AffineMapAttr.get(m) for m in new_maps + [identity]])
        new.results[0].set_type(out_t)
        back = _transposed_back(t, new.results[0], list(t_out.shape))
    replace_op(g, back.results[0])
    return back


def _new_dims(perm: list[int]) -> list[int]:
    """Old loop i (a transpose's result dim) is new loop new_dim[i] (its source dim)."""
    new_dim = [0] * len(perm)
    for k, p in enumerate(perm):
        new_dim[p] = k
    return new_dim


def _transposed_back(t: ir.Operation, v: ir.Value, shape: list[int]) -> ir.Operation:
    """A clone of transpose `t` reading `v` into a fresh [shape] tensor (at the insertion point)."""
    elem = ir.RankedTensorType(v.type).element_type
    init = tensor.empty(shape, elem)
    back = t.clone()
    back.operands[0] = v
    back.operands[1] = init
    back.results[0].set_type(ir.RankedTensorType.get(shape, elem))
    return back


def is_index_gather(g: ir.Operation | None) -> bool:
    """An index gather (a nearest upsampling as torch-mlir lowers it): an all-parallel
    generic with no inputs and one result, its output read through the identity and not
    read in its body, which computes indices and `tensor.extract`s."""
    if g is None or g.name != "linalg.generic" or len(g.operands) != 1 or len(g.results) != 1:
        return False
    if any("parallel" not in str(a) for a in ir.ArrayAttr(g.attributes["iterator_types"])):
        return False
    out_map = indexing_maps(g)[0]
    if out_map != ir.AffineMap.get_identity(out_map.n_dims, g.context):
        return False
    return not list(g.regions[0].blocks[0].arguments[0].uses)


def gather_of(use: ir.OpOperand) -> ir.Operation | None:
    """The index gather (`is_index_gather`) a `tensor.extract` reading `use`'s value sits
    in, directly in its body's block; else None."""
    ex = owner_op(use)
    if ex is None or ex.name != "tensor.extract" or use.operand_number != 0:
        return None
    return ex.parent if is_index_gather(ex.parent) else None


def _restate_gather(g: ir.Operation, t: ir.Operation, perm: list[int]) -> ir.Operation | None:
    """Restate index gather `g` (`gather_of`), whose extracts read transpose `t`'s result,
    over the loops in `t`'s source order, its extracts reading `t`'s source with their
    indices permuted; returns the transpose of its new result, which replaces `g`."""
    shape = list(ir.RankedTensorType(g.results[0].type).shape)
    if len(shape) != len(perm) or ir.RankedTensorType(t.results[0].type).rank != len(perm):
        return None
    new_dim = _new_dims(perm)
    i64 = ir.IntegerType.get_signless(64, g.context)
    elem = ir.RankedTensorType(g.results[0].type).element_type
    new_shape = [shape[perm[k]] for k in range(len(perm))]
    with ir.InsertionPoint(g), g.location:
        init = tensor.empty(new_shape, elem)
        new = g.clone()
        new.operands[0] = init
        new.results[0].set_type(ir.RankedTensorType.get(new_shape, elem))
        for op in new.regions[0].blocks[0].operations:
            op = op.operation
            if op.name == "linalg.index":
                op.attributes["dim"] = ir.IntegerAttr.get(i64, new_dim[ir.IntegerAttr(op.attributes["dim"]).value])
            elif op.name == "tensor.extract" and op.operands[0] == t.results[0]:
                idx = [op.operands[1 + j] for j in range(len(perm))]
                op.operands[0] = t.operands[0]
                for k in range(len(perm)):
                    op.operands[1 + k] = idx[perm[k]]
        back = _transposed_back(t, new.results[0], shape)
    replace_op(g, back.results[0])
    return back


def _transposed_forward(t: ir.Operation, v: ir.Value, perm: list[int]) -> ir.Value:
    """`v` (laid out as transpose `t`'s result) transposed to `t`'s source order: the
    inverse of `t` (at the insertion point)."""
    new_dim = _new_dims(perm)
    shape = list(ir.RankedTensorType(v.type).shape)
    elem = ir.RankedTensorType(v.type).element_type
    ctx = t.context
    init = tensor.empty([shape[perm[k]] for k in range(len(perm))], elem)
    fwd = t.clone()
    fwd.operands[0] = v
    fwd.operands[1] = init
    fwd.results[0].set_type(ir.RankedTensorType(fwd.operands[1].type))
    in_map = ir.AffineMap.get(len(perm), 0, [ir.AffineDimExpr.get(new_dim[k], ctx) for k in range(len(perm))], ctx)
    identity = ir.AffineMap.get_identity(len(perm), ctx)
    fwd.attributes["indexing_maps"] = ir.ArrayAttr.get([ir.AffineMapAttr.get(m) for m in (in_map, identity)])
    return fwd.results[0]


def _restate_concat(c: ir.Operation, t: ir.Operation, perm: list[int]) -> ir.Operation | None:
    """Restate a `tensor.concat` reading transpose `t` (`perm`) on the transposes'
    sources, along the permuted dim (an input that is no such transpose is transposed to
    the source order: only its channels, not the whole result, are moved); returns the
    transpose of its new result, which replaces it."""
    ins = [owner_op(v) for v in c.operands]
    shape = list(ir.RankedTensorType(c.results[0].type).shape)
    if len(shape) != len(perm) or any(ir.RankedTensorType(v.type).rank != len(perm) for v in c.operands):
        return None
    dim = _new_dims(perm)[ir.IntegerAttr(c.attributes["dim"]).value]
    elem = ir.RankedTensorType(c.results[0].type).element_type
    with ir.InsertionPoint(c), c.location:
        srcs = [
            o.operands[0] if o is not None and transpose_of(o) == perm else _transposed_forward(t, v, perm)
            for o, v in zip(ins, c.operands)
        ]
        new = c.clone()
        for i, v in enumerate(srcs):
            new.operands[i] = v
        new.attributes["dim"] = ir.IntegerAttr.get(ir.IntegerType.get_signless(64, c.context), dim)
        new.results[0].set_type(ir.RankedTensorType.get([shape[perm[k]] for k in range(len(perm))], elem))
        back = _transposed_back(t, new.results[0], shape)
    c.results[0].replace_all_uses_with(back.results[0])
    c.erase()
    for o in ins:  # (an input read twice is one op: erased once)
        if o is not None and is_live(o) and transpose_of(o) == perm and not list(o.results[0].uses):
            replace_op(o)
    return back


def _static(pad: ir.Operation, name: str) -> list[int]:
    return list(ir.DenseI64ArrayAttr(pad.attributes[name]))


def _pads_above(v: ir.Value) -> tuple[list[ir.Operation], ir.Operation | None]:
    """The chain of single-use constant pads `v` is the result of (outermost first), and
    the op above them (None: a block argument, or a pad of another kind)."""
    pads = []
    while True:
        o = owner_op(v)
        if o is None or o.name != "tensor.pad":
            return pads, o
        if len(list(o.results[0].uses)) != 1 or len(o.operands) != 1 or pad_value(o) is None:
            return pads, None
        pads.append(o)
        v = o.operands[0]


def _restated_pads(pads: list[ir.Operation], perm: list[int], shape: list[int]) -> tuple[list[str], list[int]]:
    """`pads` (outermost first, over a transpose `perm` of %x0) restated on %x0, as helper
    lines from %x1 on, innermost first; and the padded shape."""
    lines = []
    for n, pad in enumerate(reversed(pads)):
        low, high = _static(pad, "static_low"), _static(pad, "static_high")
        lo = [low[perm[k]] for k in range(len(shape))]  # x dim k is the pad's dim perm[k]
        hi = [high[perm[k]] for k in range(len(shape))]
        new_shape = [d + a + b for d, a, b in zip(shape, lo, hi)]
        idx = ", ".join(f"%i{d}: index" for d in range(len(shape)))
        lines.append(
            f"  %z{n} = arith.constant {_f32_hex(pad_value(pad))} : f32\n"
            f"  %x{n + 1} = tensor.pad %x{n} low{lo} high{hi} {{\n  ^bb0({idx}):\n    tensor.yield %z{n} : f32\n"
            f"  }} : {tensor_t(shape, 'f32')} to {tensor_t(new_shape, 'f32')}"
        )
        shape = new_shape
    return lines, shape


def _replace_through(op: ir.Operation, module: ir.Module, text: str, name: str, t: ir.Operation, pads, done: list):
    """Replace `op` by a call to helper `text` on transpose `t`'s source; the pads between
    them and `t` go when nothing else reads them."""
    call_helper(module, op, text, name, [t.operands[0]])
    for pad in pads:  # outermost first: each the only user of the next
        if not list(pad.results[0].uses):
            pad.erase()
    done.append(name)
    if not list(t.results[0].uses):
        replace_op(t)


def _cancel(u: ir.Operation, module: ir.Module, done: list) -> bool:
    """`u` (NCHW → NHWC) reading, through pads, an NHWC → NCHW transpose of x: replaced by
    the pads restated on x."""
    perm_u = transpose_of(u)
    if perm_u is None:
        return False
    pads, t = _pads_above(u.operands[0])
    perm_t = transpose_of(t) if t is not None else None
    if perm_t is None or any(pad_value(p) != 0.0 for p in pads) or not _inverts(perm_u, perm_t):
        return False
    shape = list(ir.RankedTensorType(t.operands[0].type).shape)
    name = f"__tc_layout_{len(done)}"
    lines, shape = _restated_pads(pads, perm_t, shape)
    if tensor_t(shape, "f32") != str(u.results[0].type):
        return False
    head = f"func.func private @{name}(%x0: {t.operands[0].type}) -> {u.results[0].type} {{"
    tail = f"  return %x{len(pads)} : {u.results[0].type}\n}}"
    _replace_through(u, module, "\n".join([head, *lines, tail]), name, t, pads, done)
    return True


POOLINGS = ("linalg.pooling_nchw_max",)


def _f32_hex(value: float) -> str:
    """An f32 constant as MLIR reads any of them (-inf included)."""
    return f"0x{struct.unpack('<I', struct.pack('<f', value))[0]:08X}"


NCHW_FROM_NHWC = [0, 2, 3, 1]  # the perm of an NHWC → NCHW transpose (`transpose_of`)
MAX_POOLINGS_CROSSED = 4


def _pool_nhwc(pool: ir.Operation, module: ir.Module, done: list) -> bool:
    """A max pooling reading, through pads, an NHWC → NCHW transpose of x: restated on x
    as the elementwise max of its window's KH·KW strided slices (vectorized along the
    channels; a named NHWC pooling would be a new kind to schedule), then transposed back,
    which the next `_sink_transposes` sinks further (ResNet-18's stem: its epilogue joins
    its tap chain, and its max pooling's transpose cancels against the first block's)."""
    if any(d != 1 for d in ir.DenseIntElementsAttr(pool.attributes["dilations"])):
        return False
    strides = [int(d) for d in ir.DenseIntElementsAttr(pool.attributes["strides"])]
    pads, t = _pads_above(pool.operands[0])
    perm = transpose_of(t) if t is not None else None
    if perm != NCHW_FROM_NHWC or str(ir.RankedTensorType(pool.results[0].type).element_type) != "f32":
        return False
    name = f"__tc_layout_{len(done)}"
    lines = [f"func.func private @{name}(%x0: {t.operands[0].type}) -> {pool.results[0].type} {{"]
    pad_lines, shape = _restated_pads(pads, perm, list(ir.RankedTensorType(t.operands[0].type).shape))
    lines += pad_lines
    n_, c, oh, ow = ir.RankedTensorType(pool.results[0].type).shape
    kh, kw = ir.RankedTensorType(pool.operands[1].type).shape
    sh, sw = strides
    if (oh - 1) * sh + kh > shape[1] or (ow - 1) * sw + kw > shape[2] or shape[0] != n_ or shape[3] != c:
        return False
    out = [n_, oh, ow, c]
    out_t = tensor_t(out, "f32")
    src = f"%x{len(pads)}"
    taps = []
    for i in range(kh):
        for j in range(kw):
            taps.append(f"%s{len(taps)}")
            lines.append(
                f"  {taps[-1]} = tensor.extract_slice {src}[0, {i}, {j}, 0] {out} [1, {sh}, {sw}, 1] :"
                f" {tensor_t(shape, 'f32')} to {tensor_t(out, 'f32')}"
            )
    ident = "affine_map<(d0, d1, d2, d3) -> (d0, d1, d2, d3)>"
    par = ", ".join(['"parallel"'] * 4)
    args = ", ".join(f"%a{k}: f32" for k in range(len(taps)))
    body, acc = [], "%a0"
    for k in range(1, len(taps)):
        body.append(f"    %m{k} = arith.maximumf {acc}, %a{k} : f32")
        acc = f"%m{k}"
    lines += [
        f"  %e = tensor.empty() : {tensor_t(out, 'f32')}",
        f"  %max = linalg.generic {{indexing_maps = [{', '.join([ident] * (len(taps) + 1))}], "
        f"iterator_types = [{par}]}}"
        f" ins({', '.join(taps)} : {', '.join([out_t] * len(taps))}) outs(%e : {out_t}) {{",
        f"  ^bb0({args}, %o: f32):",
        *body,
        f"    linalg.yield {acc} : f32",
        f"  }} -> {tensor_t(out, 'f32')}",
        f"  %e2 = tensor.empty() : {pool.results[0].type}",
        "  %back = linalg.generic {indexing_maps = [affine_map<(d0, d1, d2, d3) -> (d0, d2, d3, d1)>, "
        f"{ident}], iterator_types = [{par}]}} ins(%max : {out_t}) outs(%e2 : {pool.results[0].type}) {{",
        "  ^bb0(%in: f32, %o2: f32):",
        "    linalg.yield %in : f32",
        f"  }} -> {pool.results[0].type}",
        f"  return %back : {pool.results[0].type}\n}}",
    ]
    init, window = pool.operands[2], pool.operands[1]
    _replace_through(pool, module, "\n".join(lines), name, t, pads, done)
    erase_if_dead(init.owner)
    erase_if_dead(window.owner)
    return True


def sink_transposes(module: ir.Module, *, through_inverse: bool = True) -> int:
    """Sink every pure transpose of the function below the elementwise ops that read it,
    and cancel it against the inverse transposes (through pads) it reaches; returns how
    many ops were restated or cancelled. `through_inverse`: an elementwise op that reads
    the transpose through the inverse permutation reads its source through the identity
    (and counts as the inverse a transpose sinks towards; off only to compare)."""
    total = 0
    with ir.Location.unknown(module.context):
        for _ in range(MAX_POOLINGS_CROSSED + 1):  # a pooling restated leaves a transpose below it to sink
            changed, pooled = _sink_transposes(module, through_inverse)
            total += changed
            if not pooled:
                break
        _fold_back(module)
    return total


def _sink_transposes(module: ir.Module, fold: bool) -> tuple[int, int]:
    body = entry_func(module).regions[0].blocks[0]
    changed, pooled, cancelled = 0, 0, []
    work = [op.operation for op in body.operations if transpose_of(op.operation) is not None]
    while work:
        t = work.pop()
        perm = transpose_of(t) if is_live(t) else None  # (a concatenation restated erases its other inputs)
        if perm is None or not _reaches_inverse(t.results[0], perm, 0, fold):
            continue
        for use in list(t.results[0].uses):
            user = owner_op(use)
            if user is None:
                continue
            if transpose_of(user) is None and user.name == "linalg.generic" and is_elementwise(user):
                if not _reaches_inverse(user.results[0], perm, 1, fold):
                    continue  # (a last residual add: it reads the transpose in place)
                back = _restate(user, t, perm)
                if back is not None:
                    changed += 1
                    work.append(back)
        changed += _fold_into_reads(t, perm) if fold else 0
        moved = _sink_into_gathers_and_concats(t, perm, fold) if GATHERS_AND_CONCATS else []
        changed += len(moved)
        work.extend(moved)
        if not is_live(t):
            continue
        for use in list(t.results[0].uses):
            u = _through_pads(owner_op(use))
            if u is not None and _cancel(u, module, cancelled):
                changed += 1
            elif u is not None and u.name in POOLINGS and _reaches_inverse(u.results[0], perm, 1, fold):
                if _pool_nhwc(u, module, cancelled):
                    changed += 1
                    pooled += 1
        if is_live(t) and not list(t.results[0].uses):
            replace_op(t)
    if cancelled:
        inline_helpers(module)
    return changed, pooled


def _fold_back(module: ir.Module) -> int:
    """A transpose split from the elementwise op it fed (`FOLD_BACK`, a biased
    convolution's bias add) that did not sink away is folded back into that op's read: the
    op reads the GEMM's rows transposed, as fusion would have it anyway, and the reshapes
    around it can sink (`sink-expand-shapes`). Returns how many were folded."""
    body = entry_func(module).regions[0].blocks[0]
    folded = 0
    for op in list(body.operations):
        t = op.operation
        if FOLD_BACK not in t.attributes:
            continue
        del t.attributes[FOLD_BACK]
        uses = list(t.results[0].uses)
        if len(uses) != 1 or transpose_of(t) is None:
            continue
        g, i = owner_op(uses[0]), uses[0].operand_number
        if g is None or not is_elementwise(g) or transpose_of(g) is not None or i >= len(g.operands) - 1:
            continue
        maps = indexing_maps(g)
        if maps[i] != ir.AffineMap.get_identity(maps[i].n_dims, g.context):
            continue
        maps[i] = indexing_maps(t)[0]
        g.operands[i] = t.operands[0]
        g.attributes["indexing_maps"] = ir.ArrayAttr.get([ir.AffineMapAttr.get(m) for m in maps])
        replace_op(t)
        folded += 1
    return folded


def _sink_into_gathers_and_concats(t: ir.Operation, perm: list[int], fold: bool) -> list[ir.Operation]:
    """Restate the index gathers and concatenations that read transpose `t` (when they
    reach its inverse) on its source; returns the transposes of their new results."""
    gathers, concats = [], []
    for use in t.results[0].uses:
        user = owner_op(use)
        g = gather_of(use)
        if g is not None and not any(g == o for o in gathers):
            gathers.append(g)
        elif user is not None and user.name == "tensor.concat" and not any(user == o for o in concats):
            concats.append(user)
    backs = []
    for g in gathers:
        if _reaches_inverse(g.results[0], perm, 1, fold):
            back = _restate_gather(g, t, perm)
            if back is not None:
                backs.append(back)
    for c in concats:
        if _reaches_inverse(c.results[0], perm, 1, fold):
            back = _restate_concat(c, t, perm)
            if back is not None:
                backs.append(back)
    return backs


def _reads_through_inverse(g: ir.Operation, i: int, perm: list[int]) -> bool:
    """Whether elementwise `g` reads its input `i`, a transpose's (`perm`) result, through
    the inverse permutation: it then reads the transpose's source through the identity."""
    if i >= len(g.operands) - 1 or transpose_of(g) is not None:
        return False
    m = _positions(indexing_maps(g)[i])
    return m is not None and len(m) == len(perm) and [m[p] for p in perm] == list(range(len(m)))


def _fold_into_reads(t: ir.Operation, perm: list[int]) -> int:
    """Users of transpose `t` that read it through the inverse permutation (a residual add
    restated on NHWC reading an NCHW batch norm) read its source instead, through the
    identity; returns how many reads were folded."""
    folded = 0
    for use in list(t.results[0].uses):
        g = owner_op(use)
        if g is None or not is_elementwise(g) or not _reads_through_inverse(g, use.operand_number, perm):
            continue
        maps = indexing_maps(g)
        maps[use.operand_number] = ir.AffineMap.get_identity(len(perm), g.context)
        g.operands[use.operand_number] = t.operands[0]
        g.attributes["indexing_maps"] = ir.ArrayAttr.get([ir.AffineMapAttr.get(m) for m in maps])
        folded += 1
    return folded


GATHERS_AND_CONCATS = True  # index gathers (nearest upsampling) and concatenations restated on NHWC
MAX_SINK_DEPTH = 32  # elementwise ops searched below a transpose for its inverse


def _reaches_inverse(v: ir.Value, perm: list[int], depth: int, fold: bool = True) -> bool:
    """Whether `v` (a transpose's result, or an elementwise op's below it) reaches the
    inverse transpose through elementwise ops and pads. Sunk without one, a transpose
    would only move below the epilogue that reads it vectorized in place (an im2col
    GEMM's transposing batch norm) and run alone, a pass over memory of its own
    (ResNet-18's stem's, sunk into its max pooling with no inverse beyond it)."""
    if depth > MAX_SINK_DEPTH:
        return False
    for use in v.uses:
        user = owner_op(use)
        if user is None:
            continue
        u = _through_pads(user)
        inv = transpose_of(u) if u is not None else None
        if inv is not None and _inverts(inv, perm):
            return True
        if user.name == "linalg.generic" and inv is None and is_elementwise(user):
            if fold and _reads_through_inverse(user, use.operand_number, perm):
                return True
            if _reaches_inverse(user.results[0], perm, depth + 1, fold):
                return True
        if u is not None and u.name in POOLINGS and perm == NCHW_FROM_NHWC:
            if _reaches_inverse(u.results[0], perm, depth + 1, fold):
                return True
        if GATHERS_AND_CONCATS:  # (restated on NHWC by `_sink_into_gathers_and_concats`)
            below = user if user.name == "tensor.concat" else gather_of(use)
            if below is not None and _reaches_inverse(below.results[0], perm, depth + 1, fold):
                return True
    return False


@dataclasses.dataclass(frozen=True)
class SinkTransposesPass(ModulePass):
    name: ClassVar[str] = "sink-transposes"
    summary: ClassVar[str] = "NHWC between convolutions: transposes sunk through elementwise ops and pools, cancelled"
    through_inverse: bool = True  # an op reading a transpose through the inverse permutation reads its source

    def apply(self, module: ir.Module, weights: Weights) -> None:
        sink_transposes(module, through_inverse=self.through_inverse)
