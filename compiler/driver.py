"""The driver: the stage loop from a model spec to a callable, an artifact or IR text.

Reads a model spec (zoo name, `file.py:factory`, `.mlir`), writes what `emit` asks for.
Every stage's IR can be dumped (`dump_ir_dir`). `run_and_check` is what `tilecraft run`
reports: compiled output against PyTorch eager (or, for `.mlir` input, against the same
module lowered naively to scalar loops) and median latencies side by side.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence

import torch

from tilecraft import frontend
from tilecraft.backends.cpu import lowering, runtime
from tilecraft.backends.cpu.target import Target
from tilecraft.passes.tiling import TileDecision

EMITS = ("linalg", "tiled", "vector", "llvm", "asm", "obj", "so", "jit")
RTOL, ATOL = 1e-4, 1e-5


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
    precision: object = None  # costmodel.precision_plan.PrecisionPlan when a precision mode was asked for

    @property
    def compile_seconds(self) -> float:
        return sum(self.stage_seconds.values())


def atomic_write(path: str, data: bytes) -> None:
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tilecraft-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make every output private
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


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
) -> Compiled:
    """Compile a model spec up to `emit`. `decisions` pins tile decisions (by op id or
    kernel key); every other op gets the cost model's pick (`cost_model`: `lightgbm`, the
    shipped pretrained model; `analytical`; a model file; or `heuristic`, the hand-written
    defaults), chosen with no measurement. With `fuse`, the same cost model first
    partitions the ops into fusion groups (`passes/fusion.py`); no fusion without a model.
    `fusion` pins the groups instead (FusionDecisions over the op ids `fusion.analyze`
    gives the module after `fusion.private_fills`; `[]`: no fusion). `precision` is a mode
    (`f32`, `bf16`, `int8`, or `auto`: chosen per layer under `error_budget`;
    `passes/precision.py`) or a list of `PrecisionDecision`s; lowered layers are rewritten
    to bf16/int8 AMX contractions first, and their packed weights replace the f32 ones.
    `im2col` rewrites the f32 convolutions with a window as GEMMs (`passes/im2col.py`; their
    packed filters replace the bound ones); the default, None, does so unless `fusion`
    pins groups (pinned groups name the op ids of the module as imported)."""
    target = target if isinstance(target, Target) else Target.parse(target)
    if emit not in EMITS:
        raise DriverError(f"unknown --emit {emit!r} (one of {', '.join(EMITS)})")
    if emit in ("obj", "so") and not output:
        raise DriverError(f"--emit {emit} needs -o OUTPUT")
    times: dict[str, float] = {}

    def timed(name: str, fn: Callable[[], object]):
        t0 = time.perf_counter()
        result = fn()
        times[name] = time.perf_counter() - t0
        if dump_ir_dir and name in lowering.STAGES:
            os.makedirs(dump_ir_dir, exist_ok=True)
            path = os.path.join(dump_ir_dir, f"{lowering.STAGES.index(name) + 1:02d}-{name}.mlir")
            atomic_write(path, str(module).encode())
        return result

    def wanted(stage: str) -> bool:
        return emit not in lowering.STAGES or lowering.STAGES.index(stage) <= lowering.STAGES.index(emit)

    t0 = time.perf_counter()
    imported = spec if isinstance(spec, frontend.Imported) else frontend.import_spec(spec)  # model → linalg-on-tensors
    module = imported.module
    times["frontend"] = time.perf_counter() - t0
    timed("linalg", lambda: None)  # (dump only)
    done = Compiled(imported, emit, times)
    with module.context:
        if isinstance(precision, str):
            done.precision = timed(
                "plan-precision", lambda: plan_precision(imported, precision, error_budget, cost_model, target)
            )  # sensitivity, latency, integer program
            precision = done.precision.decisions
        if precision and any(d.precision != "f32" for d in precision):
            timed("precision", lambda: lower_precision(imported, precision))  # bf16/int8 layers
        if im2col or (im2col is None and fusion is None and tile):
            fusing = fuse and vectorize and cost_model not in (None, "heuristic")
            timed("im2col", lambda: convolutions_as_gemms(imported, fusing=fusing))  # conv → gather + GEMM + transpose
        model = None
        if wanted("tiled") and tile and vectorize and cost_model not in (None, "heuristic"):
            model = load_cost_model(cost_model, target)
        if wanted("tiled") and tile and fusion is not None:
            done.fusion = timed("fuse", lambda: pinned_groups(module, fusion))  # pinned fusion groups
        elif model is not None and fuse:
            done.fusion, done.fusion_report = timed("fuse", lambda: fuse_groups(module, model, target))  # fusion
        if model is not None:
            done.choices = timed("decide", lambda: choose(module, model, target))  # cost model picks schedules
            picked = {op: c.decision for c in done.choices for op in c.op_ids}
            decisions = {**picked, **(decisions or {})}
        if wanted("tiled") and tile:
            timed(
                "tiled", lambda: lowering.to_tiled(module, decisions, vectorize=vectorize, target=target)
            )  # tile, vectorize
        if wanted("vector"):
            timed("vector", lambda: lowering.to_vector(module, vectorize=vectorize))  # hoist, bufferize, lower vectors
        if wanted("llvm"):
            timed("llvm", lambda: lowering.to_llvm(module))  # LLVM dialect, C interface
        if emit in lowering.STAGES:
            done.text = str(module)
        elif emit == "asm":
            done.text = timed("asm", lambda: lowering.emit_assembly(module))  # host assembly
        elif emit in ("obj", "so"):
            with tempfile.TemporaryDirectory() as tmp:
                tmp_out = os.path.join(tmp, f"out.{emit}")
                writer = lowering.emit_object if emit == "obj" else lowering.emit_shared_library
                timed(emit, lambda: writer(module, tmp_out))  # object file / shared library
                with open(tmp_out, "rb") as f:
                    atomic_write(output, f.read())
            done.path = output
        else:
            engine = timed("jit", lambda: lowering.jit(module))  # ExecutionEngine, -O3, host CPU
            done.fn = runtime.from_engine(engine, imported.func_name, imported.signature, bound=imported.params)
    if output and done.text is not None:
        atomic_write(output, done.text.encode())
        done.path = output
    return done


def plan_precision(imported: frontend.Imported, mode: str, budget: float | None, cost_model, target: Target):
    """Each layer's precision (`passes/precision.py`), priced by `cost_model` (f32 kernels;
    the analytical model stands in for `heuristic`) and the AMX model (bf16/int8)."""
    from tilecraft.backends.cpu import amx
    from tilecraft.costmodel import precision_plan
    from tilecraft.costmodel.amx import AmxModelError, LayerPrices
    from tilecraft.passes import precision

    model = load_cost_model(cost_model if cost_model not in (None, "heuristic") else "analytical", target)
    try:
        prices = LayerPrices(imported.module, model, target)
        return precision_plan.plan(imported, mode=mode, budget=budget, price=prices, amx_available=amx.available())
    except (precision.PrecisionError, AmxModelError) as exc:
        raise DriverError(str(exc)) from None


def lower_precision(imported: frontend.Imported, decisions) -> None:
    """Rewrite the layers `decisions` lower; the bound weights become the packed ones."""
    from tilecraft.passes import precision

    try:
        imported.params = precision.rewrite(imported.module, imported.params, decisions)
    except precision.PrecisionError as exc:
        raise DriverError(str(exc)) from None
    imported.signature = runtime.Signature.of_func(imported.module, imported.func_name)


def convolutions_as_gemms(imported: frontend.Imported, *, fusing: bool = True, layout: bool = True) -> None:
    """im2col + GEMM for every eligible convolution, depthwise convolutions as sums of
    shifted slices, and matmul weights padded to whole vectors and off row strides that
    thrash the L1 (packed filters and padded weights become the bound ones); then
    reshapes moved below the elementwise ops that read them, and unit dims dropped.
    `fusing`: fusion follows (thin convolutions with many outputs run as GEMMs only then:
    their output transpose is folded). `layout`: NHWC between convolutions
    (`passes/layout.py`; off only to compare)."""
    from tilecraft.passes import depthwise, fusion, im2col
    from tilecraft.passes import layout as layouts

    imported.params, _ = im2col.rewrite(imported.module, imported.params, thin=fusing)
    depthwise.rewrite(imported.module)  # depthwise convolutions: elementwise sums of shifted slices
    layouts.inline_broadcasts(imported.module)  # a bias read where it is added, not spread first
    if layout:
        layouts.sink_transposes(imported.module)  # NHWC between convolutions: no transposes
        layouts.sink_extract_slices(imported.module)  # a tap chain's epilogue on its accumulator
    imported.params, _ = im2col.pad_weights(imported.module, imported.params)  # B: whole vectors, rows ≠ k·1 KB
    im2col.sink_expand_shapes(imported.module)  # GEMMs and their epilogues, one chain
    fusion.fold_unit_dims(imported.module)  # [1, S, D] → [S, D]: reductions, broadcasts
    im2col.sink_expand_shapes(imported.module)  # (again: those only unit dims kept apart)
    im2col.drop_unit_reads(imported.module)  # a [C, 1, 1] scale read as (c, 0, 0): [C] through (c)
    imported.signature = runtime.Signature.of_func(imported.module, imported.func_name)


def load_cost_model(cost_model: str, target: Target):
    from tilecraft.costmodel import model as cm

    try:
        return cm.create(cost_model, target)
    except cm.CostModelError as exc:
        raise DriverError(str(exc)) from None


def fuse_groups(module, model, target: Target):
    """Partition into fusion groups by predicted latency, then fuse them in place."""
    from tilecraft.costmodel import fusion_plan
    from tilecraft.passes import fusion

    groups, report = fusion_plan.partition(module, model, target)
    fusion.apply(module, groups)
    return groups, report


def pinned_groups(module, groups):
    from tilecraft.passes import fusion

    fusion.private_fills(module)
    fusion.apply(module, groups)
    return list(groups)


def choose(module, model, target: Target):
    """Every kernel's decision from a cost model (zero measurements)."""
    from tilecraft.costmodel import search

    if isinstance(model, str):
        model = load_cost_model(model, target)
    return search.pick(module, model, target)


# ----------------------------------------------------------------------------- checking
def flatten(x) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (tuple, list)):
        return [t for item in x for t in flatten(item)]
    if isinstance(x, dict):
        return [t for v in x.values() for t in flatten(v)]
    raise DriverError(f"model output of type {type(x).__name__} is not a tensor")


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
        if o.shape != r.shape:
            raise DriverError(f"output shape mismatch: compiled {tuple(o.shape)} vs reference {tuple(r.shape)}")
        o64, r64 = o.double(), r.double()
        err = (o64 - r64).abs()
        if err.numel():
            max_abs = max(max_abs, err.max().item())
            max_rel = max(max_rel, err.max().item() / max(r64.abs().max().item(), 1e-30))
        ok = ok and torch.allclose(o64, r64, rtol=rtol, atol=atol, equal_nan=False)
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
) -> RunReport:
    """Compile, run, check against the reference and time both. A low-precision compile is
    checked by its relative L2 error against the error budget (default 1%) instead of the
    f32 tolerances."""
    from tilecraft.costmodel.precision_plan import relative_error

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    imported = frontend.import_spec(spec)
    import_s = time.perf_counter() - t0
    linalg_text = str(imported.module) if imported.model is None else ""
    compiled = compile_model(
        imported,
        target=target,
        dump_ir_dir=dump_ir_dir,
        cost_model=cost_model,
        decisions=decisions,
        precision=precision if precision != "f32" else None,
        error_budget=error_budget,
    )
    inputs = tuple(inputs) if inputs is not None else imported.inputs
    outs = compiled.fn(*inputs)
    refs, ref_name = reference_outputs(imported, inputs, linalg_text)
    atol = ATOL
    if imported.model is None:  # synthetic N(0, 1) weights: outputs of 1e4 and more, f32 sums
        atol *= max([1.0] + [r.double().abs().max().item() for r in flatten(refs) if r.numel()])
    comparison = compare(outs, refs, atol=atol)
    rel = relative_error(outs, refs)
    plan = compiled.precision
    if plan is not None and plan.lowered:
        tol = plan.budget or DEFAULT_PRECISION_BUDGET
        comparison = dataclasses.replace(comparison, ok=rel <= tol)
    compiled_s = median_seconds(lambda: compiled.fn(*inputs), budget=budget)
    eager_s = None
    if imported.model is not None:
        with torch.no_grad():
            eager_s = median_seconds(lambda: imported.model(*inputs), budget=budget)
    return RunReport(
        spec,
        threads,
        eager_s * 1e3 if eager_s is not None else None,
        compiled_s * 1e3,
        import_s + compiled.compile_seconds,
        comparison,
        ref_name,
        _schedules(compiled, cost_model, decisions),
        plan,
        rel,
        atol,
    )


def _schedules(compiled: Compiled, cost_model: str | None, decisions) -> str:
    if not compiled.choices:
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
