"""Convolutions as GEMMs: im2col, a matmul on pre-packed weights, and a transpose.

On the passes floor; sits after the precision rewrite and before fusion in the flow
(`compiler/driver.py`: the first of the canonical passes, `conv-im2col`). Reads a linalg-on-tensors module and its bound
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
  unpadded, unstrided 1×1 layer's gather is the input transposed to [N, H, W, C], which
  `sink_transposes` cancels against the transpose of the NHWC op before it,
- a `linalg.matmul` of that matrix with the filter packed once, here, as [K, F]
  (output channels contiguous: the register tile's vectors run along them, whatever the
  spatial size; NCHW's direct convolution vectorizes along OW, 7 of 16 lanes at 7×7),
- a transpose (`linalg.generic`) of the [N, OH, OW, F] result back to NCHW, which
  `passes/sink_transposes.py` cancels against the next convolution's transpose in, or fusion folds
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

A 1×1 convolution with fewer than 16 output channels (batch 1, stride 1, H·W a multiple
of 16) needs no gather: it becomes out[F, H·W] = filter[F, C] × x[C, H·W] on the tensors
as they stand, its vectors along H·W (the autoencoder's 16→3 head). Wider 1×1 layers
take the im2col path, NHWC like their neighbours: MobileNet-V2's, between depthwise
layers that `passes/depthwise.py` runs on NHWC, with no transpose left between them.

Every new op has exact linalg semantics; the tiling pass and the cost model schedule them
like any other matmul and elementwise op. ResNet-18's 3×3 convolutions, each compiled
alone, run faster as GEMMs than as direct convolutions. `bench/e2e.py` measures the
models these rewrites serve.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import ClassVar

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
    shape_of,
    tensor_t,
)
from tilecraft.dialects.opinfo import LANES
from tilecraft.passes import winograd as wino
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
# A 1×1 layer with fewer output channels than this runs as filter × x on NCHW (`pointwise`):
# on NHWC its GEMM's vectors would run along those few channels (the autoencoder's 16→3 head
# at 64²: 0.67 vs 0.89 ms for the model). Wider ones take the im2col path, on NHWC like the
# layers around them (MobileNet-V2's, between its NHWC depthwise layers: 13.2 vs 5.2 ms).
POINTWISE_NCHW_BELOW = 16


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
    patch: bool = False  # windows tile the input exactly (stride = window, no padding): see `patchify`
    winograd: bool = False  # rewritten by Winograd F(2×2, 3×3) (`passes/winograd.py`), not as a GEMM

    @property
    def patchify(self) -> bool:
        """A patch embedding (a ViT's 16×16/16 stem): the windows tile the input exactly,
        so the column matrix is a pure relayout of the input — [N, C, OH, KH, OW, KW]
        permuted to [N, OH, OW, C, KH, KW] — one transpose that vectorizes, for one GEMM
        with K = C·KH·KW (as a tap chain it was KH·KW matmuls of K = C each: 256 of K = 3)."""
        return self.patch

    @property
    def pointwise(self) -> bool:
        """A 1×1 convolution with few output channels (`POINTWISE_NCHW_BELOW`) that runs as
        filter[F, C] × x[C, H·W] on NCHW as it stands (batch 1, H·W a multiple of 16: the
        register tile's vectors run along H·W); other 1×1 convolutions take the im2col
        path, whose gather is then a transpose (`_transpose_gather`)."""
        return (
            self.f < POINTWISE_NCHW_BELOW
            and self.kh * self.kw == 1
            and self.strides == (1, 1)
            and self.n == 1
            and (self.oh * self.ow) % LANES == 0
        )

    @property
    def by_taps(self) -> bool:
        """Gathered tap by tap, K ordered (kh, kw, c), from the input transposed once to
        [N, H, W, C]: each tap's block of the column matrix is a copy of a (strided) window
        slice of it, whole vectors of channels, which vectorizes. Channels a multiple of 16
        (fewer fill part of a vector, and the per-tap copies cost more than they save: the
        one gather reading x[n, c, y·s + i, x·s + j], K ordered (c, kh, kw), runs scalar)."""
        return not self.patch and self.c % LANES == 0 and (self.kh * self.kw > 1 or self.strides != (1, 1))

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
            not self.patch
            and self.n == 1
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


CONV1D = "linalg.conv_1d_ncw_fcw"


def convs_1d_as_2d(module: ir.Module, params: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each `linalg.conv_1d_ncw_fcw` (a speech encoder's stem) restated as a
    `conv_2d_nchw_fchw` over a unit height, so it takes the 2-D layers' paths (as a GEMM)
    instead of running as scalar loops. A bound filter used once is re-laid out to
    [F, C, 1, K] in the bound arguments; any other is expanded in the IR."""
    ctx = module.context
    fn = entry_func(module)
    params = list(params)
    body = fn.regions[0].blocks[0]
    ops = [op.operation for op in body.operations if op.operation.name == CONV1D]
    for i, op in enumerate(ops):
        x_val, w_val, init_val = (op.operands[j] for j in range(3))
        (n, c, w), (f, _, k), (_, _, ow) = shape_of(x_val), shape_of(w_val), shape_of(init_val)
        elem = element_type_of(init_val)
        stride, dilation = int_list_attr(op, "strides")[0], int_list_attr(op, "dilations")[0]
        bound = bound_arg_number(w_val, len(params))
        if bound is not None:
            params[bound] = params[bound].reshape(f, c, 1, k).contiguous()
            body.arguments[bound].set_type(ir.Type.parse(tensor_t((f, c, 1, k), element_type_of(w_val)), context=ctx))
        w_in = tensor_t((f, c, 1, k) if bound is not None else (f, c, k), element_type_of(w_val))
        w4 = "%w" if bound is not None else "%w4"
        expand_w = (
            ""
            if bound is not None
            else f"  %w4 = tensor.expand_shape %w [[0], [1], [2, 3]] output_shape [{f}, {c}, 1, {k}]"
            f" : {w_in} into {tensor_t((f, c, 1, k), element_type_of(w_val))}\n"
        )
        x3, x4 = tensor_t((n, c, w), element_type_of(x_val)), tensor_t((n, c, 1, w), element_type_of(x_val))
        o3, o4 = tensor_t((n, f, ow), elem), tensor_t((n, f, 1, ow), elem)
        name = f"__tc_conv1d_{i}"
        text = (
            f"func.func private @{name}(%x: {x3}, %w: {w_in}, %init: {o3}) -> {o3} {{\n"
            f"  %x4 = tensor.expand_shape %x [[0], [1], [2, 3]] output_shape [{n}, {c}, 1, {w}] : {x3} into {x4}\n"
            f"{expand_w}"
            f"  %i4 = tensor.expand_shape %init [[0], [1], [2, 3]] output_shape [{n}, {f}, 1, {ow}] : {o3} into {o4}\n"
            f"  %c = linalg.conv_2d_nchw_fchw {{dilations = dense<[1, {dilation}]> : vector<2xi64>, "
            f"strides = dense<[1, {stride}]> : vector<2xi64>}} ins(%x4, {w4} : {x4}, "
            f"{tensor_t((f, c, 1, k), element_type_of(w_val))}) outs(%i4 : {o4}) -> {o4}\n"
            f"  %r = tensor.collapse_shape %c [[0], [1], [2, 3]] : {o4} into {o3}\n"
            f"  return %r : {o3}\n}}\n"
        )
        call_helper(module, op, text, name, [x_val, w_val, init_val])
    if ops:
        inline_helpers(module)
    return params


def conv_ops(module: ir.Module) -> list[ir.Operation]:
    body = entry_func(module).regions[0].blocks[0]
    return [op.operation for op in body.operations if op.operation.name == CONV]


def describe(op: ir.Operation, index: int, n_bound: int, *, thin: bool = False) -> ConvLayer:
    x, w, out = (op.operands[i] for i in range(3))
    (n, c, h, wd), (f, _, kh, kw), (_, _, oh, ow) = shape_of(x), shape_of(w), shape_of(out)
    strides = tuple(int_list_attr(op, "strides"))
    patch = strides == (kh, kw) and kh * kw > 1 and (h, wd) == (oh * kh, ow * kw)
    layer = ConvLayer(index, n, c, f, kh, kw, oh, ow, strides, bound_arg_number(w, n_bound), fusing=thin, patch=patch)
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
FOLD_BACK = "tc.fold_back"  # a transpose split from the add it fed: `sink_transposes` folds it back if it stays


def nchw_result(src: str, src_t: str, src_map: str, o_t: str, *, zero_init: bool) -> str:
    """`%o`, the NCHW result: `src` read through `src_map`, plus the convolution's
    accumulator init (`%init`) unless that was a zero fill. A transposing read with an
    init is a pure transpose (`%t`, marked `FOLD_BACK`) and then the add: the layout pass
    sinks the transpose through the add, or folds it back into it."""
    par = ", ".join(['"parallel"'] * 4)

    def generic(res: str, maps: list[str], ins: str, args: str, body: str, attrs: str = "") -> str:
        return (
            f"  %e{res} = tensor.empty() : {o_t}\n"
            f"  %{res} = linalg.generic {{indexing_maps = [{', '.join(maps)}], {attrs}iterator_types = [{par}]}}"
            f" ins({ins}) outs(%e{res} : {o_t}) {{\n  ^bb0({args}):\n{body}\n  }} -> {o_t}\n"
        )

    copy = "%a: f32, %b: f32", "    linalg.yield %a : f32"
    if zero_init:
        return generic("o", [src_map, _IDENT4], f"{src} : {src_t}", *copy)
    head = ""
    if src_map != _IDENT4:
        head = generic("t", [src_map, _IDENT4], f"{src} : {src_t}", *copy, attrs=f"{FOLD_BACK}, ")
        src, src_t = "%t", o_t
    add = "    %s = arith.addf %a, %i : f32\n    linalg.yield %s : f32"
    return head + generic("o", [_IDENT4] * 3, f"{src}, %init : {src_t}, {o_t}", "%a: f32, %i: f32, %b: f32", add)


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


def _transpose_gather(layer: ConvLayer, x_t: str, col_t: str) -> str:
    """`%col` [N, OH, OW, C, 1, 1] of an unpadded, unstrided 1×1 layer: the input
    transposed to [N, H, W, C] (a pure transpose, which `sink_transposes` can cancel
    against the NHWC → NCHW transpose of the op that made it), with two unit dims."""
    n, c, oh, ow = layer.n, layer.c, layer.oh, layer.ow
    t_t = tensor_t([n, oh, ow, c], "f32")
    par = ", ".join(['"parallel"'] * 4)
    return f"""  %e0 = tensor.empty() : {t_t}
  %xt = linalg.generic {{indexing_maps = [affine_map<(n, y, x, c) -> (n, c, y, x)>,
      affine_map<(n, y, x, c) -> (n, y, x, c)>], iterator_types = [{par}]}}
      ins(%x : {x_t}) outs(%e0 : {t_t}) {{
  ^bb0(%a: f32, %b: f32):
    linalg.yield %a : f32
  }} -> {t_t}
  %col = tensor.expand_shape %xt [[0], [1], [2], [3, 4, 5]] output_shape [{n}, {oh}, {ow}, {c}, 1, 1]
      : {t_t} into {col_t}"""


def _patch_gather(layer: ConvLayer, x_t: str, col_t: str) -> str:
    """`%col` [N, OH, OW, C, KH, KW] of a patch embedding: the input split into its
    patches and permuted (`ConvLayer.patchify`)."""
    n, c, kh, kw, oh, ow = layer.n, layer.c, layer.kh, layer.kw, layer.oh, layer.ow
    x6_t = tensor_t([n, c, oh, kh, ow, kw], "f32")
    perm = "affine_map<(n, y, x, c, i, j) -> (n, c, y, i, x, j)>"
    ident6 = "affine_map<(n, y, x, c, i, j) -> (n, y, x, c, i, j)>"
    par6 = ", ".join(['"parallel"'] * 6)
    return f"""  %x6 = tensor.expand_shape %x [[0], [1], [2, 3], [4, 5]] output_shape [{n}, {c}, {oh}, {kh}, {ow}, {kw}]
      : {x_t} into {x6_t}
  %e0 = tensor.empty() : {col_t}
  %col = linalg.generic {{indexing_maps = [{perm}, {ident6}], iterator_types = [{par6}]}}
      ins(%x6 : {x6_t}) outs(%e0 : {col_t}) {{
  ^bb0(%a: f32, %b: f32):
    linalg.yield %a : f32
  }} -> {col_t}"""


def to_nhwc(src: str, src_t: str, xt_t: str) -> str:
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
    lines = [to_nhwc("%x", x_t, xt_t), f"  %col0 = tensor.empty() : {col_t}"]

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
    elif layer.patchify:
        col_t = tensor_t([n, oh, ow, c, kh, kw], "f32")
        gather = _patch_gather(layer, x_t, col_t)
    elif kh * kw == 1 and layer.strides == (1, 1) and list(x_shape[2:]) == [oh, ow]:
        col_t = tensor_t([n, oh, ow, c, kh, kw], "f32")
        gather = _transpose_gather(layer, x_t, col_t)
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
{nchw_result("%r4", nhwf_t, to_nchw, o_t, zero_init=zero_init)}  return %o : {o_t}
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
{to_nhwc("%xp", xp_t, xt_t)}"""
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
{nchw_result("%r4", nhwf_t, "affine_map<(n, f, y, x) -> (n, y, x, f)>", o_t, zero_init=zero_init)}  return %o : {o_t}
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
    tail = "" if zero_init else nchw_result("%r4", o_t, _IDENT4, o_t, zero_init=False)
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
    winograd: bool = True,
) -> tuple[list[torch.Tensor], list[ConvLayer]]:
    """Rewrite every eligible convolution (that `select` accepts) as im2col + GEMM, in
    place; returns the new bound arguments (packed filters replace the originals) and the
    layers rewritten. `thin`: thin layers with many outputs too (fusion will fold their
    output transpose into the epilogue). `winograd`: the 3×3 stride-1 layers
    `passes/winograd.py` chooses by Winograd F(2×2, 3×3) (those come back with
    `ConvLayer.winograd` set)."""
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
        if winograd and wino.chosen(layer):
            layer = dataclasses.replace(layer, winograd=True)
            params[layer.weight] = wino.transform_filter(w)  # U [16, C, F]
            text = wino.helper(layer, shape_of(x_val), zero, name)
        elif layer.pointwise:
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


# ------------------------------------------------------------------------------ passes
@dataclasses.dataclass(frozen=True)
class Im2colPass(ModulePass):
    name: ClassVar[str] = "conv-im2col"
    summary: ClassVar[str] = (
        "f32 convolutions with a window as gather + GEMM on packed filters, stride-1 wide ones as "
        "tap-GEMM chains on NHWC, pointwise ones as a GEMM (bound filters relaid out)"
    )
    thin: bool = False  # thin layers (few input channels, many outputs) too: fusion folds their transpose
    # 3×3 stride-1 layers by Winograd F(2×2, 3×3) where `passes/winograd.py` chooses it. Off on
    # the GPU: its transforms' coefficients are constant tensors (globals), which the GPU host
    # plan does not take, and no GPU has timed it.
    winograd: bool = True

    def apply(self, module: ir.Module, weights: Weights) -> None:
        weights[:] = convs_1d_as_2d(module, weights)
        weights[:], _ = rewrite(module, weights, thin=self.thin, winograd=self.winograd)
