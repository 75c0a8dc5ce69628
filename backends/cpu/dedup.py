"""Kernels compiled once: structurally identical kernels of an entry function share one function.

On the backends floor; runs at the start of the CPU backend's LLVM stage
(`lowering.prepare_llvm`), on the vector stage's output, before the two-core split.

A model repeats itself: ResNet-18's residual blocks, MobileNet-V2's inverted residuals
within a stage and BERT's layers become the same loops over buffers of the same types,
reading different weights. After the vector stage each kernel is one top-level op of the
entry function (a loop nest over memrefs), and LLVM compiled every copy anew: of the
LLVM code (`split.weight`) of ResNet-18 and MobileNet-V2, a third is such copies; of
bert_mini, three quarters. Here each set of identical kernels moves into one private
function, internal and never inlined (the values it reads from outside become its
arguments, the constants it reads are copied in) and every copy becomes a call of it.
Measured: resnet18's LLVM stage and JIT on one core 3.76-3.97 → 2.8-3.05 s
(docs/measurements.md, thirteenth session).

Identical means the same op text with every SSA name renumbered in order of appearance
(the same ops, types, attributes and shape of uses), and the same pattern of the values
read from outside: per value in order of first use, a passed one's type or a constant's
value and type (a loop bound stays a constant in the function: LLVM unrolls and folds it
as before; a constant and a passed value in the same place are two kernels). A kernel
whose results are read later is left inline, and so is one lighter than `MIN_WEIGHT`.
"""

from __future__ import annotations

import hashlib
import re

from torch_mlir import ir
from torch_mlir.dialects import func

from tilecraft.backends.cpu import split
from tilecraft.dialects import islands
from tilecraft.dialects.irutil import symbol_name

ENABLED = True  # (off only to compare)
PREFIX = "__tc_kernel"
# A kernel lighter than this (`split.weight` units) stays inline.
MIN_WEIGHT = 150

_NAME = re.compile(r"%[\w$.-]+")
_OP_ID = re.compile(r"tc\.op_id = \d+ : i64(, )?")


def _texts(fn: ir.Operation) -> list[str] | None:
    """The text of each top-level op of `fn` (the return included), from one print of the
    whole function (printing ops one by one cost 1 ms each: each numbers the function);
    None where the text does not split into as many ops."""
    lines = fn.get_asm(assume_verified=True).split("\n")[1:-1]  # (not the signature and its brace)
    chunks: list[list[str]] = []
    for line in lines:
        if line.startswith("  ") and not line.startswith(("   ", "  }", "  ^")):
            # an op at the body's indent (`  }`: a region's end; `  ^bb0(...)`: a block of a
            # region, as a `linalg.generic` prints its body's; both its op's)
            chunks.append([line])
        elif chunks:
            chunks[-1].append(line)
        else:
            return None
    if len(chunks) != len(list(fn.regions[0].blocks[0].operations)):
        return None
    return ["\n".join(c) for c in chunks]


def _structure(text: str) -> str:
    """An op's text with its SSA names numbered in order of appearance, op ids left out."""
    names: dict[str, str] = {}
    text = _NAME.sub(lambda m: names.setdefault(m.group(0), f"%{len(names)}"), _OP_ID.sub("", text))
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def _outside(op: ir.Operation):
    """The values `op` reads from outside itself, in order of first use (the kernel's
    arguments), the constants among them (copied in), every use of either (op, operand
    number, value key), and their pattern: per value in order of first use, a passed
    one's type or a constant's value and type. Two kernels of the same text are one
    kernel only with the same pattern: the text numbers an outside value's name, whether
    a constant or a passed value stands there."""
    pattern: list[str] = []
    inputs: dict[int, ir.Value] = {}
    consts: dict[int, ir.Operation] = {}
    uses: list[tuple[ir.Operation, int, int]] = []
    inside = islands.nested([op])

    def operands(o):
        o = o.operation
        for i, v in enumerate(o.operands):
            if islands.defined_inside(v, inside):
                continue
            k = islands.key(v)
            uses.append((o, i, k))
            if k in inputs or k in consts:
                continue
            if islands.copied_in(v, split.CLONED):
                c = v.owner.operation
                consts[k] = c
                # (an attribute's text, not the op's: printing a top-level op numbers the function)
                pattern.append(f"{c.name} {c.attributes['value'] if 'value' in c.attributes else ''} {v.type}")
            else:
                inputs[k] = v
                pattern.append(f"arg {v.type}")
        return ir.WalkResult.ADVANCE

    op.walk(operands, ir.WalkOrder.PRE_ORDER)
    return list(inputs.values()), list(consts.values()), uses, "; ".join(pattern)


def dedup_kernels(module: ir.Module, fn: ir.Operation) -> int:
    """Share one function among each set of identical kernels of `fn` (see the module
    docstring); returns how many kernels became calls of another's function."""
    if not ENABLED:
        return 0
    body = fn.regions[0].blocks[0]
    ops = [o.operation for o in body.operations]
    for o in ops:
        if o.name == "scf.for":
            split.forward_buffers(o)  # (its memref results: the buffer it wrote, read as that)
    texts = _texts(fn)
    if texts is None:
        return 0
    groups: dict[str, list[ir.Operation]] = {}
    weights: dict[str, float] = {}
    for o, text in zip(ops[:-1], texts):
        if o.name in split.SHARED or not len(o.regions) or any(len(list(r.uses)) for r in o.results):
            continue
        k = _structure(text)
        if k not in weights:
            weights[k] = split.weight(o)
        if weights[k] >= MIN_WEIGHT:
            groups.setdefault(k, []).append(o)
    names = {symbol_name(o) for o in module.body.operations} - {None}
    ctx = module.context
    shared = 0
    for k, members in groups.items():
        if len(members) < 2:
            continue
        outside = [_outside(o) for o in members]
        by_pattern: dict[str, list[int]] = {}  # (the same text, other outside values: another kernel)
        for i, found in enumerate(outside):
            by_pattern.setdefault(found[3], []).append(i)
        for same in by_pattern.values():
            if len(same) < 2:
                continue
            name = f"{PREFIX}{len(names)}"
            while name in names:
                name += "_"
            names.add(name)
            calls = [_define(fn, members[same[0]], outside[same[0]], name)]
            for i in same[1:]:
                op, inputs = members[i], outside[i][0]
                with ctx, op.location, ir.InsertionPoint(op):
                    calls.append(func.CallOp([], ir.FlatSymbolRefAttr.get(name), inputs).operation)
                op.erase()
            with ctx:
                for call in calls:  # (read by `split.plan`: a half compiles each kernel once)
                    call.attributes[split.KERNEL] = ir.StringAttr.get(name)
                    call.attributes[split.KERNEL_WEIGHT] = ir.FloatAttr.get_f64(weights[k])
            shared += len(calls) - 1
    return shared


def _define(fn: ir.Operation, op: ir.Operation, outside, name: str) -> ir.Operation:
    """Move `op` into a new private function `name` (its outside values its arguments, its
    constants copied in); returns the call that takes its place."""
    inputs, consts, uses, _ = outside
    ctx = fn.context
    with ctx, op.location:
        ftype = ir.FunctionType.get([v.type for v in inputs], [])
        with ir.InsertionPoint(fn):
            kernel = func.FuncOp(name, ftype, visibility="private")
        # internal (no JIT wrapper `_mlir_<name>`), never inlined back into its callers
        kernel.operation.attributes["llvm.linkage"] = ir.Attribute.parse("#llvm.linkage<internal>")
        kernel.operation.attributes["llvm.passthrough"] = ir.ArrayAttr.get([ir.StringAttr.get("noinline")])
        block = kernel.add_entry_block()
        with ir.InsertionPoint(block):
            ret = func.ReturnOp([]).operation
        with ir.InsertionPoint(op):
            call = func.CallOp([], ir.FlatSymbolRefAttr.get(name), inputs).operation
        new = {islands.key(v): a for v, a in zip(inputs, block.arguments)}
        for c in consts:
            new[islands.key(c.results[0])] = c.clone(ir.InsertionPoint(ret)).results[0]
        op.move_before(ret)
    for user, i, k in uses:
        user.operands[i] = new[k]
    return call
