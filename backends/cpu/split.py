"""A large model's LLVM lowering and machine code, made on two cores at once.

On the backends floor; used by the driver's `jit` and `so` paths (`lowering.ParallelJit`). LLVM
compiles a module on one thread, and a model arrives as one `forward` function (every
kernel inlined): MobileNet-V2's LLVM stage and JIT took 2.4 + 5.3 s on one core of two.
Here, after the vector stage, the second half of `forward`'s top-level ops moves into a
public function of a module of its own, and a forked child process lowers that module to
LLVM and machine code while this process does the rest; both objects are linked into one
shared library. The halves are cut by `weight`: the time LLVM takes for each op (a fitted
cost per op kind), with the loops LLVM unrolls fully counted once per iteration and the
convolution windows left as scalar loops counted by their size. Measured per kernel (each
compiled alone), MobileNet-V2's halves cost 4.0 and 4.6 s, resnet18's 3.8 and 2.9 s.
A kernel `dedup` shared among identical copies is a call of its function: each half
compiles a copy of the functions it calls, so `plan` counts each once per half.

Values the two halves share stay in `forward` and are passed in: buffers (`memref.alloc`
and views of them, made in `forward` before the call) and constants (copied in). A half
whose computed value the other reads (a scalar a kernel loads) is not split: `plan` says
None and the module is compiled whole, as is a small one.
"""

from __future__ import annotations

import math
import os

from torch_mlir import ir, passmanager

from tilecraft.backends.cpu import unroll
from tilecraft.dialects import islands
from tilecraft.dialects.irutil import static_loop

# Ops whose results the halves may share: they stay in `forward` (made before the call:
# buffers and views, no data computed), their results passed as arguments.
SHARED = (
    "memref.alloc",
    "memref.alloca",
    "memref.subview",
    "memref.expand_shape",
    "memref.collapse_shape",
    "memref.reinterpret_cast",
    "memref.cast",
    "memref.dim",
    "memref.get_global",
    "memref.view",
    "arith.constant",
    "ub.poison",
)
# Ops without operands copied into the half that reads them (a loop bound stays a constant).
CLONED = ("arith.constant", "ub.poison")
# The first half's share of the weight (this process's: the child first parses its half
# and lowers it on a single-threaded context; resnet18: 0.3-0.4 s waited for it at 0.55).
FIRST = 0.6
# Below this weight a module compiles whole: forking and linking cost more than they save.
MIN_WEIGHT = 15000


# LLVM-dialect ops each vector-stage op becomes, fitted (non-negative least squares) on 701
# kernels of five zoo models at 1 and 2 threads, each lowered alone (R² 0.98; a plain op
# count: 0.68). Kinds the fit gave nothing are counted through the ones it kept (a loop's
# cost is on its `scf.yield`); a kind it did not see counts the mean, 4.
OP_WEIGHTS = {
    "vector.store": 13,
    "memref.subview": 36,
    "vector.load": 7,
    "vector.insert": 8.5,
    "scf.yield": 11,
    "vector.broadcast": 3,
    "arith.mulf": 14,
    "math.fma": 29,
    "arith.cmpf": 19,
    "vector.insert_strided_slice": 16,
    "vector.extract_strided_slice": 2,
    **dict.fromkeys(("vector.extract", "affine.apply", "scf.for", "vector.fma", "arith.addf", "arith.select"), 0),
    **dict.fromkeys(("scf.forall", "scf.forall.in_parallel", "arith.subf", "arith.maximumf", "linalg.yield"), 0),
}
UNSEEN = 4
# LLVM's seconds per vector-stage op, in units of 25 µs, fitted (non-negative least
# squares, with a per-module constant left out here) on 328 kernels of four zoo models
# each lowered and compiled alone on the AVX2 host (R² 0.98; the code-size weights above
# 0.48, since copies stopped unrolling and FMAs and broadcasts replaced the shuffles).
# A loop's cost is its body's; a kind the fit gave nothing counts nothing; an unseen one 4.
COMPILE_WEIGHTS = {
    "vector.insert_strided_slice": 509,
    "arith.select": 90,
    "arith.cmpi": 89,
    "vector.extract_strided_slice": 62,
    "math.fma": 54,
    "ub.poison": 48,
    "memref.subview": 30,
    "vector.store": 23,
    "arith.mulf": 21,
    "arith.maximumf": 18,
    "vector.broadcast": 16,
    "vector.extract": 13,
    "vector.fma": 11,
    "arith.constant": 5,
    "memref.prefetch": 4,
    "vector.load": 3,
    **dict.fromkeys(("affine.apply", "arith.addf", "arith.addi", "arith.subf", "arith.muli", "arith.cmpf"), 0),
    **dict.fromkeys(("arith.minimumf", "arith.divf", "arith.index_cast", "vector.insert", "vector.shuffle"), 0),
    **dict.fromkeys(("scf.for", "scf.yield", "scf.forall", "scf.forall.in_parallel", "linalg.yield"), 0),
    **dict.fromkeys(("vector.reduction", "memref.load", "func.return"), 0),
}
# A call of a kernel `dedup` shared: the kernel's name and weight (a half compiles each
# kernel it calls once).
KERNEL, KERNEL_WEIGHT = "tc.kernel", "tc.kernel_weight"


def weight(op: ir.Operation) -> float:
    """The seconds LLVM spends on `op` and the ops nested in it, in `COMPILE_WEIGHTS`
    units (what `plan` balances)."""
    return _measure(op)[1]


def _measure(op: ir.Operation) -> tuple[float, float]:
    """(size, cost): the LLVM code `op` becomes (`OP_WEIGHTS`: what LLVM unrolls fully
    depends on it) and the time LLVM takes for it (`COMPILE_WEIGHTS`), its loops LLVM
    unrolls counted once per iteration."""
    o = op.operation
    if o.name == "func.call" and KERNEL_WEIGHT in o.attributes:  # (a shared kernel: `dedup`)
        w = ir.FloatAttr(o.attributes[KERNEL_WEIGHT]).value
        return w, w
    size, cost = OP_WEIGHTS.get(o.name, UNSEEN), COMPILE_WEIGHTS.get(o.name, UNSEEN)
    if o.name.startswith(("linalg.depthwise_conv", "linalg.conv", "linalg.pooling")):
        size = cost = _scalar_loops(o)
    for region in o.regions:
        for block in region.blocks:
            for inner in block.operations:
                s, c = _measure(inner)
                size, cost = size + s, cost + c
    if o.name == "scf.for" and unroll.ANNOTATION not in o.attributes:  # (a loop LLVM keeps: `unroll.py`)
        trips = _trip_count(o)
        if trips is not None and trips * size <= UNROLLED:
            size, cost = size * trips, cost * trips
    return size, cost


def _scalar_loops(op: ir.Operation) -> float:
    """A convolution or pooling window still here becomes scalar loops in the LLVM stage,
    which LLVM unrolls fully where they are short (a stride-2 depthwise convolution's row
    and window: two of MobileNet-V2's kernels took 0.8 s of LLVM each, a quarter of its
    whole); by the elements its operands hold."""
    shaped = [v.type for v in op.operands if isinstance(v.type, ir.ShapedType)]
    elems = sum(math.prod(t.shape) for t in shaped if t.has_static_shape)
    return SCALAR_UNROLLED * elems if elems <= SHORT else SCALAR_LOOPS


SCALAR_UNROLLED, SHORT, SCALAR_LOOPS = 64, 2048, 50


# LLVM unrolls a loop fully when its trip count is constant and the unrolled body stays
# under about this (its full-unroll threshold at -O2 with the boost it gives loops whose
# unrolled body simplifies), in `OP_WEIGHTS` units.
UNROLLED = 1200


def _trip_count(loop: ir.Operation) -> int | None:
    bounds = static_loop(loop)
    return bounds[2] if bounds is not None else None


def plan(fn: ir.Operation, *, min_weight: int | None = None) -> list[ir.Operation] | None:
    """The top-level ops of `fn` that move out (a contiguous second half by weight, less
    the ops it shares with the rest), or None where the function is small or its halves
    share a computed value."""
    min_weight = MIN_WEIGHT if min_weight is None else min_weight
    body = fn.regions[0].blocks[0]
    ops = [o.operation for o in body.operations][:-1]  # (not the return)
    weights = [0 if o.name in SHARED else weight(o) for o in ops]
    kernels = [ir.StringAttr(o.attributes[KERNEL]).value if KERNEL in o.attributes else None for o in ops]
    first, second = _once(weights, kernels), _once(weights[::-1], kernels[::-1])[::-1]
    total = first[-1]
    if total < min_weight or len(ops) < 2:
        return None
    # the cut: each half's share as near `FIRST` : 1 - `FIRST` as can be (a shared
    # kernel counted once in each half that calls it)
    cut = min(range(1, len(ops)), key=lambda i: max(first[i] / FIRST, second[i] / (1 - FIRST)))
    if not first[cut] or not second[cut]:  # (one half would have nothing to compile)
        return None
    for o in ops:
        if o.name == "scf.for":
            forward_buffers(o)
    second = {islands.key(o) for o in ops[cut:]}
    stay: set[int] = set()  # second-half ops that stay in `forward`: shared with it
    moved = []
    for o in reversed(ops[cut:]):  # (users before producers: each user already placed)
        outside = False
        for r in o.results:
            for u in r.uses:
                top = islands._top_level(u.owner.operation, fn)
                k = islands.key(top) if top is not None else None
                outside |= k not in second or k in stay
        if outside:
            if o.name not in SHARED:  # a value computed in the half read after it
                return None
            stay.add(islands.key(o))
        else:
            moved.append(o)
    moved.reverse()
    kept = {islands.key(o) for o in moved}
    picked = [(w, k) for o, w, k in zip(ops, weights, kernels) if islands.key(o) in kept]
    if not picked or _once(*zip(*picked))[-1] < min_weight / 4:
        return None
    return moved


def _once(weights: list[float], kernels: list[str | None]) -> list[float]:
    """Running sums of `weights` (out[i]: the first i), each shared kernel counted once."""
    out, seen, acc = [0.0], set(), 0.0
    for w, k in zip(weights, kernels):
        if k is None or k not in seen:
            acc += w
            seen.add(k)
        out.append(acc)
    return out


def _same_buffer(v: ir.Value, arg: ir.Value) -> bool:
    """`v` is `arg`, or a loop's result that carries `arg` through unchanged."""
    if v == arg:
        return True
    owner = v.owner
    if isinstance(owner, ir.Block) or owner.operation.name != "scf.for":
        return False
    loop = owner.operation
    i = ir.OpResult(v).result_number
    return _same_buffer(loop.operands[3 + i], arg) and _carried(loop, i)


def _carried(loop: ir.Operation, i: int) -> bool:
    """The `scf.for`'s i-th iter_arg is yielded unchanged (a buffer its body writes into)."""
    body = loop.regions[0].blocks[0]
    yielded = list(body.operations)[-1].operation.operands[i]
    return _same_buffer(yielded, body.arguments[1 + i])


def forward_buffers(loop: ir.Operation) -> None:
    """Uses of a bufferized loop's memref results read its init buffer instead (the same
    buffer), so the loop's result is no value the halves share."""
    for i, r in enumerate(loop.results):
        if isinstance(r.type, ir.MemRefType) and _carried(loop, i):
            r.replace_all_uses_with(loop.operands[3 + i])


def outline(module: ir.Module, fn: ir.Operation, ops: list[ir.Operation], name: str) -> ir.Module | None:
    """Move `ops` into a new module's public function `name`, called from `fn`; `module`
    keeps an empty weak definition of it (replaced when the objects are linked). The new
    module gets copies of the functions and constant globals the moved code refers to,
    and theirs (`copied`: made local to its object once compiled); None (nothing
    changed) where that cannot be (a global the code may write)."""
    symbols = {
        ir.StringAttr(op.attributes["sym_name"]).value: op.operation
        for op in module.body.operations
        if "sym_name" in op.attributes
    }
    needed = _referenced(ops, symbols)
    if any(symbols[n].name == "memref.global" and "constant" not in symbols[n].attributes for n in needed):
        return None  # (two copies of a variable would be two variables)
    done = islands.outline(fn, ops, name, cloned=CLONED)
    if done is None:
        return None
    call, part = done
    if len(call.results):  # (values the rest reads: `plan` left none)
        islands.inline(call, part)
        return None
    ctx = module.context
    part.attributes.__delitem__(islands.ISLAND)
    part.attributes.__delitem__("sym_visibility")
    with ctx, ir.Location.unknown():
        other = ir.Module.create()
        for top in module.body.operations:  # (in the module's order: definitions before uses)
            top = top.operation
            if "sym_name" in top.attributes and ir.StringAttr(top.attributes["sym_name"]).value in needed:
                top.clone(ir.InsertionPoint(other.body))  # (made local to the half's object: `copied`)
        ir.InsertionPoint(other.body).insert(part.detach_from_parent())
        # what stays: an empty weak definition, so the JIT compiles this half without the
        # other (it cannot leave a symbol unresolved); linking takes the real one. A weak
        # function may be replaced: LLVM neither inlines it nor reads anything from its body.
        args = ", ".join(f"%a{i}: {v.type}" for i, v in enumerate(call.operands))
        stub = ir.Operation.parse(
            f"func.func private @{name}({args}) attributes {{llvm.linkage = #llvm.linkage<weak>}} {{\n  return\n}}",
            context=ctx,
        )
        ir.InsertionPoint(fn).insert(stub)
    # what the moved code alone called goes: an unused private function LLVM deletes would
    # leave the JIT a wrapper (`_mlir_<name>`) it cannot find
    passmanager.PassManager.parse("builtin.module(symbol-dce)", context=ctx).run(module.operation)
    return other


def copied(other: ir.Module, name: str) -> list[str]:
    """The symbols `outline` copied into `other` (all but its function `name`)."""
    names = [
        ir.StringAttr(op.attributes["sym_name"]).value for op in other.body.operations if "sym_name" in op.attributes
    ]
    return [n for n in names if n != name]


def _referenced(ops: list[ir.Operation], symbols: dict[str, ir.Operation]) -> set[str]:
    """The module's symbols `ops` refer to (a called function, a global read), and the
    ones those refer to in turn (an AMX kernel's block functions, their intrinsics)."""
    found: set[str] = set()
    todo = list(ops)

    def visit(o):
        attrs = o.operation.attributes
        for key in attrs:
            a = attrs[key]
            if isinstance(a, ir.FlatSymbolRefAttr) and a.value in symbols and a.value not in found:
                found.add(a.value)
                todo.append(symbols[a.value])
        return ir.WalkResult.ADVANCE

    while todo:
        todo.pop().walk(visit)
    return found


def cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # (not Linux)
        return 1
