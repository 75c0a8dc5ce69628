"""Depthwise convolutions as sums of shifted slices, one elementwise kernel each.

On the passes floor; sits in the `im2col` stage (`compiler/driver.py`), beside the GEMM
rewrites. Reads a linalg-on-tensors module; writes it back with each eligible depthwise
convolution replaced by one `linalg.generic` (the bound weights stay as they are: each
tap's weights are a slice of the filter).

A `linalg.depthwise_conv_2d_nchw_chw` (f32, dilation 1) does not vectorize in this MLIR
(neither does its 1-D decomposition, `depthwise_conv_1d_ncw_cw`: "Attempted to vectorize,
but failed"), so it ran a scalar FMA per tap. Restated as

    out[n, c, y, x] = init[n, c, y, x] + Σ_ij x[n, c, y·sh + i, x·sw + j] · w[c, i, j]

with one input per tap (a strided `tensor.extract_slice` of the padded input, read through
the identity map) and one per tap's weights (a [C] slice of the filter, read through
(n, c, y, x) → c), every indexing map is a projected permutation: the op is an
all-parallel `linalg.generic` that the tiling pass vectorizes along the output width,
and that fusion chains with the batch norm and activation that follow like any other
elementwise op. A zero-filled accumulator is dropped (the first tap's product starts the
sum), and its fill with it.

The taps are summed in the convolution's own order (i, then j), onto the accumulator.

Only stride 1: a strided tap is a strided vector read, which gains nothing over the
scalar op and can lose badly (a stride-2 layer, 96 channels at 112² → 56², reads each
56-wide output row's taps as vectors of every other input pixel), so strided layers keep
the named op.

Restated this way, a depthwise layer and the batch norm and ReLU6 after it become one
vectorized kernel (MobileNet-V2's blocks); `bench/e2e.py` measures the models.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from torch_mlir import ir

from tilecraft.dialects.irutil import (
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
from tilecraft.passes.base import ModulePass, Weights

DEPTHWISE = "linalg.depthwise_conv_2d_nchw_chw"
MAX_TAPS = 25  # a 5×5 window: 50 operands; larger windows keep the named op


def _why_not(op: ir.Operation) -> str:
    if {element_type_of(op.operands[i]) for i in range(3)} != {"f32"}:
        return "not f32"
    if int_list_attr(op, "dilations") != [1, 1]:
        return "dilated"
    if int_list_attr(op, "strides") != [1, 1]:
        return "strided"
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


def rewrite(module: ir.Module) -> int:
    """Restate every eligible depthwise convolution as one elementwise op over shifted
    slices, in place; returns how many were rewritten."""
    body = entry_func(module).regions[0].blocks[0]
    ops = [op.operation for op in body.operations if op.operation.name == DEPTHWISE]
    done = 0
    for k, op in enumerate(ops):
        if _why_not(op):
            continue
        x, w, init = (op.operands[i] for i in range(3))
        zero = is_zero_fill(init)
        name = f"__tc_depthwise_{k}"
        text = _helper(shape_of(x), shape_of(w), shape_of(init), zero, name)  # (stride 1: `_why_not`)
        call_helper(module, op, text, name, [x, w] + ([] if zero else [init]))
        erase_if_dead(init.owner)
        done += 1
    if done:
        with module.context:
            inline_helpers(module)
    return done


@dataclasses.dataclass(frozen=True)
class DepthwiseTapsPass(ModulePass):
    name: ClassVar[str] = "depthwise-taps"
    summary: ClassVar[str] = "stride-1 depthwise convolutions as one elementwise op over shifted slices"

    def apply(self, module: ir.Module, weights: Weights) -> None:
        rewrite(module)
