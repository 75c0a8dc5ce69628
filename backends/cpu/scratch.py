"""Small scratch buffers made in loops: on the stack, allocated once, not from the heap per
iteration.

On the backends floor; runs at the end of the CPU backend's vector stage
(`lowering.to_vector`), on the bufferized module. A fused reduction's accumulator that
vectorization left in memory (a softmax row's max and sum: a `memref<1x1xf32>` filled,
then loaded) is a `memref.alloc` inside the loop over rows, so every row called the heap
pool twice to allocate and twice to free (`pool.py`): BERT-mini's four softmaxes made
4,096 such calls per inference. On two threads both threads' calls went for the same
pool slots, whose locks then bounced between the cores: about 15% of BERT-mini's
two-thread profile was in the pool's functions.

Such an allocation becomes a `memref.alloca` at the start of the region that owns the
iteration's data: the body of the nearest enclosing `scf.forall` (a chunk's thread: each
thread its own buffer) or else the function's entry block. Every iteration writes the
buffer before reading it (an allocation's contents are undefined), so one buffer serves
them all. Only buffers whose every use is a plain read or write in the allocation's own
block (or nested in it) qualify: nothing yields, returns, views or captures them.
"""

from __future__ import annotations

import math

from torch_mlir import ir

from tilecraft.dialects.irutil import ops_named

ENABLED = True  # (off only to compare)
MAX_BYTES = 256  # scratch of this size or less (the stack a function holds stays small)
# users that only read or write the buffer in place (a view, a yield, a call is none of these)
_PLAIN_USERS = (
    "memref.load",
    "memref.store",
    "memref.copy",
    "vector.load",
    "vector.store",
    "vector.maskedload",
    "vector.maskedstore",
    "vector.transfer_read",
    "vector.transfer_write",
    "linalg.",
)
_LOOPS = ("scf.for", "scf.while", "scf.parallel", "scf.forall")


def stack_scratch(module: ir.Module) -> int:
    """Move each small scratch buffer made inside a loop to the stack (see the module
    docstring). Returns how many were moved."""
    from torch_mlir.dialects import memref

    moved = 0
    for alloc in ops_named(module.operation, "memref.alloc"):
        home = _home(alloc)
        if home is None or not _small(alloc) or not _local(alloc):
            continue
        align = ir.IntegerAttr(alloc.attributes["alignment"]).value if "alignment" in alloc.attributes else None
        with ir.InsertionPoint.at_block_begin(home.regions[0].blocks[0]), alloc.location:
            stack = memref.AllocaOp(alloc.results[0].type, [], [], alignment=align)
        alloc.results[0].replace_all_uses_with(stack.result)
        alloc.erase()
        moved += 1
    return moved


def _small(alloc: ir.Operation) -> bool:
    if len(alloc.operands):  # (dynamic sizes or symbols)
        return False
    t = ir.MemRefType(alloc.results[0].type)
    if not t.has_static_shape or "strided" in str(t):
        return False
    elem = t.element_type.maybe_downcast()
    if not isinstance(elem, (ir.FloatType, ir.IntegerType)):
        return False
    return math.prod(t.shape) * max(elem.width // 8, 1) <= MAX_BYTES


def _home(alloc: ir.Operation) -> ir.Operation | None:
    """The op whose first block the buffer moves to: the nearest enclosing `scf.forall` or
    function, when a loop lies between it and the allocation (else None: no gain)."""
    looped = False
    op = _parent(alloc)
    while op is not None:
        if op.name in ("scf.forall", "func.func"):
            return op if looped else None
        looped = looped or op.name in _LOOPS
        op = _parent(op)
    return None


def _parent(op: ir.Operation) -> ir.Operation | None:
    parent = op.parent
    return None if parent is None else parent.operation


def _local(alloc: ir.Operation) -> bool:
    """Every use a plain read or write inside the allocation's own block."""
    owner = _parent(alloc)
    for use in alloc.results[0].uses:
        user = use.owner
        user = user.operation if hasattr(user, "operation") else user
        if not user.name.startswith(_PLAIN_USERS):
            return False
        op = user  # up to the op directly in the allocation's region
        while op is not None and _parent(op) != owner:
            op = _parent(op)
        if op is None or op.block != alloc.block:
            return False
    return True
