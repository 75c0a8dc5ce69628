"""IR utilities every floor above uses: walkers, op-level helpers, helper-function
builders and the runners of textual pipelines and transform scripts.

The ground floor (imports nothing of ours). Reads and rewrites upstream MLIR modules
(`torch_mlir.ir`); a failing pipeline or transform script raises `PipelineError`, which
saves the input IR and names the `tilecraft-opt` command that reproduces the failure.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from collections.abc import Sequence

from torch_mlir import ir, passmanager
from torch_mlir.dialects import func
from torch_mlir.dialects.transform import interpreter

ANY = "!transform.any_op"


# ----------------------------------------------------------------------------- walking
def walk_ops(op: ir.Operation, fn) -> None:
    """Call `fn` on every op nested in `op`, not descending into linalg ops' bodies."""
    for region in op.regions:
        for block in region.blocks:
            for child in block.operations:
                child = child.operation
                fn(child)
                if not child.name.startswith("linalg."):
                    walk_ops(child, fn)


def ops_named(op: ir.Operation, name: str) -> list[ir.Operation]:
    """Every op called `name` nested in `op` (not inside linalg ops' bodies), in order."""
    found: list[ir.Operation] = []
    walk_ops(op, lambda child: found.append(child) if child.name == name else None)
    return found


def owner_op(v: ir.Value) -> ir.Operation | None:
    """The op that defines `v`, or None for a block argument."""
    o = getattr(v.owner, "operation", v.owner)
    return o if isinstance(o, ir.Operation) else None


def constant_int(v: ir.Value) -> int | None:
    """The integer an `arith.constant` makes `v`, or None."""
    op = owner_op(v)
    if op is None or op.name != "arith.constant":
        return None
    return ir.IntegerAttr(op.attributes["value"]).value


def static_loop(loop: ir.Operation) -> tuple[int, int, int] | None:
    """An `scf.for`'s (lower bound, step, trip count) when all are constants, else None."""
    lb, ub, step = (constant_int(v) for v in list(loop.operands)[:3])
    if lb is None or ub is None or step is None or step <= 0:
        return None
    return lb, step, max(0, -(-(ub - lb) // step))


def pad_value(pad: ir.Operation) -> float | None:
    """The constant a `tensor.pad` pads with, or None if it is not a float constant."""
    block = pad.regions[0].blocks[0]
    o = owner_op(list(block.operations)[-1].operands[0])
    if o is None or o.name != "arith.constant":
        return None
    return ir.FloatAttr(o.attributes["value"]).value


def entry_func(module: ir.Module) -> ir.Operation:
    """The module's first `func.func` (the model's entry point)."""
    return next(op.operation for op in module.body.operations if op.operation.name == "func.func")


def kernel_ops(module: ir.Module):
    """The top-level ops of every defined `func.func` of the module (after the vector
    stage, each a kernel: a loop nest over buffers), the functions in order."""
    for fn in module.body.operations:
        fn = fn.operation
        if fn.name == "func.func" and len(fn.regions[0].blocks):
            for op in fn.regions[0].blocks[0].operations:
                yield op.operation


def public_funcs(module: ir.Module):
    """The module's public functions (entry points), in order."""
    for op in module.body.operations:
        if op.operation.name == "func.func" and "sym_visibility" not in op.attributes:
            yield op.operation


def captured(op: ir.Operation) -> list[ir.Value]:
    """Values used inside the op's regions but defined outside it."""
    inside: set = set()
    uses: list[ir.Value] = []

    def walk(o: ir.Operation) -> None:
        for region in o.regions:
            for block in region.blocks:
                for arg in block.arguments:
                    inside.add(arg)
                for child in block.operations:
                    child = child.operation
                    for r in child.results:
                        inside.add(r)
                    uses.extend(child.operands)
                    walk(child)

    walk(op)
    seen, out = set(), []
    for v in uses:
        if v not in inside and v not in seen:
            seen.add(v)
            out.append(v)
    return out


def print_op(op: ir.Operation, state: ir.AsmState) -> str:
    """The op's text, with SSA names from `state` (canonical across prints)."""
    buf = io.StringIO()
    op.print(state, file=buf)
    return buf.getvalue()


def tensor_t(shape: Sequence[int], elem: str) -> str:
    return f"tensor<{'x'.join(map(str, shape))}x{elem}>"


# ------------------------------------------------------------------- erasing, replacing
def erase_if_dead(op) -> None:
    """Erase a `linalg.fill` or `tensor.empty` whose results are unused (a replaced
    contraction's fill), and then its operands' producers that became dead."""
    op = getattr(op, "operation", op)
    if not isinstance(op, ir.Operation) or op.name not in ("linalg.fill", "tensor.empty"):
        return
    if any(len(list(r.uses)) for r in op.results):
        return
    producers = [v.owner for v in op.operands]
    op.erase()
    for p in producers:
        erase_if_dead(p)


def replace_op(op: ir.Operation, value: ir.Value | None = None) -> None:
    """Erase a one-result structured op (its uses moved to `value` first), and its init
    when that was a `tensor.empty` nothing else uses."""
    init = op.operands[len(op.operands) - 1]
    if value is not None:
        op.results[0].replace_all_uses_with(value)
    op.erase()
    erase_if_dead(init.owner)


# ------------------------------------------------------------------ helper functions
def symbol_name(op) -> str | None:
    """The op's `sym_name`, or None if it has none."""
    attrs = op.operation.attributes
    return ir.StringAttr(attrs["sym_name"]).value if "sym_name" in attrs else None


def append_helper(module: ir.Module, text: str, keep=None) -> None:
    """Parse `text` (top-level ops: functions, globals) and move its ops to the end of the
    module, those `keep(op)` accepts where it is given. The parsed module stays alive until
    every op has moved (they are freed with it before)."""
    helper = ir.Module.parse(text, context=module.context)
    for hop in list(helper.body.operations):
        if keep is None or keep(hop.operation):
            module.body.append(hop.operation)


def call_helper(module: ir.Module, op: ir.Operation, text: str, name: str, operands: Sequence[ir.Value]) -> ir.Value:
    """Replace `op` (one result) by a call to `name`, the private function `text` defines
    (appended to the module; `inline_helpers` inlines it). Returns the call's result."""
    ctx = module.context
    append_helper(module, text)
    with ir.InsertionPoint(op), op.location:
        call = func.CallOp([op.results[0].type], ir.FlatSymbolRefAttr.get(name, context=ctx), list(operands))
    op.results[0].replace_all_uses_with(call.results[0])
    op.erase()
    return call.results[0]


def inline_helpers(module: ir.Module) -> None:
    """The function's type from its (re-typed) arguments; the helper calls inlined."""
    ctx = module.context
    fn = entry_func(module)
    ftype = ir.FunctionType(ir.TypeAttr(fn.attributes["function_type"]).value)
    inputs = [a.type for a in fn.regions[0].blocks[0].arguments]
    fn.attributes["function_type"] = ir.TypeAttr.get(ir.FunctionType.get(inputs, ftype.results, context=ctx))
    # inline without the default canonicalization (it rewrites a marked fill behind a reshape)
    inline = "builtin.module(inline{default-pipeline=}, symbol-dce)"
    passmanager.PassManager.parse(inline, context=ctx).run(module.operation)


# -------------------------------------------------------------- pipelines and scripts
class PipelineError(RuntimeError):
    """A stage failed; `reproducer` is the saved input IR, `command` reproduces it."""

    def __init__(self, message: str, *, stage: str, reproducer: str | None = None, command: str | None = None):
        super().__init__(message)
        self.stage, self.reproducer, self.command = stage, reproducer, command


def peel_parent_loop(handle: str, nth: int, tag: str) -> str:
    """Transform-script lines that peel the `nth` scf.for around the op of `handle`
    (`transform.loop.peel`: the last, partial iteration a loop of its own), in a nested
    sequence so that the peel's result handles end with it (canonicalization after may
    erase the remainder loop without a handle left dangling)."""
    loop = '!transform.op<"scf.for">'
    return (
        f"    transform.sequence %root : {ANY} failures(propagate) {{\n    ^bb0(%pr{tag}: {ANY}):\n"
        f'      %pl{tag} = transform.get_parent_op {handle} {{op_name = "scf.for", nth_parent = {nth}}}'
        f" : ({ANY}) -> {loop}\n"
        f"      %pm{tag}, %pp{tag} = transform.loop.peel %pl{tag} : ({loop}) -> ({ANY}, {ANY})\n    }}"
    )


def named_sequence(body: str, *, consumed: bool) -> str:
    """A transform module whose `@__transform_main` runs `body` on `%root`."""
    mode = "transform.consumed" if consumed else "transform.readonly"
    return (
        "module attributes {transform.with_named_sequence} {\n"
        f"  transform.named_sequence @__transform_main(%root: {ANY} {{{mode}}}) {{\n"
        f"{body}\n    transform.yield\n  }}\n}}\n"
    )


def run_pipeline(
    module: ir.Module, pipeline: str, *, stage: str, reproduce: str | None = None, before: Snapshot | None = None
) -> ir.Module:
    """Run a textual pass pipeline in place; on failure save the input and name the command
    (`reproduce`: the `tilecraft-opt -p` pipeline that reruns the stage, default the
    upstream pipeline itself; `before`: the IR to save instead, the stage's input when the
    pipeline is one step of a pass)."""
    before = before if before is not None else snapshot(module)
    try:
        passmanager.PassManager.parse(pipeline, context=module.context).run(module.operation)
    except Exception as exc:  # MLIRError: the diagnostics are in the message
        raise stage_error(exc, stage, before, reproduce or pipeline) from None
    return module


def apply_transform(
    module: ir.Module, script: str, *, stage: str, reproduce: str | None = None, before: Snapshot | None = None
) -> ir.Module:
    """Parse a transform script in the module's context and interpret it on the module.
    `reproduce`: the `tilecraft-opt -p` pipeline that reruns the failing pass; `before`: the
    IR to save instead of the module as it is (the pass's input)."""
    before = before if before is not None else snapshot(module)
    try:
        tmod = ir.Module.parse(script, context=module.context)
        entry = next(op for op in tmod.body.operations if "sym_name" in op.attributes)
        interpreter.apply_named_sequence(module.operation, entry, tmod)
    except Exception as exc:
        raise stage_error(exc, stage, before, reproduce or stage) from None
    return module


def wants_reproducer() -> bool:
    return os.environ.get("TILECRAFT_NO_REPRODUCER") != "1"


class Snapshot:
    """A module as it was, for a failing pass's reproducer: a copy made in MLIR (resnet18's
    tiled module: 3 ms), printed only if the pass fails (66 ms; a compile printed its
    module before each of its two dozen pipelines and transform scripts)."""

    def __init__(self, module: ir.Module):
        self.copy = module.operation.clone(ip=False)  # (detached: not at an active insertion point)

    def __str__(self) -> str:
        return str(self.copy)


def snapshot(module: ir.Module) -> Snapshot | None:
    """The module's `Snapshot`, or None where no reproducer is wanted."""
    return Snapshot(module) if wants_reproducer() else None


def stage_error(exc: Exception, stage: str, before: Snapshot | str | None, pipeline: str) -> PipelineError:
    """A `PipelineError` whose reproducer is `before` saved to a file and whose command runs
    `pipeline` on it with `tilecraft-opt`."""
    first = " ".join(str(exc).split())
    path, command = None, None
    if before is not None:
        fd, path = tempfile.mkstemp(prefix=f"tilecraft-{stage}-", suffix=".mlir")
        with os.fdopen(fd, "w") as f:
            f.write(str(before))
        command = f"tilecraft-opt {path} -p '{pipeline}'"
    return PipelineError(f"stage '{stage}' failed: {first[:400]}", stage=stage, reproducer=path, command=command)


# ----------------------------------------------------------------------- values, attrs
def shape_of(v: ir.Value) -> tuple[int, ...]:
    return tuple(ir.ShapedType(v.type).shape)


def element_type_of(v: ir.Value) -> str:
    return str(ir.ShapedType(v.type).element_type)


def bound_arg_number(v: ir.Value, n_bound: int) -> int | None:
    """The argument number of `v` if it is one of the first `n_bound` function arguments
    (the bound weights) and one op alone uses it."""
    if not isinstance(v.owner, ir.Block):
        return None
    arg = ir.BlockArgument(v)
    if arg.arg_number >= n_bound or len(list(v.uses)) != 1:
        return None
    return arg.arg_number


def int_list_attr(op: ir.Operation, name: str) -> list[int]:
    """A dense integer attribute (strides, dilations) as a list."""
    return [int(x) for x in ir.DenseIntElementsAttr(op.attributes[name])]


def is_zero_fill(v: ir.Value) -> bool:
    """`v` is a `linalg.fill` of the constant 0."""
    owner = owner_op(v)
    if owner is None or owner.name != "linalg.fill":
        return False
    cst = owner_op(owner.operands[0])
    if cst is None or cst.name != "arith.constant":
        return False
    value = cst.attributes["value"]
    try:
        return ir.FloatAttr(value).value == 0.0
    except ValueError:
        return ir.IntegerAttr(value).value == 0


def reassociation_of(op: ir.Operation) -> list[list[int]]:
    """A reshape's `reassociation` as lists of dims."""
    return [[ir.IntegerAttr(d).value for d in group] for group in ir.ArrayAttr(op.attributes["reassociation"])]


def restated_generic(op: ir.Operation, operands: Sequence[ir.Value], in_maps, result_type: ir.Type) -> ir.Operation:
    """A copy of the all-parallel elementwise `op` (its body as it is) over new loops:
    `operands` (inputs, then the init), the inputs' maps `in_maps`, the identity for its
    output, every loop parallel, and `result_type`. Inserted at the current insertion point."""
    ctx = op.context
    rank = len(ir.RankedTensorType(result_type).shape)
    new = op.clone()
    for i, v in enumerate(operands):
        new.operands[i] = v
    new.attributes["indexing_maps"] = ir.ArrayAttr.get(
        [ir.AffineMapAttr.get(m) for m in in_maps] + [ir.AffineMapAttr.get(ir.AffineMap.get_identity(rank, ctx))]
    )
    new.attributes["iterator_types"] = ir.ArrayAttr.get(
        [ir.Attribute.parse("#linalg.iterator_type<parallel>", ctx)] * rank
    )
    new.results[0].set_type(result_type)
    return new


def reassociation_attr(groups: Sequence[Sequence[int]], ctx) -> ir.ArrayAttr:
    """A reshape's `reassociation` attribute from its groups of dims."""
    i64 = ir.IntegerType.get_signless(64, ctx)
    return ir.ArrayAttr.get([ir.ArrayAttr.get([ir.IntegerAttr.get(i64, d) for d in g]) for g in groups])


# ------------------------------------------------------------------------ output files
def replace_file(tmp: str, path: str) -> None:
    """Put the finished temporary file `tmp` in `path`'s place: renamed over it (atomic),
    unless `path` is a device, pipe or socket (`-o /dev/null`, a FIFO): its bytes are then
    written into it and `tmp` removed. Renamed over /dev/null, a root process replaced the
    device with a regular file."""
    if os.path.exists(path) and not os.path.isfile(path) and not os.path.isdir(path):
        try:
            with open(tmp, "rb") as src, open(path, "wb") as dst:
                shutil.copyfileobj(src, dst)
        finally:
            os.unlink(tmp)
        return
    os.replace(tmp, path)
