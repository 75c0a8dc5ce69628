"""The driver: the stage loop from a model spec to a callable, an artifact or IR text.

Reads a model spec (zoo name, `file.py:factory`, `.mlir`), writes what `emit` asks for.
Every stage's IR can be dumped (`dump_ir_dir`). `run_and_check` is what `tilecraft run`
reports: compiled output against PyTorch eager (or, for `.mlir` input, against the same
module lowered naively to scalar loops) and median latencies side by side.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence

import torch

from tilecraft import frontend, gcpause
from tilecraft.backends.cpu import lowering, runtime
from tilecraft.backends.cpu import schedule as tiling
from tilecraft.backends.cpu.backend import CpuBackend, CpuOptions
from tilecraft.backends.cpu.schedule import TileDecision
from tilecraft.backends.cpu.target import Target
from tilecraft.dialects import tc
from tilecraft.dialects.irutil import PipelineError, replace_file
from tilecraft.passes.base import ModulePass
from tilecraft.passes.depthwise import DepthwiseTapsPass
from tilecraft.passes.drop_empty_ops import DropEmptyOpsPass
from tilecraft.passes.drop_unit_reads import DropUnitReadsPass
from tilecraft.passes.fold_unit_dims import FoldUnitDimsPass
from tilecraft.passes.fusion import FusePass
from tilecraft.passes.im2col import Im2colPass
from tilecraft.passes.inline_broadcasts import InlineBroadcastsPass
from tilecraft.passes.pad_weights import PadWeightsPass
from tilecraft.passes.panel_weights import PanelEpiloguesPass, PanelWeightsPass
from tilecraft.passes.parallel import ParallelizePass
from tilecraft.passes.precision import PrecisionPass
from tilecraft.passes.sink_expand_shapes import SinkExpandShapesPass
from tilecraft.passes.sink_extract_slices import SinkExtractSlicesPass
from tilecraft.passes.sink_transposes import SinkTransposesPass
from tilecraft.passes.split_ragged import SplitRaggedPass
from tilecraft.passes.subpixel import SubpixelConvPass

STAGES = ("linalg", "decided", *CpuBackend.stages)  # IR stages `--emit` can stop after
EMITS = (*STAGES, "asm", "obj", "so", "jit")
RTOL, ATOL = 1e-4, 1e-5
# Half-precision outputs are compared at their own resolution (torch.testing's defaults):
# one rounding of an f32 value that differs from eager's in its last bits moves a bf16
# result by one unit in the last place (2^-8 relative), e.g. a softmax computed with
# another exp approximation. Never tighter than what the caller asked for.
LOW_PRECISION_RTOL = {torch.bfloat16: 1.6e-2, torch.float16: 1e-3}


class DriverError(ValueError):
    pass


@dataclasses.dataclass
class Compiled:
    imported: frontend.Imported
    emit: str
    stage_seconds: dict[str, float]
    text: str | None = None  # IR or assembly for text emits
    path: str | None = None  # written artifact (obj, so, or text with -o)
    fn: runtime.CompiledFunction | None = None  # for emit="jit"
    choices: list = dataclasses.field(default_factory=list)  # costmodel.search.Choice per kernel
    fusion: list = dataclasses.field(default_factory=list)  # passes.fusion.FusionDecision per fused group
    fusion_report: dict | None = None
    parallel: list = dataclasses.field(default_factory=list)  # passes.parallel.ParallelDecision per split kernel
    precision: object = None  # costmodel.precision_plan.PrecisionPlan when a precision mode was asked for
    passes: list = dataclasses.field(default_factory=list)  # every pass that ran, in order (`pipeline.spec`)

    @property
    def compile_seconds(self) -> float:
        return sum(self.stage_seconds.values())


def make_dump_dir(path: str) -> None:
    """`--dump-ir-dir`'s folder, made where missing; a path that cannot be one is a
    DriverError naming it (before anything is compiled)."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        why = "not a directory" if os.path.exists(path) else (exc.strerror or str(exc))
        raise DriverError(f"--dump-ir-dir {path}: {why}") from None


def atomic_write(path: str, data: bytes) -> None:
    """Write `path` whole or not at all (a temporary file beside it, renamed over it)."""
    if os.path.isdir(path):
        raise DriverError(f"cannot write {path}: it is a directory")
    d = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".tilecraft-")
    except OSError as exc:
        raise DriverError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make every output private
        replace_file(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@gcpause.paused()  # (a compile's objects trigger full collections: `gcpause`)
def compile_model(
    spec: str | frontend.Imported,
    *,
    target: str | Target = "cpu",
    emit: str = "jit",
    output: str | None = None,
    dump_ir_dir: str | None = None,
    decisions: Mapping[int | str, TileDecision] | None = None,
    cost_model: str | None = "lightgbm",
    vectorize: bool = True,
    tile: bool = True,
    fuse: bool = True,
    fusion: Sequence | None = None,
    precision: str | Sequence | None = None,
    error_budget: float | None = None,
    im2col: bool | None = None,
    replace: Sequence[ModulePass] = (),
    options: CpuOptions | None = None,
    threads: int = 1,
    on_step: Callable[[str, object, Compiled], None] | None = None,
) -> Compiled:
    """Compile a model spec up to `emit`. `decisions` pins tile decisions (by op id or
    kernel key); every other op gets the cost model's pick (`cost_model`: `lightgbm`, the
    shipped pretrained model; `analytical`; a model file; or `heuristic`, the hand-written
    defaults), chosen with no measurement. With `fuse`, the same cost model first
    partitions the ops into fusion groups (`costmodel/fusion_plan.py`); no fusion without a
    model. `fusion` pins the groups instead (FusionDecisions over the op ids
    `fusion.analyze` gives the module after `private_fills`; `[]`: no fusion).
    `precision` is a mode (`f32`, `bf16`, `int8`, or `auto`: chosen per layer under
    `error_budget`; `costmodel/precision_plan.py`) or a list of `PrecisionDecision`s;
    lowered layers are rewritten to bf16/int8 AMX contractions first, and their packed
    weights replace the f32 ones. `im2col` runs the canonical rewrites (convolutions as
    GEMMs, layouts, weight padding; `canonical_passes`); the default, None, does so unless
    `fusion` pins groups (pinned groups name the op ids of the module as imported).
    `replace`: passes that replace the driver's pass of the same name (to compare with a
    rewrite's option off); `options`: the backend's code-generation options. `threads`:
    kernels with enough work are split into that many chunks run on OpenMP threads
    (`costmodel/parallel_plan.py`). `on_step(name, module, compiled)` runs after every
    step (`explain` records with it).

    Every decision is attached to the module as a `tc` attribute before the backend's
    stages run (`emit="decided"` stops there): the backend reads them back, so
    `tilecraft-opt decided.mlir -p cpu-lower` reproduces the code."""
    target = target if isinstance(target, Target) else Target.parse(target)
    if emit not in EMITS:
        raise DriverError(f"unknown --emit {emit!r} (one of {', '.join(EMITS)})")
    if emit in ("obj", "so") and not output:
        raise DriverError(f"--emit {emit} needs -o OUTPUT")
    check_threads(threads)
    if dump_ir_dir:
        make_dump_dir(dump_ir_dir)
    options = options or CpuOptions(vectorize=vectorize)
    swaps = {p.name: p for p in replace}
    times: dict[str, float] = {}
    imported = spec if isinstance(spec, frontend.Imported) else None
    done = Compiled(imported, emit, times)
    module = imported.module if imported is not None else None

    def step(name: str, fn: Callable[[], object]):
        t0 = time.perf_counter()
        result = fn()
        times[name] = times.get(name, 0.0) + time.perf_counter() - t0
        if on_step is not None:  # (the frontend step: its result holds the module)
            on_step(name, module if module is not None else getattr(result, "module", None), done)
        if dump_ir_dir and name in STAGES:
            os.makedirs(dump_ir_dir, exist_ok=True)
            path = os.path.join(dump_ir_dir, f"{STAGES.index(name) + 1:02d}-{name}.mlir")
            atomic_write(path, str(module).encode())
        return result

    def run(p: ModulePass) -> None:
        p = swaps.get(p.name, p)
        imported.params[:] = p.run(module, imported.params)
        verify(module, p.name)  # a broken module is an error here, not a crash in a later stage
        done.passes.append(p)

    def wanted(stage: str) -> bool:
        return emit not in STAGES or STAGES.index(stage) <= STAGES.index(emit)

    if imported is None:
        imported = done.imported = step("frontend", lambda: frontend.import_spec(spec))  # model → linalg
    module = imported.module
    step("linalg", lambda: None)  # (dump only)
    model = None
    if wanted("decided") and tile and vectorize and cost_model not in (None, "heuristic"):
        model = load_cost_model(cost_model, target)
    with module.context:
        if isinstance(precision, str):  # sensitivity, latency, integer program
            done.precision = step(
                "plan-precision", lambda: plan_precision(imported, precision, error_budget, cost_model, target)
            )
            precision = done.precision.decisions
        if precision and any(d.precision != "f32" for d in precision):
            tc.set_records(module, tc.PRECISION, [json.dumps(d.to_json()) for d in precision])
            step("precision", lambda: run(PrecisionPass()))  # bf16/int8 layers → AMX contractions
        if im2col or (im2col is None and fusion is None and tile):
            fusing = fuse and vectorize and cost_model not in (None, "heuristic")
            for p in canonical_passes(fusing=fusing):  # conv → GEMM, NHWC, weight layouts, unit dims
                step("canonical", lambda p=p: run(p))
        imported.signature = runtime.Signature.of_func(module, imported.func_name)
        fusing = wanted("decided") and tile and (fusion is not None or (model is not None and fuse))
        if fusing:
            if fusion is not None:
                done.fusion = list(fusion)  # pinned fusion groups
            else:  # groups by predicted latency (integer program)

                def planned() -> None:
                    done.fusion, done.fusion_report = plan_fusion(module, model, target)

                step("plan-fusion", planned)
            tc.set_records(module, tc.FUSION, [d.to_json() for d in done.fusion])
        if wanted("decided") and tile and threads > 1:  # a chunk of each large kernel a thread

            def planned_threads() -> None:
                pinned = fusion is not None  # (pinned groups keep their tiles: a kernel they do not fit stays whole)
                done.parallel, groups = plan_parallel(module, threads, done.fusion or (), fit=not pinned)
                if groups != (done.fusion or []):  # (a group's tile cut to fit its chunks)
                    done.fusion = groups
                    tc.set_records(module, tc.FUSION, [d.to_json() for d in done.fusion])
                tc.set_records(module, tc.PARALLEL, [d.to_json() for d in done.parallel])

            step("plan-threads", planned_threads)
            step("parallelize", lambda: run(ParallelizePass(marked=threads)))
        if fusing:
            step("fuse", lambda: run(FusePass()))  # tile each group's sink, fuse its members
        if wanted("decided") and tile:  # every kernel's schedule: pinned, the model's pick, or the heuristic
            done.choices = step("decide", lambda: decide(module, model, target, decisions, options))
        step("decided", lambda: None)  # (dump only)
        two_cores = None  # (a large model's LLVM stage and JIT on two cores: `backends/cpu/split.py`)
        halves = emit in ("jit", "so") and not dump_ir_dir and (options or CpuOptions()).two_core_jit
        for p in backend_stages(options, wanted, tile):  # cpu-tiled, cpu-vector, cpu-llvm
            if p.name == "cpu-llvm" and halves and p.name not in swaps:
                two_cores = step("llvm", lambda p=p: _llvm_on_two_cores(module, imported.func_name, p, done))
                continue
            step(p.name.removeprefix("cpu-"), lambda p=p: run(p))
        if emit in STAGES:
            done.text = str(module)
        elif emit == "asm":
            done.text = step("asm", lambda: lowering.emit_assembly(module))  # host assembly
        elif emit == "so" and two_cores is not None:  # both halves' objects linked into the library

            def library():
                try:
                    with open(two_cores.finish(), "rb") as f:
                        atomic_write(output, f.read())
                finally:
                    two_cores.close()

            step(emit, library)
            done.path = output
        elif emit in ("obj", "so"):
            with tempfile.TemporaryDirectory() as tmp:
                tmp_out = os.path.join(tmp, f"out.{emit}")
                writer = lowering.emit_object if emit == "obj" else lowering.emit_shared_library
                step(emit, lambda: writer(module, tmp_out))  # object file / shared library
                with open(tmp_out, "rb") as f:
                    atomic_write(output, f.read())
            done.path = output
        elif two_cores is not None:  # both halves' objects linked into one shared library

            def linked():
                try:
                    path = two_cores.finish(in_process=True)
                    signature, params = imported.signature, imported.params
                    return runtime.from_shared_library(path, imported.func_name, signature, bound=params, unload=True)
                finally:
                    two_cores.close()

            done.fn = imported.eager_semantics(step("jit", linked))
        else:
            jitted = lambda: runtime.from_engine(  # noqa: E731  (the lookup compiles: timed with the JIT)
                lowering.jit(module), imported.func_name, imported.signature, bound=imported.params
            )
            done.fn = imported.eager_semantics(step("jit", jitted))  # ExecutionEngine, -O2, host CPU
    if output and done.text is not None:
        atomic_write(output, done.text.encode())
        done.path = output
    return done


def _llvm_on_two_cores(module, func_name: str, p: ModulePass, done: Compiled):
    """The LLVM stage (`p`, cpu-llvm) with the model's second half lowered and compiled by
    a forked child meanwhile (`lowering.ParallelJit`); None where the module compiled whole
    (small, one core): then this was the plain stage, and the JIT follows as usual."""
    parallel = lowering.ParallelJit.start(module, func_name)
    try:
        if parallel is None:
            lowering.convert_to_llvm(module)
        else:
            parallel.lower()
        verify(module, p.name)
    except BaseException:
        if parallel is not None:
            parallel.close()
        raise
    done.passes.append(p)
    return parallel


def verify(module, after: str) -> None:
    """Run the MLIR verifier; invalid IR is a `PipelineError` naming the pass it came from."""
    from torch_mlir import ir

    try:
        module.operation.verify()
    except ir.MLIRError as exc:
        detail = " ".join(str(exc).split())[:400]
        raise PipelineError(f"the IR after '{after}' does not verify: {detail}", stage=after) from None


def canonical_passes(
    *, fusing: bool = True, layout: bool = True, panels: bool = True, winograd: bool = True
) -> list[ModulePass]:
    """The target-neutral rewrites every compile runs before planning, in order.
    `fusing`: fusion follows (thin convolutions with many outputs run as GEMMs only then:
    their output transpose is folded). `layout`: NHWC between convolutions (off only to
    compare). `panels`: large weights as column panels (a CPU register tile's layout; the
    GPU backend schedules plain matmuls). `winograd`: 3×3 stride-1 layers by Winograd
    F(2×2, 3×3) where `passes/winograd.py` chooses it (off for the GPU: `Im2colPass`)."""
    return [
        DropEmptyOpsPass(),  # an op over a zero-size tensor: its inits, nothing to compute
        SubpixelConvPass(),  # a convolution of a nearest upsampling: one small convolution per output phase
        Im2colPass(thin=fusing, winograd=winograd),  # convolutions with a window as Winograd or gather/taps + GEMM
        DepthwiseTapsPass(),  # depthwise convolutions: elementwise sums of shifted slices (NHWC by NHWC)
        InlineBroadcastsPass(),  # a bias read where it is added, not spread first
        *([SinkTransposesPass(), SinkExtractSlicesPass()] if layout else []),  # NHWC between convolutions
        *([PanelWeightsPass()] if panels else []),  # large B: column panels, each read in order
        PadWeightsPass(),  # B: whole vectors, rows not k·1 KB apart
        SinkExpandShapesPass(),  # GEMMs and their epilogues, one chain
        FoldUnitDimsPass(),  # [1, S, D] → [S, D]: reductions, broadcasts
        SinkExpandShapesPass(),  # (again: those only unit dims kept apart)
        DropUnitReadsPass(),  # a [C, 1, 1] scale read as (c, 0, 0): [C] through (c)
        *([PanelEpiloguesPass()] if panels else []),  # (epilogues the reshapes kept apart)
        SplitRaggedPass(),  # 197 tokens as 192 + 5: static tiles of whole vectors
    ]


def backend_stages(options: CpuOptions, wanted: Callable[[str], bool], tile: bool) -> list[ModulePass]:
    """The backend's stage passes up to the emit point (none tiled when `tile` is off:
    the naive scalar-loop lowering the checks of MLIR input compare against)."""
    stages = CpuBackend().stage_passes(options)
    return [p for p, stage in zip(stages, CpuBackend.stages) if wanted(stage) and (tile or stage != "tiled")]


def plan_precision(imported: frontend.Imported, mode: str, budget: float | None, cost_model, target: Target):
    """Each layer's precision (`passes/precision.py`), priced by `cost_model` (f32 kernels;
    the analytical model stands in for `heuristic`) and the AMX model (bf16/int8)."""
    from tilecraft.costmodel import precision_plan
    from tilecraft.costmodel.amx import AmxModelError, LayerPrices
    from tilecraft.passes import precision

    model = load_cost_model(cost_model if cost_model not in (None, "heuristic") else "analytical", target)
    isa = low_precision_isa(target)
    allowed = low_precision_features(target) if isa == "avx512" else None  # vdpbf16ps, vpdpbusd
    try:
        prices = LayerPrices(imported.module, model, target, isa=isa or "amx")
        return precision_plan.plan(
            imported,
            mode=mode,
            budget=budget,
            price=prices,
            amx_available=isa is not None,
            isa=isa or "amx",
            allowed=allowed,
        )
    except (precision.PrecisionError, AmxModelError) as exc:
        raise DriverError(str(exc)) from None


def low_precision_isa(target: Target) -> str | None:
    """The kernels low-precision layers lower to on `target`: "amx" where it has AMX (and
    Linux grants it), else "avx512" with AVX512-BF16 or AVX512-VNNI (`vdpbf16ps`,
    `vpdpbusd`), else None. `cpu{amx=false}` asks for the AVX-512 kernels on an AMX machine."""
    from tilecraft.backends.cpu import amx

    if target.has("amx") and amx.available():
        return "amx"
    if low_precision_features(target):
        return "avx512"
    return None


def low_precision_features(target: Target) -> tuple[str, ...]:
    """The AVX-512 low-precision precisions `target` can run: bf16 with AVX512-BF16, int8
    with AVX512-VNNI, each only where this host has it too (code is generated for the host:
    a target claiming an instruction the host lacks would make LLVM abort)."""
    from tilecraft.backends.cpu.target import host

    here = host()
    return tuple(p for p, f in (("bf16", "avx512bf16"), ("int8", "avx512vnni")) if target.has(f) and here.has(f))


def convolutions_as_gemms(imported: frontend.Imported, *, fusing: bool = True, layout: bool = True) -> None:
    """Run `canonical_passes` on an imported model (its bound weights relaid out)."""
    for p in canonical_passes(fusing=fusing, layout=layout):
        imported.params[:] = p.run(imported.module, imported.params)
    imported.signature = runtime.Signature.of_func(imported.module, imported.func_name)


def load_cost_model(cost_model, target: Target):
    """A cost model by name or file (`costmodel.model.create`); a model object as it is."""
    from tilecraft.costmodel import model as cm

    if not isinstance(cost_model, str):
        return cost_model

    try:
        return cm.create(cost_model, target)
    except cm.CostModelError as exc:
        raise DriverError(str(exc)) from None


def plan_fusion(module, model, target: Target):
    """The fusion groups with the least predicted latency (`costmodel/fusion_plan.py`),
    and the planner's report."""
    from tilecraft.costmodel import fusion_plan

    return fusion_plan.partition(module, model, target)


def plan_parallel(module, threads: int, groups, *, fit: bool = True):
    """The kernels split across `threads` threads (`costmodel/parallel_plan.py`), and the
    fusion groups with their tiles fitted to the chunks."""
    from tilecraft.costmodel import parallel_plan

    return parallel_plan.plan(module, threads, groups, fit=fit)


def decide(module, model, target: Target, pinned: Mapping | None, options: CpuOptions):
    """Every kernel's schedule attached as `tc.schedule`: pinned (by op id or kernel key),
    else the cost model's best-ranked (zero measurements), else the heuristic; ops fused
    into register tiles are scheduled whole. Returns the model's choices."""
    from tilecraft.costmodel import search

    infos = tiling.tag_ops(module)
    choices = search.pick(module, model, target, infos=infos) if model is not None else []
    picked = {op: c.decision for c in choices for op in c.op_ids}
    chosen = tiling.decisions(infos, pinned, target, attached=picked, one_row_stream=options.one_row_stream)
    unknown = set(pinned or {}) - {i.op_id for i in infos} - {i.key for i in infos}
    if unknown:
        raise DriverError(
            f"{len(unknown)} of {len(pinned)} pinned decisions name no kernel of this model "
            f"(e.g. {sorted(map(str, unknown))[0]}): were they tuned for another model or input shape?"
        )
    fused = tiling.fused_ids(module, infos)
    chosen.update({i.op_id: tiling.register_tile_decision(i) for i in infos if i.op_id in fused})
    tiling.attach(module, chosen)
    return choices


# ----------------------------------------------------------------------------- checking
def flatten(x) -> list:
    """The leaves of a model output (tensors, and Python values a model may return)."""
    from torch.utils import _pytree

    return _pytree.tree_leaves(x)


@dataclasses.dataclass
class Comparison:
    max_abs: float
    max_rel: float  # max |out - ref| / max |ref|, over all outputs
    ok: bool


def compare(outs, refs, *, rtol: float = RTOL, atol: float = ATOL) -> Comparison:
    outs, refs = flatten(outs), flatten(refs)
    if len(outs) != len(refs):
        raise DriverError(f"compiled model returned {len(outs)} outputs, reference {len(refs)}")
    max_abs, max_rel, ok = 0.0, 0.0, True
    for o, r in zip(outs, refs):
        if not isinstance(r, torch.Tensor) or not isinstance(o, torch.Tensor):
            ok = ok and type(o) is type(r) and o == r  # a Python value eager returns
            continue
        if o.dtype != r.dtype:
            raise DriverError(f"output dtype mismatch: compiled {o.dtype} vs reference {r.dtype}")
        if o.shape != r.shape:
            raise DriverError(f"output shape mismatch: compiled {tuple(o.shape)} vs reference {tuple(r.shape)}")
        if r.dtype.is_complex:  # (re, im) compared as reals
            o64, r64 = torch.view_as_real(o.resolve_conj()).double(), torch.view_as_real(r.resolve_conj()).double()
        else:
            o64, r64 = o.double(), r.double()
        err = (o64 - r64).abs()
        if err.numel():
            max_abs = max(max_abs, err.max().item())
            max_rel = max(max_rel, err.max().item() / max(r64.abs().max().item(), 1e-30))
        tol = max(rtol, LOW_PRECISION_RTOL.get(r.dtype, 0.0))
        ok = ok and torch.allclose(o64, r64, rtol=tol, atol=atol, equal_nan=False)
    return Comparison(max_abs, max_rel, ok)


def reference_outputs(imported: frontend.Imported, inputs, linalg_text: str) -> tuple[object, str]:
    """Eager PyTorch, or for MLIR input the naive (scalar-loop) lowering of the same IR
    (`linalg_text`: the module as imported, before it was lowered)."""
    if imported.model is not None:
        return imported.reference(*inputs), "torch eager"
    ctx = frontend.new_context()
    naive = frontend.Imported(
        imported.spec,
        frontend.parse_mlir(linalg_text, context=ctx),
        [],
        imported.inputs,
        None,
        imported.func_name,
    )
    return compile_model(naive, tile=False, vectorize=False).fn(*inputs), "naive loops"


def median_seconds(fn: Callable[[], object], *, min_runs: int = 10, max_runs: int = 200, budget: float = 1.0) -> float:
    fn()  # warm-up
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < min_runs or (len(samples) < max_runs and time.perf_counter() - start < budget):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


@dataclasses.dataclass
class RunReport:
    model: str
    threads: int
    eager_ms: float | None
    compiled_ms: float
    compile_s: float
    comparison: Comparison
    reference: str
    schedules: str = "heuristic"
    precision: object = None  # costmodel.precision_plan.PrecisionPlan, when low precision was asked for
    relative_error: float | None = None  # ‖out − ref‖ / ‖ref‖ (checked against the budget when lowered)
    atol: float = ATOL  # for MLIR input: scaled by the reference's largest magnitude
    import_s: float = 0.0  # the frontend (`compile_s` is the rest, up to a callable)
    cache: str | None = None  # what the compile cache did ("cache hit", …); None when not asked

    @property
    def speedup(self) -> float | None:
        return self.eager_ms / self.compiled_ms if self.eager_ms else None

    def table(self) -> str:
        rows = [
            ("model", self.model),
            ("threads", str(self.threads)),
            ("reference", self.reference),
            ("eager median", f"{self.eager_ms:.3f} ms" if self.eager_ms is not None else "n/a"),
            ("tilecraft median", f"{self.compiled_ms:.3f} ms"),
            ("speedup vs eager", f"{self.speedup:.2f}x" if self.speedup else "n/a"),
            ("schedules", self.schedules),
            ("import time", f"{self.import_s:.2f} s"),
            ("compile time", f"{self.compile_s:.2f} s" + (f" ({self.cache})" if self.cache else "")),
            ("max abs error", f"{self.comparison.max_abs:.3e}"),
            ("max rel error", f"{self.comparison.max_rel:.3e}"),
            ("matches reference", self._match()),
        ]
        if self.precision is not None:
            rows.insert(6, ("precision", self._precision()))
        w = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)

    def _lowered(self) -> bool:
        return self.precision is not None and bool(self.precision.lowered)

    def _match(self) -> str:
        verdict = "yes" if self.comparison.ok else "NO"
        if self._lowered():
            return f"{verdict} (relative L2 error {self.relative_error:.2e}, budget {self.tolerance:g})"
        return f"{verdict} (rtol {RTOL:g}, atol {self.atol:.3g})"

    def _precision(self) -> str:
        p = self.precision
        counts = {x: sum(d.precision == x for d in p.decisions) for x in ("bf16", "int8", "f32")}
        return f"{p.mode}: " + ", ".join(f"{n} {x}" for x, n in counts.items() if n)

    @property
    def tolerance(self) -> float:
        from tilecraft.costmodel.precision_plan import DEFAULT_BUDGET

        return self.precision.budget if self.precision is not None and self.precision.budget else DEFAULT_BUDGET


DEFAULT_PRECISION_BUDGET = 0.01  # = costmodel.precision_plan.DEFAULT_BUDGET (kept here to import lazily)


def available_threads() -> int:
    """The cores this process may run on (its CPU affinity)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# The most threads a compile may be asked for: the OpenMP runtime's pool (`tcomp.c`,
# MAX_THREADS) and far past any core count; torch itself crashes on 100,000.
MAX_THREADS = 256


def check_threads(threads, what: str = "threads") -> int:
    """`threads` if it is a whole number of threads in 1..MAX_THREADS, else a DriverError
    naming it (`what`: how the caller spells the option)."""
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= MAX_THREADS:
        raise DriverError(f"{what} must be a whole number from 1 to {MAX_THREADS} (got {threads!r})")
    return threads


def run_and_check(
    spec: str,
    *,
    target: str | Target = "cpu",
    threads: int = 1,
    inputs=None,
    dump_ir_dir: str | None = None,
    budget: float = 1.0,
    cost_model: str | None = "lightgbm",
    decisions: Mapping[int | str, TileDecision] | None = None,
    precision: str = "f32",
    error_budget: float | None = None,
    cache: bool = False,
) -> RunReport:
    """Compile, run, check against the reference and time both. A low-precision compile is
    checked by its relative L2 error against the error budget (default 1%) instead of the
    f32 tolerances. With `cache`, an f32 compile is looked up in the on-disk compile cache
    (`compiler/cache.py`) and stored there on a miss; cached code is checked and timed
    like fresh code. A low-precision compile is not cached: its plan is calibrated on the
    inputs it runs (`inputs` where given, else the examples). `threads`: both sides'
    threads (eager's intra-op threads; the compiled code's kernels split into as many
    chunks)."""
    from tilecraft.costmodel.precision_plan import relative_error

    torch.set_num_threads(check_threads(threads))
    t0 = time.perf_counter()
    imported = frontend.import_spec(spec)
    import_s = time.perf_counter() - t0
    linalg_text = str(imported.module) if imported.model is None else ""
    options = dict(
        target=target if isinstance(target, Target) else Target.parse(target),
        dump_ir_dir=dump_ir_dir,
        cost_model=cost_model,
        decisions=decisions,
        precision=precision if precision != "f32" else None,
        error_budget=error_budget,
        threads=threads,
    )
    if inputs is not None and options["precision"] is not None and imported.model is not None:
        given = tuple(inputs)
        like = len(given) == len(imported.inputs) and all(
            isinstance(g, torch.Tensor) and g.shape == e.shape and g.dtype == e.dtype
            for g, e in zip(given, imported.inputs)
        )
        if like:  # a low-precision plan is calibrated on the data it runs on (else the call says what differs)
            imported.inputs = given
    t0 = time.perf_counter()  # (wall clock: the JIT compiles at its first lookup, after the stages' clocks)
    if cache and options["precision"] is None:
        fn, schedules, cached = _compile_cached(imported, options)
        plan = None
    else:
        compiled = compile_model(imported, **options)
        fn, plan, schedules = compiled.fn, compiled.precision, _schedules(compiled, cost_model, decisions)
        cached = f"not cached: --precision {precision}" if cache else None
    compile_s = time.perf_counter() - t0
    inputs = tuple(inputs) if inputs is not None else imported.inputs
    # each side gets its own copy: a model that changes an input in place would otherwise
    # hand the reference the compiled side's result as its input
    fresh = lambda: tuple(x.clone() if isinstance(x, torch.Tensor) else x for x in inputs)  # noqa: E731
    outs = fn(*fresh())
    refs, ref_name = reference_outputs(imported, fresh(), linalg_text)
    atol = ATOL
    if imported.model is None:  # synthetic N(0, 1) weights: outputs of 1e4 and more, f32 sums
        atol *= max(
            [1.0] + [r.double().abs().max().item() for r in flatten(refs) if isinstance(r, torch.Tensor) and r.numel()]
        )
    comparison = compare(outs, refs, atol=atol)
    rel = relative_error(outs, refs)
    if plan is not None and plan.lowered:
        tol = plan.budget or DEFAULT_PRECISION_BUDGET
        comparison = dataclasses.replace(comparison, ok=rel <= tol)
    compiled_s = median_seconds(lambda: fn(*inputs), budget=budget)
    eager_s = None
    if imported.model is not None:
        with torch.no_grad():
            eager_s = median_seconds(lambda: imported.model(*inputs), budget=budget)
    return RunReport(
        spec,
        threads,
        eager_s * 1e3 if eager_s is not None else None,
        compiled_s * 1e3,
        compile_s,
        comparison,
        ref_name,
        schedules,
        plan,
        rel,
        atol,
        import_s=import_s,
        cache=cached,
    )


def compile_for_call(
    imported: frontend.Imported,
    *,
    cache: bool = True,
    target: str | Target = "cpu",
    cost_model: str | None = "lightgbm",
    precision: str | None = None,
    threads: int = 1,
) -> tuple[Callable, bool]:
    """A callable with eager's semantics for an imported model (the torch.compile backend's
    entry): through the on-disk compile cache when `cache` and the precision is f32.
    Returns it and whether it came from the cache."""
    options = dict(
        target=target if isinstance(target, Target) else Target.parse(target),
        dump_ir_dir=None,
        cost_model=cost_model,
        decisions=None,
        precision=precision if precision not in (None, "f32") else None,
        error_budget=None,
        threads=threads,
    )
    if cache and options["precision"] is None:
        fn, _, cached = _compile_cached(imported, options)
        return fn, cached.startswith("cache hit")
    compiled = compile_model(imported, **options)
    return compiled.fn, False  # (eager semantics applied by the jit step)


def _compile_cached(imported: frontend.Imported, options: dict) -> tuple[runtime.CompiledFunction, str, str]:
    """The compiled function from the compile cache, or compiled (as a shared library, the
    form an entry keeps, so the code checked is the code stored) and stored. Returns it with
    the report's schedules line and what the cache did. With `dump_ir_dir` the cache is
    not read (the dumps need a compile)."""
    from tilecraft import cache

    store = cache.CompileCache()
    parts = cache.key_parts(str(imported.module), imported.params, _cache_options(options))
    key = cache.key(parts)
    entry = None if options["dump_ir_dir"] else store.load(key)
    if entry is not None and {"schedules", "compile_s"} <= entry.meta.keys():
        fn = imported.eager_semantics(entry.fn)
        return fn, entry.meta["schedules"], f"cache hit; compiled in {entry.meta['compile_s']:.2f} s"
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tilecraft-") as tmp:
        library = os.path.join(tmp, cache.LIBRARY)
        compiled = compile_model(imported, emit="so", output=library, **options)
        done = compiled.imported  # its weights and signature as compiled (packed weights bound)
        fn = imported.eager_semantics(
            runtime.from_shared_library(library, done.func_name, done.signature, bound=done.params)
        )
        schedules = _schedules(compiled, options["cost_model"], options["decisions"])
        meta = dict(spec=imported.spec, schedules=schedules, compile_s=time.perf_counter() - t0, key_parts=parts)
        stored = store.store(
            key, library=library, func_name=done.func_name, signature=done.signature, params=done.params, meta=meta
        )
    return fn, schedules, "cache miss, stored" if stored else f"cache miss, not stored in {store.root}"


def _cache_options(options: dict) -> dict:
    """What keys a compile besides the module: every option as `compile_model` sees it
    (its defaults too, so an option added there keys the cache without a change here), a
    cost model file's content (the shipped models are in the sources' digest), and the
    host, whose CPU the code is generated for whatever `target` steers."""
    import inspect

    from tilecraft import cache

    call = inspect.signature(compile_model).bind(None, emit="so", **options)
    call.apply_defaults()
    doc = {k: v for k, v in call.arguments.items() if k not in ("spec", "output", "dump_ir_dir")}
    model = options["cost_model"]
    if isinstance(model, str) and os.path.isfile(model):
        doc["cost_model_sha256"] = cache.file_digest(model)
    doc["host"] = Target.parse("cpu")
    return doc


def _schedules(compiled: Compiled, cost_model: str | None, decisions) -> str:
    if not compiled.choices and not compiled.fusion_report:
        return "pinned" if decisions else "heuristic defaults"
    pinned = f", {len(decisions)} pinned" if decisions else ""
    if compiled.fusion_report:  # the partition's total: a fused group's ops are priced per tile
        groups = len(compiled.fusion or [])
        return (
            f"{cost_model} cost model, no measurement ({groups} fusion groups{pinned}; "
            f"predicted {compiled.fusion_report['fused_s'] * 1e3:.3f} ms, "
            f"{compiled.fusion_report['unfused_s'] * 1e3:.3f} unfused)"
        )
    predicted = sum(c.predicted_s * len(c.op_ids) for c in compiled.choices)
    return (
        f"{cost_model} cost model, no measurement ({len(compiled.choices)} kernels{pinned}; "
        f"predicted {predicted * 1e3:.3f} ms)"
    )
