"""The `pad-weights` pass: a bound matmul weight stored in the layout its kernel reads best.

On the passes floor; one of the canonical rewrites (`compiler/driver.py`), after the
convolutions became GEMMs. Reads a module and its bound weights; writes the module with
each rewritten matmul reading a padded weight (through a slice where needed) and the
padded tensor in the weight's place among the bound arguments.
"""

from __future__ import annotations

import dataclasses
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
    is_zero_fill,
    shape_of,
    tensor_t,
)
from tilecraft.dialects.opinfo import LANES
from tilecraft.passes.base import ModulePass, Weights

# --------------------------------------------------------------- weight columns padded
STRIDE_PERIOD = 1024  # bytes: a row stride that is a multiple of it maps rows onto few L1 sets


_PLAIN_MAPS = ("(d0, d1, d2) -> (d0, d2)", "(d0, d1, d2) -> (d2, d1)", "(d0, d1, d2) -> (d0, d1)")


def _plain(op: ir.Operation) -> bool:
    """The matmul reads A as [M, K] and B as [K, N] (its default indexing maps)."""
    if "indexing_maps" not in op.attributes:
        return True
    maps = [
        str(ir.AffineMapAttr(m).value).removeprefix("affine_map<").removesuffix(">")
        for m in ir.ArrayAttr(op.attributes["indexing_maps"])
    ]
    return tuple(maps) == _PLAIN_MAPS


def weight_matmuls(module: ir.Module, n_bound: int) -> list[tuple[ir.Operation, int, tuple[int, int, int]]]:
    """(op, B's argument number, (M, K, N)) of each f32 `linalg.matmul` of the entry
    function whose B is a bound weight that it alone reads, A and B read as [M, K] and
    [K, N] (its default maps)."""
    block = entry_func(module).regions[0].blocks[0]
    out = []
    for op in [o.operation for o in block.operations if o.operation.name == "linalg.matmul"]:
        a, b, init = (op.operands[i] for i in range(3))
        arg = bound_arg_number(b, n_bound)
        if arg is None or {element_type_of(a), element_type_of(b), element_type_of(init)} != {"f32"}:
            continue
        if not _plain(op):  # (a transposed or broadcast operand: its own layout)
            continue
        (m, k), (_, n) = shape_of(a), shape_of(b)
        out.append((op, arg, (m, k, n)))
    return out


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
    block = entry_func(module).regions[0].blocks[0]
    params = list(params)
    padded = 0
    for op, arg, (m, k, n) in weight_matmuls(module, len(params)):
        a, b, init = (op.operands[i] for i in range(3))
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


@dataclasses.dataclass(frozen=True)
class PadWeightsPass(ModulePass):
    name: ClassVar[str] = "pad-weights"
    summary: ClassVar[str] = "bound matmul weights padded to whole vectors and stored off 1 KB row strides"

    def apply(self, module: ir.Module, weights: Weights) -> None:
        weights[:], _ = pad_weights(module, weights)
