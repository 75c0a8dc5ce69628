"""The `panel-weights` pass: a large bound matmul weight stored panel by panel.

On the passes floor; one of the canonical rewrites (`compiler/driver.py`), before the
weight padding. Reads a module and its bound weights; writes the module with each
rewritten matmul as a batched matmul over column panels of its weight, and the weight
relaid out as those panels among the bound arguments.

A register tile of `C[M, N] += A[M, K] @ B[K, N]` reads, per step of its k loop, 128
bytes (32 columns) of one row of B. With B in row-major [K, N] order those reads are a
row apart (2 KB for N = 512): two to a 4 KB page, a stride the hardware prefetchers do
not follow, so a weight that comes from memory at every inference (ResNet-18's layer-4
GEMMs, 9.4 MB each) is read one demand miss at a time. Stored as panels
`Bp[N/P, K, P]` (`P` columns each, `Bp[j, k, p] = B[k, j·P + p]`), the same reads are
consecutive: each panel streams through memory once, in order. The matmul becomes

    T[j, m, p] = Σ_k A[m, k] · Bp[j, k, p]       (a batch_matmul, A broadcast over j)
    C[m, j·P + p] = T[j, m, p]                    (a transpose, then a free reshape)

The batch_matmul's kernel takes one panel per step of its outermost loop (its batch), so
threads split the panels between them; the transpose (M·N elements) is the price.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
from torch_mlir import ir
from torch_mlir.dialects import tensor

from tilecraft.dialects.irutil import (
    call_helper,
    entry_func,
    erase_if_dead,
    inline_helpers,
    is_zero_fill,
    owner_op,
    reassociation_attr,
    reassociation_of,
    replace_op,
    restated_generic,
    tensor_t,
)
from tilecraft.passes.base import ModulePass, Weights
from tilecraft.passes.pad_weights import weight_matmuls
from tilecraft.passes.split_ragged import QUANTUM, ragged

PANEL = 32  # columns of a panel: the register tile's width (two zmm vectors of f32)
# Weights smaller than this stay [K, N]. `bench/ab.py tilecraft.passes.panel_weights MIN_BYTES
# --values 1048576,262144` (5 rounds): bert_mini 1.07x / 1.07x (1 / 2 threads; its QKV
# weight, 768 KB, and output projection, 256 KB, join), mlp 1.07x / 1.01x, gpt2_block
# 1.04x / 1.00x, mobilenet_v2 0.97x / 1.00x (the same 7.29 ms under bench/loop_profile.py).
MIN_BYTES = 256 << 10
MIN_ROWS = 2  # a one-row matmul streams whole rows of B already (`schedule.ONE_ROW_K`)
# A register tile runs down the whole K (its accumulators stay in registers), and every
# panel reads all of A again: A must stay in L2 across the panels. ResNet-18's layer-3
# GEMMs (196×2304 @ 2304×256: A 1.8 MB) ran 0.94x at 1 thread in panels, A coming from
# L3 eight times; its layer-4 GEMMs (49×4608, 0.9 MB) gain.
MAX_A_BYTES = 1 << 20
# Panels larger than L2 come from memory (or L3) at every inference: their group runs K
# in chunks with the next chunk prefetched (`passes/fusion.py` CHUNK_STREAMED_PANELS,
# `backends/cpu/prefetch.py` STREAM). So run, ResNet-18's 49×4608 @ 4608×512 (9.4 MB) with
# batch norm and ReLU took 2.3 ms, its weight evicted, against 3.2 as [K, N] with its rows
# prefetched and 2.4 in ONNX Runtime; `bench/ab.py tilecraft.passes.panel_weights MAX_BYTES
# --values 4194304,16777216`: resnet18 1.02x / 1.10x (1 / 2 threads). Beyond 16 MB: not
# measured.
MAX_BYTES = 16 << 20
ENABLED = True  # (off only to compare)


def panel_weights(module: ir.Module, params: list[torch.Tensor]) -> tuple[list[torch.Tensor], int]:
    """Every f32 `linalg.matmul` whose B is a bound weight [K, N] used once, of MIN_BYTES
    to MAX_BYTES, with N a multiple of PANEL, at least MIN_ROWS rows, an A of at most
    MAX_A_BYTES and a zero-filled accumulator, is rewritten as the batched matmul over
    B's panels (module docstring). Returns the new bound arguments and how many matmuls
    were rewritten."""
    if not ENABLED:
        return list(params), 0
    ctx = module.context
    block = entry_func(module).regions[0].blocks[0]
    params = list(params)
    done = 0
    for op, arg, (m, k, n) in weight_matmuls(module, len(params)):
        a, b, init = (op.operands[i] for i in range(3))
        if n % PANEL or not MIN_BYTES <= k * n * 4 <= MAX_BYTES or m < MIN_ROWS or m * k * 4 > MAX_A_BYTES:
            continue
        if ragged(m) and m % QUANTUM < MIN_ROWS:
            continue  # `split-ragged` would leave a one-row batched matmul (17 rows: 16 + 1)
        if not is_zero_fill(init):
            continue
        j = n // PANEL
        w = params[arg]
        params[arg] = w.reshape(k, j, PANEL).permute(1, 0, 2).contiguous()
        block.arguments[arg].set_type(ir.Type.parse(tensor_t([j, k, PANEL], "f32"), context=ctx))
        name = f"__tc_panels_{done}"
        a_t, b_t, t_t, c3_t, o_t = (
            tensor_t(s, "f32") for s in ([m, k], [j, k, PANEL], [j, m, PANEL], [m, j, PANEL], [m, n])
        )
        text = f"""func.func private @{name}(%a: {a_t}, %b: {b_t}) -> {o_t} {{
  %z = arith.constant 0.0 : f32
  %e = tensor.empty() : {t_t}
  %acc = linalg.fill ins(%z : f32) outs(%e : {t_t}) -> {t_t}
  %t = linalg.batch_matmul indexing_maps = [
      affine_map<(d0, d1, d2, d3) -> (d1, d3)>,
      affine_map<(d0, d1, d2, d3) -> (d0, d3, d2)>,
      affine_map<(d0, d1, d2, d3) -> (d0, d1, d2)>]
    ins(%a, %b : {a_t}, {b_t}) outs(%acc : {t_t}) -> {t_t}
  %e2 = tensor.empty() : {c3_t}
  %c3 = linalg.generic {{indexing_maps = [
      affine_map<(d0, d1, d2) -> (d0, d1, d2)>, affine_map<(d0, d1, d2) -> (d1, d0, d2)>],
      iterator_types = ["parallel", "parallel", "parallel"]}}
    ins(%t : {t_t}) outs(%e2 : {c3_t}) {{
  ^bb0(%x: f32, %y: f32):
    linalg.yield %x : f32
  }} -> {c3_t}
  %o = tensor.collapse_shape %c3 [[0], [1, 2]] : {c3_t} into {o_t}
  return %o : {o_t}
}}"""
        call_helper(module, op, text, name, [a, b])
        erase_if_dead(init.owner)
        done += 1
    if done:
        inline_helpers(module)
        absorb_epilogues(module)
    return params, done


def absorb_epilogues(module: ir.Module) -> int:
    """Restate the elementwise ops that read a panelled matmul's [M, N] result over
    (m, j, p), the first reading the panels through the transpose (`_absorb_epilogue`),
    down the chain while each result has one elementwise reader. Returns how many."""
    ctx = module.context
    block = entry_func(module).regions[0].blocks[0]
    absorbed = 0
    for collapse in [o.operation for o in block.operations if o.operation.name == "tensor.collapse_shape"]:
        src = owner_op(collapse.operands[0])
        if src is None or not _is_panel_transpose(src):
            continue
        while collapse is not None:
            with ir.Location.unknown(ctx):
                collapse = _absorb_epilogue(collapse, ctx)
            absorbed += collapse is not None
    return absorbed


def _is_panel_transpose(op: ir.Operation) -> bool:
    """`op` is the [J, M, P] → [M, J, P] copy `panel_weights` writes."""
    if op.name != "linalg.generic" or len(op.operands) != 2:
        return False
    maps = [str(ir.AffineMapAttr(m).value) for m in ir.ArrayAttr(op.attributes["indexing_maps"])]
    block = op.regions[0].blocks[0]
    body = list(block.operations)
    return maps == _TRANSPOSE_MAPS and len(body) == 1 and body[0].operands[0] == block.arguments[0]


_TRANSPOSE_MAPS = ["(d0, d1, d2) -> (d0, d1, d2)", "(d0, d1, d2) -> (d1, d0, d2)"]


def _absorb_epilogue(collapse: ir.Operation, ctx) -> ir.Operation | None:
    """The one elementwise op reading `collapse`'s [M, N] result (all loops parallel, its
    output and that read the identity) restated over [M, J, P]: the panels' transpose, if
    it is `collapse`'s source, folded into its read (T[j, m, p] at (m, j, p)), its other
    operands' N dims expanded to (J, P), its result collapsed back. Returns that collapse,
    or None if there is no such op."""
    uses = list(collapse.results[0].uses)
    if len(uses) != 1:
        return None
    op = getattr(uses[0].owner, "operation", uses[0].owner)
    if op.name != "linalg.generic" or len(op.results) != 1:
        return None
    if any("parallel" not in str(a) for a in ir.ArrayAttr(op.attributes["iterator_types"])):
        return None
    body = op.regions[0].blocks[0]
    if any(o.name == "linalg.index" for o in body.operations) or list(body.arguments[-1].uses):
        return None  # (an index, or its output's old value, would need restating too)
    maps = [ir.AffineMapAttr(a).value for a in ir.ArrayAttr(op.attributes["indexing_maps"])]
    identity2 = ir.AffineMap.get_identity(2, ctx)
    n_in = len(op.operands) - 1
    reads = [i for i in range(n_in) if op.operands[i] == collapse.results[0]]
    if maps[-1] != identity2 or len(reads) != 1 or maps[reads[0]] != identity2:
        return None
    if reassociation_of(collapse) != [[0], [1, 2]]:
        return None  # ([M·J, P]: a reshape into 32-wide heads, not the panels' [M, N])
    m, j, p = ir.RankedTensorType(collapse.operands[0].type).shape
    d = [ir.AffineDimExpr.get(i, ctx) for i in range(3)]
    src = owner_op(collapse.operands[0])
    transpose = src if src is not None and _is_panel_transpose(src) and len(list(src.results[0].uses)) == 1 else None
    plans = []  # per input: (map over (m, j, p), the expand of its N dim or None); all, before any rewrite
    for i in range(n_in):
        if i == reads[0]:
            plans.append((None, None))
            continue
        exprs, reassoc, shape = [], [], []
        v = op.operands[i]
        old_shape = list(ir.RankedTensorType(v.type).shape) if isinstance(v.type, ir.RankedTensorType) else []
        for k, e in enumerate(maps[i].results):
            e = e.maybe_downcast()
            if isinstance(e, ir.AffineConstantExpr) or (isinstance(e, ir.AffineDimExpr) and e.position == 0):
                exprs.append(d[0] if isinstance(e, ir.AffineDimExpr) else e)
                reassoc.append([len(shape)])
                shape.append(old_shape[k])
            elif isinstance(e, ir.AffineDimExpr) and e.position == 1:
                exprs += [d[1], d[2]]
                reassoc.append([len(shape), len(shape) + 1])
                shape += [j, p]
            else:
                return None  # (an index computed from a loop)
        plans.append((ir.AffineMap.get(3, 0, exprs, ctx), (reassoc, shape) if shape != old_shape else None))
    new_maps, operands = [], []
    with ir.InsertionPoint(op), op.location:
        for i, (amap, expand) in enumerate(plans):
            v = op.operands[i]
            if i == reads[0]:
                if transpose is not None:
                    operands.append(transpose.operands[0])
                    new_maps.append(ir.AffineMap.get(3, 0, [d[1], d[0], d[2]], ctx))
                else:
                    operands.append(collapse.operands[0])
                    new_maps.append(ir.AffineMap.get_identity(3, ctx))
                continue
            if expand is not None:
                reassoc, shape = expand
                elem = ir.RankedTensorType(v.type).element_type
                v = tensor.expand_shape(
                    ir.RankedTensorType.get(shape, elem), v, reassociation_attr(reassoc, ctx), [], shape
                )
            operands.append(v)
            new_maps.append(amap)
        out_t = ir.RankedTensorType(op.results[0].type)
        operands.append(tensor.empty([m, j, p], out_t.element_type))
        new = restated_generic(op, operands, new_maps, ir.RankedTensorType.get([m, j, p], out_t.element_type))
        back = tensor.collapse_shape(out_t, new.results[0], reassociation_attr([[0], [1, 2]], ctx))
    replace_op(op, back)
    if not list(collapse.results[0].uses):
        collapse.erase()
    if transpose is not None and not list(transpose.results[0].uses):
        replace_op(transpose)
    return back.owner


@dataclasses.dataclass(frozen=True)
class PanelWeightsPass(ModulePass):
    name: ClassVar[str] = "panel-weights"
    summary: ClassVar[str] = "large bound matmul weights stored as column panels, read by a batched matmul"

    def apply(self, module: ir.Module, weights: Weights) -> None:
        weights[:], _ = panel_weights(module, weights)


@dataclasses.dataclass(frozen=True)
class PanelEpiloguesPass(ModulePass):
    """`absorb_epilogues` again once the reshapes between a panelled matmul and its
    epilogue are gone (`sink-expand-shapes`: a convolution's NHWC batch norm and ReLU6)."""

    name: ClassVar[str] = "panel-epilogues"
    summary: ClassVar[str] = "elementwise ops after a panelled matmul read its panels through the transpose"

    def apply(self, module: ir.Module, weights: Weights) -> None:
        absorb_epilogues(module)
