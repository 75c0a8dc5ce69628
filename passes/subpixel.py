"""The `subpixel-conv` pass: a convolution of a nearest upsampling, on the small image.

On the passes floor; one of the canonical rewrites (`compiler/driver.py`), before the
im2col pass. Reads a linalg-on-tensors module and its bound weights; writes the module
with each eligible convolution replaced, and the filters of those layers replaced by their
phase filters.

A stride-1 K×K convolution that keeps the size of an S× nearest-upsampled image (a U-Net
decoder's, a GAN generator's: upsample, then a 3×3 convolution) reads every small-image
pixel S² times over. Output pixel (S·y + p, S·x + q) only ever reads the small pixels
(y + o, x + o') for o, o' in a short range, so each of the S² output phases (p, q) is a
small convolution of the small image with its own filter: the taps that land on the
same small pixel summed. For 2× and 3×3: four 2×2 convolutions, 16 taps of the small
image in place of 9 taps of the 4× larger one, 2.25× fewer multiply-adds, and the
upsampled image is never written.

Each phase runs as a tap chain (`im2col._helper_chain`'s scheme: the padded small image
transposed once to NHWC, flattened to rows of C channels, each tap one contiguous slice of
rows into a [C, F] matmul, the wrapped-around columns dropped), and the phases are
interleaved into [H, S, W, S, F], which is the NHWC result; its transpose to NCHW and the
bias add follow as in the im2col pass, for `sink_transposes` to sink.

The upsampling is recognised by what it computes, not by its ops: an index gather
(`sink_transposes.is_index_gather`) whose extract reads source pixel (n, c, f(y), g(x))
at output (n, c, y, x), its index arithmetic evaluated for every y and x (`_reads_with`)
and compared with y // S.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np
import torch
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
    replace_op,
    shape_of,
    tensor_t,
)
from tilecraft.dialects.opinfo import LANES
from tilecraft.passes.base import ModulePass, Weights
from tilecraft.passes.im2col import CONV, nchw_result, to_nhwc
from tilecraft.passes.sink_transposes import is_index_gather

MAX_SCALE = 4  # upsampling factors rewritten (S² phases each)
ENABLED = True  # (off only to compare: `bench/ab.py tilecraft.passes.subpixel ENABLED`)


# ------------------------------------------------------------- the upsampling, evaluated
def _eval(v: ir.Value, index: dict[int, int], block: ir.Block):
    """The value of `v`, computed in `block` from `linalg.index` dims (`index`) and
    constants, with the index arithmetic torch-mlir's lowering uses (f32 as numpy does
    it, so rounding matches); None for anything else."""
    o = owner_op(v)
    if o is None:
        return None
    name = o.name
    if name == "arith.constant":
        a = o.attributes["value"]
        if isinstance(a, ir.FloatAttr):
            return np.float32(a.value)
        return int(a.value) if isinstance(a, ir.IntegerAttr) else None
    if o.parent is None or o.parent.regions[0].blocks[0] != block:
        return None
    if name == "linalg.index":
        return index.get(ir.IntegerAttr(o.attributes["dim"]).value)
    args = [_eval(x, index, block) for x in o.operands]
    if any(a is None for a in args):
        return None
    if name == "arith.index_cast":
        return int(args[0])
    if name == "arith.sitofp":
        return np.float32(args[0])
    if name == "arith.fptosi":
        return int(np.trunc(args[0]))
    fn = _ARITH.get(name)
    return fn(*args) if fn is not None else None


_ARITH = {  # (`_eval`'s arithmetic: f32 ops rounded to f32 as the lowering computes them)
    "arith.divf": lambda a, b: np.float32(a / b),
    "arith.mulf": lambda a, b: np.float32(a * b),
    "arith.addf": lambda a, b: np.float32(a + b),
    "arith.subf": lambda a, b: np.float32(a - b),
    "arith.maximumf": lambda a, b: np.float32(max(a, b)),
    "arith.minimumf": lambda a, b: np.float32(min(a, b)),
    "arith.addi": lambda a, b: a + b,
    "arith.muli": lambda a, b: a * b,
    "arith.floordivsi": lambda a, b: a // b,
    "arith.divsi": lambda a, b: int(a / b),
    "arith.maxsi": max,
    "arith.minsi": min,
    "math.floor": lambda a: np.float32(np.floor(a)),
}


def _reads_with(ex: ir.Operation, k: int, block: ir.Block, fixed: dict[int, int], size: int) -> list[int] | None:
    """The source index extract `ex`'s index k reads as loop k runs 0..size-1, the loops in
    `fixed` at those values and the rest at 0; None where it cannot be evaluated."""
    out = []
    for y in range(size):
        v = _eval(ex.operands[1 + k], {d: (y if d == k else fixed.get(d, 0)) for d in range(4)}, block)
        if v is None:
            return None
        out.append(v)
    return out


def nearest_upsampling(v: ir.Value) -> tuple[ir.Value, int] | None:
    """(source, S) if `v` is an S× nearest upsampling of a [1, C, H, W] source: an index
    gather over [1, C, S·H, S·W] whose one extract reads source (0, c, y // S, x // S) at
    (0, c, y, x); else None."""
    g = owner_op(v)
    if not is_index_gather(g):
        return None
    block = g.regions[0].blocks[0]
    extracts = [o.operation for o in block.operations if o.operation.name == "tensor.extract"]
    ops = list(block.operations)
    if len(extracts) != 1 or ops[-1].operation.name != "linalg.yield" or ops[-1].operands[0] != extracts[0].results[0]:
        return None
    ex = extracts[0]
    src = ex.operands[0]
    if len(ex.operands) != 5 or owner_op(src) is not None and owner_op(src).parent == g:
        return None
    (n, c, h, w), (n2, c2, oh, ow) = shape_of(src), shape_of(g.results[0])
    if n != 1 or n2 != 1 or c != c2 or oh % h or ow % w or oh // h != ow // w or not 1 < oh // h <= MAX_SCALE:
        return None
    s = oh // h
    sizes = (1, c, oh, ow)
    for k in range(4):
        want = list(range(sizes[k])) if k < 2 else [y // s for y in range(sizes[k])]
        if _reads_with(ex, k, block, {}, sizes[k]) != want:
            return None
        for other in range(4):  # (and it does not move with the other loops: each at its last value)
            last = {other: sizes[other] - 1}
            if other != k and sizes[other] > 1 and _reads_with(ex, k, block, last, sizes[k]) != want:
                return None
    return src, s


# ----------------------------------------------------------------------- phase filters
def phase_taps(s: int, k: int, pad: int) -> tuple[list[list[tuple[int, list[int]]]], int, int]:
    """Per phase p (0..S-1) of one axis: its taps as (small-image offset o, the filter
    taps d that land on it); and the small image's padding (before, after). Output pixel
    S·y + p of tap d reads upsampled pixel S·y + p + d - pad, small pixel y + (p + d - pad) // S."""
    phases = []
    for p in range(s):
        taps: dict[int, list[int]] = {}
        for d in range(k):
            taps.setdefault((p + d - pad) // s, []).append(d)
        phases.append(sorted(taps.items()))
    before = max(0, -min(o for ph in phases for o, _ in ph))
    after = max(0, max(o for ph in phases for o, _ in ph))
    return phases, before, after


def phase_filters(w: torch.Tensor, s: int, pad: int) -> torch.Tensor:
    """Filter [F, C, K, K] as the phases' taps [T, C, F] (phase (p, q) by rows, its taps
    (o, o') by rows; each the sum of the filter taps landing on that small pixel)."""
    phases, _, _ = phase_taps(s, w.shape[2], pad)
    out = []
    for p in range(s):
        for q in range(s):
            for _, ds in phases[p]:
                for _, es in phases[q]:
                    out.append(sum(w[:, :, d, e] for d in ds for e in es).t())
    return torch.stack(out).contiguous()


def _helper(c: int, f: int, h: int, w: int, s: int, k: int, pad: int, zero_init: bool, name: str) -> str:
    """The convolution of the S× upsampling of %x [1, C, H, W] as S² tap chains on the
    padded small image (see the module docstring); filter %w [T, C, F] (`phase_filters`)."""
    phases, before, after = phase_taps(s, k, pad)
    hp, wp = h + before + after + 1, w + before + after  # (one zero row more: the last wrapped rows)
    m = h * wp
    x_t, xp_t, xt_t = (
        tensor_t([1, c, h, w], "f32"),
        tensor_t([1, c, hp, wp], "f32"),
        tensor_t([1, hp, wp, c], "f32"),
    )
    flat_t, a_t, b_t, r_t = (
        tensor_t([hp * wp, c], "f32"),
        tensor_t([m, c], "f32"),
        tensor_t([c, f], "f32"),
        tensor_t([m, f], "f32"),
    )
    n_taps = sum(len(phases[p]) * len(phases[q]) for p in range(s) for q in range(s))
    w_t, o_t = tensor_t([n_taps, c, f], "f32"), tensor_t([1, f, s * h, s * w], "f32")
    r3_t, r4_t = tensor_t([h, wp, f], "f32"), tensor_t([h, w, f], "f32")
    r5_t, il_t = tensor_t([h, 1, w, 1, f], "f32"), tensor_t([h, s, w, s, f], "f32")
    nhwf_t = tensor_t([1, s * h, s * w, f], "f32")
    init_arg = "" if zero_init else f", %init: {o_t}"
    lines = [
        f"""func.func private @{name}(%x: {x_t}, %w: {w_t}{init_arg}) -> {o_t} {{
  %z = arith.constant 0.0 : f32
  %xp = tensor.pad %x low[0, 0, {before}, {before}] high[0, 0, {after + 1}, {after}] {{
  ^bb0(%i0: index, %i1: index, %i2: index, %i3: index):
    tensor.yield %z : f32
  }} : {x_t} to {xp_t}
{to_nhwc("%xp", xp_t, xt_t)}
  %flat = tensor.collapse_shape %xt [[0, 1, 2], [3]] : {xt_t} into {flat_t}
  %e = tensor.empty() : {r_t}
  %il0 = tensor.empty() : {il_t}"""
    ]
    t = 0
    for ph, (p, q) in enumerate((p, q) for p in range(s) for q in range(s)):
        lines.append(f"  %acc{ph}_0 = linalg.fill ins(%z : f32) outs(%e : {r_t}) -> {r_t}")
        n = 0
        for oy, _ in phases[p]:
            for ox, _ in phases[q]:
                at = (oy + before) * wp + ox + before
                lines.append(f"""  %a{t} = tensor.extract_slice %flat[{at}, 0] [{m}, {c}] [1, 1] : {flat_t} to {a_t}
  %w{t} = tensor.extract_slice %w[{t}, 0, 0] [1, {c}, {f}] [1, 1, 1] : {w_t} to {b_t}
  %acc{ph}_{n + 1} = linalg.matmul ins(%a{t}, %w{t} : {a_t}, {b_t}) outs(%acc{ph}_{n} : {r_t}) -> {r_t}""")
                t += 1
                n += 1
        sizes = f"[{h}, 1, {w}, 1, {f}]"
        lines += [
            f"  %r3_{ph} = tensor.expand_shape %acc{ph}_{n} [[0, 1], [2]] output_shape [{h}, {wp}, {f}]"
            f" : {r_t} into {r3_t}",
            f"  %r4_{ph} = tensor.extract_slice %r3_{ph}[0, 0, 0] [{h}, {w}, {f}] [1, 1, 1] : {r3_t} to {r4_t}",
            f"  %r5_{ph} = tensor.expand_shape %r4_{ph} [[0, 1], [2, 3], [4]] output_shape {sizes}"
            f" : {r4_t} into {r5_t}",
            f"  %il{ph + 1} = tensor.insert_slice %r5_{ph} into %il{ph}[0, {p}, 0, {q}, 0] {sizes} [1, 1, 1, 1, 1]"
            f" : {r5_t} into {il_t}",
        ]
    to_nchw = "affine_map<(n, f, y, x) -> (n, y, x, f)>"
    r6_t = tensor_t([s * h, s * w, f], "f32")
    lines += [
        f"  %r6 = tensor.collapse_shape %il{s * s} [[0, 1], [2, 3], [4]] : {il_t} into {r6_t}",
        f"  %r4 = tensor.expand_shape %r6 [[0, 1], [2], [3]] output_shape [1, {s * h}, {s * w}, {f}]"
        f" : {r6_t} into {nhwf_t}",
        f"{nchw_result('%r4', nhwf_t, to_nchw, o_t, zero_init=zero_init)}  return %o : {o_t}\n}}",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------- the rewrite
def _same_padding(pad_op: ir.Operation | None, k: int) -> int | None:
    """The spatial padding of a convolution's input (`pad_op`, None: unpadded) if it is
    the same zero padding on all four sides and keeps the image's size, else None."""
    if pad_op is None:
        return 0 if k == 1 else None
    low, high = (list(ir.DenseI64ArrayAttr(pad_op.attributes[a])) for a in ("static_low", "static_high"))
    if low[:2] != [0, 0] or high[:2] != [0, 0] or len({*low[2:], *high[2:]}) != 1 or pad_value(pad_op) != 0.0:
        return None
    return low[2] if 2 * low[2] == k - 1 else None


def rewrite(module: ir.Module, params: list[torch.Tensor]) -> tuple[list[torch.Tensor], int]:
    """Rewrite every eligible convolution of a nearest upsampling (module docstring) in
    place; returns the new bound arguments (phase filters replace the filters) and how
    many were rewritten. Eligible: f32, batch 1, stride 1, undilated, a square window whose
    zero padding keeps the size, a bound filter, output channels whole vectors."""
    ctx = module.context
    fn = entry_func(module)
    params = list(params)
    body = fn.regions[0].blocks[0]
    done = 0
    if not ENABLED:
        return params, done
    for op in [o.operation for o in body.operations if o.operation.name == CONV]:
        x_val, w_val, init_val = (op.operands[i] for i in range(3))
        (f, c, kh, kw), n = shape_of(w_val), shape_of(init_val)[0]
        weight = bound_arg_number(w_val, len(params))
        if weight is None or kh != kw or n != 1 or f % LANES:
            continue
        if {element_type_of(x_val), element_type_of(w_val), element_type_of(init_val)} != {"f32"}:
            continue
        if int_list_attr(op, "strides") != [1, 1] or int_list_attr(op, "dilations") != [1, 1]:
            continue
        pad_op = owner_op(x_val)
        pad_op = pad_op if pad_op is not None and pad_op.name == "tensor.pad" else None
        pad = _same_padding(pad_op, kh)
        upsampled = pad_op.operands[0] if pad_op is not None else x_val
        up = nearest_upsampling(upsampled) if pad is not None else None
        if up is None:
            continue
        z, s = up  # (the padding keeps the size: the output is S·H × S·W)
        _, _, h, w = shape_of(z)
        zero = is_zero_fill(init_val)
        name = f"__tc_subpixel_{done}"
        params[weight] = phase_filters(params[weight], s, pad)
        body.arguments[weight].set_type(ir.Type.parse(tensor_t(params[weight].shape, "f32"), context=ctx))
        text = _helper(c, f, h, w, s, kh, pad, zero, name)
        gather = owner_op(upsampled)
        call_helper(module, op, text, name, [z, w_val] + ([] if zero else [init_val]))
        erase_if_dead(init_val.owner)
        for dead in (pad_op, gather):  # (unless something else reads them)
            if dead is not None and not list(dead.results[0].uses):
                replace_op(dead)
        done += 1
    if done:
        inline_helpers(module)
    return params, done


@dataclasses.dataclass(frozen=True)
class SubpixelConvPass(ModulePass):
    name: ClassVar[str] = "subpixel-conv"
    summary: ClassVar[str] = "a convolution of a nearest upsampling as one small convolution per output phase"

    def apply(self, module: ir.Module, weights: Weights) -> None:
        weights[:], _ = rewrite(module, weights)
