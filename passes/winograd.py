"""3×3 stride-1 convolutions by Winograd's minimal filtering, F(2×2, 3×3).

On the passes floor; used by `passes/im2col.py` (`rewrite`), which offers each eligible
layer to `chosen` before its GEMM paths. Each 2×2 block of output pixels of a 3×3 window
is computed from the 4×4 block of (padded) input around it in a transformed space where
the convolution is an element-wise product: 16 multiplications per block and channel
pair instead of 36, so the layer's GEMM work falls 2.25×:

    Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A      (Lavin and Gray, "Fast Algorithms for
                                            Convolutional Neural Networks", 2016)

Summed over input channels, the element-wise products are 16 GEMMs, one per position
(p, q) of the 4×4 transformed block: M[pq] = V[pq] · U[pq] with V [tiles, C] and U
[C, F]. The filter's transform U = G g Gᵀ is done here, once, in float64 (the bound
filter is replaced by U [16, C, F]); the rest is linalg on tensors:

- the input transform V = Bᵀ d B: the padded input transposed once to [H, W, C], and per
  position one element-wise `linalg.generic` of four stride-2 slices of it (Bᵀ's rows
  have two ±1 entries, so each position is a ± b ± c ± d), written in place into
  V [16, TH, TW, C] (whole vectors of channels),
- `linalg.batch_matmul` V [16, TH·TW, C] × U [16, C, F], which the tiling pass and the
  cost model schedule as any batched GEMM,
- the output transform Y = Aᵀ M A: per output pixel of the 2×2 block, one element-wise
  generic summing nine ± slices of M, written into [TH, 2, TW, 2, F] = [OH, OW, F] in
  place, then the transpose back to NCHW (which `sink_transposes` cancels against the
  next layer's, or fusion folds into the epilogue).

The transforms are memory passes of O(C + F) per block against the GEMM's O(16·C·F), so
the rewrite pays where channels are many and the GEMM's rows (TH·TW blocks) are enough
to run it at speed: `chosen` asks for both (`MIN_CHANNELS`, `MIN_BLOCKS`). In float32 its
error stays within a few ulps of the direct convolution's for these sizes (the
transforms' entries are 0, ±1 and ±½).
"""

from __future__ import annotations

import torch

from tilecraft.dialects.irutil import tensor_t

# Bᵀ and Aᵀ of F(2×2, 3×3) as (column, sign) per row: every nonzero entry is ±1.
BT_ROWS = (((0, 1), (2, -1)), ((1, 1), (2, 1)), ((2, 1), (1, -1)), ((1, 1), (3, -1)))
AT_ROWS = (((0, 1), (1, 1), (2, 1)), ((1, 1), (2, -1), (3, -1)))
G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))

# A layer is rewritten when both its channel counts are at least this and its output has at
# least MIN_BLOCKS 2×2 blocks (the batched GEMM's rows).
MIN_CHANNELS = 64
MIN_BLOCKS = 16
ENABLED = True


def eligible(layer) -> bool:
    """The shapes F(2×2, 3×3) serves: a 3×3 window at stride 1, batch 1, channels whole
    vectors, an even output (2×2 blocks tile it exactly)."""
    return (
        layer.n == 1
        and (layer.kh, layer.kw) == (3, 3)
        and layer.strides == (1, 1)
        and layer.c % 16 == 0
        and layer.f % 16 == 0
        and layer.oh % 2 == 0
        and layer.ow % 2 == 0
    )


def chosen(layer) -> bool:
    """Whether `layer` runs as Winograd: eligible, channels many enough that the
    transforms are cheap beside the GEMM, and blocks enough for the GEMM's rows."""
    return (
        ENABLED
        and eligible(layer)
        and min(layer.c, layer.f) >= MIN_CHANNELS
        and (layer.oh // 2) * (layer.ow // 2) >= MIN_BLOCKS
    )


def transform_filter(w: torch.Tensor) -> torch.Tensor:
    """The filter [F, C, 3, 3] as U [16, C, F]: U[p·4 + q, c, f] = (G g Gᵀ)[p, q] of
    g = w[f, c] (computed in float64, stored as w's dtype)."""
    g = torch.tensor(G, dtype=torch.float64)
    u = torch.einsum("pi,fcij,qj->pqcf", g, w.to(torch.float64), g)
    return u.reshape(16, w.shape[1], w.shape[0]).to(w.dtype).contiguous()


def _signed_sum(names: list[tuple[str, int]]) -> list[str]:
    """Body lines of a generic yielding Σ sign · arg over `names` ((block arg, ±1))."""
    (first, s0), rest = names[0], names[1:]
    lines, acc = [], first
    if s0 < 0:
        lines.append(f"    %n0 = arith.negf {first} : f32")
        acc = "%n0"
    for k, (arg, sign) in enumerate(rest):
        op = "arith.addf" if sign > 0 else "arith.subf"
        lines.append(f"    %s{k} = {op} {acc}, {arg} : f32")
        acc = f"%s{k}"
    lines.append(f"    linalg.yield {acc} : f32")
    return lines


def _sum_generic(res: str, ins: list[tuple[str, int]], in_t: str, out: str) -> str:
    """`%res` = Σ ± ins, element-wise over 3-D slices of type `in_t`, into `out`."""
    ident = "affine_map<(a, b, c) -> (a, b, c)>"
    maps = ", ".join([ident] * (len(ins) + 1))
    par = ", ".join(['"parallel"'] * 3)
    args = ", ".join(f"%i{k}: f32" for k in range(len(ins))) + ", %o: f32"
    body = "\n".join(_signed_sum([(f"%i{k}", s) for k, (_, s) in enumerate(ins)]))
    operands = ", ".join(name for name, _ in ins)
    types = ", ".join([in_t] * len(ins))
    return (
        f"  %{res} = linalg.generic {{indexing_maps = [{maps}], iterator_types = [{par}]}}\n"
        f"      ins({operands} : {types}) outs({out} : {in_t}) {{\n  ^bb0({args}):\n{body}\n  }} -> {in_t}"
    )


def helper(layer, x_shape, zero_init: bool, name: str, *, to_nhwc, nchw_result) -> str:
    """The helper function replacing the convolution: (padded input [1, C, H, W], U
    [16, C, F][, init]) → [1, F, OH, OW]. `to_nhwc` and `nchw_result` are im2col's."""
    c, f, oh, ow = layer.c, layer.f, layer.oh, layer.ow
    th, tw = oh // 2, ow // 2
    _, _, h, w = x_shape
    x_t, o_t, u_t = tensor_t(x_shape, "f32"), tensor_t([1, f, oh, ow], "f32"), tensor_t([16, c, f], "f32")
    xt_t = tensor_t([1, h, w, c], "f32")
    v_t, vblk_t = tensor_t([16, th, tw, c], "f32"), tensor_t([th, tw, c], "f32")
    v2_t, m_t = tensor_t([16, th * tw, c], "f32"), tensor_t([16, th * tw, f], "f32")
    m4_t, mblk_t = tensor_t([16, th, tw, f], "f32"), tensor_t([th, tw, f], "f32")
    y_t, y3_t, y4_t = tensor_t([th, 2, tw, 2, f], "f32"), tensor_t([oh, ow, f], "f32"), tensor_t([1, oh, ow, f], "f32")
    init_arg = "" if zero_init else f", %init: {o_t}"
    lines = [f"func.func private @{name}(%x: {x_t}, %u: {u_t}{init_arg}) -> {o_t} {{", "  %z = arith.constant 0.0 : f32"]
    lines.append(to_nhwc("%x", x_t, xt_t))
    # the input transform, position by position: V[pq] = Σ± d[i, j], d[i, j] = xt[i::2, j::2]
    taps = {}
    for i in range(4):
        for j in range(4):
            taps[i, j] = f"%d{i}{j}"
            lines.append(
                f"  %d{i}{j} = tensor.extract_slice %xt[0, {i}, {j}, 0] [1, {th}, {tw}, {c}] [1, 2, 2, 1]"
                f" : {xt_t} to {vblk_t}"
            )
    lines.append(f"  %v0 = tensor.empty() : {v_t}")
    for p in range(4):
        for q in range(4):
            pq = 4 * p + q
            terms = [(taps[i, j], si * sj) for i, si in BT_ROWS[p] for j, sj in BT_ROWS[q]]
            at = f"[{pq}, 0, 0, 0] [1, {th}, {tw}, {c}] [1, 1, 1, 1]"
            lines.append(f"  %vs{pq} = tensor.extract_slice %v{pq}{at} : {v_t} to {vblk_t}")
            lines.append(_sum_generic(f"vg{pq}", terms, vblk_t, f"%vs{pq}"))
            lines.append(f"  %v{pq + 1} = tensor.insert_slice %vg{pq} into %v{pq}{at} : {vblk_t} into {v_t}")
    lines.append(f"  %v = tensor.collapse_shape %v16 [[0], [1, 2], [3]] : {v_t} into {v2_t}")
    lines.append(f"  %me = tensor.empty() : {m_t}")
    lines.append(f"  %macc = linalg.fill ins(%z : f32) outs(%me : {m_t}) -> {m_t}")
    lines.append(f"  %m = linalg.batch_matmul ins(%v, %u : {v2_t}, {u_t}) outs(%macc : {m_t}) -> {m_t}")
    lines.append(f"  %m4 = tensor.expand_shape %m [[0], [1, 2], [3]] output_shape [16, {th}, {tw}, {f}] : {m_t} into {m4_t}")
    mslices = {}
    for pq in range(16):
        mslices[pq] = f"%mk{pq}"
        lines.append(
            f"  %mk{pq} = tensor.extract_slice %m4[{pq}, 0, 0, 0] [1, {th}, {tw}, {f}] [1, 1, 1, 1] : {m4_t} to {mblk_t}"
        )
    # the output transform, pixel by pixel of the 2×2 block: y[a, b] = Σ± M[pq]
    lines.append(f"  %y0 = tensor.empty() : {y_t}")
    for a in range(2):
        for b in range(2):
            k = 2 * a + b
            terms = [(mslices[4 * p + q], sp * sq) for p, sp in AT_ROWS[a] for q, sq in AT_ROWS[b]]
            at = f"[0, {a}, 0, {b}, 0] [{th}, 1, {tw}, 1, {f}] [1, 1, 1, 1, 1]"
            lines.append(f"  %ys{k} = tensor.extract_slice %y{k}{at} : {y_t} to {mblk_t}")
            lines.append(_sum_generic(f"yg{k}", terms, mblk_t, f"%ys{k}"))
            lines.append(f"  %y{k + 1} = tensor.insert_slice %yg{k} into %y{k}{at} : {mblk_t} into {y_t}")
    lines.append(f"  %yc = tensor.collapse_shape %y4 [[0, 1], [2, 3], [4]] : {y_t} into {y3_t}")
    lines.append(f"  %r4 = tensor.expand_shape %yc [[0, 1], [2], [3]] output_shape [1, {oh}, {ow}, {f}] : {y3_t} into {y4_t}")
    to_nchw = "affine_map<(n, f, y, x) -> (n, y, x, f)>"
    lines.append(nchw_result("%r4", y4_t, to_nchw, o_t, zero_init=zero_init).rstrip("\n"))
    lines.append(f"  return %o : {o_t}")
    lines.append("}")
    return "\n".join(lines)
