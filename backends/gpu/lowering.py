"""GPU lowering stages: decided → tiled → gpu → nvvm, then LLVM IR, PTX and a cubin.

On the backends floor: the GPU backend's stages, run after every target-neutral pass.
- `to_tiled` (tensors): each kernel's sink is tiled by its `GpuSchedule` into an
  `scf.forall` over thread blocks (`#gpu.block<x/y/z>`), its fused members are fused into
  the block tile, then the block tile is tiled again into a forall over threads
  (`#gpu.thread<x/y/z>`) and the members fused into each thread's tile. Schedules come
  from the caller, else the ops' `tc.gpu_schedule` attributes, else the heuristic;
  kernels (fusion groups) from the module's `tc.gpu_kernels` records, else the largest legal
  groups.
- `to_gpu` (buffers): one-shot bufferization; what bufferization leaves outside a kernel
  (copies into slices, pads' fills) is tiled as elementwise kernels of its own; each
  top-level forall becomes a `gpu.launch` (`transform.gpu.map_forall_to_blocks`,
  `map_nested_forall_to_threads`), a thread's own temporaries live on its stack, and
  `gpu-kernel-outlining` moves each launch body into a `gpu.module` of its own. The host
  function is then allocations, views and `gpu.launch_func`s only (what
  `backends/gpu/runtime.py` replays).
- `to_nvvm`: `nvvm-attach-target` and `convert-gpu-to-nvvm` in every kernel module.
- `kernels_module`: every kernel in one LLVM-dialect module (kernel i named after its
  `gpu.module`), which `backends/gpu/ptx.py` turns into LLVM IR, PTX and a cubin.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from torch_mlir import ir
from torch_mlir.dialects import memref as memref_d

from tilecraft.backends.cpu import lowering as cpu_lowering
from tilecraft.backends.gpu import schedule as gs
from tilecraft.dialects import opinfo, tc
from tilecraft.dialects.irutil import ANY, apply_transform, named_sequence, ops_named, run_pipeline, snapshot, walk_ops
from tilecraft.passes import fusion

KERNEL = "tc.kernel"  # on a top-level forall: the kernel's number (which launch it becomes)
SINK = "tc.sink"  # on a kernel's block forall: its sink's op id (none on a leftover's)
KERNEL_OPS = "tc.kernel_ops"  # on the outlined gpu.func: the op ids it computes
_XYZ = ("x", "y", "z")
# ops that compute: after the gpu stage none may stay in the host function
HOST_COMPUTE = ("linalg.", "scf.", "memref.copy", "memref.load", "memref.store", "vector.", "cf.")

BUFFERIZE = (
    "builtin.module(one-shot-bufferize{bufferize-function-boundaries=true "
    "function-boundary-type-conversion=identity-layout-map}, canonicalize, cse)"
)
# vector code → scalar and 1-D vector ops, in the kernels marked `tc.simt` (the others'
# contractions become tensor-core ops after outlining)
SIMT = "tc.simt"
LOWER_VECTORS = named_sequence(
    f"""    %g = transform.structured.match attributes{{{SIMT}}} in %root : ({ANY}) -> {ANY}
    transform.apply_patterns to %g {{
      transform.apply_patterns.vector.lower_contraction lowering_strategy = "outerproduct"
      transform.apply_patterns.vector.transfer_permutation_patterns
      transform.apply_patterns.vector.transfer_to_scf max_transfer_rank = 1 full_unroll = true
      transform.apply_patterns.vector.lower_transfer max_transfer_rank = 1
      transform.apply_patterns.vector.lower_outerproduct
    }} : {ANY}
    transform.apply_patterns to %g {{
      transform.apply_patterns.vector.lower_shape_cast
      transform.apply_patterns.vector.lower_transpose lowering_strategy = "shuffle_1d"
    }} : {ANY}""",
    consumed=False,
)
# in a kernel module whose warps contract m16n8k16 fragments: `nvgpu.mma.sync` (the pass
# only runs there: it rejects the scalar f32↔f16 casts of other kernels)
TENSOR_CORES = "gpu.module(convert-vector-to-gpu{use-nvgpu=true}, canonicalize, cse)"
OUTLINE = (
    "builtin.module(func.func(convert-linalg-to-loops), canonicalize, cse, "
    "gpu-launch-sink-index-computations, gpu-kernel-outlining, func.func(canonicalize))"
)
# after the tensor-core conversion (which rejects index arithmetic in its operands' slices)
LOWER_AFFINE = "builtin.module(lower-affine, canonicalize, cse)"


def _nvvm_pipeline(arch: str, features: str) -> str:
    return (
        f"builtin.module(nvvm-attach-target{{chip={arch} features={features}}}, "
        "gpu.module(expand-strided-metadata, lower-affine, convert-vector-to-scf, convert-scf-to-cf, "
        "convert-vector-to-llvm, convert-nvgpu-to-nvvm, "
        "convert-gpu-to-nvvm{index-bitwidth=64}), reconcile-unrealized-casts)"
    )


# ------------------------------------------------------------------------ tiled stage
def groups_of(module: ir.Module) -> list[fusion.FusionDecision] | None:
    """The fusion groups the module's `tc.gpu_kernels` records name (None when it has none)."""
    records = tc.read_records(module, gs.GPU_KERNELS)
    return None if records is None else [fusion.FusionDecision.from_json(r) for r in records]


def _mapping(kind: str, n: int) -> str:
    return ", ".join(f"#gpu.{kind}<{a}>" for a in _XYZ[:n][::-1])


def tiling_script(kernels: list[gs.Kernel], schedules: Mapping[int, gs.GpuSchedule]) -> str:
    """Match every kernel op first (op ids stay valid), then per kernel: tile the sink over
    blocks, fuse the members into the block tile, tile again over threads and fuse the
    members into each thread's tile."""
    body: list[str] = []
    for k in kernels:
        for op in k.ops:
            body.append(
                f"    %m{op} = transform.structured.match attributes{{{tc.OP_ID} = {op} : i64}} in %root"
                f" : ({ANY}) -> {ANY}"
            )
    for k in kernels:
        s = schedules[k.sink]
        if s.mma:
            body += _mma_tiles(k, s)
            continue
        n = sum(1 for b in s.block if b)
        tiles = ", ".join(map(str, s.block))
        fused = _over_blocks(k, tiles, _mapping("block", n), body)
        thread = ", ".join(str(t if b else 0) for b, t in zip(s.block, s.thread))
        body.append(
            f"    %t{k.sink}, %tl{k.sink} = transform.structured.tile_using_forall %b{k.sink} tile_sizes [{thread}]"
            f" (mapping = [{_mapping('thread', n)}]) : ({ANY}) -> ({ANY}, {ANY})"
        )
        loop, inner = f"%tl{k.sink}", {k.sink: f"%t{k.sink}"}
        for m in k.members:
            body.append(
                f"    %g{m}, %d{m} = transform.structured.fuse_into_containing_op {fused[m]} into {loop}"
                f" : ({ANY}, {ANY}) -> ({ANY}, {ANY})"
            )
            loop, inner[m] = f"%d{m}", f"%g{m}"
        body += _register_tiles(k, inner)
    body.append(_cleanup())
    body.append(_hoist())
    return named_sequence("\n".join(body), consumed=False)


def _over_blocks(k: gs.Kernel, tiles: str, mapping: str, body: list[str]) -> dict[int, str]:
    """The sink tiled by a forall over thread blocks (`%b<sink>` the tiled op, `%bl<sink>`
    the forall, annotated with the sink's id) and the members fused into it; appends to
    `body`, returns each member's fused handle."""
    x = k.sink
    body.append(
        f"    %b{x}, %bl{x} = transform.structured.tile_using_forall %m{x} tile_sizes [{tiles}]"
        f" (mapping = [{mapping}]) : ({ANY}) -> ({ANY}, {ANY})"
    )
    body.append(f"    %p{x} = transform.param.constant {x} : i64 -> !transform.param<i64>")
    body.append(f'    transform.annotate %bl{x} "{SINK}" = %p{x} : {ANY}, !transform.param<i64>')
    loop, fused = f"%bl{x}", {}
    for m in k.members:
        body.append(
            f"    %f{m}, %c{m} = transform.structured.fuse_into_containing_op %m{m} into {loop}"
            f" : ({ANY}, {ANY}) -> ({ANY}, {ANY})"
        )
        loop, fused[m] = f"%c{m}", f"%f{m}"
    return fused


def _mma_tiles(k: gs.Kernel, s: gs.GpuSchedule) -> list[str]:
    """An f16 matmul on tensor cores: tiled over blocks, then over warps (`#gpu.warp`), the
    zero fill fused into each warp's tile; the warp's k loop in steps of 16 vectorized into
    one mixed-precision `vector.contract` (f16 operands, f32 accumulator), unrolled into
    m16n8k16 fragments (`convert-vector-to-gpu` makes each an `nvgpu.mma.sync` in the gpu
    stage); `_hoist` keeps the accumulators in registers across the k loop."""
    x = k.sink
    (bm, bn, _), (wm, wn, _) = s.block, s.thread
    out: list[str] = []
    fused = _over_blocks(k, f"{bm}, {bn}, 0", "#gpu.block<y>, #gpu.block<x>", out)
    out.append(
        f"    %t{x}, %tl{x} = transform.structured.tile_using_forall %b{x} tile_sizes [{wm}, {wn}, 0]"
        f" (mapping = [#gpu.warp<y>, #gpu.warp<x>]) : ({ANY}) -> ({ANY}, {ANY})"
    )
    loop = f"%tl{x}"
    for m in k.members:
        out.append(
            f"    %g{m}, %d{m} = transform.structured.fuse_into_containing_op {fused[m]} into {loop}"
            f" : ({ANY}, {ANY}) -> ({ANY}, {ANY})\n"
            f"    transform.structured.vectorize %g{m} : {ANY}"
        )
        loop = f"%d{m}"
    fm, fn, fk = gs.MMA_SHAPE
    out.append(
        f"    %r{x}, %rl{x} = transform.structured.tile_using_for %t{x} tile_sizes [0, 0, {fk}]"
        f" : ({ANY}) -> ({ANY}, {ANY})\n"
        f"    transform.structured.vectorize %r{x} : {ANY}\n"
        f"    transform.apply_patterns to {loop} {{\n"
        "      transform.apply_patterns.vector.transfer_permutation_patterns\n"
        "      transform.apply_patterns.vector.reduction_to_contract\n"
        "      transform.apply_patterns.vector.fold_arith_extension\n"
        "      transform.apply_patterns.canonicalization\n"
        f"    }} : {ANY}\n"
        f"    transform.apply_patterns to {loop} {{\n"
        f"      transform.apply_patterns.gpu.unroll_vectors_subgroup_mma [{fm}, {fn}, {fk}]\n"
        "      transform.apply_patterns.canonicalization\n"
        f"    }} : {ANY}"
    )
    return out


def _register_tiles(k: gs.Kernel, inner: Mapping[int, str]) -> list[str]:
    """A thread's matmul tile as rank-1 updates of a vector accumulator: its k loop tiled
    by one, the r×c×1 product and the accumulator's zero fill vectorized (hoisted into
    registers by `_hoist`), so each loaded element of A or B is used c or r times."""
    out = []
    for info in k.infos:
        if info.kind not in ("matmul", "batch_matmul") or "i1" in info.dtypes:
            continue
        h = inner[info.op_id]
        tiles = ", ".join(["0"] * (len(info.extents) - 1) + ["1"])
        out.append(
            f"    %r{info.op_id}, %rl{info.op_id} = transform.structured.tile_using_for {h} tile_sizes [{tiles}]"
            f" : ({ANY}) -> ({ANY}, {ANY})\n"
            f"    transform.structured.vectorize %r{info.op_id} : {ANY}"
        )
    for info in k.infos:
        if info.name == "linalg.fill" and any(i.kind in ("matmul", "batch_matmul") for i in k.infos):
            out.append(f"    transform.structured.vectorize {inner[info.op_id]} : {ANY}")
    return out


def _hoist() -> str:
    """Vectorized accumulators out of their k loops (a vector loop-carried value)."""
    return f"""    %fv = transform.structured.match ops{{["func.func"]}} in %root : ({ANY}) -> {ANY}
    transform.apply_patterns to %fv {{
      transform.apply_patterns.vector.transfer_permutation_patterns
      transform.apply_patterns.vector.reduction_to_contract
      transform.apply_patterns.vector.sink_ops
      transform.apply_patterns.vector.cast_away_vector_leading_one_dim
      transform.apply_patterns.vector.drop_unit_dims_with_shape_cast
      transform.apply_patterns.canonicalization
      transform.apply_patterns.tensor.fold_tensor_subset_ops_into_vector_transfers
    }} : {ANY}
    %loops = transform.structured.match ops{{["scf.for"]}} in %root : ({ANY}) -> {ANY}
    transform.apply_licm to %loops : {ANY}
    transform.loop.hoist_loop_invariant_subsets %loops : {ANY}
    transform.apply_patterns to %fv {{
      transform.apply_patterns.canonicalization
    }} : {ANY}"""


def _cleanup() -> str:
    return f"""    %fn = transform.structured.match ops{{["func.func"]}} in %root : ({ANY}) -> {ANY}
    transform.apply_patterns to %fn {{
      transform.apply_patterns.canonicalization
      transform.apply_patterns.linalg.tiling_canonicalization
    }} : {ANY}"""  # (no CSE: each thread's accumulator stays a tensor.empty of its own, not the output)


def to_tiled(
    module: ir.Module,
    schedules: Mapping[int, gs.GpuSchedule] | None = None,
    *,
    groups: list[fusion.FusionDecision] | None = None,
) -> list[gs.Kernel]:
    """decided → tiled: every kernel as a forall over blocks around a forall over threads.
    Returns the kernels (as `schedule.kernels` finds them), in op-id order."""
    groups = groups if groups is not None else groups_of(module)
    kernels = gs.kernels(module, groups)
    chosen = dict(gs.attached(module))
    chosen.update(schedules or {})
    for k in kernels:
        s = chosen.get(k.sink)
        if s is None:
            chosen[k.sink] = gs.default(k)
        else:
            gs.check(k, s)
    before = snapshot(module)
    apply_transform(module, tiling_script(kernels, chosen), stage="tiled", reproduce="gpu-tiled", before=before)
    return kernels


# -------------------------------------------------------------------------- gpu stage
def _top_level(module: ir.Module) -> list[ir.Operation]:
    out = []
    for f in module.body.operations:
        if f.operation.name == "func.func":
            out.extend(op.operation for op in f.regions[0].blocks[0].operations)
    return out


def _erase_self_copies(module: ir.Module) -> None:
    dead: list[ir.Operation] = []

    def visit(op: ir.Operation) -> None:
        if op.name in ("memref.copy", "linalg.copy") and op.operands[0] == op.operands[1]:
            dead.append(op)

    walk_ops(module.operation, visit)
    for op in dead:
        op.erase()


def _leftover_script(ops: list[ir.Operation]) -> str:
    """Structured ops bufferization left outside every kernel (copies into slices, fills
    of pads): each tiled as an elementwise kernel of its own."""
    body = []
    for n, op in enumerate(ops):
        op.attributes["tc.leftover"] = ir.IntegerAttr.get(ir.IntegerType.get_signless(64), n)
        ext = _loop_extents(op)
        par = [i for i, it in enumerate(_iterators(op)) if it == "parallel"]
        mapped = [i for i in par if ext[i] > 1][-gs.MAX_MAPPED :] or par[-1:]
        block = [0] * len(ext)
        budget = 256
        for i in reversed(mapped):
            block[i] = max(t for t in (1, 2, 4, 8, 16, 32, 64, 128, 256, ext[i]) if t <= budget and ext[i] % t == 0)
            budget = max(1, budget // block[i])
        thread = [1 if b else 0 for b in block]
        k = len(mapped)
        body.append(
            f"    %o{n} = transform.structured.match attributes{{tc.leftover = {n} : i64}} in %root"
            f" : ({ANY}) -> {ANY}\n"
            f"    %ob{n}, %obl{n} = transform.structured.tile_using_forall %o{n}"
            f" tile_sizes [{', '.join(map(str, block))}]"
            f" (mapping = [{_mapping('block', k)}]) : ({ANY}) -> ({ANY}, {ANY})\n"
            f"    %ot{n}, %otl{n} = transform.structured.tile_using_forall %ob{n} tile_sizes"
            f" [{', '.join(map(str, thread))}] (mapping = [{_mapping('thread', k)}]) : ({ANY}) -> ({ANY}, {ANY})"
        )
    return named_sequence("\n".join(body), consumed=False)


def _iterators(op: ir.Operation) -> list[str]:
    if "iterator_types" in op.attributes:
        return [str(a).split("<")[-1].rstrip(">") for a in ir.ArrayAttr(op.attributes["iterator_types"])]
    return ["parallel"] * len(_loop_extents(op))


def _loop_extents(op: ir.Operation) -> list[int]:
    if op.name in ("linalg.copy", "linalg.fill", "linalg.map"):
        return list(ir.ShapedType(op.operands[-1].type).shape)
    return list(opinfo.describe(op, 0).extents)


def map_to_launches(module: ir.Module) -> list[int | None]:
    """Every top-level forall → a `gpu.launch` with its thread foralls distributed.
    Returns, per launch in program order, the sink op id of its kernel (None: a leftover
    copy or fill)."""
    foralls = [op for op in _top_level(module) if op.name == "scf.forall"]
    sinks = [ir.IntegerAttr(f.attributes[SINK]).value if SINK in f.attributes else None for f in foralls]
    body = []
    for n, forall in enumerate(foralls):
        forall.attributes[KERNEL] = ir.IntegerAttr.get(ir.IntegerType.get_signless(64), n)
        dims = [1, 1, 1]

        def visit(op: ir.Operation, dims=dims) -> None:
            if op.name != "scf.forall" or "mapping" not in op.attributes:
                return
            maps = [str(a) for a in ir.ArrayAttr(op.attributes["mapping"])]
            warps = all(m.startswith("#gpu.warp") for m in maps)
            if not warps and not all(m.startswith("#gpu.thread") for m in maps):
                return
            ubs = list(ir.DenseI64ArrayAttr(op.attributes["staticUpperBound"]))
            for m, ub in zip(maps, ubs):
                d = _XYZ.index(m.split("<")[1].rstrip(">"))
                dims[d] = max(dims[d], ub * (gs.WARP if warps and d == 0 else 1))

        walk_ops(forall, visit)
        if math.prod(dims) > gs.MAX_THREADS:
            raise gs.GpuScheduleError(f"kernel {n}: {dims} threads per block (at most {gs.MAX_THREADS})")
        body.append(
            f"    %k{n} = transform.structured.match attributes{{{KERNEL} = {n} : i64}} in %root"
            f" : ({ANY}) -> {ANY}\n"
            f"    %l{n} = transform.gpu.map_forall_to_blocks %k{n} generate_gpu_launch : ({ANY}) -> {ANY}\n"
            f"    transform.gpu.map_nested_forall_to_threads %l{n} block_dims = [{', '.join(map(str, dims))}]"
            f" : ({ANY}) -> {ANY}"
        )
    if body:
        apply_transform(module, named_sequence("\n".join(body), consumed=False), stage="gpu", reproduce="gpu-launch")
    return sinks


def _private_allocs_on_stack(module: ir.Module) -> None:
    """A thread's temporaries (a fused member's tile) as `memref.alloca`: registers or
    local memory, never a device-heap `malloc`."""
    allocs: list[ir.Operation] = []

    def visit(op: ir.Operation) -> None:
        if op.name != "gpu.launch":
            return

        def inner(o: ir.Operation) -> None:
            if o.name == "memref.alloc":
                allocs.append(o)

        walk_ops(op, inner)

    walk_ops(module.operation, visit)
    for op in allocs:
        with ir.InsertionPoint(op), op.location:
            new = memref_d.AllocaOp(op.results[0].type, [], [])
        op.results[0].replace_all_uses_with(new.result)
        op.erase()


def to_kernels(module: ir.Module, *, tensor_cores: bool = True) -> None:
    """tiled → buffers: bufferize (arguments read-only: compiled code never writes into
    the caller's inputs or the bound weights), warps' m16n8k16 contractions as
    `nvgpu.mma.sync` (unless `tensor_cores` is off: the CPU emulation runs them as vector
    code), and tile what bufferization left outside every kernel as kernels of their own.
    Every computation is then inside a top-level forall over blocks (the input of
    `map_to_launches`, and of the CPU emulation)."""
    before = snapshot(module)
    cpu_lowering.mark_arguments_read_only(module)
    run_pipeline(module, BUFFERIZE, stage="gpu", reproduce="gpu-launch", before=before)
    for op in _top_level(module):
        if op.name == "scf.forall" and not (tensor_cores and ops_named(op, "vector.contract") and _warps(op)):
            op.attributes[SIMT] = ir.UnitAttr.get()
    apply_transform(module, LOWER_VECTORS, stage="gpu", reproduce="gpu-launch", before=before)
    _erase_self_copies(module)
    _copies_as_linalg(module)
    leftovers = [op for op in _top_level(module) if op.name.startswith("linalg.")]
    if leftovers:
        apply_transform(module, _leftover_script(leftovers), stage="gpu", reproduce="gpu-launch", before=before)


def _warps(kernel: ir.Operation) -> bool:
    """The kernel (a top-level forall) holds a forall over warps."""
    foralls = [f for f in ops_named(kernel, "scf.forall") if "mapping" in f.attributes]
    return any("#gpu.warp" in str(f.attributes["mapping"]) for f in foralls)


def to_gpu(module: ir.Module) -> list[int | None]:
    """tiled → gpu: bufferize, leftovers as kernels, foralls as launches, outlined.
    Returns, per launch in program order, its kernel's sink op id (None: a leftover)."""
    before = snapshot(module)
    to_kernels(module)
    sinks = map_to_launches(module)
    stray = [op.name for op in _top_level(module) if op.name.startswith(HOST_COMPUTE)]
    if stray:
        raise gs.GpuScheduleError(f"ops left outside every kernel: {', '.join(sorted(set(stray)))}")
    _private_allocs_on_stack(module)
    run_pipeline(module, OUTLINE, stage="gpu", reproduce="gpu-launch", before=before)
    for g in _gpu_modules(module):
        if ops_named(g, "vector.contract"):
            run_pipeline(g, TENSOR_CORES, stage="gpu", reproduce="gpu-launch", before=before)
    run_pipeline(module, LOWER_AFFINE, stage="gpu", reproduce="gpu-launch", before=before)
    return sinks


def _gpu_modules(module: ir.Module) -> list[ir.Operation]:
    return [op.operation for op in module.body.operations if op.operation.name == "gpu.module"]


def emulate_on_cpu(module: ir.Module) -> ir.Module:
    """The tiled module's kernels run as loops on the host (each forall sequential), for
    checking tiling, fusion and bufferization against eager where no GPU is: `to_kernels`,
    then foralls → for loops and the CPU backend's LLVM stage. Returns the LLVM-dialect
    module (`backends/cpu/lowering.jit` runs it)."""
    to_kernels(module, tensor_cores=False)
    run_pipeline(module, "builtin.module(func.func(scf-forall-to-for))", stage="emulate")
    return cpu_lowering.to_llvm(module)


def _copies_as_linalg(module: ir.Module) -> None:
    """Top-level `memref.copy` → `linalg.copy` (tiled into a kernel like any op)."""
    from torch_mlir.dialects import linalg

    copies = [op for op in _top_level(module) if op.name == "memref.copy"]
    for op in copies:
        with ir.InsertionPoint(op), op.location:
            linalg.copy(op.operands[0], outs=[op.operands[1]])
        op.erase()


# ------------------------------------------------------------------------- nvvm stage
def to_nvvm(module: ir.Module, *, arch: str, features: str) -> None:
    """gpu → nvvm: every kernel module in the LLVM dialect with NVVM intrinsics."""
    run_pipeline(module, _nvvm_pipeline(arch, features), stage="nvvm", reproduce="gpu-nvvm")


def kernels_module(module: ir.Module) -> str:
    """Every kernel of an nvvm-stage module in one LLVM-dialect module: kernel functions
    renamed after their `gpu.module`, shared declarations once."""
    out: list[str] = []
    seen: set[str] = set()
    for g in module.body.operations:
        g = g.operation
        if g.name != "gpu.module":
            continue
        gname = ir.StringAttr(g.attributes["sym_name"]).value
        for op in g.regions[0].blocks[0].operations:
            op = op.operation
            sym = ir.StringAttr(op.attributes["sym_name"]).value if "sym_name" in op.attributes else None
            text = str(op)
            if "gpu.kernel" in op.attributes:  # (renamed in the text: the module keeps its symbols)
                text = text.replace(f"@{sym}(", f"@{gname}(", 1)
                sym = gname
            elif sym in seen:
                continue
            if sym:
                seen.add(sym)
            out.append(text)
    return "module {\n" + "\n".join(out) + "\n}\n"
