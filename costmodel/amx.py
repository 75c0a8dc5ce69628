"""The AMX contraction cost model, and the prices of a layer at each precision.

On the costmodel floor, beside the f32 model (`costmodel/lightgbm_model.py`). Reads the
corpus' AMX rows (`corpus/amx.py` workloads) to train, and a model file to predict; writes
model files. `AmxCostModel` predicts the log-latency of an AMX contraction from shape, B
layout and `AmxSchedule` features; `best` ranks the whole schedule space. `LayerPrices` is
the callback the precision planner (`costmodel/precision_plan.py`, for the driver) prices
layers with: f32 from the f32 cost model's best-ranked schedule, bf16/int8 from this
model plus the conversions around the lowered layer.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence

import numpy as np
from torch_mlir import ir

from tilecraft.corpus.amx import KINDS, is_blocked, workload
from tilecraft.corpus.kernels import Kernel
from tilecraft.passes.precision import SPACE, AmxSchedule, Layer, contraction_ops

MODEL_PATH = os.path.join(os.path.dirname(__file__), "data", "amx-cpu.json")


class AmxModelError(RuntimeError):
    pass


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
    "log_nc",
    "panels",
)


def features(kernel: Kernel, sched: AmxSchedule) -> list[float]:
    batch, m, n, k = kernel.extents
    int8 = kernel.kind == KINDS["int8"]
    kt = 64 if int8 else 32
    bm, bn = 16 * sched.mr, 16 * sched.nr
    nc = min(sched.nc, n) if sched.nc and sched.order == "ij" else n  # columns per cache panel
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
        math.log2(nc),
        math.ceil(n / nc),
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
        from tilecraft.costmodel.lightgbm_model import predict_threads

        return np.exp(self.booster.predict(x, num_threads=predict_threads(len(x))) + base)

    def best(self, kernel: Kernel, schedules: Sequence[AmxSchedule] = SPACE) -> tuple[AmxSchedule, float]:
        p = self.predict(kernel, schedules)
        i = int(np.argmin(p))
        return schedules[i], float(p[i])

    def save(self, path: str) -> None:
        from tilecraft.costmodel.model import write_model_file

        write_model_file(
            path, {"format": "tilecraft-amx-costmodel", "meta": self.meta, "booster": self.booster.model_to_string()}
        )

    @staticmethod
    def load(path: str = MODEL_PATH) -> AmxCostModel:
        from tilecraft.costmodel import lgb_native

        try:
            with open(path) as f:
                doc = json.load(f)
        except (OSError, json.JSONDecodeError) as exc:
            raise AmxModelError(f"cannot read AMX cost model {path}: {exc}") from None
        if doc.get("format") != "tilecraft-amx-costmodel":
            raise AmxModelError(f"{path} is not an AMX cost model")
        try:
            booster = lgb_native.Booster(doc["booster"])
        except (KeyError, lgb_native.NativeError) as exc:
            raise AmxModelError(f"AMX cost model {path} is damaged: {exc}") from None
        return AmxCostModel(booster, doc.get("meta", {}))


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


# ------------------------------------------------------------------------------ prices
# Conversion, packing and dequantization around a lowered contraction are streaming
# elementwise ops, priced at this rate (bytes read + written): about the rate of the
# conversions around resnet18's 64-channel 3×3 conv's AMX kernel (im2col from f32 into
# bf16; docs/measurements.md has the measurement).
STREAM_BYTES_PER_S = 30e9


def overhead_bytes(layer: Layer, precision: str) -> int:
    """Bytes the conversions around a lowered layer read and write."""
    e = 2 if precision == "bf16" else 1
    b, m, n, k = layer.batch, layer.m, layer.n, layer.k
    if layer.op == "linalg.conv_2d_nchw_fchw":
        total = k * n * (4 + e)  # im2col straight into the packed layout
    else:
        total = b * m * k * (4 + e)  # the activation
        if layer.weight is None:
            total += b * k * n * (4 + e)  # the second activation, converted into the packed layout
    if precision == "int8":
        total += b * m * n * (4 + 4 + 4)  # dequantize
    return total


def f32_latencies(module: ir.Module, model, target) -> list[float | None]:
    """Each layer's predicted latency at f32: the cost model's best-ranked schedule."""
    from tilecraft.backends.cpu import schedule as tiling
    from tilecraft.corpus import kernels
    from tilecraft.costmodel.features import FeatureError
    from tilecraft.costmodel.model import best_decision

    infos = {i.op_id: i for i in tiling.tag_ops(module)}
    by_key = {k.key: k for k in kernels.extract(module)}
    out: list[float | None] = []
    for op in contraction_ops(module):
        info = infos[ir.IntegerAttr(op.attributes[tiling.OP_ID]).value]
        kernel = by_key.get(info.key)
        try:
            out.append(best_decision(model, kernel, tiling.space(info, target))[1] if kernel else None)
        except FeatureError:
            out.append(None)
    return out


# ------------------------------------------------------- AVX-512 BF16 (no AMX) kernels
def avx512_schedule(m: int, n: int) -> AmxSchedule:
    """The register block of `backends/cpu/avx512_dot.py` for an M × N output: 4 vectors of
    16 columns × 6 rows where N allows (24 accumulators + 4 B vectors + the A broadcast of
    the 32 zmm registers), narrower blocks with more rows for narrow N."""
    nr = max(1, min(4, -(-n // 16)))
    mr = {4: 6, 3: 7, 2: 8, 1: 12}[nr]
    return AmxSchedule(max(1, min(mr, m)), nr, order="ij", isa="avx512")


_MEASURED: dict[tuple[str, str], float] = {}  # (target hash, kernel + decision) → seconds
REFERENCE_GEMM = (784, 128, 576)  # resnet18's second-stage 3×3 convolution as a GEMM


def avx512_ratio(cost_model, target, precision: str) -> float:
    """(seconds of the AVX-512 `precision` dot kernel) / (seconds of the f32 kernel the cost
    model picks) on a convolution-sized GEMM (`REFERENCE_GEMM`), both measured on this host,
    each kernel once per process and target. The dot instructions' throughput differs by
    microarchitecture (relative to f32 FMAs, `vdpbf16ps` is faster on a Zen 4 than on a
    Sapphire Rapids Xeon; docs/measurements.md), which the feature flags do not tell, so
    the host is asked; a ratio, not a rate, so that the low-precision price carries the
    f32 cost model's bias too and the planner compares like with like."""
    from tilecraft.backends.cpu import schedule as tiling
    from tilecraft.corpus import generator, kernels
    from tilecraft.corpus.amx import measure
    from tilecraft.corpus.measure import MeasureOptions, measure_in_process
    from tilecraft.costmodel.model import best_decision

    m, n, k = REFERENCE_GEMM
    with ir.Context() as ctx:
        f32_kernel = kernels.extract(ir.Module.parse(generator.matmul(m, n, k), context=ctx))[0]
        info = kernels.infos_of(f32_kernel.mlir, ctx)
    decision, _ = best_decision(cost_model, f32_kernel, tiling.space(info, target))  # (this model's pick)
    f32_key = (target.hash(), f"f32 {decision.to_json()}")
    if f32_key not in _MEASURED:
        f32 = measure_in_process(f32_kernel, decision, target, MeasureOptions(max_seconds=0.1))
        if f32.status != "ok":
            raise AmxModelError(f"the f32 reference kernel failed its check on this host: {f32.error}")
        _MEASURED[f32_key] = f32.median_s
    key = (target.hash(), precision)
    if key not in _MEASURED:
        lowp_kernel = workload(1, m, n, k, precision, blocked=True, unsigned="a" if precision == "int8" else "")
        lowp = measure(lowp_kernel, avx512_schedule(m, n), budget_s=0.1, min_runs=5)
        if lowp.status != "ok":
            raise AmxModelError(f"the AVX-512 {precision} reference kernel failed its check on this host: {lowp.error}")
        _MEASURED[key] = lowp.median_s
    return _MEASURED[key] / _MEASURED[f32_key]


class LayerPrices:
    """`prices(layer, precision)` → (AMX schedule or None, predicted seconds or None): the
    callback `costmodel/precision_plan.plan` prices layers with. `isa`: "amx" (the AMX
    model prices each layer's best schedule) or "avx512" (on a CPU without AMX: its f32
    price times this host's measured `avx512_ratio`)."""

    def __init__(
        self, module: ir.Module, cost_model, target, amx_model: AmxCostModel | None = None, *, isa: str = "amx"
    ):
        self.f32 = f32_latencies(module, cost_model, target)
        self.amx_model = amx_model
        self.isa = isa
        self.cost_model, self.target = cost_model, target
        self.ratios: dict[str, float] = {}  # AVX-512: precision → `avx512_ratio`, asked once

    def __call__(self, layer: Layer, precision: str) -> tuple[AmxSchedule | None, float | None]:
        if precision == "f32":
            return None, self.f32[layer.index]
        if self.isa == "avx512":
            f32_s = self.f32[layer.index]
            if f32_s is None:
                return None, None
            if precision not in self.ratios:
                self.ratios[precision] = avx512_ratio(self.cost_model, self.target, precision)
            seconds = f32_s * self.ratios[precision]
            return avx512_schedule(layer.m, layer.n), seconds + overhead_bytes(layer, precision) / STREAM_BYTES_PER_S
        if self.amx_model is None:
            self.amx_model = AmxCostModel.load()
        kernel = workload(layer.batch, layer.m, layer.n, layer.k, precision, blocked=layer.blocked)
        sched, seconds = self.amx_model.best(kernel)
        return sched, seconds + overhead_bytes(layer, precision) / STREAM_BYTES_PER_S
