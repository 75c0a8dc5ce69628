"""The GPU flow, as straight-line code: `--target gpu{...}` of compile, run and explain.

The face floor. Reads a model spec (zoo name, `file.py:factory`, `.mlir`) and a GPU
target; runs the same canonical passes as the CPU, then plans the kernels (fusion groups,
`backends/gpu/schedule.py`) and each kernel's schedule (the cost model's fastest of its
legal space; `costmodel/gpu_model.py`), attaches both as `tc` attributes (the decided
module), and runs the GPU backend's stages: tiled → gpu → nvvm → LLVM IR → PTX → cubin.
Writes any stage's IR, the LLVM IR, the PTX or the cubin; reports every launch with its
schedule, the runner-up, grid and block, ptxas's registers, shared memory and spills, and
the predicted time. `run` launches the cubin on a CUDA GPU (`backends/gpu/runtime.py`)
and checks it against eager CUDA.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Callable, Mapping

from tilecraft import frontend
from tilecraft.backends.cpu import runtime as cpu_runtime
from tilecraft.backends.gpu import lowering, ptx, runtime
from tilecraft.backends.gpu import schedule as gs
from tilecraft.backends.gpu.target import GpuTarget
from tilecraft.costmodel.gpu_model import GpuCostModel, GpuPrediction
from tilecraft.dialects import tc
from tilecraft.driver import DriverError, atomic_write, canonical_passes, verify
from tilecraft.passes import fusion
from tilecraft.passes.private_fills import private_fills

STAGES = ("linalg", "decided", "tiled", "gpu", "nvvm")  # IR stages `--emit` can stop after
EMITS = (*STAGES, "llvm", "ptx", "cubin")
TEXT_EMITS = (*STAGES, "llvm", "ptx")
COST_MODELS = ("analytical", "heuristic")


@dataclasses.dataclass
class Choice:
    kernel: gs.Kernel
    schedule: gs.GpuSchedule
    predicted: GpuPrediction | None
    runner_up: gs.GpuSchedule | None = None
    runner_up_predicted: GpuPrediction | None = None
    candidates: int = 1


@dataclasses.dataclass
class LaunchReport:
    name: str
    label: str
    sink: int | None
    schedule: str
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    resources: ptx.Resources
    predicted_us: float
    bound: str
    occupancy: float
    runner_up: str = ""
    runner_up_us: float | None = None


@dataclasses.dataclass
class GpuCompiled:
    imported: frontend.Imported
    target: GpuTarget
    emit: str
    stage_seconds: dict[str, float]
    cost_model: str = "analytical"
    choices: dict[int, Choice] = dataclasses.field(default_factory=dict)  # by sink op id
    text: str | None = None
    kernels_mlir: str | None = None  # every kernel in one LLVM-dialect module (what becomes PTX)
    data: bytes | None = None  # the cubin
    path: str | None = None
    plan: runtime.HostPlan | None = None
    sinks: list[int | None] = dataclasses.field(default_factory=list)  # per launch
    resources: dict[str, ptx.Resources] = dataclasses.field(default_factory=dict)
    launches: list[LaunchReport] = dataclasses.field(default_factory=list)

    @property
    def compile_seconds(self) -> float:
        return sum(self.stage_seconds.values())

    @property
    def predicted_us(self) -> float:
        return sum(r.predicted_us for r in self.launches)


def parse_target(target: str | GpuTarget) -> GpuTarget:
    if isinstance(target, GpuTarget):
        return target
    return GpuTarget.from_file(target) if target.strip().endswith(".json") else GpuTarget.parse(target)


def decide(module, model: GpuCostModel | None, pinned: Mapping[int, gs.GpuSchedule] | None = None) -> dict[int, Choice]:
    """Every kernel's schedule: pinned (by sink op id), else the one the module carries (a
    decided module read back), else the cost model's fastest of its space (the runner-up
    kept for explain), else the heuristic. Attaches the kernels as
    `tc.gpu_kernels` records and each schedule as its sink's `tc.gpu_schedule`."""
    kernels = gs.kernels(module)
    nodes = fusion.analyze(module)
    pinned = {**gs.attached(module), **(pinned or {})}  # (a decided module's own schedules)
    out: dict[int, Choice] = {}
    for k in kernels:
        if k.sink in pinned:
            s = pinned[k.sink]
            gs.check(k, s)
            out[k.sink] = Choice(k, s, model.predict(k, s) if model else None)
        elif model is None:
            out[k.sink] = Choice(k, gs.default(k), None)
        else:
            ranked = model.rank(k, gs.space(k))
            best, second = ranked[0], ranked[1] if len(ranked) > 1 else (None, None)
            out[k.sink] = Choice(k, best[0], best[1], second[0], second[1], len(ranked))
    ctx = module.context
    from torch_mlir import ir

    for sink, c in out.items():
        nodes[sink].op.attributes[gs.GPU_SCHEDULE] = ir.StringAttr.get(c.schedule.to_json(), context=ctx)
    records = [fusion.FusionDecision(k.sink, k.members, ()).to_json() for k in kernels]
    tc.set_records(module, gs.GPU_KERNELS, records)
    return out


def compile_gpu(
    spec: str | frontend.Imported,
    *,
    target: str | GpuTarget = "gpu",
    emit: str = "ptx",
    output: str | None = None,
    dump_ir_dir: str | None = None,
    schedules: Mapping[int, gs.GpuSchedule] | None = None,
    cost_model: str | None = "analytical",
    on_step: Callable[[str, object, GpuCompiled], None] | None = None,
) -> GpuCompiled:
    """Compile a model spec for a GPU up to `emit` (an IR stage, `llvm`, `ptx` or `cubin`;
    the cubin is always assembled when emitting past nvvm, for ptxas's report).
    `schedules` pins kernels' schedules by sink op id; `cost_model`: `analytical` (the
    shipped learned model where one is trained on GPU rows) or `heuristic`."""
    target = parse_target(target)
    if emit not in EMITS:
        raise DriverError(f"unknown --emit {emit!r} for a GPU target (one of {', '.join(EMITS)})")
    if cost_model not in (*COST_MODELS, None):
        raise DriverError(f"unknown cost model {cost_model!r} for a GPU target (one of {', '.join(COST_MODELS)})")
    if emit in ("llvm", "ptx", "cubin"):
        why = ptx.available()
        if why:
            raise DriverError(why)
    if emit == "cubin" and not output:
        raise DriverError("--emit cubin writes a binary: give -o FILE")
    times: dict[str, float] = {}
    imported = spec if isinstance(spec, frontend.Imported) else None
    model = GpuCostModel.load(target) if cost_model == "analytical" else None
    done = GpuCompiled(imported, target, emit, times, cost_model=model.name if model else "heuristic")

    def step(name: str, fn: Callable[[], object]):
        t0 = time.perf_counter()
        result = fn()
        times[name] = times.get(name, 0.0) + time.perf_counter() - t0
        if imported is not None:
            if on_step is not None:
                on_step(name, imported.module, done)
            if dump_ir_dir and name in STAGES:
                os.makedirs(dump_ir_dir, exist_ok=True)
                path = os.path.join(dump_ir_dir, f"{STAGES.index(name) + 1:02d}-{name}.mlir")
                atomic_write(path, str(imported.module).encode())
        return result

    def wanted(stage: str) -> bool:
        return emit not in STAGES or STAGES.index(stage) <= STAGES.index(emit)

    if imported is None:
        imported = done.imported = step("frontend", lambda: frontend.import_spec(spec))
    module = imported.module
    step("linalg", lambda: None)
    with module.context:
        if wanted("decided"):
            for p in canonical_passes(fusing=True, panels=False, winograd=False):  # conv → GEMM, layouts, unit dims
                step("canonical", lambda p=p: _run(imported, p))
            step("canonical", lambda: private_fills(module))
            imported.signature = cpu_runtime.Signature.of_func(module, imported.func_name)
            done.choices = step("decide", lambda: decide(module, model, schedules))
            step("decided", lambda: verify(module, "decide"))
        if wanted("tiled"):
            step("tiled", lambda: lowering.to_tiled(module))
        if wanted("gpu"):
            done.sinks = step("gpu", lambda: lowering.to_gpu(module))
            done.plan = step("host-plan", lambda: runtime.host_plan(module, imported.func_name))
        if wanted("nvvm"):
            step("nvvm", lambda: lowering.to_nvvm(module, arch=target.arch, features=target.ptx_features))
        if emit in STAGES:
            done.text = str(module)
        else:
            kernels = done.kernels_mlir = lowering.kernels_module(module)
            if emit == "llvm":
                done.text = step(
                    "llvm", lambda: ptx.to_llvm_ir(kernels, arch=target.arch, features=target.ptx_features)
                )
            code = step("ptx", lambda: ptx.to_ptx(kernels, arch=target.arch, features=target.ptx_features))
            if emit == "ptx":
                done.text = code
            done.data, done.resources = step("cubin", lambda: ptx.assemble(code, arch=target.arch))
            done.launches = launch_reports(done, model)
    if output:
        atomic_write(output, done.data if emit == "cubin" else (done.text or "").encode())
        done.path = output
    return done


def _run(imported: frontend.Imported, p) -> None:
    imported.params[:] = p.run(imported.module, imported.params)
    verify(imported.module, p.name)


def launch_reports(done: GpuCompiled, model: GpuCostModel | None) -> list[LaunchReport]:
    """Per launch: its kernel, schedule and runner-up, grid and block, resources, and the
    time the model predicts with ptxas's registers."""
    target = done.target
    out = []
    for launch, sink in zip(done.plan.launches, done.sinks):
        res = done.resources.get(launch.kernel, ptx.Resources())
        if sink is not None and sink in done.choices:
            c = done.choices[sink]
            p = (
                GpuCostModel(target).predict(c.kernel, c.schedule, res)
                if model is None
                else model.predict(c.kernel, c.schedule, res)
            )
            out.append(
                LaunchReport(
                    launch.kernel, c.kernel.label(), sink, c.schedule.describe(), launch.grid, launch.block, res,
                    p.us, p.bound, p.occupancy,
                    c.runner_up.describe() if c.runner_up else "",
                    c.runner_up_predicted.us if c.runner_up_predicted else None,
                )
            )  # fmt: skip
        else:  # a copy or fill bufferization left: bandwidth-bound
            nbytes = sum(_view_bytes(a) for a in launch.args if isinstance(a, runtime.View))
            us = nbytes / (target.dram_gbs * 1e9) * 1e6 + target.launch_us
            out.append(LaunchReport(launch.kernel, "copy", None, "elementwise", launch.grid, launch.block, res, us,
                                    "dram", 0.0))  # fmt: skip
    return out


def _view_bytes(v: runtime.View) -> int:
    n = 1
    for s in v.sizes:
        n *= s
    return n * {"f64": 8, "i64": 8, "f16": 2, "bf16": 2, "i16": 2, "i8": 1, "i1": 1}.get(v.dtype, 4)


# ------------------------------------------------------------------------------ reports
def format_report(compiled: GpuCompiled, *, runner_up: bool = False) -> str:
    """One row per launch: kernel, ops, schedule, grid, block, registers, shared memory,
    spills, predicted µs (and the runner-up with `runner_up`)."""
    t = compiled.target
    head = (
        f"{compiled.imported.spec if compiled.imported else ''} on {t.describe()}: {len(compiled.launches)} launches, "
        f"predicted {compiled.predicted_us:.1f} us ({compiled.cost_model}), compiled in "
        f"{compiled.compile_seconds:.2f} s"
    )
    cols = ["kernel", "ops", "schedule", "grid", "block", "regs", "smem B", "spill B", "pred us", "bound"]
    if runner_up:
        cols += ["runner-up", "r-up us"]
    rows = []
    for r in compiled.launches:
        row = [
            r.name,
            r.label[:40],
            r.schedule,
            "x".join(map(str, r.grid)),
            "x".join(map(str, r.block)),
            str(r.resources.registers),
            str(r.resources.shared_bytes),
            str(r.resources.spill_stores + r.resources.spill_loads),
            f"{r.predicted_us:.2f}",
            r.bound,
        ]
        if runner_up:
            row += [r.runner_up or "-", f"{r.runner_up_us:.2f}" if r.runner_up_us is not None else "-"]
        rows.append(row)
    widths = [max(len(c), *(len(row[i]) for row in rows)) if rows else len(c) for i, c in enumerate(cols)]
    lines = [head, "  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def report_json(compiled: GpuCompiled) -> str:
    return json.dumps(
        {
            "target": json.loads(compiled.target.to_json()),
            "compile_seconds": compiled.compile_seconds,
            "predicted_us": compiled.predicted_us,
            "launches": [{**dataclasses.asdict(r), "resources": r.resources.to_json()} for r in compiled.launches],
        },
        indent=1,
    )


# -------------------------------------------------------------------------------- run
def load(compiled: GpuCompiled) -> runtime.GpuFunction:
    """The compiled model on the GPU (eager output structure), or a CallError without one."""
    imported = compiled.imported
    fn = runtime.GpuFunction(compiled.data, compiled.plan, imported.signature, bound=imported.params)
    return imported.eager_semantics(fn)


@dataclasses.dataclass
class GpuRunReport:
    spec: str
    device: str
    target: GpuTarget
    max_abs: float
    max_rel: float
    ok: bool
    eager_ms: float
    tilecraft_ms: float
    compile_seconds: float
    launches: int

    @property
    def speedup(self) -> float:
        return self.eager_ms / self.tilecraft_ms

    def table(self) -> str:
        return "\n".join(
            [
                f"{self.spec} on {self.device} ({self.target.arch}), {self.launches} launches, "
                f"compiled in {self.compile_seconds:.2f} s",
                f"  output vs eager CUDA: {'match' if self.ok else 'MISMATCH'} "
                f"(max abs {self.max_abs:.3g}, max rel {self.max_rel:.3g})",
                f"  eager CUDA {self.eager_ms:.3f} ms   Tilecraft {self.tilecraft_ms:.3f} ms   "
                f"speedup {self.speedup:.2f}x",
            ]
        )


def device_target(text: str) -> GpuTarget:
    """`text` with the arch of the GPU in this process when `text` names none (its other
    options kept); a GPU of a generation this backend does not assemble for is refused."""
    import re

    import torch

    from tilecraft.backends.gpu.target import ARCHS

    t = parse_target(text)
    major, minor = torch.cuda.get_device_capability()
    if "arch=" in text or text.strip().endswith(".json"):
        return t
    arch = f"sm_{major}{minor}"
    if arch not in ARCHS:  # a cubin runs only on its own major version
        same = [a for a in ARCHS if a[3] == str(major) and int(a[3:]) <= major * 10 + minor]
        if not same:
            raise DriverError(f"this GPU is {arch}; the GPU backend assembles for {', '.join(ARCHS)}")
        arch = same[-1]
    options = re.fullmatch(r"\s*gpu\s*(?:\{(.*)\})?\s*", text).group(1) or ""
    return parse_target(f"gpu{{{options} arch={arch}}}")


@contextlib.contextmanager
def no_tf32():
    """Eager CUDA in true f32: TF32 off for cuDNN convolutions and cuBLAS matmuls."""
    import torch

    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def cuda_ms(fn: Callable[[], object], *, rounds: int = 20) -> float:
    """Median of CUDA-event timings of `fn` (after a warm-up)."""
    import statistics

    import torch

    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(rounds):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def run_and_check(
    spec: str,
    *,
    target: str = "gpu",
    inputs=None,
    cost_model: str = "analytical",
    dump_ir_dir: str | None = None,
    rtol: float = 1e-4,
    atol: float = 1e-5,
) -> GpuRunReport:
    """Compile for the GPU of this process, run on CUDA tensors, check against eager CUDA,
    time both (medians of CUDA events, interleaved)."""
    import copy

    import torch

    from tilecraft.driver import compare, flatten

    why = runtime.gpu_available()
    if why:
        raise DriverError(why)
    t = device_target(target)
    compiled = compile_gpu(spec, target=t, emit="ptx", dump_ir_dir=dump_ir_dir, cost_model=cost_model)
    imported = compiled.imported
    if imported.model is None:
        raise DriverError(f"{spec}: no PyTorch model to compare against (MLIR input)")
    fn = load(compiled)
    xs = [x.to("cuda") for x in (inputs or imported.inputs)]
    model = copy.deepcopy(imported.model).to("cuda").eval()
    with no_tf32(), torch.no_grad():  # eager in true f32 (cuDNN's convolutions default to TF32)
        ref = model(*xs)
        out = fn(*xs)
        cmp = compare([o.cpu() for o in flatten(out)], [r.cpu() for r in flatten(ref)], rtol=rtol, atol=atol)
        eager, ours = [], []
        for _ in range(3):  # interleaved rounds
            eager.append(cuda_ms(lambda: model(*xs)))
            ours.append(cuda_ms(lambda: fn(*xs)))
    return GpuRunReport(
        spec, torch.cuda.get_device_name(), t, cmp.max_abs, cmp.max_rel, cmp.ok, min(eager), min(ours),
        compiled.compile_seconds, len(compiled.launches),
    )  # fmt: skip


def emulate(spec: str | frontend.Imported, *, target: str | GpuTarget = "gpu", cost_model: str = "analytical"):
    """The model's GPU kernels, as planned and tiled for `target`, run on the host: each
    forall a sequential loop (`lowering.emulate_on_cpu`), JIT-compiled by the CPU backend.
    Checks the kernel structure (tiling, fusion, register tiles, bufferization, the
    leftover kernels) against eager where no GPU is. Returns (function, Imported)."""
    from tilecraft.backends.cpu import lowering as cpu_lowering

    compiled = compile_gpu(spec, target=target, emit="tiled", cost_model=cost_model)
    imported = compiled.imported
    with imported.module.context:
        lowering.emulate_on_cpu(imported.module)
        engine = cpu_lowering.jit(imported.module)
    fn = cpu_runtime.from_engine(engine, imported.func_name, imported.signature, bound=imported.params)
    return imported.eager_semantics(fn), imported


def collect_corpus(models, *, variants: int = 6, seed: int = 0, target: str = "gpu", progress=print) -> list[dict]:
    """GPU corpus rows, measured on the GPU of this process: per model, its planned
    schedules and `variants` assignments of random legal ones; every launch of a kernel
    timed alone (`GpuFunction.time_launches`). A row: the kernel, the schedule, ptxas's
    resources, the cost model's features, the measured and the analytical seconds."""
    import random

    from tilecraft.costmodel import gpu_model

    why = runtime.gpu_available()
    if why:
        raise DriverError(why)
    rng = random.Random(seed)
    t = device_target(target)
    rows: list[dict] = []
    for name in models:
        base = compile_gpu(name, target=t, emit="decided")
        spaces = {k: gs.space(ch.kernel) for k, ch in base.choices.items()}
        for v in range(variants + 1):
            pinned = None if v == 0 else {k: rng.choice(sp) for k, sp in spaces.items()}
            c = compile_gpu(name, target=t, emit="ptx", schedules=pinned)
            xs = [x.to("cuda") for x in c.imported.inputs]
            seconds = load(c).time_launches(*xs)
            for launch, sink, sec in zip(c.plan.launches, c.sinks, seconds):
                if sink is None:
                    continue
                ch = c.choices[sink]
                res = c.resources[launch.kernel]
                rows.append(
                    {
                        "model": name,
                        "sink": sink,
                        "kernel": ch.kernel.label(),
                        "key": ch.kernel.info.key,
                        "schedule": json.loads(ch.schedule.to_json()),
                        "arch": t.arch,
                        "resources": res.to_json(),
                        "features": gpu_model.features(ch.kernel, ch.schedule, t, res),
                        "seconds": sec,
                        "analytical": gpu_model.analytical(ch.kernel, ch.schedule, t, res).seconds,
                    }
                )
        progress(f"  corpus: {name}: {len(rows)} rows so far")
    return rows


def write_rows(path: str, rows: list[dict]) -> None:
    """GPU corpus rows as gzipped JSON lines, written whole or not at all."""
    import gzip

    data = gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode())
    atomic_write(path, data)
