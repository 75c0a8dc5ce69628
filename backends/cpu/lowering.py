"""CPU lowering stages: linalg → tiled → vector → llvm → (jit | obj | so | asm).

On the backends floor: the CPU backend's stages, run after every target-neutral pass.
Reads the decided linalg-on-tensors module (the frontend's, rewritten by the passes) and
per-op schedules (`backends/cpu/schedule.py`: given ones, else the module's `tc.schedule`
attributes, else the heuristic); each stage is a function from a module to a module, so
any stage's IR can be dumped or resumed from. The last stages hand the LLVM-dialect module
to `ExecutionEngine` (JIT, opt level 2, host CPU with AVX-512) or write an object file, a
shared library or assembly text.
"""

from __future__ import annotations

import collections
import math
import os
import shutil
import signal
import subprocess
import tempfile
import time
import weakref
from collections.abc import Mapping

from torch_mlir import ir

from tilecraft.backends.cpu import (
    amx,
    avx512_dot,
    broadcasts,
    dedup,
    fma,
    math_approx,
    pads,
    pool,
    prefetch,
    reductions,
    scratch,
    strided,
    tcomp,
    unroll,
)
from tilecraft.backends.cpu import schedule as tiling
from tilecraft.backends.cpu.target import host
from tilecraft.dialects.irutil import (
    ANY,
    append_helper,
    apply_transform,
    kernel_ops,
    ops_named,
    owner_op,
    public_funcs,
    run_pipeline,
    snapshot,
    walk_ops,
)
from tilecraft.dialects.tc import COPY_ID

LLVM_PIPELINE = (
    "builtin.module("
    "buffer-results-to-out-params{hoist-static-allocs=true modify-public-functions=true},"
    "func.func(convert-linalg-to-loops),"
    "buffer-deallocation-pipeline,"
    "convert-bufferization-to-memref,"
    "convert-vector-to-scf,"
    "expand-strided-metadata,"
    "lower-affine,"
    "convert-scf-to-cf,"
    "convert-vector-to-llvm{enable-x86},"
    "finalize-memref-to-llvm,"
    "convert-math-to-llvm,"
    "convert-math-to-libm,"
    # arith, index, func, cf and ub in one conversion (each dialect's ConvertToLLVM
    # interface): the same IR as their five passes in turn, which walked the whole module
    # each (resnet18: 1.45 -> 1.13 s for this pipeline)
    "convert-to-llvm,"
    "reconcile-unrealized-casts)"
)


# Math ops expanded into arith and simpler math before tiling: every op upstream's
# `math-expand-ops` knows but `fma`, which stays one fused multiply-add (a depthwise
# layer's taps, `passes/depthwise.py`; expanded, it became a multiply and an add).
EXPAND_MATH = (
    "math-expand-ops{ops=ctlz,sinh,cosh,tan,tanh,asinh,acosh,atanh,ceil,exp2,powf,fpowi,round,roundeven,rsqrt,clampf}"
)


# ------------------------------------------------------------------------------ stages
def to_tiled(
    module: ir.Module,
    decisions: Mapping[int | str, tiling.TileDecision] | None = None,
    *,
    vectorize: bool = True,
    target=None,
    one_row_stream: bool = True,
) -> ir.Module:
    """linalg → tiled: divisions by constants as products, expand erf and exp, tag ops, pick
    schedules, tile (and decompose conv tiles), and vectorize each register tile (vector
    ops on tensors; cleaned up by `to_vector`)."""
    math_approx.reciprocal_constants(module)
    before = snapshot(module)  # a failure anywhere in the stage saves its input
    # bf16/f16 math in f32 (what LLVM's promotion does anyway, here early enough for the
    # f32 erf and exp below to take it: a bf16 GELU's erf was a libm call per element,
    # and without AVX512-BF16, left to the LLVM stage, an unlowerable one)
    pipeline = f"builtin.module(func.func({EXPAND_MATH},math-extend-to-supported-types{{target-type=f32}}))"
    run_pipeline(module, pipeline, stage="tiled", reproduce="cpu-tiled", before=before)
    math_approx.expand_erf(module)
    math_approx.expand_exp(module)
    infos = tiling.tag_ops(module)
    chosen = tiling.decisions(infos, decisions, target, attached=tiling.attached(module), one_row_stream=one_row_stream)
    fused = tiling.fused_ids(module, infos)
    chosen.update({i.op_id: tiling.register_tile_decision(i) for i in infos if i.op_id in fused})
    script = tiling.tiling_script(infos, chosen, vectorize=vectorize)
    module = apply_transform(module, script, stage="tiled", reproduce="cpu-tiled", before=before)
    peeled = tiling.peeled_ids(infos, chosen) if vectorize else []
    if peeled:  # register tiles with a peeled remainder of rows: static once canonicalized
        run_pipeline(module, "builtin.module(canonicalize)", stage="tiled", reproduce="cpu-tiled", before=before)
        module = apply_transform(module, tiling.vectorize_script(), stage="tiled", reproduce="cpu-tiled", before=before)

        def unmark(op: ir.Operation) -> None:
            if tiling.PEELED in op.attributes:
                del op.attributes[tiling.PEELED]

        walk_ops(module.operation, unmark)
    return module


def to_vector(
    module: ir.Module,
    *,
    vectorize: bool = True,
    pads_in_place: bool = True,
    strided_reads: bool = True,
    vectorize_fills: bool = True,
    border_fills: bool = True,
) -> ir.Module:
    """tiled → vector: vectorize, hoist, bufferize, lower vector ops to LLVM-friendly form.

    Arguments are marked read-only for bufferization: compiled code never writes into the
    caller's inputs or the bound weights (an in-place update gets a copy instead).
    `pads_in_place`: before bufferization each `tensor.pad` becomes a fill of its whole
    buffer and an insert of its source (destination-passing style), and the empty tensor
    its source's producer writes is replaced by the fill's interior, so the producer writes
    the padded buffer in place instead of a buffer copied into it. `strided_reads`: a read
    along a strided last dim as contiguous loads and a shuffle per row
    (`backends/cpu/strided.py`). `vectorize_fills`: fills made after tiling vectorized like
    copies (`tidy_copies`). `border_fills`: a constant pad fills only its buffer's border
    (`backends/cpu/pads.py`), not the whole buffer before the copy. Each is off only to
    compare."""
    mark_arguments_read_only(module)
    before = snapshot(module)  # a failure anywhere in the stage saves its input
    if border_fills:
        pads.border_fills(module)  # a padded buffer: its border filled, its interior the source
    bufferize_tm_tensor_ops(module)
    if DISTINCT_EMPTIES:
        distinct_empty_tensors(module)
    script = vectorize_script(vectorize=vectorize, pads_in_place=pads_in_place)
    apply_transform(module, script, stage="vector", reproduce="cpu-vector", before=before)
    copies = tidy_copies(module, vectorize_fills=vectorize_fills, threads=parallel_chunks(module)) if vectorize else []
    reductions.split_row_reductions(module)  # rows reduced a register at a time, not a lane
    broadcasts.rows_without_transposes(module)  # a per-row value: one broadcast per row, no shuffle
    fma.fused_multiply_adds(module)  # a product's one add: one vfmadd
    if strided_reads:
        strided.contiguous_strided_reads(module)  # a strided last-dim read: loads and shuffles
    apply_transform(module, lower_vectors_script(copies), stage="vector", reproduce="cpu-vector", before=before)
    if scratch.ENABLED:
        scratch.stack_scratch(module)  # a loop's small scratch buffers: on the stack, made once
    prefetch.weight_prefetches(module)  # rows of a weight read down a k loop: prefetched ahead
    return module


# Every `tensor.empty` tagged with an id of its own before the cleanup's CSE, which would
# otherwise merge equal ones: two padded buffers of one shape (MobileNet-V2's four 14²×384
# depthwise inputs), or two GEMM results, then started from one empty tensor, and
# bufferization copied whole buffers and interiors apart (31 copies, 11.9 MB per inference).
DISTINCT_EMPTIES = True


def distinct_empty_tensors(module: ir.Module) -> int:
    """Tag each `tensor.empty` with a distinct `tc.empty` id (CSE then keeps them apart);
    returns how many were tagged."""
    empties: list[ir.Operation] = []
    tiling.walk_ops(module.operation, lambda op: empties.append(op) if op.name == "tensor.empty" else None)
    i64 = ir.IntegerType.get_signless(64, context=module.context)
    for k, op in enumerate(empties):
        op.attributes["tc.empty"] = ir.IntegerAttr.get(i64, k)
    return len(empties)


# A copy's (or a fill's) register tile: 64 elements, four zmm registers. A copy moves memory,
# so a longer vector buys nothing, while LLVM's instruction selection is slow on vectors it
# must split into dozens of registers (docs/measurements.md, compile time).
COPY_BUDGET = 64


def tidy_copies(
    module: ir.Module, *, vectorize_fills: bool = True, threads: int = 1
) -> list[tuple[int, tuple[int, ...], tuple[int, ...]]]:
    """The buffer copies bufferization left: erase the ones that copy a buffer onto itself
    (a fused tile written back into the subview it was computed in), and tag the rest with
    `tc.copy_id` for `lower_vectors_script` to vectorize (else each is a scalar loop nest).
    Fills made after tiling (a pad's border value, written in place; not an AMX kernel's
    zero fill, which the kernel folds) are tagged alike: as scalar loops, LLVM vectorized
    ResNet-18's 114×114×64 pad fill across rows, with scatters. In a threaded module
    (`threads` > 1) a copy of `PARALLEL_COPY_BYTES` or more at a function's top level is
    also split into one chunk a thread. Returns (copy id, register tile, chunk tile sizes
    or ()) per tagged op."""
    out: list[tuple[int, tuple[int, ...], tuple[int, ...]]] = []
    dead: list[ir.Operation] = []

    def visit(op: ir.Operation) -> None:
        tagged = any(a in op.attributes for a in (tiling.OP_ID, tiling.AMX_INIT))  # scheduled, or AMX's
        if op.name == "linalg.fill" and vectorize_fills and not tagged:
            dst = op.operands[1]
        elif op.name == "linalg.copy":
            src, dst = op.operands[0], op.operands[1]
            if _same_buffer(src, dst):
                dead.append(op)
                return
        else:
            return
        if not isinstance(dst.type, ir.MemRefType):
            return
        t = ir.MemRefType(dst.type)
        if str(t.element_type) == "i1" or any(d < 0 for d in t.shape):
            return  # i1 buffers stay scalar (packed bits), dynamic shapes are not tiled here
        i64 = ir.IntegerType.get_signless(64, context=module.context)
        op.attributes[COPY_ID] = ir.IntegerAttr.get(i64, len(out))
        shape = list(t.shape)
        tile = tuple(0 if r >= x else r for r, x in zip(tiling.budget_tile(shape, COPY_BUDGET), shape))
        chunks: tuple[int, ...] = ()
        if threads > 1 and op.name == "linalg.copy" and _top_level(op) and 4 * math.prod(shape) >= PARALLEL_COPY_BYTES:
            chunks = _copy_chunks(shape, tile, threads)
        out.append((len(out), tile, chunks))

    tiling.walk_ops(module.operation, visit)
    for op in dead:
        op.erase()
    return out


# A copy of at least this many bytes at a function's top level (a padded buffer's interior,
# MobileNet-V2's 4.8 MB one among them; an im2col gather's tap blocks, 64 KB each in the
# autoencoder) is split across the threads of a threaded module: one chunk each, like the
# kernels `passes/parallel.py` splits. 2 threads, 5 interleaved rounds (`bench/ab.py`),
# 64 KB against 1 MB: conv_autoencoder 1.28x, resnet18 1.07x, mobilenet_v2 1.01x; 32 KB and
# 16 KB gained the autoencoder 4-8% more and cost resnet18 and mobilenet_v2 1-2% (libiomp5).
# With tcomp's cheaper regions (2026-12-07), 16 KB against 64 KB, three runs of 7 rounds:
# conv_autoencoder 1.07x, 1.07x, 1.06x (its 32 KB tap blocks at 16², serial before: with
# the other small copies 12% of its 2-thread time); resnet18 1.02x, 1.02x; mobilenet_v2
# 1.03x, 0.99x.
PARALLEL_COPY_BYTES = 1 << 14


def _top_level(op: ir.Operation) -> bool:
    parent = op.parent
    return parent is not None and parent.name == "func.func"


def _copy_chunks(shape: list[int], tile: tuple[int, ...], threads: int) -> tuple[int, ...]:
    """Forall tile sizes splitting a copy into `threads` chunks along its outermost dim
    that splits into whole register tiles; () if none does."""
    for d, (x, r) in enumerate(zip(shape, tile)):
        if x % threads or x < threads:
            continue
        chunk = x // threads
        if r == 0 or chunk % r == 0:
            return tuple(chunk if i == d else 0 for i in range(len(shape)))
    return ()


def _alias_root(v: ir.Value) -> ir.Value:
    """Follow an `scf.for` result back to its init operand while the loop yields the
    iteration argument unchanged (the same buffer, possibly through inner loops)."""
    owner = getattr(v.owner, "operation", v.owner)
    while isinstance(owner, ir.Operation) and owner.name == "scf.for":
        i = ir.OpResult(v).result_number
        body = owner.regions[0].blocks[0]
        yielded = list(body.operations)[-1].operands[i]
        if _alias_root(yielded) != body.arguments[1 + i]:  # (through nested loops too)
            break
        v = owner.operands[3 + i]
        owner = getattr(v.owner, "operation", v.owner)
    return v


def _unreshaped(v: ir.Value) -> ir.Value:
    """`v`, or the view it is when it collapses an expansion of that view back to its own
    type (a padded buffer's interior copied into as [H, W, C], `pads.py`)."""
    owner = owner_op(v)
    if owner is not None and owner.name == "memref.collapse_shape":
        inner = owner_op(owner.operands[0])
        if inner is not None and inner.name == "memref.expand_shape" and inner.operands[0].type == v.type:
            return inner.operands[0]
    return v


def _same_buffer(a: ir.Value, b: ir.Value) -> bool:
    a, b = _alias_root(_unreshaped(a)), _alias_root(_unreshaped(b))
    if a == b:
        return True
    oa, ob = (getattr(v.owner, "operation", v.owner) for v in (a, b))
    if not all(isinstance(o, ir.Operation) and o.name == "memref.subview" for o in (oa, ob)):
        return False
    if _alias_root(oa.operands[0]) != _alias_root(ob.operands[0]) or list(oa.operands)[1:] != list(ob.operands)[1:]:
        return False
    keys = ("static_offsets", "static_sizes", "static_strides")
    return all(str(oa.attributes[k]) == str(ob.attributes[k]) for k in keys) and a.type == b.type


def distinct_results(module: ir.Module) -> int:
    """Every public function returns distinct buffers, none of them an argument: a buffer
    returned twice (`return %a, %a`: a model returning one tensor twice, or two results
    folded into one) or an argument returned as it is gets a copy. Out-parameter
    conversion and deallocation assume distinct results (a repeated one crashed LLVM
    lowering). Returns how many copies were made."""
    from torch_mlir.dialects import memref

    copies = 0
    for func in public_funcs(module):
        for block in func.regions[0].blocks:
            ret = list(block.operations)[-1]
            if ret.operation.name != "func.return":
                continue
            args = list(func.regions[0].blocks[0].arguments)
            seen: list[ir.Value] = []
            for i, v in enumerate(list(ret.operands)):
                repeated = any(v == s for s in seen) or any(v == a for a in args)
                seen.append(v)
                if not repeated or not isinstance(v.type, ir.MemRefType):
                    continue
                t = ir.MemRefType(v.type)
                if not t.has_static_shape or "strided<" in str(t) or "affine_map" in str(t):
                    continue  # (a view with a layout: results are whole buffers here)
                with ir.InsertionPoint(ret), ret.location:
                    fresh = memref.AllocOp(t, [], []).result
                    memref.CopyOp(v, fresh)
                ret.operands[i] = fresh
                copies += 1
    return copies


def _has_tm_tensor_ops(module: ir.Module) -> bool:
    found = []
    walk_ops(module.operation, lambda op: found.append(op) if op.name.startswith("tm_tensor.") else None)
    return bool(found)


def bufferize_tm_tensor_ops(module: ir.Module) -> None:
    """torch-mlir's TMTensor ops (sort, scan: cumsum/cumprod, scatter, topk) have no
    one-shot bufferization: torch-mlir's own conversion bufferizes them first, each result
    a fresh buffer wrapped in `bufferization.to_tensor`, marked `restrict writable` (it is
    that buffer's only tensor), so one-shot bufferization takes the rest of the function
    around them; `to_llvm` lowers them to loops."""
    if not _has_tm_tensor_ops(module):
        return
    run_pipeline(module, "builtin.module(func.func(tm-tensor-bufferize))", stage="vector", reproduce="cpu-vector")
    for op in ops_named(module.operation, "bufferization.to_tensor"):
        op.attributes["restrict"] = ir.UnitAttr.get(module.context)
        op.attributes["writable"] = ir.UnitAttr.get(module.context)


def mark_arguments_read_only(module: ir.Module) -> None:
    ctx = module.context
    for func in public_funcs(module):
        n = len(ir.FunctionType(ir.TypeAttr(func.attributes["function_type"]).value).inputs)
        old = list(ir.ArrayAttr(func.attributes["arg_attrs"])) if "arg_attrs" in func.attributes else [None] * n
        new = []
        for attrs in old:
            entries = {a.name: a.attr for a in ir.DictAttr(attrs)} if attrs is not None else {}
            entries["bufferization.writable"] = ir.BoolAttr.get(False, context=ctx)
            new.append(ir.DictAttr.get(entries, context=ctx))
        func.attributes["arg_attrs"] = ir.ArrayAttr.get(new, context=ctx)


def to_llvm(module: ir.Module) -> ir.Module:
    """vector → llvm: AMX kernels, out-params, loops, deallocation, and conversion to the
    LLVM dialect."""
    prepare_llvm(module)
    return convert_to_llvm(module)


def prepare_llvm(module: ir.Module) -> None:
    """The LLVM stage's first steps, on the whole module: C interfaces, AMX kernels,
    distinct results, tm_tensor loops."""
    for func in public_funcs(module):
        func.attributes["llvm.emit_c_interface"] = ir.UnitAttr.get(module.context)
    amx.lower_marked(module)  # low-precision contractions → AMX kernels
    distinct_results(module)
    if _has_tm_tensor_ops(module):  # (bufferized in the vector stage) → scf loops
        run_pipeline(module, "builtin.module(func.func(tm-tensor-to-loops))", stage="llvm", reproduce="cpu-llvm")
    unroll.rolled_copies(module)  # data-movement loops: not unrolled by LLVM
    for func in list(public_funcs(module)):
        dedup.dedup_kernels(module, func)  # identical kernels: one function, called by each


def expand_bf16_conversions(module: ir.Module) -> bool:
    """f32 → bf16 rounding as integer arithmetic on a host without AVX512-BF16. LLVM
    selects `vcvtneps2bf16` where the host has it, and elsewhere calls compiler-rt's
    `__truncsfbf2`, which neither the JIT nor a plain `gcc -shared` link provides (the
    engine fails to resolve it and hands back no function). Upstream's `arith-expand`
    rounds to nearest even and gives NaN as 0x7FC0, as PyTorch does. The code is compiled
    for this process' host (`jit`), so its features decide."""
    if host().has("avx512bf16") or not _yields_bf16(module):
        return False
    _f64_to_bf16_through_f32(module)
    run_pipeline(module, BF16_IN_F32, stage="llvm", reproduce="cpu-llvm")
    return True


# What LLVM still calls where the module keeps bf16 values the rewrite above does not see
# (a bf16 scalar inserted into a vector: LLVM holds it as f32 and rounds it back), defined
# in the module (weak: a runtime library's own wins where one is linked): round to nearest
# even, NaN as 0x7FC0, as `arith-expand` and PyTorch do.
BF16_ROUNDING_LIBCALLS = """
llvm.func weak @__truncsfbf2(%x: f32) -> bf16 {
  %i = llvm.bitcast %x : f32 to i32
  %c16 = llvm.mlir.constant(16 : i32) : i32
  %c1 = llvm.mlir.constant(1 : i32) : i32
  %half = llvm.mlir.constant(32767 : i32) : i32
  %s = llvm.lshr %i, %c16 : i32
  %lsb = llvm.and %s, %c1 : i32
  %bias = llvm.add %lsb, %half : i32
  %r = llvm.add %i, %bias : i32
  %h = llvm.lshr %r, %c16 : i32
  %t = llvm.trunc %h : i32 to i16
  %nan = llvm.fcmp "uno" %x, %x : f32
  %qnan = llvm.mlir.constant(32704 : i16) : i16
  %o = llvm.select %nan, %qnan, %t : i1, i16
  %b = llvm.bitcast %o : i16 to bf16
  llvm.return %b : bf16
}
llvm.func weak @__truncdfbf2(%x: f64) -> bf16 {
  %f = llvm.fptrunc %x : f64 to f32
  %b = llvm.call @__truncsfbf2(%f) : (f32) -> bf16
  llvm.return %b : bf16
}
"""


def _f64_to_bf16_through_f32(module: ir.Module) -> None:
    """`arith.truncf` f64 → bf16 as f64 → f32 → bf16 (`arith-expand` rounds only from
    f32; LLVM would call `__truncdfbf2`). PyTorch rounds twice the same way: its bf16 is
    constructed from a float."""
    todo = []

    def visit(op):
        if op.name == "arith.truncf" and _is(op.results[0].type, ir.BF16Type) and _is(op.operands[0].type, ir.F64Type):
            todo.append(op)
        return ir.WalkResult.ADVANCE

    module.operation.walk(visit)
    f32 = ir.F32Type.get(module.context)
    for op in todo:
        source = op.operands[0]
        kind = source.type
        narrow = ir.VectorType.get(kind.shape, f32) if isinstance(kind, ir.VectorType) else f32
        with ir.InsertionPoint(op), op.location:
            middle = ir.Operation.create("arith.truncf", results=[narrow], operands=[source]).result
        op.operands[0] = middle


# bf16 arithmetic as f32 arithmetic between conversions, and the conversions as integer
# arithmetic (LLVM, promoting a bf16 multiply, rounds its result through `__truncsfbf2`).
BF16_IN_F32 = (
    "builtin.module(func.func(math-extend-to-supported-types{target-type=f32},"
    "arith-emulate-unsupported-floats{source-types=bf16 target-type=f32},"
    "arith-expand{include-bf16=true}))"
)


def _is(kind: ir.Type, element: type) -> bool:
    """Whether `kind` is a scalar of the `element` type class, or a shaped type of them."""
    return isinstance(kind.element_type if isinstance(kind, ir.ShapedType) else kind, element)


def _yields_bf16(module: ir.Module) -> bool:
    """Whether any op yields bf16 values (a conversion to bf16, or bf16 arithmetic)."""
    found = []

    def visit(op):
        if any(_is(r.type, ir.BF16Type) for r in op.results):
            found.append(op)
            return ir.WalkResult.INTERRUPT
        return ir.WalkResult.ADVANCE

    module.operation.walk(visit)
    return bool(found)


def convert_to_llvm(module: ir.Module, *, pool_role: str = "own") -> ir.Module:
    """The rest of the LLVM stage: out-params, loops, deallocation, the conversion to the
    LLVM dialect, the pool (`pool.pool_allocations`'s `role`)."""
    threads = parallel_chunks(module)
    bf16_libcalls = expand_bf16_conversions(module)
    pipeline = LLVM_PIPELINE
    if threads > 1:  # kernels split into chunks: each forall an OpenMP parallel loop
        serial = "lower-affine,convert-scf-to-cf,convert-vector-to-llvm{enable-x86},finalize-memref-to-llvm,"
        assert serial in pipeline, "LLVM_PIPELINE changed: update the OpenMP variant"
        pipeline = pipeline.replace(
            serial,
            "lower-affine,func.func(scf-forall-to-parallel),"
            f"convert-scf-to-openmp{{num-threads={threads}}},"
            "convert-vector-to-llvm{enable-x86},finalize-memref-to-llvm,convert-scf-to-cf,convert-openmp-to-llvm,",
        )
    run_pipeline(module, pipeline, stage="llvm", reproduce="cpu-llvm")
    if threads > 1:
        tcomp.check_regions(module)
    amx.keep_blocks_out_of_line(module)
    avx512_dot.define_vpdpbusd(module)  # int8 kernels without AMX: the vpdpbusd intrinsic
    if bf16_libcalls:
        append_helper(module, BF16_ROUNDING_LIBCALLS)
    pool.pool_allocations(module, role=pool_role)  # heap temporaries reused from the module's own pool
    if INLINE_ENTRIES:
        inline_entries(module)
    return module


# Entry functions inlined into their C interfaces (`inline_entries`).
INLINE_ENTRIES = True


def inline_entries(module: ir.Module) -> None:
    """Each entry function `f` becomes its own C interface: `_mlir_ciface_f`, the one caller
    the runtime reaches it by, moved into `f`'s entry block and `f` renamed in its place.

    `f` takes every memref as its expanded descriptor: MobileNet-V2's `forward` has 914
    scalar arguments (130 weights). The C interface calls it with all of them, the
    ExecutionEngine adds a packed wrapper `_mlir_f` that calls it again, and LLVM's costs
    grow with the square of a call's arguments (CalledValuePropagation's solver, the DAG
    combiner's token factors, scheduling the loads of stack arguments): a 130-memref
    function that does nothing took 0.26 s to optimize. Here the interface's descriptor
    loads open `f`'s body, which then takes the interface's arguments; no call is left.
    In place, not through MLIR's inliner: that clones the body (0.2 s for MobileNet-V2's)."""
    ctx = module.context
    funcs = {}
    for op in module.body.operations:
        op = op.operation
        if op.name == "llvm.func" and len(op.regions[0].blocks):
            funcs[ir.StringAttr(op.attributes["sym_name"]).value] = op
    referenced: collections.Counter = collections.Counter()  # calls and addresses by symbol
    symbol_of = {"llvm.call": "callee", "llvm.mlir.addressof": "global_name"}

    def note(op):
        key = symbol_of.get(op.name)
        if key is not None and key in op.attributes:
            referenced[ir.FlatSymbolRefAttr(op.attributes[key]).value] += 1
        return ir.WalkResult.ADVANCE

    module.operation.walk(note)
    for name, f in funcs.items():
        wrapper = funcs.get(f"_mlir_ciface_{name}")
        if wrapper is None or len(wrapper.regions[0].blocks) != 1 or referenced[name] != 1:
            continue  # (another function calls `f`, or takes its address: it keeps its form)
        wb, fb = wrapper.regions[0].blocks[0], f.regions[0].blocks[0]
        ops = [o.operation for o in wb.operations]
        call, ret = ops[-2:] if len(ops) >= 2 else (None, None)
        if (
            call is None
            or call.name != "llvm.call"
            or "callee" not in call.attributes
            or ir.FlatSymbolRefAttr(call.attributes["callee"]).value != name
            or len(call.results)
            or ret.name != "llvm.return"
            or len(ret.operands)
            or len(call.operands) != len(fb.arguments)
        ):
            continue
        with ctx, ir.Location.unknown():
            n = len(fb.arguments)
            anchor = next(iter(fb.operations)).operation
            for a in wb.arguments:
                a.replace_all_uses_with(fb.add_argument(a.type, ir.Location.unknown()))
            for o in ops[:-2]:  # the descriptor loads, in order, ahead of the body
                o.move_before(anchor)
            for a, v in zip(list(fb.arguments)[:n], list(call.operands)):
                a.replace_all_uses_with(v)
            for _ in range(n):
                fb.erase_argument(0)
            for key in ("function_type", "arg_attrs"):
                if key in wrapper.attributes:
                    f.attributes[key] = wrapper.attributes[key]
                elif key in f.attributes:
                    del f.attributes[key]
            wrapper.erase()
            f.attributes["sym_name"] = ir.StringAttr.get(f"_mlir_ciface_{name}")


def parallel_chunks(module: ir.Module) -> int:
    """The most iterations of a top-level `scf.forall` of any function (a kernel split into
    chunks, one a thread: `passes/parallel.py`; a kernel `dedup` shared is a function of
    its own); 1 when there is none."""
    most = 1
    for op in kernel_ops(module):
        if op.name == "scf.forall" and "staticUpperBound" in op.attributes:
            most = max(most, math.prod(ir.DenseI64ArrayAttr(op.attributes["staticUpperBound"])))
    return most


def uses_openmp(module: ir.Module) -> bool:
    """The LLVM-dialect module has OpenMP parallel regions (its code calls an OpenMP runtime)."""
    return any(ops_named(f.operation, "omp.parallel") for f in module.body.operations)


def openmp_library() -> str:
    """The OpenMP runtime parallel code runs on where tcomp (`backends/cpu/tcomp.c`, ours:
    iterations claimed, not assigned) cannot be built or `TILECRAFT_OPENMP=iomp5` asks for
    it: the one the project installs (PyPI's `intel-openmp`: libiomp5, LLVM's `__kmpc_*`
    ABI; torch's libgomp is not that ABI)."""
    import importlib.metadata

    try:
        dist = importlib.metadata.distribution("intel-openmp")
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError("multi-threaded code needs the OpenMP runtime: pip install intel-openmp") from None
    for f in dist.files or ():
        if f.name == "libiomp5.so":
            return str(dist.locate_file(f).resolve())
    raise RuntimeError("the intel-openmp package has no libiomp5.so")


def vectorize_script(*, vectorize: bool = True, pads_in_place: bool = True) -> str:
    """Clean up the vectorized tiles, hoist accumulators, bufferize, lower vectors."""
    vec = (
        f"""    %fv = transform.structured.match ops{{["func.func"]}} in %root : ({ANY}) -> {ANY}
    transform.apply_patterns to %fv {{
      transform.apply_patterns.vector.transfer_permutation_patterns
      transform.apply_patterns.vector.reduction_to_contract
      transform.apply_patterns.vector.sink_ops
      transform.apply_patterns.vector.cast_away_vector_leading_one_dim
      transform.apply_patterns.vector.drop_unit_dims_with_shape_cast
      transform.apply_patterns.canonicalization
      transform.apply_patterns.tensor.fold_tensor_subset_ops_into_vector_transfers
      transform.apply_patterns.linalg.tiling_canonicalization
    }} : {ANY}
    transform.apply_cse to %fv : {ANY}
    %loops = transform.structured.match ops{{["scf.for"]}} in %root : ({ANY}) -> {ANY}
    transform.apply_licm to %loops : {ANY}
    transform.loop.hoist_loop_invariant_subsets %loops : {ANY}
    // a read of a hoisted accumulator's last write: forwarded, also through the rank-reducing
    // slices of a batched matmul's unit batch (panels: its zero fill and its epilogue's read
    // stay in registers instead of a scratch tile written and read back)
    transform.apply_patterns to %fv {{
      transform.apply_patterns.canonicalization
      transform.apply_patterns.tensor.fold_tensor_subset_ops_into_vector_transfers
      transform.apply_patterns.vector.cast_away_vector_leading_one_dim
    }} : {ANY}
    transform.apply_cse to %fv : {ANY}
"""
        if vectorize
        else ""
    )
    pads = (
        f"""    %pads = transform.structured.match ops{{["tensor.pad"]}} in %root : ({ANY}) -> {ANY}
    %dps = transform.structured.rewrite_in_destination_passing_style %pads : ({ANY}) -> {ANY}
    %fe = transform.structured.match ops{{["func.func"]}} in %root : ({ANY}) -> {ANY}
    transform.bufferization.eliminate_empty_tensors %fe : {ANY}
"""
        if pads_in_place
        else ""
    )
    return tiling.named_sequence(
        vec
        + pads
        + f"""    %b = transform.bufferization.one_shot_bufferize layout{{IdentityLayoutMap}} %root
        {{bufferize_function_boundaries = true, memcpy_op = "linalg.copy"}} : ({ANY}) -> {ANY}""",
        consumed=True,
    )


def lower_vectors_script(copies=()) -> str:
    """After bufferization: vectorize the tagged buffer copies (each tiled to its register
    tile first), then lower vector ops to the 1-D, LLVM-friendly form."""
    body = []
    for cid, tile, chunks in copies:
        h = f"%c{cid}"
        body.append(
            f"    {h} = transform.structured.match attributes{{{COPY_ID} = {cid} : i64}} in %root : ({ANY}) -> {ANY}"
        )
        if chunks:  # one chunk a thread, then register tiles within each
            body.append(
                f"    {h}p, {h}f = transform.structured.tile_using_forall {h} "
                f"tile_sizes [{', '.join(map(str, chunks))}] : ({ANY}) -> ({ANY}, {ANY})"
            )
            h = f"{h}p"
        loops = sum(1 for t in tile if t)
        t_h = h
        if loops:
            types = ", ".join([ANY] * (loops + 1))
            body.append(
                f"    {h}t, {h}l:{loops} = transform.structured.tile_using_for {h} "
                f"tile_sizes [{', '.join(map(str, tile))}] : ({ANY}) -> ({types})"
            )
            t_h = f"{h}t"
        body.append(f"    transform.structured.vectorize {t_h} : {ANY}")
    return tiling.named_sequence(
        "\n".join(body)
        + f"""
    %g = transform.structured.match ops{{["func.func"]}} in %root : ({ANY}) -> {ANY}
    transform.apply_patterns to %g {{
      transform.apply_patterns.vector.lower_contraction lowering_strategy = "outerproduct"
      transform.apply_patterns.vector.transfer_permutation_patterns
      transform.apply_patterns.vector.reorder_multi_reduction_dims lowering_strategy = "innerparallel"
      transform.apply_patterns.vector.multi_reduction_flattening lowering_strategy = "innerparallel"
      transform.apply_patterns.vector.multi_reduction_unrolling lowering_strategy = "innerparallel"
      transform.apply_patterns.vector.split_transfer_full_partial split_transfer_strategy = "linalg-copy"
      transform.apply_patterns.vector.transfer_to_scf max_transfer_rank = 1 full_unroll = true
      transform.apply_patterns.vector.lower_transfer max_transfer_rank = 1
      transform.apply_patterns.vector.lower_outerproduct
    }} : {ANY}
    transform.apply_patterns to %g {{
      transform.apply_patterns.vector.lower_shape_cast
      transform.apply_patterns.vector.lower_transpose lowering_strategy = "shuffle_1d"
    }} : {ANY}
""",
        consumed=False,
    )


# ---------------------------------------------------------------------- llvm → machine
# LLVM codegen options for every compile in this process, set once (a repeated option is an
# error LLVM reports on stderr). Store merging in the SelectionDAG combiner is
# quadratic in a block's stores, and the scalar loops LLVM unrolls fully (a stride-2
# depthwise convolution's taps) spent most of a MobileNet-V2 compile there
# (docs/measurements.md, compile time); our kernels store whole vectors already.
LLVM_OPTIONS = ("-combiner-store-merging=0",)
# LLVM's optimization level for compiled code: our kernels arrive vectorized, tiled and
# unrolled, and -O3's extra passes over -O2 cost LLVM time with no run-time gain on the zoo
# (docs/measurements.md, compile time).
OPT_LEVEL = 2
_llvm_options_set = False


def set_llvm_options() -> None:
    """Pass `LLVM_OPTIONS` to the bundled LLVM (its C API's command-line parser), once."""
    global _llvm_options_set
    if _llvm_options_set:
        return
    _llvm_options_set = True
    import ctypes

    import torch_mlir._mlir_libs as libs

    try:
        lib = ctypes.CDLL(os.path.join(os.path.dirname(libs.__file__), "libTorchMLIRAggregateCAPI.so"))
        parse = lib.LLVMParseCommandLineOptions
    except (OSError, AttributeError):  # another build of the bindings: its defaults stand
        return
    args = [b"tilecraft", *(o.encode() for o in LLVM_OPTIONS)]
    parse(len(args), (ctypes.c_char_p * len(args))(*args), None)


def jit(module: ir.Module, *, opt_level: int = OPT_LEVEL):
    """JIT for the host. Code with AMX kernels first asks Linux for the tile state (this
    process only; a shared library's user must do the same, see `backends/cpu/amx.py`)."""
    from torch_mlir.execution_engine import ExecutionEngine

    set_llvm_options()

    if amx.uses_amx(module):
        amx.enable()
    if not uses_openmp(module):
        return ExecutionEngine(module, opt_level=opt_level)
    if tcomp.library() is None:
        return ExecutionEngine(module, opt_level=opt_level, shared_libs=[openmp_library()])
    engine = ExecutionEngine(module, opt_level=opt_level)
    tcomp.bind(engine)
    return engine


def emit_object(module: ir.Module, path: str, *, opt_level: int = OPT_LEVEL) -> None:
    """The module's object file. The engine compiles lazily, and its dump compiles by
    looking up each function's wrapper (`_mlir_<name>`) and gives up, writing nothing, on
    the first it does not find: an internal function LLVM inlined everywhere and dropped
    (the `vpdpbusd` helper) has none. One lookup of an exported function compiles the
    whole module first."""
    engine = jit(module, opt_level=opt_level)
    exported = next(_defined_exported(module), None)
    if exported is not None:
        engine.raw_lookup(exported)
    engine.dump_to_object_file(path)
    if not os.path.exists(path):
        raise RuntimeError(f"LLVM wrote no object file for the module (to {path})")


def _defined_exported(module: ir.Module):
    """Names of the LLVM-dialect module's function definitions with external linkage."""
    for op in module.body.operations:
        op = op.operation
        if op.name != "llvm.func" or not len(op.regions[0].blocks):
            continue
        linkage = str(op.attributes["linkage"]) if "linkage" in op.attributes else "#llvm.linkage<external>"
        if linkage == "#llvm.linkage<external>":
            yield ir.StringAttr(op.attributes["sym_name"]).value


def emit_shared_library(module: ir.Module, path: str, *, opt_level: int = OPT_LEVEL) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        obj = os.path.join(tmp, "kernel.o")
        emit_object(module, obj, opt_level=opt_level)
        link_shared(path, [obj], openmp=uses_openmp(module))


def link_shared(path: str, objects: list[str], *, openmp: bool, in_process: bool = False) -> None:
    """Link object files into a shared library (`-Bsymbolic`: its calls between objects
    stay inside it); the OpenMP runtime where the code has parallel regions. A library for
    elsewhere (`--emit so`) carries tcomp's object, its symbols hidden (it needs nothing we
    built), and is never unloaded (`-z nodelete`: tcomp's workers run its code). One this
    process loads at once (`in_process`: the two-core JIT's) links the shared tcomp this
    process holds, so every compiled function shares one pool of workers. Without tcomp:
    libiomp5, by rpath."""
    link = ["-lm"]
    if openmp and in_process and (lib := tcomp.library()) is not None:
        tcomp.hold()
        link += [f"-L{os.path.dirname(lib)}", f"-l:{os.path.basename(lib)}", f"-Wl,-rpath,{os.path.dirname(lib)}"]
    elif openmp and (own := tcomp.static_object()) is not None:
        objects, link = [*objects, own], [*link, "-pthread", "-Wl,-z,nodelete"]
    elif openmp:
        lib_dir = os.path.dirname(openmp_library())
        link += [f"-L{lib_dir}", "-liomp5", f"-Wl,-rpath,{lib_dir}"]
    subprocess.run(["cc", "-shared", "-Wl,-Bsymbolic", "-o", path, *objects, *link], check=True, capture_output=True)


class ParallelJit:
    """The LLVM stage and the JIT of a large module on two cores (`backends/cpu/split.py`):
    `start` moves the second half of the entry function's kernels into a module of their
    own and forks a child that lowers and compiles it to an object file, while this
    process lowers the rest (`module`, in place: the LLVM stage); `finish` compiles the
    rest, waits for the child and links both objects into a shared library in `self.dir`
    (removed by `close`). A child that fails leaves its half to this process, which then
    compiles it itself (and reports its errors as the whole-module path would)."""

    HALF = "__tc_half"

    def __init__(self, module: ir.Module, other: ir.Module, pid: int, tmp: str, local: list[str]):
        self.module, self.other, self.dir = module, other, tmp
        self.local = local  # the half's copies of the rest's symbols: local to its object
        self._child = [pid]  # (the finalizer's: the child reaped once, by whoever is first)
        # dropped without `close` (an error between the stages): no child or files left
        self._cleanup = weakref.finalize(self, _reap, self._child, tmp)

    @property
    def pid(self) -> int | None:
        return self._child[0]

    @classmethod
    def start(cls, module: ir.Module, func_name: str) -> ParallelJit | None:
        """Split and fork where it pays (two cores, fork, a large entry function);
        otherwise None, and nothing changed but the stage's first steps."""
        from tilecraft.backends.cpu import split

        prepare_llvm(module)
        if split.cores() < 2 or not hasattr(os, "fork") or not all(map(shutil.which, ("cc", "objcopy"))):
            return None
        fn = next((f for f in public_funcs(module) if ir.StringAttr(f.attributes["sym_name"]).value == func_name), None)
        ops = split.plan(fn) if fn is not None else None
        half = f"{func_name}{cls.HALF}"
        other = split.outline(module, fn, ops, half) if ops else None
        if other is None:
            return None
        local = split.copied(other, half)
        set_llvm_options()  # (the child inherits them)
        text = other.operation.get_asm(assume_verified=True)
        tmp = tempfile.mkdtemp(prefix="tilecraft-jit-")
        pid = os.fork()
        if pid == 0:  # the child: its half to an object file, then gone without cleanup
            code = 1  # (a failure is reported by the parent's own attempt at the half)
            try:
                _compile_half(text, tmp)
                code = 0
            finally:
                os._exit(code)
        return cls(module, other, pid, tmp, local)

    def lower(self) -> None:
        """This process's half to the LLVM dialect (the LLVM stage); its pool serves both."""
        convert_to_llvm(self.module, pool_role="host")

    def finish(self, *, in_process: bool = False) -> str:
        """Compile this process's half, wait for the child's, link; the library's path
        (`in_process`: this process loads it, see `link_shared`)."""
        a = os.path.join(self.dir, "rest.o")
        t0 = time.monotonic()
        emit_object(self.module, a)
        status = self._wait(deadline=time.monotonic() + self.PATIENCE * (time.monotonic() - t0) + self.GRACE)
        b = os.path.join(self.dir, "half.o")
        flags = os.path.join(self.dir, "half.flags")
        if status != 0 or not os.path.exists(flags):  # the child failed: this half here
            convert_to_llvm(self.other, pool_role="guest")
            emit_object(self.other, b)
            half_amx, half_openmp = amx.uses_amx(self.other), uses_openmp(self.other)
        else:
            with open(flags) as f:
                half_amx, half_openmp = (w == "1" for w in f.read().split())
        if half_amx:
            amx.enable()
        # the JIT's wrappers of the half's functions (`_mlir_<name>`), its ORC init and
        # deinit functions and the functions and globals copied into it exist in both
        # objects: the half's stay local to it
        copies = [f"--localize-symbol={n}" for n in self.local]
        subprocess.run(
            ["objcopy", "-w", "--localize-symbol=_mlir_*", "--localize-symbol=__orc_*", *copies, b],
            check=True,
            capture_output=True,
        )
        path = os.path.join(self.dir, "model.so")
        link_shared(path, [a, b], openmp=uses_openmp(self.module) or half_openmp, in_process=in_process)
        return path

    # How long the child may take beyond this process's own half: `PATIENCE` times as long,
    # then `GRACE` seconds more. A child stuck past that (a lock another thread held when
    # it was forked) is killed, and its half compiled here.
    PATIENCE, GRACE = 3, 10.0

    def _wait(self, deadline: float) -> int:
        """The child's exit status; -1 where it was killed once `deadline` passed (or
        someone else reaped it)."""
        pause = 0.001
        while True:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # (reaped elsewhere: SIGCHLD ignored, a waitpid(-1))
                self._child[0] = None
                return -1
            if pid:
                self._child[0] = None
                return status
            if time.monotonic() > deadline:
                _reap(self._child, None)
                return -1
            time.sleep(pause)
            pause = min(pause * 2, 0.02)

    def close(self) -> None:
        """Kill and reap the child if it still runs; remove the files."""
        self._cleanup()


def _reap(child: list, tmp: str | None) -> None:
    """Kill and reap the child `child[0]` (if any); remove `tmp` (if given)."""
    pid, child[0] = child[0], None
    if pid is not None:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)


def _compile_half(text: str, tmp: str) -> None:
    """(In the forked child.) Parse the half in a context of its own, single-threaded (the
    parent's thread pool did not survive the fork), lower and compile it."""
    ctx = ir.Context()
    ctx.enable_multithreading(False)
    ctx.allow_unregistered_dialects = True
    module = ir.Module.parse(text, ctx)
    convert_to_llvm(module, pool_role="guest")
    emit_object(module, os.path.join(tmp, "half.o"))
    with open(os.path.join(tmp, "half.flags"), "w") as f:
        f.write(f"{int(amx.uses_amx(module))} {int(uses_openmp(module))}")


def emit_assembly(module: ir.Module, *, opt_level: int = OPT_LEVEL) -> str:
    """Host assembly of exactly the code the JIT runs: the ExecutionEngine's object file,
    disassembled by binutils' objdump (AT&T syntax). llvmlite cannot be used here: its LLVM
    is older than the bundled MLIR's and rejects the LLVM IR text this MLIR prints."""
    with tempfile.TemporaryDirectory() as tmp:
        obj = os.path.join(tmp, "kernel.o")
        emit_object(module, obj, opt_level=opt_level)
        proc = subprocess.run(["objdump", "-d", "--no-show-raw-insn", obj], capture_output=True, text=True, check=True)
    return proc.stdout.replace(obj, "kernel.o")  # (objdump names its input: not a temporary path)
