"""AMX contraction workloads: what they are, how one is measured, collection.

On the corpus floor, beside the kernel harness (`corpus/measure.py`); writes its rows into
the same corpus database (`tilecraft corpus collect-amx`).

An AMX workload is the `tc.amx` contraction `passes/precision.py` writes (C[(b,) M, N] +=
A[(b,) M, K/v, v] · B, B VNNI-packed plain `[(b,) K/v, N, v]` or blocked `[(b,) N/16, K/v,
16, v]`); its decisions are `AmxSchedule`s. Rows have kind `amx_bf16` / `amx_int8` and the
schedule's JSON as the decision, so `tilecraft corpus stats` counts them, the f32 trainer
leaves them out and `costmodel/amx.py` trains on them.

Measuring compiles the workload through the real stages (bufferize, `amx.lower_marked`,
LLVM, JIT) in process, checks the result against an exact reference (int8) or one in f64
(bf16), and records the median of timed runs.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch

from tilecraft.corpus.kernels import Kernel
from tilecraft.corpus.measure import Measurement, timed
from tilecraft.dialects.tc import AMX, AMX_INIT
from tilecraft.passes.precision import SPACE, AmxSchedule, generic_maps, layers

KINDS = {"bf16": "amx_bf16", "int8": "amx_int8"}
_ELEM = {"bf16": ("bf16", "f32"), "int8": ("i8", "i32")}
_VNNI = {"bf16": 2, "int8": 4}


class AmxWorkloadError(ValueError):
    pass


# ------------------------------------------------------------------------------ workloads
def workload(
    batch: int, m: int, n: int, k: int, precision: str, *, blocked: bool | None = None, unsigned: str = ""
) -> Kernel:
    """The AMX contraction of one GEMM shape as a corpus kernel (`func.func @kernel`), with
    B plain or blocked (default: blocked when N % 16 == 0, as the precision pass packs a
    matmul's B; a convolution's im2col B is plain). int8 with `unsigned` "a" or "b": that
    operand's bytes are unsigned (the AVX-512 `vpdpbusd` kernels' form)."""
    elem, acc = _ELEM[precision]
    v = _VNNI[precision]
    if k % v:
        raise AmxWorkloadError(f"K={k} is not a multiple of {v}")
    blocked = n % 16 == 0 if blocked is None else blocked
    lead = [batch] if batch > 1 else []
    if blocked:
        shapes = ([*lead, m, k // v, v], [*lead, n // 16, k // v, 16, v], [*lead, m, n // 16, 16])
    else:
        shapes = ([*lead, m, k // v, v], [*lead, k // v, n, v], [*lead, m, n])
    types = [_t(s, e) for s, e in zip(shapes, (elem, elem, acc))]
    maps, iters = generic_maps(len(lead), blocked=blocked)
    if precision == "bf16":
        body = (
            "^bb0(%x: bf16, %y: bf16, %z: f32):\n      %xf = arith.extf %x : bf16 to f32\n"
            "      %yf = arith.extf %y : bf16 to f32\n      %p = arith.mulf %xf, %yf : f32\n"
            "      %s = arith.addf %z, %p : f32\n      linalg.yield %s : f32"
        )
    else:
        xe, ye = ("extui" if unsigned == "a" else "extsi"), ("extui" if unsigned == "b" else "extsi")
        body = (
            f"^bb0(%x: i8, %y: i8, %z: i32):\n      %xi = arith.{xe} %x : i8 to i32\n"
            f"      %yi = arith.{ye} %y : i8 to i32\n      %p = arith.muli %xi, %yi : i32\n"
            "      %s = arith.addi %z, %p : i32\n      linalg.yield %s : i32"
        )
    its = ", ".join(f'"{i}"' for i in iters)
    mlir = (
        f"func.func @kernel(%a: {types[0]}, %b: {types[1]}, %c: {types[2]}) -> {types[2]} {{\n"
        f'  %r = linalg.generic {{indexing_maps = [{", ".join(maps)}], iterator_types = [{its}], {AMX} = ""}} '
        f"ins(%a, %b : {types[0]}, {types[1]}) outs(%c : {types[2]}) {{\n    {body}\n  }} -> {types[2]}\n"
        f"  return %r : {types[2]}\n}}\n"
    )
    extents = (batch, m, n, k)
    key_doc = [KINDS[precision], extents] + (["blocked"] if blocked else []) + ([f"u{unsigned}"] if unsigned else [])
    key = hashlib.sha256(json.dumps(key_doc).encode()).hexdigest()[:16]
    return Kernel(
        key=key,
        kind=KINDS[precision],
        name="linalg.generic",
        extents=extents,
        dtypes=(elem, elem, acc),
        shapes=tuple(tuple(s) for s in shapes),
        flops=2 * batch * m * n * k,
        mlir=mlir,
    )


def is_blocked(kernel: Kernel) -> bool:
    return len(kernel.shapes[1]) - len(kernel.shapes[0]) == 1


def _t(shape: Sequence[int], elem: str) -> str:
    return f"tensor<{'x'.join(map(str, shape))}x{elem}>"


# ------------------------------------------------------------------------------ measuring
def fresh_output(kernel: Kernel) -> str:
    """The workload as a layer runs it: C starts from zero (the kernel's zero tiles), so the
    function is `@kernel(a, b) -> c`, like `a @ b` in PyTorch. (The corpus measures the
    accumulating form, `@kernel(a, b, c)`: C is an input there.)"""
    c_type = kernel.mlir.split("%c: ", 1)[1].split(")", 1)[0]
    elem = c_type.rsplit("x", 1)[1].rstrip(">")
    zero = "0" if elem.startswith("i") else "0.000000e+00"
    return kernel.mlir.replace(f", %c: {c_type})", ")").replace(
        "  %r = linalg.generic",
        f"  %zero = arith.constant {zero} : {elem}\n  %empty = tensor.empty() : {c_type}\n"
        f'  %c = linalg.fill {{{AMX_INIT} = "kernel"}} ins(%zero : {elem}) outs(%empty : {c_type}) -> {c_type}\n'
        "  %r = linalg.generic",
    )


def compile_workload(kernel: Kernel, sched: AmxSchedule, *, accumulate: bool = True):
    """JIT the workload with `sched`: a callable(a, b, c) returning c + a·b, or with
    `accumulate=False` a callable(a, b) returning a·b (`fresh_output`)."""
    from torch_mlir import ir

    from tilecraft.backends.cpu import lowering, runtime

    text = kernel.mlir if accumulate else fresh_output(kernel)
    text = text.replace(f'{AMX} = ""', f"{AMX} = {json.dumps(sched.to_json())}")
    ctx = ir.Context()
    module = ir.Module.parse(text, context=ctx)
    with ctx:
        lowering.to_vector(module, vectorize=True)
        lowering.to_llvm(module)
        engine = lowering.jit(module)
        n_in = 3 if accumulate else 2
        sig = runtime.Signature(
            tuple(runtime.TensorSpec(tuple(s), d) for s, d in list(zip(kernel.shapes, kernel.dtypes))[:n_in]),
            (runtime.TensorSpec(tuple(kernel.shapes[2]), kernel.dtypes[2]),),
        )
    return runtime.from_engine(engine, "kernel", sig)


def _inputs(kernel: Kernel, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    a_shape, b_shape, c_shape = kernel.shapes
    if kernel.kind == KINDS["bf16"]:
        a = torch.randn(a_shape, generator=g).to(torch.bfloat16)
        b = torch.randn(b_shape, generator=g).to(torch.bfloat16)
        c = torch.randn(c_shape, generator=g)
    else:
        a = torch.randint(-127, 128, a_shape, generator=g, dtype=torch.int8)
        b = torch.randint(-127, 128, b_shape, generator=g, dtype=torch.int8)
        c = torch.randint(-1000, 1000, c_shape, generator=g, dtype=torch.int32)
    return a, b, c


def reference(kernel: Kernel, a, b, c) -> torch.Tensor:
    """C + A · B from the VNNI operands, exactly (int8) or in f64 (bf16)."""
    eq = "...mkv,...bknv->...mbn" if is_blocked(kernel) else "...mkv,...knv->...mn"
    if kernel.kind == KINDS["bf16"]:
        return c.double() + torch.einsum(eq, a.double(), b.double())
    a, b = a.long(), b.long()
    if "arith.extui %x" in kernel.mlir:  # an unsigned operand: the same bytes read as 0..255
        a = a % 256
    if "arith.extui %y" in kernel.mlir:
        b = b % 256
    return c.long() + torch.einsum(eq, a, b)


def measure(kernel: Kernel, sched: AmxSchedule, *, budget_s: float = 0.1, min_runs: int = 5) -> Measurement:
    """Compile, check and time one (workload, schedule) pair."""
    decision = sched.to_json()
    t0 = time.perf_counter()
    try:
        fn = compile_workload(kernel, sched)
    except Exception as exc:  # a compiler failure is a data point, not a crash
        return Measurement(kernel.key, decision, "compile_error", error=f"{type(exc).__name__}: {exc}"[:300])
    compile_s = time.perf_counter() - t0
    a, b, c = _inputs(kernel)
    out = fn(a, b, c)
    ref = reference(kernel, a, b, c)
    err = float((out.double() - ref.double()).abs().max())
    tol = 0.0 if kernel.kind == KINDS["int8"] else 1e-3 * max(1.0, float(ref.abs().max()))
    if not err <= tol:
        return Measurement(kernel.key, decision, "wrong", error=f"max error {err:.3g} > {tol:.3g}", compile_s=compile_s)
    times: list[float] = []
    start = time.perf_counter()
    fn(a, b, c)  # warm-up
    while len(times) < min_runs or (time.perf_counter() - start < budget_s and len(times) < 200):
        t = time.perf_counter()
        fn(a, b, c)
        times.append(time.perf_counter() - t)
    return timed(kernel, decision, times, compile_s=compile_s)


def collect(
    db,
    kernels: Iterable[tuple[Kernel, str]],
    target,
    *,
    schedules: Sequence[AmxSchedule] = SPACE,
    progress: Callable[[int, int, float], None] | None = None,
) -> dict:
    """Measure every (workload, schedule) pair not yet in the database."""
    from tilecraft.backends.cpu import amx

    amx.enable()
    th = db.add_target(target)
    todo, seen = [], set()
    for kernel, source in kernels:
        db.add_workload(kernel, source=source)  # every source is recorded, each workload measured once
        if kernel.key not in seen:
            seen.add(kernel.key)
            todo += [(kernel, s) for s in schedules if not db.has_measurement(kernel.key, s.to_json(), th)]
    counts = {"measured": 0, "failed": 0}
    t0 = time.perf_counter()
    for i, (kernel, sched) in enumerate(todo):
        m = measure(kernel, sched)
        db.commit_measurement(m, th)
        counts["measured"] += 1
        counts["failed"] += m.status != "ok"
        if progress:
            progress(i + 1, len(todo), time.perf_counter() - t0)
    return counts


def shapes_of_modules(modules: dict) -> list[tuple[int, int, int, int, str, bool]]:
    """(batch, m, n, k, source, blocked B) of every layer that can run in low precision, of
    `modules` ({name: (linalg module, number of bound arguments)})."""
    out = []
    for name, (module, n_bound) in modules.items():
        for layer in layers(module, n_bound):
            if len(layer.eligible) > 1:
                out.append((layer.batch, layer.m, layer.n, layer.k, name, layer.blocked))
    return out


def generated_shapes(count: int, *, seed: int = 0) -> list[tuple[int, int, int, int, str, bool]]:
    """Random GEMM shapes, B blocked where N allows (as for a matmul)."""
    rng = np.random.default_rng(seed)
    sizes = [8, 16, 24, 32, 48, 64, 96, 128, 196, 256, 384, 512, 768, 1024, 2048, 3136]
    out = []
    for _ in range(count):
        m, n, k = (int(rng.choice(sizes)) for _ in range(3))
        if m * n * k > 2**31:
            continue
        batch = int(rng.choice([1, 1, 1, 4, 12]))
        out.append((batch, m, n, k, f"generated:{seed}", n % 16 == 0))
    return out
