"""The AMX contraction cost model: workloads, measurement, collection, a LightGBM model.

Sits beside the f32 model (`costmodel/lightgbm_model.py`); `passes/precision.py` reads it
through the driver to price a layer at bf16 or int8. An AMX workload is the `tc.amx`
contraction `passes/precision.py` writes (C[(b,) M, N] += A[(b,) M, K/v, v] · B[(b,) K/v,
N, v]); its decisions are `AmxSchedule`s. Measurements go into the same corpus database as
every other kernel (kind `amx_bf16` / `amx_int8`, the schedule's JSON as the decision), so
`tilecraft corpus stats` counts them and the f32 trainer leaves them out.

Measuring compiles the workload through the real stages (bufferize, `amx.lower_marked`,
LLVM, JIT), checks the result against PyTorch (exact for int8, bf16 products accumulated
in f32 for bf16) and records the median of timed runs. The model predicts log-latency from
shape and schedule features; `best` ranks the whole schedule space.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import statistics
import time
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch

from tilecraft.backends.cpu.amx import AMX, SPACE, AmxSchedule, generic_maps
from tilecraft.corpus.kernels import Kernel
from tilecraft.corpus.measure import Measurement
from tilecraft.passes.tiling import AMX_INIT

MODEL_PATH = os.path.join(os.path.dirname(__file__), "data", "amx-cpu.json")
KINDS = {"bf16": "amx_bf16", "int8": "amx_int8"}
_ELEM = {"bf16": ("bf16", "f32"), "int8": ("i8", "i32")}
_VNNI = {"bf16": 2, "int8": 4}


class AmxModelError(RuntimeError):
    pass


# ------------------------------------------------------------------------------ workloads
def workload(batch: int, m: int, n: int, k: int, precision: str, *, blocked: bool | None = None) -> Kernel:
    """The AMX contraction of one GEMM shape as a corpus kernel (`func.func @kernel`), with
    B plain or blocked (default: blocked when N % 16 == 0, as the precision pass packs a
    matmul's B; a convolution's im2col B is plain)."""
    elem, acc = _ELEM[precision]
    v = _VNNI[precision]
    if k % v:
        raise AmxModelError(f"K={k} is not a multiple of {v}")
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
        body = (
            "^bb0(%x: i8, %y: i8, %z: i32):\n      %xi = arith.extsi %x : i8 to i32\n"
            "      %yi = arith.extsi %y : i8 to i32\n      %p = arith.muli %xi, %yi : i32\n"
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
    key_doc = [KINDS[precision], extents] + (["blocked"] if blocked else [])
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
    from tilecraft import frontend
    from tilecraft.backends.cpu import lowering, runtime

    text = kernel.mlir if accumulate else fresh_output(kernel)
    text = text.replace(f'{AMX} = ""', f"{AMX} = {json.dumps(sched.to_json())}")
    ctx = frontend.new_context()
    module = frontend.parse_mlir(text, context=ctx, source=f"amx workload {kernel.key}")
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
    return c.long() + torch.einsum(eq, a.long(), b.long())


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
    med = statistics.median(times)
    q = statistics.quantiles(times, n=4)
    return Measurement(
        kernel.key,
        decision,
        "ok",
        median_s=med,
        min_s=min(times),
        iqr_s=q[2] - q[0],
        runs=len(times),
        gflops=kernel.flops / med / 1e9,
        utilization=None,
        compile_s=compile_s,
    )


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


def shapes_of_zoo() -> list[tuple[int, int, int, int, str, bool]]:
    """(batch, m, n, k, source, blocked B) of every zoo layer that can run in low precision."""
    from tilecraft import frontend
    from tilecraft.corpus import zoo
    from tilecraft.passes import precision

    out = []
    for name in zoo.ZOO:
        imp = frontend.import_spec(name)
        for layer in precision.layers(imp.module, len(imp.params)):
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


# ------------------------------------------------------------------------------ the model
FEATURES = (
    "log_m",
    "log_n",
    "log_k",
    "log_batch",
    "int8",
    "mr",
    "nr",
    "log_kc",
    "order_ij",
    "m_edge",
    "n_edge",
    "k_edge",
    "log_blocks",
    "log_calls",
    "log_flops",
    "log_bytes",
    "log_roofline_s",
    "blocked",
)


def features(kernel: Kernel, sched: AmxSchedule) -> list[float]:
    batch, m, n, k = kernel.extents
    int8 = kernel.kind == KINDS["int8"]
    kt = 64 if int8 else 32
    bm, bn = 16 * sched.mr, 16 * sched.nr
    blocks = batch * math.ceil(m / bm) * math.ceil(n / bn)
    calls = blocks * (math.ceil(k / sched.kc) + (1 if k % kt else 0))
    elem = 1 if int8 else 2
    nbytes = batch * (m * k * elem + k * n * elem + 2 * m * n * 4)
    peak = (2 * 16 * 16 * kt) / 16 * 2.0e9  # one tile multiply per 16 cycles at ~2 GHz
    roofline = max(kernel.flops / peak, nbytes / 20e9)
    return [
        math.log2(m),
        math.log2(n),
        math.log2(k),
        math.log2(batch),
        float(int8),
        sched.mr,
        sched.nr,
        math.log2(sched.kc),
        float(sched.order == "ij"),
        (m % bm) / bm,
        (n % bn) / bn,
        (k % kt) / kt,
        math.log2(blocks),
        math.log2(calls),
        math.log2(kernel.flops),
        math.log2(nbytes),
        math.log2(roofline),
        float(is_blocked(kernel)),
    ]


_PARAMS = {"num_leaves": 31, "learning_rate": 0.08, "min_data_in_leaf": 5, "verbose": -1, "seed": 0}
_ROUNDS = 300


@dataclasses.dataclass
class AmxCostModel:
    """log-latency regression (LightGBM) over shape and schedule features; the target is
    log(median seconds), fitted relative to the roofline bound."""

    booster: object = None
    meta: dict = dataclasses.field(default_factory=dict)

    kind = "amx-lightgbm"

    def fit(self, records: Sequence[tuple[Kernel, AmxSchedule, float]]) -> AmxCostModel:
        import lightgbm as lgb

        if not records:
            raise AmxModelError("no AMX measurements to train on")
        x = np.array([features(k, s) for k, s, _ in records])
        base = x[:, FEATURES.index("log_roofline_s")] * math.log(2)
        y = np.log([t for _, _, t in records])
        ds = lgb.Dataset(x, y, init_score=base, feature_name=list(FEATURES))
        self.booster = lgb.train({**_PARAMS, "objective": "huber", "alpha": 0.3}, ds, _ROUNDS)
        self.meta = {"rows": len(records), "workloads": len({k.key for k, _, _ in records}), "features": FEATURES}
        return self

    def predict(self, kernel: Kernel, schedules: Sequence[AmxSchedule]) -> np.ndarray:
        """Predicted seconds of each schedule."""
        if self.booster is None:
            raise AmxModelError("the AMX cost model is not trained")
        x = np.array([features(kernel, s) for s in schedules])
        base = x[:, FEATURES.index("log_roofline_s")] * math.log(2)
        return np.exp(self.booster.predict(x) + base)

    def best(self, kernel: Kernel, schedules: Sequence[AmxSchedule] = SPACE) -> tuple[AmxSchedule, float]:
        p = self.predict(kernel, schedules)
        i = int(np.argmin(p))
        return schedules[i], float(p[i])

    def save(self, path: str) -> None:
        from tilecraft.driver import atomic_write

        doc = {"format": "tilecraft-amx-costmodel", "meta": self.meta, "booster": self.booster.model_to_string()}
        atomic_write(path, json.dumps(doc).encode())

    @staticmethod
    def load(path: str = MODEL_PATH) -> AmxCostModel:
        import lightgbm as lgb

        try:
            with open(path) as f:
                doc = json.load(f)
        except (OSError, json.JSONDecodeError) as exc:
            raise AmxModelError(f"cannot read AMX cost model {path}: {exc}") from None
        if doc.get("format") != "tilecraft-amx-costmodel":
            raise AmxModelError(f"{path} is not an AMX cost model")
        return AmxCostModel(lgb.Booster(model_str=doc["booster"]), doc.get("meta", {}))


def load_records(db) -> list[tuple[Kernel, AmxSchedule, float]]:
    """Every successful AMX measurement in a corpus database."""
    out = []
    for row in db.rows():
        if row["kind"] not in KINDS.values():
            continue
        batch, m, n, k = row["extents"]
        blocked = len(row["shapes"][1]) - len(row["shapes"][0]) == 1
        kernel = workload(batch, m, n, k, "bf16" if row["kind"] == KINDS["bf16"] else "int8", blocked=blocked)
        out.append((kernel, AmxSchedule.from_json(row["decision"]), row["median_s"]))
    return out


def train(db_path: str, out: str | None = None) -> dict:
    from tilecraft.corpus.db import CorpusDB

    out = out or MODEL_PATH
    with CorpusDB(db_path, create=False) as db:
        records = load_records(db)
    model = AmxCostModel().fit(records)
    model.save(out)
    return {"rows": len(records), "workloads": model.meta["workloads"], "out": out}


def evaluate(db_path: str, *, folds: int = 5, seed: int = 0) -> dict:
    """Held-out quality, split by workload: median absolute percentage error of latency,
    and the regret of the schedule the model ranks first (its measured latency over the
    best measured one), per workload."""
    from tilecraft.corpus.db import CorpusDB

    with CorpusDB(db_path, create=False) as db:
        records = load_records(db)
    keys = sorted({k.key for k, _, _ in records})
    rng = np.random.default_rng(seed)
    rng.shuffle(keys)
    fold_of = {key: i % folds for i, key in enumerate(keys)}
    ape, regret = [], []
    for f in range(folds):
        train_rows = [r for r in records if fold_of[r[0].key] != f]
        test_rows = [r for r in records if fold_of[r[0].key] == f]
        model = AmxCostModel().fit(train_rows)
        by_key: dict[str, list] = {}
        for r in test_rows:
            by_key.setdefault(r[0].key, []).append(r)
        for rows in by_key.values():
            kernel = rows[0][0]
            pred = model.predict(kernel, [s for _, s, _ in rows])
            meas = np.array([t for _, _, t in rows])
            ape += list(np.abs(pred - meas) / meas)
            regret.append(meas[int(np.argmin(pred))] / meas.min())
    return {
        "rows": len(records),
        "workloads": len(keys),
        "median_ape": float(np.median(ape)),
        "mean_regret": float(np.mean(regret)),
        "top1_within_5pct": float(np.mean(np.array(regret) <= 1.05)),
    }
