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

- the input transform V = Bᵀ d B: the padded input transposed once to [H, W, C] (which
  `sink_transposes` cancels against the layer before), then per row p of Bᵀ one
  element-wise `linalg.generic` over (q, block row, block column, channel): a weighted
  sum of the eight stride-2 slices d[i, j] = xt[i::2, j::2] of the two rows i that row
  reads, the weights constant vectors over q, written in place into V [16, TH, TW, C]
  (whole vectors of channels; 4 kernels, not 16: each kernel costs compile time, and
  one kernel over all 16 slices did twice the multiply-adds and ran slower),
- `linalg.batch_matmul` V [16, TH·TW, C] × U [16, C, F], which the tiling pass and the
  cost model schedule as any batched GEMM (its zero fill in its register tiles),
- the output transform Y = Aᵀ M A: one element-wise generic over (block row, a, block
  column, b, filter), the 16 slices M[pq] weighted by [2, 2] constants, written as
  [TH, 2, TW, 2, F] = [OH, OW, F], then the transpose back to NCHW (which
  `sink_transposes` cancels against the next layer's, or fusion folds into the epilogue).

The transforms are memory passes of O(C + F) per block against the GEMM's O(16·C·F), so
the rewrite pays where channels are many and the GEMM's rows (TH·TW blocks) are enough
to run it at speed: `chosen` asks for both (`MIN_CHANNELS`, `MIN_BLOCKS`). Measured alone
with batch norm and ReLU (1 thread, this session's Xeon), against the tap chains and
GEMMs of `im2col`: 64→64 at 56² 1.36-1.50 → 1.12-1.19 ms, 128→128 at 28² 1.43 → 0.87,
256→256 at 14² 1.55-1.70 → 0.87-0.90, 512→512 at 8² 1.75 → 1.50 (its transformed filter
16 MB, 16/9 of the original); ResNet-18 as a whole 22.5-23.5 → 19.0 ms. Layers it leaves:
ResNet-18's 512→512 at 7² (odd: 4×4 blocks would compute 64 pixels for its 49, so the 8²
layer's 1.50 ms against about 1.34 for 49 pixels direct), the autoencoder's 64→32 and
64→16 (no gain). The GPU pipeline runs without it (`Im2colPass.winograd`): its host plan
takes no constant tensors, which the transforms' coefficients are. In float32 its error
matches the direct convolution's (relative L2 2.4e-7 on the 64-channel layer, 4.3e-7 on
the 256-channel one against eager's 1.7e-7; the transforms' entries are 0, ±1 and ±½).
"""

from __future__ import annotations

import torch

from tilecraft.dialects.irutil import tensor_t
from tilecraft.dialects.opinfo import LANES

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
        and layer.c % LANES == 0
        and layer.f % LANES == 0
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


def _matrix(rows) -> list[list[float]]:
    """A transform matrix from its rows' (column, sign) entries."""
    out = [[0.0] * 4 for _ in rows]
    for r, row in enumerate(rows):
        for col, sign in row:
            out[r][col] = float(sign)
    return out


def _dense(values, shape: list[int]) -> str:
    """An `arith.constant` of a float tensor of `shape` (values row-major)."""
    text = [repr(float(v)) for v in values]
    for size in reversed(shape):
        text = ["[" + ", ".join(text[k : k + size]) + "]" for k in range(0, len(text), size)]
    return f"arith.constant dense<{text[0]}> : {tensor_t(shape, 'f32')}"


def _weighted_sum(
    res: str,
    ins: list[str],
    in_t: str,
    coeffs: list[str],
    coeff_t: str,
    out: str,
    out_t: str,
    dims: str,
    in_map: str,
    coeff_map: str,
) -> str:
    """`%res` = Σ_k coeffs[k] · ins[k], one element-wise `linalg.generic` over `dims` into
    `out` (each input read through `in_map`, each coefficient through `coeff_map`)."""
    n = len(ins)
    ident = f"affine_map<({dims}) -> ({dims})>"
    maps = ", ".join([in_map] * n + [coeff_map] * n + [ident])
    par = ", ".join(['"parallel"'] * len(dims.split(",")))
    args = ", ".join([f"%i{k}: f32" for k in range(n)] + [f"%k{k}: f32" for k in range(n)] + ["%o: f32"])
    body = ["    %p0 = arith.mulf %k0, %i0 : f32"]
    for k in range(1, n):
        body.append(f"    %p{k} = math.fma %k{k}, %i{k}, %p{k - 1} : f32")
    body.append(f"    linalg.yield %p{n - 1} : f32")
    return (
        f"  %{res} = linalg.generic {{indexing_maps = [{maps}], iterator_types = [{par}]}}\n"
        f"      ins({', '.join(ins + coeffs)} : {', '.join([in_t] * n + [coeff_t] * n)}) outs({out} : {out_t}) {{\n"
        f"  ^bb0({args}):\n" + "\n".join(body) + f"\n  }} -> {out_t}"
    )


def helper(layer, x_shape, zero_init: bool, name: str) -> str:
    """The helper function replacing the convolution: (padded input [1, C, H, W], U
    [16, C, F][, init]) → [1, F, OH, OW]."""
    from tilecraft.passes.im2col import nchw_result, to_nhwc  # (im2col imports this module)

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
    lines = [
        f"func.func private @{name}(%x: {x_t}, %u: {u_t}{init_arg}) -> {o_t} {{",
        "  %z = arith.constant 0.0 : f32",
    ]
    lines.append(to_nhwc("%x", x_t, xt_t))
    # the input transform, V[p, q] = Σ_i (Bᵀ)[p, i] Σ_j (Bᵀ)[q, j] d[i, j], d[i, j] = xt[i::2, j::2]:
    # one generic per p, over the two rows of d its row of Bᵀ reads (8 products, not 16)
    bt, at = _matrix(BT_ROWS), _matrix(AT_ROWS)
    for i in range(4):
        for j in range(4):
            lines.append(
                f"  %d{i}{j} = tensor.extract_slice %xt[0, {i}, {j}, 0] [1, {th}, {tw}, {c}] [1, 2, 2, 1]"
                f" : {xt_t} to {vblk_t}"
            )
    for j in range(4):  # the coefficients of d[i, j] over q, times the sign of i in the row of p
        for sign, tag in ((1, "p"), (-1, "n")):
            lines.append(f"  %b{j}{tag} = {_dense([sign * bt[q][j] for q in range(4)], [4])}")
    vrow_t = tensor_t([4, th, tw, c], "f32")
    lines.append(f"  %v0 = tensor.empty() : {v_t}")
    for p in range(4):
        taps = [f"%d{i}{j}" for i, _ in BT_ROWS[p] for j in range(4)]
        coeffs = [f"%b{j}{'p' if si > 0 else 'n'}" for _, si in BT_ROWS[p] for j in range(4)]
        at_p = f"[{4 * p}, 0, 0, 0] [4, {th}, {tw}, {c}] [1, 1, 1, 1]"
        lines.append(f"  %vs{p} = tensor.extract_slice %v{p}{at_p} : {v_t} to {vrow_t}")
        lines.append(
            _weighted_sum(
                f"vg{p}",
                taps,
                vblk_t,
                coeffs,
                tensor_t([4], "f32"),
                f"%vs{p}",
                vrow_t,
                "q, y, x, c",
                "affine_map<(q, y, x, c) -> (y, x, c)>",
                "affine_map<(q, y, x, c) -> (q)>",
            )
        )
        lines.append(f"  %v{p + 1} = tensor.insert_slice %vg{p} into %v{p}{at_p} : {vrow_t} into {v_t}")
    lines.append(f"  %v = tensor.collapse_shape %v4 [[0], [1, 2], [3]] : {v_t} into {v2_t}")
    lines.append(f"  %me = tensor.empty() : {m_t}")
    lines.append(f"  %macc = linalg.fill ins(%z : f32) outs(%me : {m_t}) -> {m_t}")
    lines.append(f"  %m = linalg.batch_matmul ins(%v, %u : {v2_t}, {u_t}) outs(%macc : {m_t}) -> {m_t}")
    lines.append(
        f"  %m4 = tensor.expand_shape %m [[0], [1, 2], [3]] output_shape [16, {th}, {tw}, {f}] : {m_t} into {m4_t}"
    )
    # the output transform, y[a, b] = Σ_pq (Aᵀ)[a, p] (Aᵀ)[b, q] M[pq], written as [TH, 2, TW, 2, F]
    mslices, acoef = [], []
    for p in range(4):
        for q in range(4):
            pq = 4 * p + q
            mslices.append(f"%mk{pq}")
            lines.append(
                f"  %mk{pq} = tensor.extract_slice %m4[{pq}, 0, 0, 0] [1, {th}, {tw}, {f}] [1, 1, 1, 1]"
                f" : {m4_t} to {mblk_t}"
            )
            acoef.append(f"%a{pq}")
            lines.append(f"  %a{pq} = {_dense([at[a][p] * at[b][q] for a in range(2) for b in range(2)], [2, 2])}")
    lines.append(f"  %y0 = tensor.empty() : {y_t}")
    lines.append(
        _weighted_sum(
            "y4",
            mslices,
            mblk_t,
            acoef,
            tensor_t([2, 2], "f32"),
            "%y0",
            y_t,
            "y, a, x, b, f",
            "affine_map<(y, a, x, b, f) -> (y, x, f)>",
            "affine_map<(y, a, x, b, f) -> (a, b)>",
        )
    )
    lines.append(f"  %yc = tensor.collapse_shape %y4 [[0, 1], [2, 3], [4]] : {y_t} into {y3_t}")
    lines.append(
        f"  %r4 = tensor.expand_shape %yc [[0, 1], [2], [3]] output_shape [1, {oh}, {ow}, {f}] : {y3_t} into {y4_t}"
    )
    to_nchw = "affine_map<(n, f, y, x) -> (n, y, x, f)>"
    lines.append(nchw_result("%r4", y4_t, to_nchw, o_t, zero_init=zero_init).rstrip("\n"))
    lines.append(f"  return %o : {o_t}")
    lines.append("}")
    return "\n".join(lines)
