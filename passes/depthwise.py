"""Depthwise convolutions as sums of shifted slices, one elementwise kernel each.

On the passes floor; sits in the `im2col` stage (`compiler/driver.py`), after the GEMM
rewrites and before `sink_transposes`. Reads a linalg-on-tensors module and its bound
weights; writes it back with each eligible depthwise convolution replaced by one
`linalg.generic` (a filter it restates on NHWC is relaid out [KH, KW, C] in the bound
weights).

A `linalg.depthwise_conv_2d_nchw_chw` (f32, dilation 1) does not vectorize in this MLIR
(neither does its 1-D decomposition, `depthwise_conv_1d_ncw_cw`: "Attempted to vectorize,
but failed"), so it ran a scalar FMA per tap. Restated as

    out[n, c, y, x] = init[n, c, y, x] + Σ_ij x[n, c, y·sh + i, x·sw + j] · w[c, i, j]

with one input per tap (a `tensor.extract_slice` of the padded input, read through the
identity map) and one per tap's weights (a [C] slice of the filter), every indexing map is
a projected permutation: the op is an all-parallel `linalg.generic` that the tiling pass
vectorizes, and that fusion chains with the batch norm and activation that follow like
any other elementwise op. A zero-filled accumulator is dropped, and its fill with it.

Two layouts:

- **NHWC** (`_helper_nhwc`), when a neighbour is NHWC: the layer's input comes from an
  im2col GEMM (its NHWC → NCHW transpose, through batch norm and activation), or its
  result goes to one (an NCHW → NHWC gather). The taps then read vectors of channels, at
  any stride, and `sink_transposes` cancels the transposes on both sides, so MobileNet-V2
  runs on NHWC from its stem to its last 1×1 layer. The padded input is one flat buffer
  the producer writes in place (see `_helper_nhwc`). MobileNet-V2: 8.25 → 5.35 ms at one
  thread with the taps on NHWC, 5.2 with the flat padding too (padded copies gone).
- **NCHW** (`_helper`), stride 1 only, for a layer with no NHWC neighbour (restating it
  would add two transposes of its own): vectorized along the output width. A strided
  NCHW tap is a strided vector read, which gains nothing over the scalar op and can lose
  badly, so strided layers there keep the named op.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from torch_mlir import ir

from tilecraft.dialects.irutil import (
    bound_arg_number,
    call_helper,
    element_type_of,
    entry_func,
    erase_if_dead,
    inline_helpers,
    int_list_attr,
    is_zero_fill,
    owner_op,
    pad_value,
    shape_of,
    tensor_t,
)
from tilecraft.dialects.opinfo import indexing_maps, is_elementwise
from tilecraft.passes.base import ModulePass, Weights
from tilecraft.passes.sink_transposes import NCHW_FROM_NHWC, transpose_of

DEPTHWISE = "linalg.depthwise_conv_2d_nchw_chw"
MAX_TAPS = 25  # a 5×5 window: 50 operands; larger windows keep the named op
CHANNELS_LAST = True  # taps on the input transposed to NHWC (any stride), result transposed back


def _why_not(op: ir.Operation) -> str:
    if {element_type_of(op.operands[i]) for i in range(3)} != {"f32"}:
        return "not f32"
    if int_list_attr(op, "dilations") != [1, 1]:
        return "dilated"
    _, kh, kw = shape_of(op.operands[1])
    if kh * kw > MAX_TAPS:
        return f"{kh}x{kw} window (more than {MAX_TAPS} taps)"
    return ""


def _helper(x_shape, w_shape, o_shape, zero_init: bool, name: str) -> str:
    n, c, oh, ow = o_shape
    _, kh, kw = w_shape
    x_t, w_t, o_t, c_t = (
        tensor_t(x_shape, "f32"),
        tensor_t(w_shape, "f32"),
        tensor_t(o_shape, "f32"),
        tensor_t([c], "f32"),
    )
    taps = [(i, j) for i in range(kh) for j in range(kw)]
    n_taps = len(taps)
    lines = []
    for t, (i, j) in enumerate(taps):
        lines.append(
            f"  %x{t} = tensor.extract_slice %x[0, 0, {i}, {j}] [{n}, {c}, {oh}, {ow}] [1, 1, 1, 1] : {x_t} to {o_t}"
        )
        lines.append(f"  %w{t} = tensor.extract_slice %w[0, {i}, {j}] [{c}, 1, 1] [1, 1, 1] : {w_t} to {c_t}")
    ident = "affine_map<(n, c, y, x) -> (n, c, y, x)>"
    chan = "affine_map<(n, c, y, x) -> (c)>"
    maps = [ident] * n_taps + [chan] * n_taps + [ident]
    ins = ", ".join([f"%x{t}" for t in range(n_taps)] + [f"%w{t}" for t in range(n_taps)])
    in_ts = ", ".join([o_t] * n_taps + [c_t] * n_taps)
    args = ", ".join([f"%a{t}: f32" for t in range(n_taps)] + [f"%b{t}: f32" for t in range(n_taps)] + ["%acc: f32"])
    body = []
    acc = "%acc"
    for t in range(n_taps):
        body.append(f"    %p{t} = arith.mulf %a{t}, %b{t} : f32")
        if t == 0 and zero_init:
            acc = "%p0"
            continue
        body.append(f"    %s{t} = arith.addf {acc}, %p{t} : f32")
        acc = f"%s{t}"
    init_arg = "" if zero_init else f", %init: {o_t}"
    out = "%e" if zero_init else "%init"
    empty = f"  %e = tensor.empty() : {o_t}\n" if zero_init else ""
    par = ", ".join(['"parallel"'] * 4)
    return f"""func.func private @{name}(%x: {x_t}, %w: {w_t}{init_arg}) -> {o_t} {{
{chr(10).join(lines)}
{empty}  %o = linalg.generic {{indexing_maps = [{", ".join(maps)}], iterator_types = [{par}]}}
      ins({ins} : {in_ts}) outs({out} : {o_t}) {{
  ^bb0({args}):
{chr(10).join(body)}
    linalg.yield {acc} : f32
  }} -> {o_t}
  return %o : {o_t}
}}"""


def _flat_layout(src_shape, pad, o_shape, kernel, strides) -> tuple[int, int] | None:
    """(base, length) of the flattened padded input of `_helper_nhwc`, or None when its
    taps cannot be read from it (batch > 1, or an output row wider than the stride's rows)."""
    n, _, h, w = src_shape
    _, _, oh, ow = o_shape
    (kh, kw), (sh, sw) = kernel, strides
    top, _, left, _ = pad
    if n != 1 or (ow - 1) * sw >= sh * w:
        return None
    base = top * w + left
    length = max(base + h * w, (kh - 1) * w + kw - 1 + (oh + 1) * sh * w)
    return base, length


def _helper_nhwc(src_shape, pad, layout, w_shape, o_shape, strides, zero_init: bool, packed: bool, name: str) -> str:
    """A depthwise convolution on NHWC, its taps read as slices of one flattened, padded
    input.

    The source [1, C, H, W] (unpadded) is transposed to [H·W, C] and padded only at its
    two ends: padded pixel (Y, X) (the model's padding of `pad` = (top, bottom, left,
    right)) is row Y·W + X of the flat buffer, its data starting at row top·W + left. The
    source thus lies in the buffer contiguously, so the op that makes it writes it there
    in place (`backends/cpu/pads.py`): no padded copy, which for MobileNet-V2's
    expansions (96 channels at 112², 4.8 MB) cost as much as the convolution. Tap (i, j)
    of output pixel (y, x) reads row (y·SH + i)·W + x·SW + j: a slice of the buffer
    expanded to [OH + 1, SH·W, C] (one row more than it reads: a slice the size of the
    source would fold to the source itself, read after its insert, which bufferization
    then copies), every SW-th pixel of each row. Rows above and below the
    image land in the zero ends; a column left or right of it lands on the neighbouring
    row's pixel instead, so the taps of such a column j are summed apart and dropped
    (`arith.select` on the output column, `linalg.index`) at the columns x where x·SW + j is
    padding. The filter is [KH, KW, C] (`packed`, as bound; else [C, KH, KW], transposed
    here): each tap's weights are a vector of channels. The [OH, OW, C] result is
    transposed back to NCHW (`sink_transposes` cancels the two transposes against their
    neighbours')."""
    _, c, h, w = src_shape
    _, _, oh, ow = o_shape
    kh, kw = (w_shape[0], w_shape[1]) if packed else (w_shape[1], w_shape[2])
    sh, sw = strides
    top, _, left, _ = pad
    base, length = layout  # (`_flat_layout`)
    f32 = "f32"
    src_t, o_t, c_t = tensor_t(src_shape, f32), tensor_t(o_shape, f32), tensor_t([c], f32)
    w_t, wl_t = tensor_t(w_shape, f32), tensor_t([kh, kw, c], f32)
    nhwc_t, flat_t, padded_t = tensor_t([1, h, w, c], f32), tensor_t([h * w, c], f32), tensor_t([length, c], f32)
    rows_t, wide_t = tensor_t([(oh + 1) * sh * w, c], f32), tensor_t([oh + 1, sh * w, c], f32)
    ol_t, ol4_t = tensor_t([oh, ow, c], f32), tensor_t([1, oh, ow, c], f32)
    par3, par4 = ", ".join(['"parallel"'] * 3), ", ".join(['"parallel"'] * 4)
    ident3 = "affine_map<(y, x, c) -> (y, x, c)>"

    def transpose(dst: str, src: str, in_t: str, out_t: str, in_map: str, out_map: str, par: str) -> list[str]:
        return [
            f"  {dst}_e = tensor.empty() : {out_t}",
            f"  {dst} = linalg.generic {{indexing_maps = [{in_map}, {out_map}], iterator_types = [{par}]}}"
            f" ins({src} : {in_t}) outs({dst}_e : {out_t}) {{",
            "  ^bb0(%i: f32, %o: f32):",
            "    linalg.yield %i : f32",
            f"  }} -> {out_t}",
        ]

    lines = []
    if not packed:
        lines += transpose(
            "%wl", "%w", w_t, wl_t, "affine_map<(i, j, c) -> (c, i, j)>", "affine_map<(i, j, c) -> (i, j, c)>", par3
        )
    w_src = "%w" if packed else "%wl"
    lines += transpose(
        "%xl", "%x", src_t, nhwc_t,
        "affine_map<(n, y, x, c) -> (n, c, y, x)>", "affine_map<(n, y, x, c) -> (n, y, x, c)>", par4,
    )  # fmt: skip
    lines += [
        f"  %xf = tensor.collapse_shape %xl [[0, 1, 2], [3]] : {nhwc_t} into {flat_t}",
        "  %zero = arith.constant 0.0 : f32",
        f"  %xp = tensor.pad %xf low[{base}, 0] high[{length - base - h * w}, 0] {{",
        "  ^bb0(%p0: index, %p1: index):",
        "    tensor.yield %zero : f32",
        f"  }} : {flat_t} to {padded_t}",
    ]
    if not zero_init:
        init3_t = tensor_t([c, oh, ow], f32)
        lines += [f"  %init3 = tensor.collapse_shape %init [[0, 1], [2], [3]] : {o_t} into {init3_t}"]
        lines += transpose(
            "%il", "%init3", init3_t, ol_t,
            "affine_map<(y, x, c) -> (c, y, x)>", ident3, par3,
        )  # fmt: skip
    ins, in_ts, maps, args = [], [], [], []
    by_column: dict[int, list[int]] = {}
    for i in range(kh):
        for j in range(kw):
            t = len(ins) // 2
            lines += [
                f"  %r{t} = tensor.extract_slice %xp[{i * w + j}, 0] [{(oh + 1) * sh * w}, {c}] [1, 1]"
                f" : {padded_t} to {rows_t}",
                f"  %q{t} = tensor.expand_shape %r{t} [[0, 1], [2]] output_shape [{oh + 1}, {sh * w}, {c}]"
                f" : {rows_t} into {wide_t}",
                f"  %x{t} = tensor.extract_slice %q{t}[0, 0, 0] [{oh}, {ow}, {c}] [1, {sw}, 1] : {wide_t} to {ol_t}",
                f"  %w{t} = tensor.extract_slice {w_src}[{i}, {j}, 0] [1, 1, {c}] [1, 1, 1] : {wl_t} to {c_t}",
            ]
            ins += [f"%x{t}", f"%w{t}"]
            in_ts += [ol_t, c_t]
            maps += [ident3, "affine_map<(y, x, c) -> (c)>"]
            args += [f"%a{t}: f32", f"%b{t}: f32"]
            by_column.setdefault(j, []).append(t)
    masked = {}  # column j → the output columns [lo, hi) where x·SW + j is inside the image
    for j in range(kw):
        lo = max(0, -(-(left - j) // sw))
        hi = min(ow, -(-(left + w - j) // sw))
        if lo > 0 or hi < ow:
            masked[j] = (lo, hi)
    body, acc = [], None if zero_init else "%acc"
    if masked:
        body += ["    %zz = arith.constant 0.0 : f32", "    %xi = linalg.index 1 : index"]
    for j in sorted(by_column, key=lambda j: j in masked):  # whole columns first, onto the accumulator
        taps = by_column[j]
        part = acc if j not in masked else None
        for t in taps:
            if part is None:
                body.append(f"    %p{t} = arith.mulf %a{t}, %b{t} : f32")
            else:
                body.append(f"    %p{t} = math.fma %a{t}, %b{t}, {part} : f32")
            part = f"%p{t}"
        if j not in masked:
            acc = part
            continue
        lo, hi = masked[j]
        checks = []
        if lo > 0:
            body += [f"    %lo{j} = arith.constant {lo} : index"]
            body += [f"    %ge{j} = arith.cmpi uge, %xi, %lo{j} : index"]
            checks.append(f"%ge{j}")
        if hi < ow:
            body += [f"    %hi{j} = arith.constant {hi} : index"]
            body += [f"    %lt{j} = arith.cmpi ult, %xi, %hi{j} : index"]
            checks.append(f"%lt{j}")
        if len(checks) == 2:
            body.append(f"    %in{j} = arith.andi %ge{j}, %lt{j} : i1")
            checks = [f"%in{j}"]
        body.append(f"    %z{j} = arith.select {checks[0]}, {part}, %zz : f32")
        if acc is None:
            acc = f"%z{j}"
        else:
            body.append(f"    %u{j} = arith.addf {acc}, %z{j} : f32")
            acc = f"%u{j}"
    maps.append(ident3)
    out = "%e" if zero_init else "%il"
    lines += [
        f"  %e = tensor.empty() : {ol_t}",
        f"  %ol = linalg.generic {{indexing_maps = [{', '.join(maps)}], iterator_types = [{par3}]}}"
        f" ins({', '.join(ins)} : {', '.join(in_ts)}) outs({out} : {ol_t}) {{",
        f"  ^bb0({', '.join(args)}, %acc: f32):",
        *body,
        f"    linalg.yield {acc} : f32",
        f"  }} -> {ol_t}",
        f"  %ol4 = tensor.expand_shape %ol [[0, 1], [2], [3]] output_shape [1, {oh}, {ow}, {c}] : {ol_t} into {ol4_t}",
    ]
    lines += transpose(
        "%o", "%ol4", ol4_t, o_t,
        "affine_map<(n, c, y, x) -> (n, y, x, c)>", "affine_map<(n, c, y, x) -> (n, c, y, x)>", par4,
    )  # fmt: skip
    init_arg = "" if zero_init else f", %init: {o_t}"
    return (
        f"func.func private @{name}(%x: {src_t}, %w: {w_t}{init_arg}) -> {o_t} {{\n"
        + "\n".join(lines)
        + f"\n  return %o : {o_t}\n}}"
    )


def _zero_pad(x: ir.Value) -> tuple[ir.Operation, tuple[int, int, int, int]] | None:
    """(the pad, (top, bottom, left, right)) when `x` is a single-use static zero padding
    of an NCHW tensor's spatial dims."""
    pad = owner_op(x)
    if pad is None or pad.name != "tensor.pad" or len(pad.operands) != 1 or len(list(x.uses)) != 1:
        return None
    if pad_value(pad) != 0.0:
        return None
    low = list(ir.DenseI64ArrayAttr(pad.attributes["static_low"]))
    high = list(ir.DenseI64ArrayAttr(pad.attributes["static_high"]))
    if len(low) != 4 or low[:2] != [0, 0] or high[:2] != [0, 0] or min(low + high) < 0:
        return None
    return pad, (low[2], high[2], low[3], high[3])


def _bound_filter(w: ir.Value, n_bound: int) -> tuple[ir.Operation, int] | None:
    """(the collapse, the argument number) when filter `w` is a bound [C, 1, KH, KW]
    argument collapsed to [C, KH, KW] for this op alone."""
    owner = owner_op(w)
    if owner is None or owner.name != "tensor.collapse_shape" or len(list(w.uses)) != 1:
        return None
    arg = bound_arg_number(owner.operands[0], n_bound)
    return (owner, arg) if arg is not None else None


MAX_CHAIN = 8  # elementwise ops searched between a depthwise layer and an NHWC neighbour
NHWC_FROM_NCHW = [0, 3, 1, 2]  # the perm (`transpose_of`) of an NCHW → NHWC transpose


def _nhwc_above(v: ir.Value, depth: int = 0) -> bool:
    """Whether `v` is an NHWC → NCHW transpose (an im2col layer's result,
    `passes/im2col.py`), or an elementwise op reading one through the identity (its batch
    norm and activation)."""
    op = owner_op(v)
    if op is None or depth > MAX_CHAIN or op.name != "linalg.generic":
        return False
    if transpose_of(op) == NCHW_FROM_NHWC:
        return True
    if not is_elementwise(op):
        return False
    maps = indexing_maps(op)
    ident = ir.AffineMap.get_identity(maps[-1].n_dims, op.context)
    return any(
        maps[i] == ident and x.type == v.type and _nhwc_above(x, depth + 1)
        for i, x in enumerate(op.operands[: len(op.operands) - 1])
    )


def _nhwc_below(v: ir.Value, depth: int = 0) -> bool:
    """Whether `v` reaches, through elementwise ops and pads, an NCHW → NHWC transpose (an
    im2col layer's gather)."""
    if depth > MAX_CHAIN:
        return False
    for use in v.uses:
        user = owner_op(use)
        if user is None or user.name not in ("linalg.generic", "tensor.pad"):
            continue
        perm = transpose_of(user) if user.name == "linalg.generic" else None
        if perm == NHWC_FROM_NCHW:
            return True
        if (user.name == "tensor.pad" or is_elementwise(user)) and _nhwc_below(user.results[0], depth + 1):
            return True
    return False


def rewrite(module: ir.Module, params: list | None = None) -> int:
    """Restate every eligible depthwise convolution as one elementwise op over shifted
    slices, in place; returns how many were rewritten. With CHANNELS_LAST, a bound
    filter in `params` is relaid out [KH, KW, C] (in place in the list)."""
    body = entry_func(module).regions[0].blocks[0]
    ops = [op.operation for op in body.operations if op.operation.name == DEPTHWISE]
    done = 0
    for k, op in enumerate(ops):
        if _why_not(op):
            continue
        x, w, init = (op.operands[i] for i in range(3))
        zero = is_zero_fill(init)
        name = f"__tc_depthwise_{k}"
        collapse, pad_op = None, None
        c, kh, kw = shape_of(w)
        strides = tuple(int_list_attr(op, "strides"))
        padded = _zero_pad(x)
        src, pad = (padded[0].operands[0], padded[1]) if padded else (x, (0, 0, 0, 0))
        layout = _flat_layout(shape_of(src), pad, shape_of(init), (kh, kw), strides)
        # (with no NHWC neighbour the layer would add two transposes of its own)
        if CHANNELS_LAST and layout is not None and (_nhwc_above(src) or _nhwc_below(op.results[0])):
            bound = _bound_filter(w, len(params)) if params is not None else None
            if bound is not None:
                collapse, arg = bound
                params[arg] = params[arg].reshape(c, kh, kw).permute(1, 2, 0).contiguous()  # [KH, KW, C]
                block_arg = body.arguments[arg]
                block_arg.set_type(ir.Type.parse(tensor_t([kh, kw, c], "f32"), context=module.context))
                w = block_arg
            w_shape = [kh, kw, c] if bound is not None else [c, kh, kw]
            packed = bound is not None
            text = _helper_nhwc(shape_of(src), pad, layout, w_shape, shape_of(init), strides, zero, packed, name)
            x, pad_op = src, padded[0] if padded else None
        elif strides != (1, 1):
            continue  # (a strided tap of NCHW reads every other pixel: the named op is faster)
        else:
            text = _helper(shape_of(x), shape_of(w), shape_of(init), zero, name)
        call_helper(module, op, text, name, [x, w] + ([] if zero else [init]))
        for dead in (collapse, pad_op):
            if dead is not None and not list(dead.results[0].uses):
                dead.erase()
        erase_if_dead(init.owner)
        done += 1
    if done:
        with module.context:
            inline_helpers(module)
    return done


@dataclasses.dataclass(frozen=True)
class DepthwiseTapsPass(ModulePass):
    name: ClassVar[str] = "depthwise-taps"
    summary: ClassVar[str] = "depthwise convolutions as one elementwise op of shifted slices (NHWC by NHWC layers)"

    def apply(self, module: ir.Module, weights: Weights) -> None:
        rewrite(module, weights)
