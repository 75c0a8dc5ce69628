"""Convolutions as GEMMs: im2col, a matmul on pre-packed weights, and a transpose.

On the passes floor; sits after the precision rewrite and before fusion in the flow
(`compiler/driver.py`, stage `im2col`). Reads a linalg-on-tensors module and its bound
weights; writes the module back with each rewritten convolution replaced, and its weight
replaced in the bound arguments by the packed one.

A `linalg.conv_2d_nchw_fchw` (f32, dilation 1, a window larger than 1×1 or a stride, its
filter a bound argument used once) becomes

- a gather of the input windows into a [N·OH·OW, K] matrix, K = C·KH·KW. With channels a
  multiple of 16, tap by tap (K ordered (kh, kw, c)): the (padded) input is transposed
  once to [N, H, W, C], and each tap's block of columns is a copy of its (strided) window
  slice, whole vectors of channels. Otherwise one `linalg.generic` reading
  x[n, c, y·s + i, x·s + j] (K ordered (c, kh, kw)), which the vectorizer rejects (its map
  is not a permutation) and which then runs scalar. Of the gathers tried on ResNet-18's
  64-channel 3×3 layer at 56² with its batch norm and ReLU (the one gather, a transpose
  per tap, one transpose and a copy per tap), the last is the fastest; its strided 3×3
  layers by taps and its 1×1 downsample layers (direct before) gain as GEMMs too. An
  unstrided 1×1 keeps the one gather (itself a transpose): transposing to [N, H, W, C]
  first made MobileNet-V2 slower,
- a `linalg.matmul` of that matrix with the filter packed once, here, as [K, F]
  (output channels contiguous: the register tile's vectors run along them, whatever the
  spatial size; NCHW's direct convolution vectorizes along OW, 7 of 16 lanes at 7×7),
- a transpose (`linalg.generic`) of the [N, OH, OW, F] result back to NCHW, which
  `passes/layout.py` cancels against the next convolution's transpose in, or fusion folds
  into the epilogue that follows (batch norm, activation).

A stride-1 layer at batch 1 whose output rows are wide (≥ 25 pixels for a 3×3 window) needs
no gather either (`_helper_chain`): it is KH·KW matmuls accumulating into one result, each
reading its tap as a contiguous slice of the padded input flattened to [H·W, C] (output
pixels laid out with the input's row pitch; the KW - 1 wrapped-around columns per row are
computed and dropped). Unfused, each tap is a GEMM; fused, the chain's accumulator tiles
stay in registers over all taps and no column matrix is written (ResNet-18's 64→64 layers
at 56² with their batch norm and ReLU). When fusing, a thin layer (its one gather runs
scalar) is a chain too, at any stride: its input is split into stride phase planes, and
each tap reads one of them. ResNet-18's 3-channel 7×7/2 stem with batch norm and ReLU is
fastest as one chain of 49 taps (a gather + K = 147 GEMM is slower, and so is the chain cut
in parts, which `passes/fusion.py` avoids by counting a chain's links as one op against its
size cap); MobileNet-V2's 3×3/2 stem and the autoencoder gain the same way.

A 1×1 convolution (batch 1, stride 1, H·W a multiple of 16) needs no gather: it becomes
out[F, H·W] = filter[F, C] × x[C, H·W] on the tensors as they stand (MobileNet-V2's
pointwise layers run faster this way than direct). Other unstrided 1×1 convolutions
(MobileNet-V2's at 14² and 7²) take the im2col path, whose gather is then a transpose:
their blocks run faster that way than with the direct convolution.

Two more rewrites run in this stage (`driver.convolutions_as_gemms`), for every model:
`pad_weights` pads a bound matmul weight to a multiple of 16 columns (and its rows
off a multiple of 1 KB apart: L1 set conflicts), and
`sink_expand_shapes` moves a reshape below the elementwise ops that read it (a pointwise
GEMM's batch norm and activation restated on [F, H·W], a Linear's GELU on its 2-D
result), so that fusion sees a GEMM and its epilogue as one chain (a pointwise layer such
as 16→96 channels at 112² with batch norm and ReLU6 then runs as one kernel).

Every new op has exact linalg semantics; the tiling pass and the cost model schedule them
like any other matmul and elementwise op. ResNet-18's 3×3 convolutions, each compiled
alone, run faster as GEMMs than as direct convolutions. `bench/e2e.py` measures the
models these rewrites serve.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import ClassVar

import torch
from torch_mlir import ir
from torch_mlir.dialects import tensor

from tilecraft.dialects.irutil import (
    bound_arg_number,
    call_helper,
    element_type_of,
    entry_func,
    erase_if_dead,
    inline_helpers,
    int_list_attr,
    is_zero_fill,
    ops_named,
    owner_op,
    replace_op,
    shape_of,
    tensor_t,
)
from tilecraft.dialects.opinfo import LANES
from tilecraft.passes.base import ModulePass, Weights

CONV = "linalg.conv_2d_nchw_fchw"
# A thin layer (fewer than MIN_CHANNELS input channels) with many outputs runs as a GEMM
# only when fusion folds its output transpose into the epilogue (`thin=True`); alone, that
# transpose outweighs the GEMM's gain (ResNet-18's 3-channel 7×7/2 stem and MobileNet-V2's
# 3×3/2 stem, with batch norm and activation, gain as GEMMs when fused; MobileNet-V2's
# loses unfused). The autoencoder's 3-channel 3×3 (64K outputs, under MAX_THIN_OUTPUT) and
# every 64+ channel 3×3 layer (7×7×512 among them) are faster as GEMMs either way.
MIN_CHANNELS = 16
# A tap chain (`ConvLayer.by_chain`) computes KW - 1 wrapped-around columns per output row
# besides its OW: at most this share of extra work.
MAX_CHAIN_WASTE = 0.08
MAX_THIN_OUTPUT = 1 << 18  # outputs of a thin convolution rewritten even without fusion


@dataclasses.dataclass(frozen=True)
class ConvLayer:
    """One convolution and whether it can run as a GEMM (`why_not` empty)."""

    index: int
    n: int
    c: int
    f: int
    kh: int
    kw: int
    oh: int
    ow: int
    strides: tuple[int, int]
    weight: int | None  # bound argument number of the filter
    why_not: str = ""
    fusing: bool = False  # fusion follows: a chain's taps fuse into one register-tiled GEMM

    @property
    def pointwise(self) -> bool:
        """A 1×1 convolution that runs as filter[F, C] × x[C, H·W] on NCHW as it stands
        (batch 1, H·W a multiple of 16: the register tile's vectors run along H·W); other
        1×1 convolutions take the im2col path, whose gather is then a transpose."""
        return self.kh * self.kw == 1 and self.strides == (1, 1) and self.n == 1 and (self.oh * self.ow) % LANES == 0

    @property
    def by_taps(self) -> bool:
        """Gathered tap by tap, K ordered (kh, kw, c), from the input transposed once to
        [N, H, W, C]: each tap's block of the column matrix is a copy of a (strided) window
        slice of it, whole vectors of channels, which vectorizes. Channels a multiple of 16
        (fewer fill part of a vector, and the per-tap copies cost more than they save: the
        one gather reading x[n, c, y·s + i, x·s + j], K ordered (c, kh, kw), runs scalar)."""
        return self.c % LANES == 0 and (self.kh * self.kw > 1 or self.strides != (1, 1))

    @property
    def by_chain(self) -> bool:
        """No gather at all: a chain of KH·KW matmuls accumulating into one result, each
        reading its tap straight from the padded input transposed once to [H, W, C] (split
        into its stride phases) and flattened to rows of C channels (see `_helper_chain`).
        Batch 1, filters whole vectors, and output rows wide enough that the extra columns
        computed per row (the flattened rows wrap around) cost little. Channels whole
        vectors: stride 1 (a strided layer's tap copies are cheap, and its one GEMM over
        K = KH·KW·C ran faster than the chain: ResNet-18's 64→128 3×3/2 at 56², fused).
        Thin (channels not whole vectors; their one gather runs scalar): any stride, only
        when fusing (unfused, each tap is a K = C GEMM of its own, and each pass over the
        accumulator costs more than the gather saves)."""
        return (
            self.n == 1
            and self.kh * self.kw > 1
            and self.f % LANES == 0
            and (self.strides == (1, 1) if self.by_taps else self.fusing)
            and self.phase_width - self.ow <= MAX_CHAIN_WASTE * self.ow
        )

    @property
    def phase_width(self) -> int:
        """Columns of a chain's phase plane (its output row pitch): OW plus the columns its
        window reaches past the last output pixel, (KW - 1) // SW."""
        return self.ow + (self.kw - 1) // self.strides[1]

    @property
    def gemm(self) -> tuple[int, int, int]:
        """(M, N, K) of the matmul it becomes (the chain's matmuls together)."""
        return self.n * self.oh * self.ow, self.f, self.c * self.kh * self.kw


def conv_ops(module: ir.Module) -> list[ir.Operation]:
    body = entry_func(module).regions[0].blocks[0]
    return [op.operation for op in body.operations if op.operation.name == CONV]


def describe(op: ir.Operation, index: int, n_bound: int, *, thin: bool = False) -> ConvLayer:
    x, w, out = (op.operands[i] for i in range(3))
    (n, c, _, _), (f, _, kh, kw), (_, _, oh, ow) = shape_of(x), shape_of(w), shape_of(out)
    strides = tuple(int_list_attr(op, "strides"))
    layer = ConvLayer(index, n, c, f, kh, kw, oh, ow, strides, bound_arg_number(w, n_bound), fusing=thin)
    why = ""
    if {element_type_of(x), element_type_of(w), element_type_of(out)} != {"f32"}:
        why = "not f32"
    elif int_list_attr(op, "dilations") != [1, 1]:
        why = "dilated"
    elif kh * kw == 1 and strides != (1, 1) and c % LANES:
        why = f"1x1 window, strided, {c} channels (not whole vectors)"
    elif c < MIN_CHANNELS and f * oh * ow > MAX_THIN_OUTPUT and not thin:
        why = f"{c} input channels and {f * oh * ow} outputs (unfused, its transpose costs more than it saves)"
    elif layer.weight is None:
        why = "filter is not a bound argument used once"
    return dataclasses.replace(layer, why_not=why)


def layers(module: ir.Module, n_bound: int, *, thin: bool = False) -> list[ConvLayer]:
    return [describe(op, i, n_bound, thin=thin) for i, op in enumerate(conv_ops(module))]


_IDENT4 = "affine_map<(n, f, y, x) -> (n, f, y, x)>"


def _nchw_result(src: str, src_t: str, src_map: str, o_t: str, *, zero_init: bool) -> str:
    """`%o`, the NCHW result: `src` read through `src_map`, plus the convolution's
    accumulator init (`%init`) unless that was a zero fill."""
    par = ", ".join(['"parallel"'] * 4)
    if zero_init:
        maps, ins, args = [src_map, _IDENT4], f"{src} : {src_t}", "%a: f32, %b: f32"
        body = "    linalg.yield %a : f32"
    else:
        maps, ins, args = [src_map, _IDENT4, _IDENT4], f"{src}, %init : {src_t}, {o_t}", "%a: f32, %i: f32, %b: f32"
        body = "    %s = arith.addf %a, %i : f32\n    linalg.yield %s : f32"
    return (
        f"  %eo = tensor.empty() : {o_t}\n"
        f"  %o = linalg.generic {{indexing_maps = [{', '.join(maps)}], iterator_types = [{par}]}}"
        f" ins({ins}) outs(%eo : {o_t}) {{\n  ^bb0({args}):\n{body}\n  }} -> {o_t}\n"
    )


def _gather(layer: ConvLayer, x_t: str, col_t: str) -> str:
    """`%col` [N, OH, OW, C, KH, KW]: one gather of every window element."""
    sh, sw = layer.strides
    gather = f"affine_map<(n, y, x, c, i, j) -> (n, c, y * {sh} + i, x * {sw} + j)>"
    ident6 = "affine_map<(n, y, x, c, i, j) -> (n, y, x, c, i, j)>"
    par6 = ", ".join(['"parallel"'] * 6)
    return f"""  %e0 = tensor.empty() : {col_t}
  %col = linalg.generic {{indexing_maps = [{gather}, {ident6}], iterator_types = [{par6}]}}
      ins(%x : {x_t}) outs(%e0 : {col_t}) {{
  ^bb0(%a: f32, %b: f32):
    linalg.yield %a : f32
  }} -> {col_t}"""


def _to_nhwc(src: str, src_t: str, xt_t: str) -> str:
    """`%xt`: `src` [N, C, H, W] transposed to [N, H, W, C] (one `linalg.generic`)."""
    maps = "affine_map<(n, y, x, c) -> (n, c, y, x)>, affine_map<(n, y, x, c) -> (n, y, x, c)>"
    par4 = ", ".join(['"parallel"'] * 4)
    return f"""  %xt0 = tensor.empty() : {xt_t}
  %xt = linalg.generic {{indexing_maps = [{maps}], iterator_types = [{par4}]}}
      ins({src} : {src_t}) outs(%xt0 : {xt_t}) {{
  ^bb0(%a: f32, %b: f32):
    linalg.yield %a : f32
  }} -> {xt_t}"""


def _tap_gather(layer: ConvLayer, x_t: str, col_t: str, x_shape: Sequence[int]) -> str:
    """`%col` [N, OH, OW, KH, KW, C]: the (padded) input transposed once to [N, H, W, C];
    then per tap (i, j), the window slice xt[:, i::sh, j::sw, :] (C contiguous) copied into
    the tap's [N, OH, OW, C] block of the column matrix (inserted in place: one buffer)."""
    n, c, oh, ow = layer.n, layer.c, layer.oh, layer.ow
    (sh, sw), (_, _, h, w) = layer.strides, x_shape
    xt_t, blk_t = tensor_t([n, h, w, c], "f32"), tensor_t([n, oh, ow, c], "f32")
    lines = [_to_nhwc("%x", x_t, xt_t), f"  %col0 = tensor.empty() : {col_t}"]

    for t, (i, j) in enumerate((i, j) for i in range(layer.kh) for j in range(layer.kw)):
        at = f"[0, 0, 0, {i}, {j}, 0] [{n}, {oh}, {ow}, 1, 1, {c}] [1, 1, 1, 1, 1, 1]"
        window = f"[0, {i}, {j}, 0] [{n}, {oh}, {ow}, {c}] [1, {sh}, {sw}, 1]"
        lines.append(f"""  %tap{t} = tensor.extract_slice %xt{window} : {xt_t} to {blk_t}
  %col{t + 1} = tensor.insert_slice %tap{t} into %col{t}{at} : {blk_t} into {col_t}""")
    lines.append(f"  %col = tensor.cast %col{layer.kh * layer.kw} : {col_t} to {col_t}")  # (a fixed name)
    return "\n".join(lines)


def _helper(layer: ConvLayer, x_shape: Sequence[int], zero_init: bool, name: str) -> str:
    n, c, f, kh, kw, oh, ow = layer.n, layer.c, layer.f, layer.kh, layer.kw, layer.oh, layer.ow
    m, _, k = layer.gemm
    x_t, w_t, o_t = (
        tensor_t(x_shape, "f32"),
        tensor_t([k, f], "f32"),
        tensor_t([n, f, oh, ow], "f32"),
    )
    nhwf_t = tensor_t([n, oh, ow, f], "f32")
    a_t, r_t = tensor_t([m, k], "f32"), tensor_t([m, f], "f32")
    to_nchw = "affine_map<(n, f, y, x) -> (n, y, x, f)>"
    init_arg = "" if zero_init else f", %init: {o_t}"
    if layer.by_taps:
        col_t = tensor_t([n, oh, ow, kh, kw, c], "f32")
        gather = _tap_gather(layer, x_t, col_t, x_shape)
    else:
        col_t = tensor_t([n, oh, ow, c, kh, kw], "f32")
        gather = _gather(layer, x_t, col_t)
    return f"""func.func private @{name}(%x: {x_t}, %w: {w_t}{init_arg}) -> {o_t} {{
  %z = arith.constant 0.0 : f32
{gather}
  %a2 = tensor.collapse_shape %col [[0, 1, 2], [3, 4, 5]] : {col_t} into {a_t}
  %e1 = tensor.empty() : {r_t}
  %acc = linalg.fill ins(%z : f32) outs(%e1 : {r_t}) -> {r_t}
  %r = linalg.matmul ins(%a2, %w : {a_t}, {w_t}) outs(%acc : {r_t}) -> {r_t}
  %r4 = tensor.expand_shape %r [[0, 1, 2], [3]] output_shape [{n}, {oh}, {ow}, {f}] : {r_t} into {nhwf_t}
{_nchw_result("%r4", nhwf_t, to_nchw, o_t, zero_init=zero_init)}  return %o : {o_t}
}}"""


def _helper_chain(layer: ConvLayer, x_shape: Sequence[int], zero_init: bool, name: str) -> str:
    """A convolution as KH·KW matmuls accumulating into one [OH·W', F] result.

    The padded input [1, C, H, W] is cut or padded to [1, C, SH·H', SW·W'] and transposed
    once to [SH·H', SW·W', C]; a strided layer's is then split into its SH·SW phase planes
    [H', W', C] (plane (a, b) holds the pixels (SH·y + a, SW·x + b)), and the planes are
    flattened to rows of C channels. Output pixel (y, x) of tap (i, j) reads row
    (y + i // SH)·W' + x + j // SW of plane (i % SH, j % SW): over the output pixels laid
    out with the plane's row pitch W', each tap's operand is one contiguous slice of rows,
    and its filter is the [C, F] slice of the filter packed [KH·KW, C, F]. The W' - OW
    wrapped-around columns of each output row are computed and dropped (they read the next
    row's first pixels; one zero row more keeps the last ones in bounds). No column matrix
    is written: unfused, each tap is a GEMM of its own; fused (`passes/fusion.py`, an
    accumulation chain), the chain's accumulator tiles stay in registers across all taps,
    as one GEMM over K = KH·KW·C reading the input in place."""
    c, f, kh, kw, oh, ow = layer.c, layer.f, layer.kh, layer.kw, layer.oh, layer.ow
    (sh, sw), (_, _, h, w) = layer.strides, x_shape
    wp, hp = layer.phase_width, oh + (kh - 1) // sh + 1
    ht, wt = sh * hp, sw * wp  # the input cut or padded to whole phase planes
    hc, wc = min(h, ht), min(w, wt)
    phases, plane = sh * sw, hp * wp
    rows, m = phases * plane, oh * wp
    x_t, xc_t, xp_t = (
        tensor_t(x_shape, "f32"),
        tensor_t([1, c, hc, wc], "f32"),
        tensor_t([1, c, ht, wt], "f32"),
    )
    xt_t, pl_t, ph_t = (
        tensor_t([1, ht, wt, c], "f32"),
        tensor_t([phases, hp, wp, c], "f32"),
        tensor_t([1, hp, wp, c], "f32"),
    )
    flat_t, a_t, b_t, r_t = (
        tensor_t([rows, c], "f32"),
        tensor_t([m, c], "f32"),
        tensor_t([c, f], "f32"),
        tensor_t([m, f], "f32"),
    )
    w_t, o_t = tensor_t([kh * kw, c, f], "f32"), tensor_t([1, f, oh, ow], "f32")
    nhwf_t, r3_t = tensor_t([1, oh, ow, f], "f32"), tensor_t([1, oh, wp, f], "f32")
    init_arg = "" if zero_init else f", %init: {o_t}"
    cut = (
        ""
        if (hc, wc) == (h, w)
        else f"  %xc = tensor.extract_slice %x[0, 0, 0, 0] [1, {c}, {hc}, {wc}] [1, 1, 1, 1] : {x_t} to {xc_t}\n"
    )
    src = "%xc" if cut else "%x"
    lines = [
        f"""func.func private @{name}(%x: {x_t}, %w: {w_t}{init_arg}) -> {o_t} {{
  %z = arith.constant 0.0 : f32
{cut}  %xp = tensor.pad {src} low[0, 0, 0, 0] high[0, 0, {ht - hc}, {wt - wc}] {{
  ^bb0(%i0: index, %i1: index, %i2: index, %i3: index):
    tensor.yield %z : f32
  }} : {xc_t} to {xp_t}
{_to_nhwc("%xp", xp_t, xt_t)}"""
    ]
    if phases == 1:
        lines.append(f"  %flat = tensor.collapse_shape %xt [[0, 1, 2], [3]] : {xt_t} into {flat_t}")
    else:
        lines.append(f"  %pl0 = tensor.empty() : {pl_t}")
        for p, (a, b) in enumerate((a, b) for a in range(sh) for b in range(sw)):
            sizes = f"[1, {hp}, {wp}, {c}]"
            phase = f"%xt[0, {a}, {b}, 0] {sizes} [1, {sh}, {sw}, 1]"
            lines.append(f"""  %ph{p} = tensor.extract_slice {phase} : {xt_t} to {ph_t}
  %pl{p + 1} = tensor.insert_slice %ph{p} into %pl{p}[{p}, 0, 0, 0] {sizes} [1, 1, 1, 1] : {ph_t} into {pl_t}""")
        lines.append(f"  %flat = tensor.collapse_shape %pl{phases} [[0, 1, 2], [3]] : {pl_t} into {flat_t}")
    lines.append(f"""  %e = tensor.empty() : {r_t}
  %acc0 = linalg.fill ins(%z : f32) outs(%e : {r_t}) -> {r_t}""")
    for t, (i, j) in enumerate((i, j) for i in range(kh) for j in range(kw)):
        at = ((i % sh) * sw + j % sw) * plane + (i // sh) * wp + j // sw
        lines.append(f"""  %a{t} = tensor.extract_slice %flat[{at}, 0] [{m}, {c}] [1, 1] : {flat_t} to {a_t}
  %w{t} = tensor.extract_slice %w[{t}, 0, 0] [1, {c}, {f}] [1, 1, 1] : {w_t} to {b_t}
  %acc{t + 1} = linalg.matmul ins(%a{t}, %w{t} : {a_t}, {b_t}) outs(%acc{t} : {r_t}) -> {r_t}""")
    shape = f"[1, {oh}, {wp}, {f}]"
    lines.append(f"""  %r3 = tensor.expand_shape %acc{kh * kw} [[0, 1, 2], [3]] output_shape {shape} : {r_t} into {r3_t}
  %r4 = tensor.extract_slice %r3[0, 0, 0, 0] [1, {oh}, {ow}, {f}] [1, 1, 1, 1] : {r3_t} to {nhwf_t}
{_nchw_result("%r4", nhwf_t, "affine_map<(n, f, y, x) -> (n, y, x, f)>", o_t, zero_init=zero_init)}  return %o : {o_t}
}}""")
    return "\n".join(lines)


def _helper_pointwise(layer: ConvLayer, zero_init: bool, name: str) -> str:
    """A 1×1 convolution at batch 1, stride 1: out[F, H·W] = filter[F, C] × x[C, H·W], NCHW
    as it stands (reshapes only; the register tile's vectors run along H·W)."""
    c, f, p = layer.c, layer.f, layer.oh * layer.ow
    x_t, o_t, w_t = (
        tensor_t([1, c, layer.oh, layer.ow], "f32"),
        tensor_t([1, f, layer.oh, layer.ow], "f32"),
        tensor_t([f, c], "f32"),
    )
    b_t, r_t = tensor_t([c, p], "f32"), tensor_t([f, p], "f32")
    init_arg = "" if zero_init else f", %init: {o_t}"
    tail = "" if zero_init else _nchw_result("%r4", o_t, _IDENT4, o_t, zero_init=False)
    return f"""func.func private @{name}(%x: {x_t}, %w: {w_t}{init_arg}) -> {o_t} {{
  %z = arith.constant 0.0 : f32
  %xb = tensor.collapse_shape %x [[0, 1], [2, 3]] : {x_t} into {b_t}
  %e = tensor.empty() : {r_t}
  %acc = linalg.fill ins(%z : f32) outs(%e : {r_t}) -> {r_t}
  %r = linalg.matmul ins(%w, %xb : {w_t}, {b_t}) outs(%acc : {r_t}) -> {r_t}
  %r4 = tensor.expand_shape %r [[0, 1], [2, 3]] output_shape [1, {f}, {layer.oh}, {layer.ow}] : {r_t} into {o_t}
{tail}  return {"%r4" if zero_init else "%o"} : {o_t}
}}"""


def rewrite(
    module: ir.Module,
    params: list[torch.Tensor],
    *,
    select: Callable[[ConvLayer], bool] | None = None,
    thin: bool = False,
) -> tuple[list[torch.Tensor], list[ConvLayer]]:
    """Rewrite every eligible convolution (that `select` accepts) as im2col + GEMM, in
    place; returns the new bound arguments (packed filters replace the originals) and the
    layers rewritten. `thin`: thin layers with many outputs too (fusion will fold their
    output transpose into the epilogue)."""
    ctx = module.context
    fn = entry_func(module)
    params = list(params)
    done = []
    for op, layer in zip(conv_ops(module), layers(module, len(params), thin=thin)):
        if layer.why_not or (select is not None and not select(layer)):
            continue
        x_val, w_val, init_val = (op.operands[i] for i in range(3))
        zero = is_zero_fill(init_val)
        name = f"__tc_im2col_{layer.index}"
        w = params[layer.weight]
        if layer.pointwise:
            params[layer.weight] = w.reshape(layer.f, layer.c).contiguous()  # [F, C]
            text = _helper_pointwise(layer, zero, name)
        elif layer.by_chain:
            params[layer.weight] = w.permute(2, 3, 1, 0).reshape(-1, layer.c, layer.f).contiguous()  # [KH·KW, C, F]
            text = _helper_chain(layer, shape_of(x_val), zero, name)
        else:
            if layer.by_taps:
                w = w.permute(0, 2, 3, 1)  # K ordered (kh, kw, c), as the taps fill the columns
            params[layer.weight] = w.reshape(layer.f, -1).t().contiguous()  # [K, F]
            text = _helper(layer, shape_of(x_val), zero, name)
        block = fn.regions[0].blocks[0]
        block.arguments[layer.weight].set_type(ir.Type.parse(tensor_t(params[layer.weight].shape, "f32"), context=ctx))
        call_helper(module, op, text, name, [x_val, w_val] + ([] if zero else [init_val]))
        erase_if_dead(init_val.owner)
        done.append(layer)
    if done:
        inline_helpers(module)
    return params, done


# --------------------------------------------------------------- weight columns padded
STRIDE_PERIOD = 1024  # bytes: a row stride that is a multiple of it maps rows onto few L1 sets


def pad_weights(module: ir.Module, params: list[torch.Tensor]) -> tuple[list[torch.Tensor], int]:
    """Every f32 `linalg.matmul` whose B is a bound weight [K, N] used once is given a
    better layout for it, here, once:

    - N not a multiple of 16 and the accumulator a zero fill: B is padded with zero columns
      to a multiple of 16, the matmul computes [M, N16] and a slice keeps the first N.
      Without it no register tile is a whole number of vectors (a classifier's 1000
      columns: tiles of 25 or 125; padded to 1008, its 1×1280 @ 1280×1008 takes tiles of
      whole vectors).
    - B's rows STRIDE_PERIOD bytes apart or a multiple of it (N = 256, 512, 768, 1024):
      B is stored 16 columns wider and the matmul reads its [K, N] slice. A register
      tile's k loop reads a row of B per step; rows a multiple of 1 KB apart fall into a
      few sets of the 8-way L1 and evict each other, so B was read from L2 throughout
      (ResNet-18's 49×512×4608 layer-4 GEMM; bert_mini's and gpt2_block's Linear weights).

    Returns the new bound arguments and how many matmuls were changed."""
    ctx = module.context
    fn = entry_func(module)
    block = fn.regions[0].blocks[0]
    params = list(params)
    padded = 0
    for op in [o.operation for o in block.operations if o.operation.name == "linalg.matmul"]:
        a, b, init = (op.operands[i] for i in range(3))
        (m, k), (_, n) = shape_of(a), shape_of(b)
        arg = bound_arg_number(b, len(params))
        if arg is None or {element_type_of(a), element_type_of(b), element_type_of(init)} != {"f32"}:
            continue
        widen = n % LANES != 0 and n >= LANES and is_zero_fill(init)
        cols = -(-n // LANES) * LANES if widen else n  # columns the matmul computes
        stride = cols + LANES if (cols * 4) % STRIDE_PERIOD == 0 else cols  # columns stored
        if stride == n:
            continue
        params[arg] = torch.nn.functional.pad(params[arg], (0, stride - n)).contiguous()
        block.arguments[arg].set_type(ir.Type.parse(tensor_t([k, stride], "f32"), context=ctx))
        name = f"__tc_padded_{padded}"
        a_t, s_t, b_t, r_t, o_t = (
            tensor_t(shape, "f32") for shape in ([m, k], [k, stride], [k, cols], [m, cols], [m, n])
        )
        read_b = f"%b = tensor.extract_slice %s[0, 0] [{k}, {cols}] [1, 1] : {s_t} to {b_t}" if stride > cols else ""
        if widen:
            body = f"""%z = arith.constant 0.0 : f32
  %e = tensor.empty() : {r_t}
  %acc = linalg.fill ins(%z : f32) outs(%e : {r_t}) -> {r_t}
  %r = linalg.matmul ins(%a, %b : {a_t}, {b_t}) outs(%acc : {r_t}) -> {r_t}
  %o = tensor.extract_slice %r[0, 0] [{m}, {n}] [1, 1] : {r_t} to {o_t}"""
        else:
            body = f"%o = linalg.matmul ins(%a, %b : {a_t}, {b_t}) outs(%c : {o_t}) -> {o_t}"
        b_arg = "%s" if stride > cols else "%b"
        c_arg = "" if widen else f", %c: {o_t}"
        text = f"""func.func private @{name}(%a: {a_t}, {b_arg}: {s_t}{c_arg}) -> {o_t} {{
  {read_b}
  {body}
  return %o : {o_t}
}}"""
        call_helper(module, op, text, name, [a, b] if widen else [a, b, init])
        erase_if_dead(init.owner)
        padded += 1
    if padded:
        inline_helpers(module)
    return params, padded


# ------------------------------------------------------------- reshapes out of the way
def _reassociation(op: ir.Operation) -> list[list[int]]:
    return [[ir.IntegerAttr(d).value for d in group] for group in ir.ArrayAttr(op.attributes["reassociation"])]


def sink_expand_shapes(module: ir.Module) -> int:
    """Move each `tensor.expand_shape` below the elementwise ops that read it (all-parallel
    `linalg.generic`s, identity output): they are restated on the collapsed loops
    (a pointwise GEMM's [F, H·W] instead of [1, F, H, W]) and the expand moves to their
    result, until an op that cannot be restated (a depthwise convolution) reads it. The
    GEMM and its batch-norm/activation chain are then one dataflow chain that fusion can
    make one kernel of; a reshape in between would keep them apart. Returns how many ops
    were restated."""
    ctx = module.context
    fn = entry_func(module)
    body = fn.regions[0].blocks[0]
    work = [op.operation for op in body.operations if op.operation.name == "tensor.expand_shape"]
    moved = 0
    while work:
        expand = work.pop()
        owners: list[ir.Operation] = []  # each reader once (one may read it twice)
        for use in expand.results[0].uses:
            owner = getattr(use.owner, "operation", use.owner)
            if not any(owner == o for o in owners):
                owners.append(owner)
        for owner in owners:
            with ir.Location.unknown(ctx):
                new_expand = _restate(owner, expand, ctx)
            if new_expand is not None:
                moved += 1
                work.append(new_expand)
        if not list(expand.results[0].uses):
            expand.erase()
    for op in [op.operation for op in body.operations if op.operation.name == "tensor.collapse_shape"]:
        src = owner_op(op.operands[0])  # collapse(expand(x)) with one reassociation: x
        if src is not None and src.name == "tensor.expand_shape" and _reassociation(src) == _reassociation(op):
            if src.operands[0].type == op.results[0].type:
                op.results[0].replace_all_uses_with(src.operands[0])
                op.erase()
                if not list(src.results[0].uses):
                    src.erase()
    return moved


def _restate(op, expand: ir.Operation, ctx) -> ir.Operation | None:
    """Restate `op` (an all-parallel generic reading `expand`'s result through a
    permutation: the identity, or a convolution's bias and activation writing NCHW from its
    GEMM's [H·W, F] rows) over the collapsed loops: each group of loops the expand splits
    must be contiguous and in order wherever it is read (or all but one of them unit). The
    loops collapse in its output's order (an NCHW epilogue reads the GEMM's result
    transposed, [F, H·W]); an expand of its result, with the output's own groups, replaces
    it. Returns that expand, or None if `op` cannot be restated."""
    op = getattr(op, "operation", op)
    if op.name != "linalg.generic" or len(op.results) != 1:
        return None
    if any("parallel" not in str(a) for a in ir.ArrayAttr(op.attributes["iterator_types"])):
        return None
    body = list(op.regions[0].blocks[0].operations)
    if any(o.name == "linalg.index" for o in body):
        return None
    maps = [ir.AffineMapAttr(a).value for a in ir.ArrayAttr(op.attributes["indexing_maps"])]
    n_in = len(op.operands) - 1
    out_t = ir.RankedTensorType(op.results[0].type)
    extents = list(out_t.shape)
    identity = ir.AffineMap.get_identity(len(extents), ctx)
    if maps[-1] != identity:
        return None
    reads = [i for i in range(n_in) if op.operands[i] == expand.results[0]]
    dims = _dims(maps[reads[0]]) if reads else None
    if dims is None or sorted(dims) != list(range(len(extents))):
        return None
    if len(body) == 1 and maps[reads[0]] != identity:
        return None  # a bare transpose: left as it is (a transformer's K, 3-D: 2-D ran slower)
    loop_groups = sorted([dims[d] for d in g] for g in _reassociation(expand))
    if [d for g in loop_groups for d in g] != list(range(len(extents))):
        return None  # a group's loops out of order or apart in the output
    group_of = {d: k for k, g in enumerate(loop_groups) for d in g}
    collapsed = [math.prod(extents[d] for d in g) for g in loop_groups]
    plans = []  # per input: (new map, reassociation of its dims or None)
    for i in range(n_in):
        plan = _collapse_read(maps[i], loop_groups, group_of, extents, ctx)
        if plan is None:
            return None
        plans.append(plan)
    with ir.InsertionPoint(op), op.location:
        operands = []
        for i, (_, reassoc) in enumerate(plans):
            v = op.operands[i]
            if reassoc is None:
                operands.append(v)
                continue
            src = owner_op(v)
            if src is not None and src.name == "tensor.expand_shape" and _reassociation(src) == reassoc:
                operands.append(src.operands[0])
                continue
            shape = ir.RankedTensorType(v.type).shape
            in_t = ir.RankedTensorType.get(
                [math.prod(shape[d] for d in g) for g in reassoc], ir.RankedTensorType(v.type).element_type
            )
            operands.append(tensor.collapse_shape(in_t, v, _reassociation_attr(reassoc, ctx)))
        new_t = ir.RankedTensorType.get(collapsed, out_t.element_type)
        operands.append(tensor.empty(collapsed, out_t.element_type))
        new = op.clone()
        for i, v in enumerate(operands):
            new.operands[i] = v
        new.attributes["indexing_maps"] = ir.ArrayAttr.get(
            [ir.AffineMapAttr.get(m) for m, _ in plans]
            + [ir.AffineMapAttr.get(ir.AffineMap.get_identity(len(loop_groups), ctx))]
        )
        new.attributes["iterator_types"] = ir.ArrayAttr.get(
            [ir.Attribute.parse("#linalg.iterator_type<parallel>", ctx)] * len(loop_groups)
        )
        new.results[0].set_type(new_t)
        back = tensor.expand_shape(out_t, new.results[0], _reassociation_attr(loop_groups, ctx), [], extents)
    replace_op(op, back)
    return back.owner


def drop_unit_reads(module: ir.Module) -> int:
    """An elementwise generic's input read with trailing constant indices into unit dims
    (a per-channel scale [C, 1, 1] read as (c, 0, 0) by an epilogue restated over
    [C, H·W]) is read collapsed instead: [C] through (c). Maps with constants are not
    projected permutations, so the vectorizer left such an op scalar; a pointwise GEMM's
    batch norm in registers then ran as scalar loops on its accumulator tile in memory.
    Returns how many reads were rewritten."""
    ctx = module.context
    done = 0
    for op in ops_named(module.operation, "linalg.generic"):
        maps = [ir.AffineMapAttr(a).value for a in ir.ArrayAttr(op.attributes["indexing_maps"])]
        n_in = len(op.operands) - len(op.results)
        new_maps = list(maps)
        for i in range(n_in):
            v = op.operands[i]
            if not isinstance(v.type, ir.RankedTensorType):
                continue
            shape = list(ir.RankedTensorType(v.type).shape)
            results = list(maps[i].results)
            keep = len(results)
            while keep > 1 and _is_zero(results[keep - 1]) and shape[keep - 1] == 1:
                keep -= 1
            if keep == len(results):
                continue
            groups = [[d] for d in range(keep)]
            groups[-1] += list(range(keep, len(results)))
            with ir.InsertionPoint(op), op.location:
                collapsed_t = ir.RankedTensorType.get(shape[:keep], ir.RankedTensorType(v.type).element_type)
                op.operands[i] = tensor.collapse_shape(collapsed_t, v, _reassociation_attr(groups, ctx))
            new_maps[i] = ir.AffineMap.get(maps[i].n_dims, maps[i].n_symbols, results[:keep], ctx)
            done += 1
        if new_maps != maps:
            op.attributes["indexing_maps"] = ir.ArrayAttr.get([ir.AffineMapAttr.get(m) for m in new_maps])
    return done


def _reassociation_attr(groups: Sequence[Sequence[int]], ctx) -> ir.ArrayAttr:
    i64 = ir.IntegerType.get_signless(64, ctx)
    return ir.ArrayAttr.get([ir.ArrayAttr.get([ir.IntegerAttr.get(i64, d) for d in g]) for g in groups])


def _is_zero(expr) -> bool:
    expr = expr.maybe_downcast()
    return isinstance(expr, ir.AffineConstantExpr) and expr.value == 0


def _dims(amap: ir.AffineMap) -> list[int] | None:
    """The loop each result of `amap` is, or None if one is not a bare loop."""
    out = []
    for expr in amap.results:
        expr = expr.maybe_downcast()
        if not isinstance(expr, ir.AffineDimExpr):
            return None
        out.append(expr.position)
    return out


def _collapse_read(amap, loop_groups, group_of, extents, ctx):
    """(`amap` over the collapsed loops, the reassociation of the operand's dims, None if
    it keeps them) or None: each run of results must be a whole loop group in order, a
    group's one non-unit loop, or a constant."""
    results, reassoc, k = [], [], 0
    exprs = [e.maybe_downcast() for e in amap.results]
    while k < len(exprs):
        e = exprs[k]
        if isinstance(e, ir.AffineConstantExpr):
            results.append(e)
            reassoc.append([k])
            k += 1
            continue
        if not isinstance(e, ir.AffineDimExpr):
            return None
        g = loop_groups[group_of[e.position]]
        run = [x.position if isinstance(x, ir.AffineDimExpr) else None for x in exprs[k : k + len(g)]]
        if run == g:
            reassoc.append(list(range(k, k + len(g))))
            k += len(g)
        elif all(extents[o] == 1 for o in g if o != e.position):
            reassoc.append([k])
            k += 1
        else:
            return None
        results.append(ir.AffineDimExpr.get(group_of[e.position], ctx))
    keep = all(len(r) == 1 for r in reassoc)
    return ir.AffineMap.get(len(loop_groups), 0, results, ctx), (None if keep else reassoc)


# ------------------------------------------------------------------------------ passes
@dataclasses.dataclass(frozen=True)
class Im2colPass(ModulePass):
    name: ClassVar[str] = "conv-im2col"
    summary: ClassVar[str] = (
        "f32 convolutions with a window as gather + GEMM on packed filters, stride-1 wide ones as "
        "tap-GEMM chains on NHWC, pointwise ones as a GEMM (bound filters relaid out)"
    )
    thin: bool = False  # thin layers (few input channels, many outputs) too: fusion folds their transpose

    def apply(self, module: ir.Module, weights: Weights) -> None:
        weights[:], _ = rewrite(module, weights, thin=self.thin)


@dataclasses.dataclass(frozen=True)
class PadWeightsPass(ModulePass):
    name: ClassVar[str] = "pad-weights"
    summary: ClassVar[str] = "bound matmul weights padded to whole vectors and stored off 1 KB row strides"

    def apply(self, module: ir.Module, weights: Weights) -> None:
        weights[:], _ = pad_weights(module, weights)


@dataclasses.dataclass(frozen=True)
class SinkExpandShapesPass(ModulePass):
    name: ClassVar[str] = "sink-expand-shapes"
    summary: ClassVar[str] = "expand_shapes moved below the elementwise ops that read them (one GEMM + epilogue chain)"

    def apply(self, module: ir.Module, weights: Weights) -> None:
        sink_expand_shapes(module)


@dataclasses.dataclass(frozen=True)
class DropUnitReadsPass(ModulePass):
    name: ClassVar[str] = "drop-unit-reads"
    summary: ClassVar[str] = "a [C, 1, 1] operand read through (c, 0, 0) read as [C] (vectorizable)"

    def apply(self, module: ir.Module, weights: Weights) -> None:
        drop_unit_reads(module)
