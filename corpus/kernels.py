"""Kernels: a model split into standalone functions, one per linalg op, with a canonical key.

On the corpus floor; collection, the cost models, search and `tilecraft tune` see a module
kernel by kernel through it. Reads a linalg-on-tensors module (from the frontend, the
workload generator, or a `.mlir` file); writes nothing. Each structured op becomes a
module holding `func.func @kernel` whose arguments are the op's operands (inputs and init)
and whose results are the op's results; constants the op's body captures from above are
copied in. The kernel key is the tiling pass's structural hash (`OpInfo.key`): independent
of SSA names and weight values, so the same layer in two models is one workload.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Sequence

from torch_mlir import ir

from tilecraft.backends.cpu import schedule as tiling
from tilecraft.dialects.irutil import captured, print_op

KERNEL_FUNC = "kernel"
ELEMENT_BYTES = {"f64": 8, "i64": 8, "f32": 4, "i32": 4, "f16": 2, "bf16": 2, "i16": 2, "i8": 1, "i1": 1}


@dataclasses.dataclass(frozen=True)
class Kernel:
    key: str
    kind: str
    name: str  # the linalg op, e.g. linalg.matmul
    extents: tuple[int, ...]
    dtypes: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    flops: int
    mlir: str  # a module with func.func @kernel

    @property
    def element_bytes(self) -> list[int]:
        """Bytes per element of each operand."""
        return [ELEMENT_BYTES.get(d, 4) for d in self.dtypes]

    @property
    def bytes_moved(self) -> int:
        """Operand bytes touched once (a lower bound on memory traffic)."""
        return sum(math.prod(shape) * b for shape, b in zip(self.shapes, self.element_bytes))


@functools.lru_cache(maxsize=4096)
def _token(name: str) -> re.Pattern:
    return re.compile(re.escape(name) + r"(?![\w.$-])")


def extract(module: ir.Module, infos: Sequence[tiling.OpInfo] | None = None) -> list[Kernel]:
    """One kernel per distinct structured op of the module (first occurrence kept).
    `infos`: what `tag_ops` just gave for the module, unchanged since (else tagged here)."""
    infos = {info.op_id: info for info in (tiling.tag_ops(module) if infos is None else infos)}
    state = ir.AsmState(module.operation)
    kernels: dict[str, Kernel] = {}

    def visit(op: ir.Operation) -> None:
        attr = op.attributes[tiling.OP_ID] if tiling.OP_ID in op.attributes else None
        if attr is None:
            return
        info = infos[ir.IntegerAttr(attr).value]
        if info.key in kernels or not op.results:
            return
        kernels[info.key] = _outline(op, info, state)

    tiling.walk_ops(module.operation, visit)
    return list(kernels.values())


def _outline(op: ir.Operation, info: tiling.OpInfo, state: ir.AsmState) -> Kernel:
    """The op as `func.func @kernel`: operands, then values its body reads from above
    (a gathered table, say), become arguments; captured constants are copied in."""
    tag = op.attributes[tiling.OP_ID]
    del op.attributes[tiling.OP_ID]
    try:
        text = print_op(op, state)
        consts, extra = [], []
        for v in captured(op):
            owner = getattr(v.owner, "operation", v.owner)
            if isinstance(owner, ir.Operation) and owner.name == "arith.constant":
                consts.append(print_op(owner, state).strip())
            else:
                extra.append(v)
    finally:
        op.attributes[tiling.OP_ID] = tag
    args = []
    for v in [*op.operands, *extra]:
        owner = getattr(v.owner, "operation", v.owner)
        if isinstance(owner, ir.Operation) and owner.name == "arith.constant":
            consts.append(print_op(owner, state).strip())  # a scalar fill value, say
            continue
        text = _token(v.get_name(state)).sub(f"%kernel_arg{len(args)}", text)
        args.append(f"%kernel_arg{len(args)}: {v.type}")
    results = [r.get_name(state) for r in op.results]
    rtypes = [str(r.type) for r in op.results]
    consts = list(dict.fromkeys(consts))
    body = "\n".join("    " + line for line in [*consts, *text.strip().splitlines()])
    mlir = (
        f"func.func @{KERNEL_FUNC}({', '.join(args)}) -> ({', '.join(rtypes)}) {{\n"
        f"{body}\n    func.return {', '.join(results)} : {', '.join(rtypes)}\n}}\n"
    )
    return Kernel(info.key, info.kind, info.name, info.extents, info.dtypes, info.shapes, info.flops, mlir)


def infos_of(kernel_text: str, context: ir.Context) -> tiling.OpInfo:
    """Parse a kernel module and describe its single op."""
    module = ir.Module.parse(kernel_text, context=context)
    infos = tiling.tag_ops(module)
    if len(infos) != 1:
        raise ValueError(f"a kernel holds exactly one structured op, found {len(infos)}")
    return infos[0]
