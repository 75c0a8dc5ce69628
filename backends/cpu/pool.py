"""Compiled code's heap buffers from a pool of its own, not fresh pages from the C library.

On the backends floor; runs at the end of the CPU backend's LLVM stage (`lowering.to_llvm`),
on the LLVM-dialect module. Every `malloc` and `free` the lowered code calls (the
temporaries `memref.alloc` made: MobileNet-V2 allocates about 40 MB of them per call)
becomes a call to `__tc_pool_alloc` / `__tc_pool_free`, defined here in the module itself.

Why: glibc serves a large block with `mmap` and returns it with `munmap` on free until its
dynamic threshold has risen above the block's size; a library that sets the thresholds with
`mallopt` fixes them (OpenVINO's CPU plugin does: measured in `bench/e2e.py`, after an
OpenVINO model on two threads was compiled, every Tilecraft MobileNet-V2 call took 10,000
page faults and 20 ms instead of 9). A freed block is kept here instead, in one of `SLOTS`
slots (pointer, size; each slot behind a spin lock, so OpenMP threads allocating at once are
safe), and a later allocation of the same size takes it back. A block whose pool is full is
freed. The pool belongs to the module (internal globals: two compiled models never share
blocks); its blocks are freed by a destructor when the module is unloaded (the JIT engine
destroyed, the shared library closed).

Each block carries its size in a 16-byte header (the lowering aligns the pointer it gets
itself: `malloc`'s 16-byte alignment is all it assumes).
"""

from __future__ import annotations

from torch_mlir import ir

from tilecraft.dialects.irutil import append_helper, symbol_name, walk_ops

SLOTS = 256
ALLOC, FREE, RELEASE = "__tc_pool_alloc", "__tc_pool_free", "__tc_pool_release"

# The constants and pool addresses every pool function starts with.
_HEAD = f"""  %c0 = llvm.mlir.constant(0 : i64) : i64
  %c1 = llvm.mlir.constant(1 : i64) : i64
  %cap = llvm.mlir.constant({SLOTS} : i64) : i64
  %z32 = llvm.mlir.constant(0 : i32) : i32
  %o32 = llvm.mlir.constant(1 : i32) : i32
  %null = llvm.mlir.zero : !llvm.ptr
  %ptrs = llvm.mlir.addressof @__tc_pool_ptr : !llvm.ptr
  %sizes = llvm.mlir.addressof @__tc_pool_size : !llvm.ptr
  %locks = llvm.mlir.addressof @__tc_pool_lock : !llvm.ptr
"""


def _scan(size: str, after: str, locked: str) -> str:
    """The slot loop alloc and free share: a slot whose size reads `size` is locked (a
    compare-and-swap of its lock from 0 to 1) and handed to `locked` (with %sp, %lp and
    %pp, the slot's size, lock and pointer addresses; it branches to ^unlock to go on, or
    unlocks and returns); past the last slot the loop branches to ^`after`."""
    return f"""^loop(%i: i64):
  %end = llvm.icmp "eq" %i, %cap : i64
  llvm.cond_br %end, ^{after}, ^probe
^probe:
  %sp = llvm.getelementptr %sizes[0, %i] : (!llvm.ptr, i64) -> !llvm.ptr, !llvm.array<{SLOTS} x i64>
  %s = llvm.load %sp atomic monotonic {{alignment = 8 : i64}} : !llvm.ptr -> i64
  %want = llvm.icmp "eq" %s, {size} : i64
  llvm.cond_br %want, ^lock, ^next
^lock:
  %lp = llvm.getelementptr %locks[0, %i] : (!llvm.ptr, i64) -> !llvm.ptr, !llvm.array<{SLOTS} x i32>
  %r = llvm.cmpxchg %lp, %z32, %o32 acquire monotonic : !llvm.ptr, i32
  %ok = llvm.extractvalue %r[1] : !llvm.struct<(i32, i1)>
  llvm.cond_br %ok, ^locked, ^next
^locked:
  %pp = llvm.getelementptr %ptrs[0, %i] : (!llvm.ptr, i64) -> !llvm.ptr, !llvm.array<{SLOTS} x ptr>
{locked}^unlock:
  llvm.store %z32, %lp atomic release {{alignment = 4 : i64}} : i32, !llvm.ptr
  llvm.br ^next
^next:
  %i1 = llvm.add %i, %c1 : i64
  llvm.br ^loop(%i1 : i64)
"""


# alloc, with a slot of the wanted size locked: take its block if it still holds one
_ALLOC_LOCKED = """  %p = llvm.load %pp {alignment = 8 : i64} : !llvm.ptr -> !llvm.ptr
  %s2 = llvm.load %sp atomic monotonic {alignment = 8 : i64} : !llvm.ptr -> i64
  %same = llvm.icmp "eq" %s2, %n : i64
  %full = llvm.icmp "ne" %p, %null : !llvm.ptr
  %take = llvm.and %same, %full : i1
  llvm.cond_br %take, ^taken, ^unlock
^taken:
  llvm.store %c0, %sp atomic monotonic {alignment = 8 : i64} : i64, !llvm.ptr
  llvm.store %null, %pp {alignment = 8 : i64} : !llvm.ptr, !llvm.ptr
  llvm.store %z32, %lp atomic release {alignment = 4 : i64} : i32, !llvm.ptr
  llvm.return %p : !llvm.ptr
"""

# free, with an empty slot locked: keep the block there if the slot is still vacant
_FREE_LOCKED = """  %old = llvm.load %pp {alignment = 8 : i64} : !llvm.ptr -> !llvm.ptr
  %vacant = llvm.icmp "eq" %old, %null : !llvm.ptr
  llvm.cond_br %vacant, ^keep, ^unlock
^keep:
  llvm.store %p, %pp {alignment = 8 : i64} : !llvm.ptr, !llvm.ptr
  llvm.store %n, %sp atomic monotonic {alignment = 8 : i64} : i64, !llvm.ptr
  llvm.store %z32, %lp atomic release {alignment = 4 : i64} : i32, !llvm.ptr
  llvm.return
"""


_DEFS = f"""
llvm.mlir.global internal @__tc_pool_ptr() {{addr_space = 0 : i32}} : !llvm.array<{SLOTS} x ptr> {{
  %0 = llvm.mlir.zero : !llvm.array<{SLOTS} x ptr>
  llvm.return %0 : !llvm.array<{SLOTS} x ptr>
}}
llvm.mlir.global internal @__tc_pool_size() {{addr_space = 0 : i32}} : !llvm.array<{SLOTS} x i64> {{
  %0 = llvm.mlir.zero : !llvm.array<{SLOTS} x i64>
  llvm.return %0 : !llvm.array<{SLOTS} x i64>
}}
llvm.mlir.global internal @__tc_pool_lock() {{addr_space = 0 : i32}} : !llvm.array<{SLOTS} x i32> {{
  %0 = llvm.mlir.zero : !llvm.array<{SLOTS} x i32>
  llvm.return %0 : !llvm.array<{SLOTS} x i32>
}}
llvm.mlir.global_dtors dtors = [@{RELEASE}], priorities = [65535 : i32], data = [#llvm.zero]

llvm.func hidden @{ALLOC}(%n: i64) -> !llvm.ptr attributes {{no_inline}} {{
{_HEAD}  llvm.br ^loop(%c0 : i64)
{_scan("%n", "miss", _ALLOC_LOCKED)}^miss:
  %c16 = llvm.mlir.constant(16 : i64) : i64
  %total = llvm.add %n, %c16 : i64
  %q = llvm.call @malloc(%total) : (i64) -> !llvm.ptr
  %bad = llvm.icmp "eq" %q, %null : !llvm.ptr
  llvm.cond_br %bad, ^oom, ^fresh
^oom:
  llvm.return %null : !llvm.ptr
^fresh:
  llvm.store %n, %q {{alignment = 8 : i64}} : i64, !llvm.ptr
  %user = llvm.getelementptr %q[16] : (!llvm.ptr) -> !llvm.ptr, i8
  llvm.return %user : !llvm.ptr
}}

llvm.func hidden @{FREE}(%p: !llvm.ptr) attributes {{no_inline}} {{
{_HEAD}  %none = llvm.icmp "eq" %p, %null : !llvm.ptr
  llvm.cond_br %none, ^done, ^start
^start:
  %q = llvm.getelementptr %p[-16] : (!llvm.ptr) -> !llvm.ptr, i8
  %n = llvm.load %q {{alignment = 8 : i64}} : !llvm.ptr -> i64
  llvm.br ^loop(%c0 : i64)
{_scan("%c0", "release", _FREE_LOCKED)}^release:
  llvm.call @free(%q) : (!llvm.ptr) -> ()
  llvm.return
^done:
  llvm.return
}}

llvm.func hidden @{RELEASE}() {{
  %c0 = llvm.mlir.constant(0 : i64) : i64
  %c1 = llvm.mlir.constant(1 : i64) : i64
  %cap = llvm.mlir.constant({SLOTS} : i64) : i64
  %null = llvm.mlir.zero : !llvm.ptr
  %ptrs = llvm.mlir.addressof @__tc_pool_ptr : !llvm.ptr
  %sizes = llvm.mlir.addressof @__tc_pool_size : !llvm.ptr
  llvm.br ^loop(%c0 : i64)
^loop(%i: i64):
  %end = llvm.icmp "eq" %i, %cap : i64
  llvm.cond_br %end, ^done, ^slot
^slot:
  %pp = llvm.getelementptr %ptrs[0, %i] : (!llvm.ptr, i64) -> !llvm.ptr, !llvm.array<{SLOTS} x ptr>
  %p = llvm.load %pp {{alignment = 8 : i64}} : !llvm.ptr -> !llvm.ptr
  %full = llvm.icmp "ne" %p, %null : !llvm.ptr
  llvm.cond_br %full, ^free, ^next
^free:
  %q = llvm.getelementptr %p[-16] : (!llvm.ptr) -> !llvm.ptr, i8
  llvm.call @free(%q) : (!llvm.ptr) -> ()
  llvm.store %null, %pp {{alignment = 8 : i64}} : !llvm.ptr, !llvm.ptr
  %sp = llvm.getelementptr %sizes[0, %i] : (!llvm.ptr, i64) -> !llvm.ptr, !llvm.array<{SLOTS} x i64>
  llvm.store %c0, %sp {{alignment = 8 : i64}} : i64, !llvm.ptr
  llvm.br ^next
^next:
  %i1 = llvm.add %i, %c1 : i64
  llvm.br ^loop(%i1 : i64)
^done:
  llvm.return
}}
"""

# A guest's pool functions: weak, replaced by the host's when the objects are linked (the
# JIT that compiles the guest alone must resolve every symbol it calls).
_GUEST_DEFS = (
    f"llvm.func weak @{ALLOC}(%n: i64) -> !llvm.ptr {{\n"
    "  %0 = llvm.mlir.zero : !llvm.ptr\n  llvm.return %0 : !llvm.ptr\n}",
    f"llvm.func weak @{FREE}(%p: !llvm.ptr) {{\n  llvm.return\n}}",
)
_DECLS = {
    "malloc": "llvm.func @malloc(i64) -> !llvm.ptr",
    "free": "llvm.func @free(!llvm.ptr)",
}


def pool_allocations(module: ir.Module, *, role: str = "own") -> int:
    """Calls of `malloc` and `free` in the LLVM-dialect module redirected to the module's
    own pool (see the module docstring); returns how many calls were redirected.
    `role`: "own" (the pool defined where used), "host" (defined even without a call:
    another object linked with this one uses it) or "guest" (weak stand-ins the host's
    definitions replace at link time)."""
    ctx = module.context
    renames = {"malloc": ALLOC, "free": FREE}
    calls: list[ir.Operation] = []

    def visit(op: ir.Operation) -> None:
        if op.name == "llvm.call" and "callee" in op.attributes:
            if ir.FlatSymbolRefAttr(op.attributes["callee"]).value in renames:
                calls.append(op)

    top = [op.operation for op in module.body.operations]
    have = {symbol_name(op) for op in top} - {None}
    if ALLOC in have:  # (pooled already: its own malloc and free stay as they are)
        return 0
    walk_ops(module.operation, visit)
    if not calls and role != "host":
        return 0
    if any(op.name == "llvm.mlir.global_dtors" for op in top):
        raise ValueError("pool: the module has destructors of its own (the pool's release needs merging)")
    for op in calls:
        name = ir.FlatSymbolRefAttr(op.attributes["callee"]).value
        op.attributes["callee"] = ir.FlatSymbolRefAttr.get(renames[name], context=ctx)
    text = "\n".join(_DECLS.values()) + _DEFS if role != "guest" else "\n".join(_GUEST_DEFS)
    append_helper(module, text, keep=lambda op: symbol_name(op) not in have)  # (malloc and free declared once)
    return len(calls)
