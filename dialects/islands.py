"""Islands: groups of a function's ops moved into private functions of their own while a
transform script rewrites them, then inlined back where they were.

The ground floor (imports nothing of ours). Why: upstream's
`transform.structured.fuse_into_containing_op` prints the producer and the containing
loop into a diagnostic before every fusion, and printing an op numbers and verifies the
whole isolated-from-above op around it (the function). On one function holding a whole
model, every fusion costs time in proportion to the model, and a model's fusions cost
its size squared. Inside an island, each costs its own kernel's size.

`outline(fn, ops, name)` moves `ops` (top-level ops of `fn`'s entry block) into a private
`func.func` marked `tc.island`, called where the last of them stood: values defined
outside become arguments (constants and static `tensor.empty`s are cloned in), values
used outside become results. It refuses (None) where a value the island defines is used
outside before that point. `inline(call, island)` puts the body back in place of the call
and erases both. `islands(module, groups)` does both around a `with` block, and merges
the copied constants with their originals again (CSE) once all are back;
`apply_transform_in_islands` runs a transform script so.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Iterable, Sequence

from torch_mlir import ir, passmanager
from torch_mlir.dialects import func

from tilecraft.dialects.irutil import apply_transform, snapshot

ISLAND = "tc.island"
CLONED = ("arith.constant", "tensor.empty")  # defined outside, copied in (a constant, a shape)


_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype, _capsule_pointer.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
_capsule_name = ctypes.pythonapi.PyCapsule_GetName
_capsule_name.restype, _capsule_name.argtypes = ctypes.c_char_p, [ctypes.py_object]


def key(obj) -> int:
    """An op's (or a value's) address: a stable identity while it lives (the bindings'
    hash of an op changes when its operands do: ops themselves are no keys across
    rewrites)."""
    cap = getattr(obj, "operation", obj)._CAPIPtr
    return _capsule_pointer(cap, _capsule_name(cap))


def _top_level(op: ir.Operation, fn: ir.Operation) -> ir.Operation | None:
    """The ancestor of `op` (or `op`) directly in `fn`'s body, or None."""
    while True:
        parent = op.parent
        if parent is None:
            return None
        parent = parent.operation
        if parent == fn:
            return op
        op = parent


def nested(ops: Iterable[ir.Operation]) -> dict[int, ir.Operation]:
    """`ops` and every op nested in them, by key."""
    inside: dict[int, ir.Operation] = {}

    def add(o):
        o = o.operation
        inside[key(o)] = o
        return ir.WalkResult.ADVANCE

    for op in ops:
        op.walk(add)
    return inside


def copied_in(v: ir.Value, cloned: Sequence[str] = CLONED) -> bool:
    """`v` is made by an op of `cloned` with no operands: an island copies it in rather than
    taking it as an argument."""
    owner = v.owner
    if isinstance(owner, ir.Block):
        return False
    op = owner.operation
    return op.name in cloned and not len(op.operands) and len(op.results) == 1


def defined_inside(v: ir.Value, inside: dict[int, ir.Operation]) -> bool:
    """`v` is a result of one of the ops `inside` (`nested`) or an argument of a block of one."""
    owner = v.owner
    return key(owner.owner if isinstance(owner, ir.Block) else owner) in inside


def outline(
    fn: ir.Operation,
    ops: Sequence[ir.Operation],
    name: str,
    *,
    order: dict[int, int] | None = None,
    cloned: Sequence[str] = CLONED,
) -> tuple[ir.Operation, ir.Operation] | None:
    """Move `ops` (top-level in `fn`, any order) into a private function `name`; returns
    the `func.call` that replaced them and the function, or None (nothing changed) where
    a value they define is used outside before the last of them. `order`: the position of
    each of `fn`'s top-level ops by key (`positions`), kept up to date for the next call.
    `cloned`: ops without operands copied in rather than passed."""
    order = positions(fn) if order is None else order
    ops = sorted({key(op): op.operation for op in ops}.values(), key=lambda op: order[key(op)])
    last = order[key(ops[-1])]
    inside = nested(ops)
    outputs: list[ir.Value] = []
    for op in ops:
        for r in op.results:
            users = [u.owner for u in r.uses if key(u.owner) not in inside]
            for user in users:
                top = _top_level(user.operation, fn)
                if top is None or order.get(key(top), -1) <= last:
                    return None
            if users:
                outputs.append(r)
    inputs: dict[int, ir.Value] = {}
    clones: dict[int, ir.Value] = {}
    for op in inside.values():
        for v in op.operands:
            if defined_inside(v, inside):
                continue
            if copied_in(v, cloned):
                clones[key(v)] = v
            else:
                inputs[key(v)] = v
    with fn.context, fn.location:
        ftype = ir.FunctionType.get([v.type for v in inputs.values()], [v.type for v in outputs])
        with ir.InsertionPoint(fn):
            island = func.FuncOp(name, ftype, visibility="private")
        island.operation.attributes[ISLAND] = ir.UnitAttr.get()
        body = island.add_entry_block()
        with ir.InsertionPoint(body):
            ret = func.ReturnOp(list(outputs)).operation
        with ir.InsertionPoint(ops[-1]):
            call = func.CallOp([v.type for v in outputs], ir.FlatSymbolRefAttr.get(name), list(inputs.values()))
        call = call.operation
        call.move_after(ops[-1])
        order[key(call)] = last
        for op in ops:
            op.move_before(ret)
        for v, arg in zip(inputs.values(), body.arguments):
            _replace_uses(v, arg, lambda o: key(o) in inside)
        for v in clones.values():
            original = v.owner.operation
            copy = original.clone(ir.InsertionPoint(ops[0]))
            _replace_uses(v, copy.results[0], lambda o: key(o) in inside)
            if not list(v.uses):
                original.erase()
        outside = lambda o: key(o) not in inside and o != ret  # noqa: E731
        for v, r in zip(outputs, call.results):
            _replace_uses(v, r, outside)
    return call, island.operation


def positions(fn: ir.Operation) -> dict[int, int]:
    """The position of each of `fn`'s top-level ops in its body, by key."""
    return {key(o): i for i, o in enumerate(fn.regions[0].blocks[0].operations)}


def _replace_uses(v: ir.Value, new: ir.Value, where) -> None:
    """Replace the uses of `v` by ops `where(op)` holds for with `new`."""
    for use in [u for u in v.uses if where(u.owner.operation)]:
        use.owner.operation.operands[use.operand_number] = new


def inline(call: ir.Operation, island: ir.Operation) -> None:
    """Put `island`'s body back in place of its `call`; erase both."""
    body = island.regions[0].blocks[0]
    for arg, v in zip(body.arguments, call.operands):
        arg.replace_all_uses_with(v)
    ops = [op.operation for op in body.operations]
    ret = ops.pop()
    for op in ops:
        op.move_before(call)
    for r, v in zip(call.results, ret.operands):
        r.replace_all_uses_with(v)
    call.erase()
    island.erase()


@contextlib.contextmanager
def islands(module: ir.Module, groups: Sequence[Sequence[ir.Operation]], *, prefix: str = "__tc_island"):
    """Outline each group of ops (any op of the module's functions: its top-level
    ancestor moves) for the `with` block, and inline them back after it, even on an
    error. Groups that share an ancestor merge; a group that cannot move stays (its ops
    are rewritten where they are). Yields the number of islands made."""
    fns = {key(op) for op in module.body.operations if op.operation.name == "func.func"}
    tops: list[tuple[ir.Operation, dict[int, ir.Operation]]] = []  # (function, its island's top-level ops)
    where: dict[int, int] = {}  # top-level op → island
    for group in groups:
        found: list[ir.Operation] = []
        fn = None
        for op in group:
            top = op.operation
            while top.parent is not None and key(top.parent) not in fns:
                top = top.parent.operation
            if top.parent is not None:
                fn = top.parent.operation
                found.append(top)
        if fn is None:
            continue
        merged = sorted({where[key(t)] for t in found if key(t) in where})
        idx = merged[0] if merged else len(tops)
        if not merged:
            tops.append((fn, {}))
        for k in merged[1:]:  # (an ancestor two groups share: one island)
            for t in tops[k][1].values():
                where[key(t)] = idx
            tops[idx][1].update(tops[k][1])
            tops[k][1].clear()
        for t in found:
            where[key(t)] = idx
            tops[idx][1][key(t)] = t
    for idx, (fn, ops) in enumerate(tops):
        _absorb(fn, ops, where, idx)
    calls = []
    orders: dict[int, dict[int, int]] = {}  # function → its ops' positions (computed once)
    try:
        for fn, ops in tops:
            if ops:
                if key(fn) not in orders:
                    orders[key(fn)] = positions(fn)
                made = outline(fn, list(ops.values()), f"{prefix}{len(calls)}", order=orders[key(fn)])
                if made is not None:
                    calls.append(made)
        yield len(calls)
    finally:
        for call, island in calls:
            inline(call, island)
        if calls:  # (the copies of constants and empties merged with their originals again)
            cse = passmanager.PassManager.parse("builtin.module(func.func(cse))", context=module.context)
            cse.run(module.operation)


def _absorb(fn: ir.Operation, ops: dict[int, ir.Operation], where: dict[int, int], idx: int) -> None:
    """Add to island `ops` every top-level producer of its operands that no island holds
    and whose every user is in the island (a group's fills, its pads), transitively."""
    work = list(ops.values())
    while work:
        for o in nested([work.pop()]).values():
            for v in o.operands:
                if isinstance(v.owner, ir.Block):
                    continue
                p = _top_level(v.owner.operation, fn)
                if p is None or key(p) in where or p.name in CLONED or not p.results:
                    continue
                users = [_top_level(u.owner.operation, fn) for r in p.results for u in r.uses]
                if users and all(u is not None and key(u) in ops for u in users):
                    where[key(p)] = idx
                    ops[key(p)] = p
                    work.append(p)


def apply_transform_in_islands(
    module: ir.Module, script: str, groups: Sequence[Sequence[ir.Operation]], *, stage: str, reproduce: str
) -> None:
    """`irutil.apply_transform` with each group in an island; a failure saves the module
    as it was before, not its islands."""
    before = snapshot(module)
    with islands(module, groups):
        apply_transform(module, script, stage=stage, reproduce=reproduce, before=before)
