"""The accelerator cost model: simulated cycles of a layer schedule on a hardware config.

On the costmodel floor. Reads the accelerator corpus (`corpus/accel_corpus.py` rows:
layer, `ConvSchedule`, `AccelTarget` config, simulated cycles) to train, and a model file
(`costmodel/data/accel-model.json.gz`) to predict; writes model files.

`features` describes one (layer, schedule, config): the layer's shape, the schedule's
fields and tile counts, the config's features (`AccelTarget.features`), and analytical
quantities of the program the lowering would emit, in closed form (`program_stats`: GEMM
and ALU loop iterations, DMA counts and DRAM bytes, each module's busy cycles under the
config's costs — exactly what the simulator charges, less the waits for tokens).
`analytical_cycles` is the model-free estimate (the busiest module when tiles are
double-buffered, their sum when not). `AccelCostModel` is one LightGBM regression on log cycles boosted from that
estimate's log, so the trees learn the overlap the estimate misses — in units that carry
over to configs it was not trained on. Utilization follows from the cycles: the GEMM
products a schedule executes are known exactly.

`adapt(samples, target)` is the few-shot transfer to a config never trained on (HELP's
setting): from ≤ 10 simulated samples on it, a correction of the base model for that
config (keyed by the config's hash) — none, a log-scale offset, or the offset plus a
small residual booster on the analytical features — whichever has the least
leave-one-out error on the samples. The config features and the analytical quantities
already carry most of the transfer; `bench/accel_costmodel.py` measures both.

Train the shipped model (every corpus config but `accel_corpus.UNSEEN`):

    python -m tilecraft.costmodel.accel_model [--corpus PATH] [--out PATH]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
from collections.abc import Sequence

import lightgbm as lgb
import numpy as np

from tilecraft.backends.accel import lower as L
from tilecraft.backends.accel.target import AccelTarget
from tilecraft.corpus import accel_corpus
from tilecraft.costmodel import lightgbm_model

FORMAT = "tilecraft-accel-cost-model-1"
MODEL_PATH = os.path.join(os.path.dirname(__file__), "data", "accel-model.json.gz")

PARAMS = {
    **lightgbm_model.PARAMS,
    "objective": "huber",
    "alpha": 0.1,
    "num_leaves": 31,
}  # the CPU model's, smaller trees
ROUNDS = 400


class AccelModelError(RuntimeError):
    pass


# ------------------------------------------------------------------ features
def program_stats(layer: L.ConvLayer, s: L.ConvSchedule, t: AccelTarget) -> dict[str, float]:
    """Instruction counts, DRAM bytes, loop iterations and each module's busy cycles of the
    program `emit_layer` writes for the schedule, in closed form (the costs the simulator
    charges, without the waits for tokens) — so a planner can price a whole schedule space
    without emitting it. `tests/costmodel/test_accel_model.py` pins it to the simulator."""
    g = L.check_schedule(layer, s, t)
    b, stride, oh, ow = t.block, layer.stride, layer.oh, layer.ow
    n_sp_h, n_sp_w = -(-oh // s.th), ow // s.tw
    n_sp, n_co, n_ci = n_sp_h * n_sp_w, g["cob"] // s.tco, 1 if layer.depthwise else g["cib"] // s.tci
    tiles, steps, slots, tci = n_sp * n_co, n_sp * n_co * n_ci, g["slots"], g["tci"]
    gemm_uops = s.tco * g["taps"] * (1 if layer.depthwise else tci)
    n_alu = 6 + bool(layer.pre_shift) + 4 * layer.residual
    # rows of each tile row, input entries and bytes of one channel block of each tile
    th_ = np.minimum(s.th, oh - np.arange(n_sp_h) * s.th)
    ih0 = np.arange(n_sp_h) * s.th * stride - layer.pad
    rows = (th_ - 1) * stride + layer.kh
    ys = rows - np.maximum(0, -ih0) - np.maximum(0, ih0 + rows - layer.h)
    iw0 = np.arange(n_sp_w) * s.tw * stride - layer.pad
    xs = g["ic"] - np.maximum(0, -iw0) - np.maximum(0, iw0 + g["ic"] - layer.w)
    inp_bytes, inp_entries = np.outer(ys, xs).ravel() * b, np.outer(rows, np.full(n_sp_w, g["ic"])).ravel()
    # how often each tile's input and the weights are loaded: a load is skipped when the
    # step before had the same tile (same spatial tile and channels; same channels)
    if layer.depthwise or n_ci > 1:
        inp_times = n_co * n_ci
    else:
        inp_times = n_co if s.order == "co" and n_sp > 1 else 1
    if n_ci > 1:
        wgt_loads = steps
    else:
        wgt_loads = n_co if s.order == "co" or n_co == 1 else tiles
    wgt_bytes = gemm_uops * b * b
    const_loads = n_co if s.order == "co" or n_co == 1 else tiles
    table = slots**3 * gemm_uops + slots * s.tco * (5 + 2 * layer.residual)
    tile_px = np.repeat(th_ * s.tw, n_sp_w)  # output pixels of each spatial tile
    px = oh * ow

    # the simulator's costs: a DMA, a load (entries written past the transfer), a loop
    dma = lambda nbytes: t.dram_latency + -(-nbytes // t.bytes_per_cycle)
    load_cost = lambda nbytes, entries: (
        np.where(np.asarray(nbytes) > 0, dma(nbytes), 1)
        + np.maximum(0, entries - (np.asarray(nbytes) / t.bytes_per_cycle).astype(np.int64))
    )
    loop = lambda iters, ii: iters * ii + t.pipeline

    load_busy = tci * inp_times * load_cost(inp_bytes, inp_entries).sum() + wgt_loads * load_cost(wgt_bytes, gemm_uops)
    drains = min(slots, tiles) + 1
    compute_busy = (
        load_cost(4 * table, table)
        + const_loads * load_cost(16 * b * s.tco, 4 * s.tco)
        + n_co * loop(tile_px * s.tco, t.gemm_ii).sum()  # accumulator resets
        + n_co * n_ci * loop(tile_px * gemm_uops, t.gemm_ii).sum()
        + n_alu * n_co * loop(tile_px * s.tco, t.alu_ii).sum()
        + (n_co * s.tco * load_cost(tile_px * b, tile_px).sum() if layer.residual else 0)
        + drains * t.pipeline
        + 1  # finish
    )
    store_busy = n_co * s.tco * np.maximum(dma(tile_px * b), tile_px).sum()
    loads = tci * inp_times * n_sp + wgt_loads
    stores = tiles * s.tco
    loops = tiles * (1 + n_ci + n_alu) + drains
    stats = {
        "loads": loads,
        "stores": stores,
        "loops": loops,
        "instructions": 1 + const_loads + loops + loads + stores * (2 if layer.residual else 1) + 1,
        "inp_bytes": tci * inp_times * inp_bytes.sum(),
        "wgt_bytes": wgt_loads * wgt_bytes,
        "other_bytes": 4 * table + const_loads * 16 * b * s.tco + (g["cob"] * b * px if layer.residual else 0),
        "write_bytes": g["cob"] * b * px,
        "gemm_iters": n_co * n_ci * gemm_uops * px,
        "reset_iters": g["cob"] * px,
        "alu_iters": n_alu * g["cob"] * px,
        "load_busy": load_busy,
        "compute_busy": compute_busy,
        "store_busy": store_busy,
    }
    return {k: float(v) for k, v in stats.items()}


def analytical_from(st: dict[str, float], double: bool) -> float:
    busy = (st["load_busy"], st["compute_busy"], st["store_busy"])
    return float(max(busy) if double else sum(busy))


def analytical_cycles(layer: L.ConvLayer, s: L.ConvSchedule, t: AccelTarget) -> float:
    """The model-free estimate: modules overlap fully when double-buffered, else not."""
    return analytical_from(program_stats(layer, s, t), s.double)


def features(layer: L.ConvLayer, s: L.ConvSchedule, t: AccelTarget) -> dict[str, float]:
    """The feature vector of one (layer, schedule, config); deterministic."""
    g = L.check_schedule(layer, s, t)
    st = program_stats(layer, s, t)
    b = t.block
    n_sp = -(-layer.oh // s.th) * (layer.ow // s.tw)
    n_co, n_ci = g["cob"] // s.tco, 1 if layer.depthwise else g["cib"] // s.tci
    lg = np.log2
    f = {
        "cin": layer.cin,
        "cout": layer.cout,
        "oh": layer.oh,
        "ow": layer.ow,
        "k": layer.kh,
        "stride": layer.stride,
        "depthwise": float(layer.depthwise),
        "residual": float(layer.residual),
        "log_macs": lg(layer.macs),
        "th": s.th,
        "tw": s.tw,
        "tco": s.tco,
        "tci": g["tci"],
        "order_co": float(s.order == "co"),
        "double": float(s.double),
        "tile_px": s.th * s.tw,
        "ragged_rows": float(layer.oh % s.th != 0),
        "n_sp": n_sp,
        "n_co": n_co,
        "n_ci": n_ci,
        "log_tiles": lg(n_sp * n_co),
        "log_steps": lg(n_sp * n_co * n_ci),
        "inp_fill": g["slots"] * g["inp_tile"] / t.inp_depth,
        "wgt_fill": g["slots"] * g["wgt_tile"] / t.wgt_depth,
        "acc_fill": g["acc_need"] / t.acc_depth,
        "useful_frac": layer.macs / max(1.0, st["gemm_iters"] * b * (1 if layer.depthwise else b)),
        **t.features(),
    }
    for key in ("loads", "stores", "loops", "instructions", "inp_bytes", "wgt_bytes", "other_bytes", "write_bytes"):
        f[f"log_{key}"] = lg(st[key] + 1)
    for key in ("gemm_iters", "alu_iters", "reset_iters"):
        f[f"log_{key}"] = lg(st[key] + 1)  # log2(n + 1): `gemm_ops` reads the count back exactly
    load, comp, store = st["load_busy"], st["compute_busy"], st["store_busy"]
    est = analytical_from(st, s.double)
    f.update(
        log_load_busy=lg(load),
        log_compute_busy=lg(comp),
        log_store_busy=lg(store),
        log_roofline=lg(max(load, comp, store)),
        log_serial=lg(load + comp + store),
        log_analytical=lg(est),
        load_share=load / (load + comp + store),
        compute_share=comp / (load + comp + store),
        gemm_share=st["gemm_iters"] * t.gemm_ii / est,
        latency_share=st["loads"] * t.dram_latency / max(load, 1.0),
        bytes_per_gemm=(st["inp_bytes"] + st["wgt_bytes"]) / max(1.0, st["gemm_iters"]),
    )
    return {k: float(v) for k, v in f.items()}


FEATURES = tuple(features(L.ConvLayer("probe", 16, 16, 4, 4), L.ConvSchedule(4, 4, 1, 1), AccelTarget()))
# the residual booster `adapt` fits sees only the config-agnostic analytical quantities
ADAPT_FEATURES = ("log_analytical", "load_share", "compute_share")
_ADAPT_COLS = [FEATURES.index(k) for k in ADAPT_FEATURES]
ADAPT_ROUNDS = 30
_ADAPT_PARAMS = dict(
    PARAMS,
    objective="l2",
    num_leaves=3,
    learning_rate=0.1,
    lambda_l2=5.0,
    min_data_in_leaf=2,
    min_data_in_bin=1,
    min_sum_hessian_in_leaf=0.0,
    feature_fraction=1.0,
    bagging_fraction=1.0,
    bagging_freq=0,
)


def _fit(xa: np.ndarray, resid: np.ndarray, kind: str) -> dict:
    """A per-config correction of the base model's log cycles: `kind` none, offset, residual."""
    offset = float(np.median(resid)) if kind != "none" else 0.0
    booster = None
    if kind == "residual":
        data = lgb.Dataset(xa, resid - offset, params={"min_data_in_bin": 1})
        booster = lgb.train(_ADAPT_PARAMS, data, num_boost_round=ADAPT_ROUNDS)
    return {"kind": kind, "offset": offset, "booster": booster}


def _correction(entry: dict, xa: np.ndarray) -> np.ndarray:
    out = np.full(len(xa), entry["offset"])
    threads = lightgbm_model.predict_threads(len(xa))
    return out + entry["booster"].predict(xa, num_threads=threads) if entry["booster"] is not None else out


def _loo_error(xa: np.ndarray, resid: np.ndarray, kind: str) -> float:
    """Mean squared leave-one-out error of a `kind` correction fitted to the samples."""
    n = len(resid)
    if kind != "none" and n < (3 if kind == "offset" else 5):
        return np.inf
    errors = []
    for i in range(n):
        keep = np.arange(n) != i
        errors.append(resid[i] - _correction(_fit(xa[keep], resid[keep], kind), xa[i : i + 1])[0])
    return float(np.mean(np.square(errors)))


# ------------------------------------------------------------------ corpus rows
def row_case(r: dict) -> tuple[L.ConvLayer, L.ConvSchedule, AccelTarget]:
    """The (layer, schedule, config) a corpus row was simulated for."""
    target = AccelTarget.parse(r["config"])
    return accel_corpus.LayerSpec(**r["layer"]).layer(target), L.ConvSchedule.from_json(r["schedule"]), target


def matrix(rows: Sequence[dict]) -> np.ndarray:
    """Feature matrix of corpus rows (columns in `FEATURES` order)."""
    return _matrix([features(*row_case(r)) for r in rows])


def _matrix(feats: Sequence[dict[str, float]]) -> np.ndarray:
    return np.array([[f[k] for k in FEATURES] for f in feats], np.float64).reshape(len(feats), len(FEATURES))


def gemm_ops(x: np.ndarray) -> np.ndarray:
    """The GEMM products of feature rows (exact: the simulator's count; utilization's numerator)."""
    return np.round(np.exp2(x[:, FEATURES.index("log_gemm_iters")]) - 1)


def _base_score(x: np.ndarray) -> np.ndarray:
    return x[:, FEATURES.index("log_analytical")] * np.log(2)


# ------------------------------------------------------------------ the model
class AccelCostModel:
    """LightGBM on log cycles from the analytical estimate, with per-config adaptations."""

    def __init__(self, booster: lgb.Booster | None = None, adapted: dict | None = None, configs: Sequence[str] = ()):
        self.booster = booster
        self.adapted: dict[str, dict] = adapted or {}  # config hash -> `_fit`'s correction
        self.configs = tuple(configs)  # the configs it was trained on

    # ---- training
    def fit(self, rows: Sequence[dict], *, x: np.ndarray | None = None, rounds: int = ROUNDS) -> AccelCostModel:
        x = matrix(rows) if x is None else x
        y = np.log([r["cycles"] for r in rows])
        data = lgb.Dataset(x, y, init_score=_base_score(x), feature_name=list(FEATURES))
        self.booster = lgb.train(PARAMS, data, num_boost_round=rounds)
        self.configs = tuple(sorted({r["config"] for r in rows}))
        return self

    def adapt(self, samples: Sequence[dict], target: AccelTarget, *, x: np.ndarray | None = None) -> AccelCostModel:
        """Few-shot transfer to `target` from its simulated `samples` (≤ 10 rows). Of no
        correction, a log-scale offset, and the offset plus a residual booster on the
        analytical features, keep the one with the least leave-one-out error on the samples
        (ten samples cannot outvote the corpus: a correction must earn its place)."""
        if not samples:
            raise AccelModelError("adapt needs at least one simulated sample")
        x = matrix(samples) if x is None else x
        xa, resid = x[:, _ADAPT_COLS], np.log([r["cycles"] for r in samples]) - self._log_base(x)
        kind = min(("none", "offset", "residual"), key=lambda k: _loo_error(xa, resid, k))
        self.adapted[target.hash()] = _fit(xa, resid, kind)
        return self

    # ---- prediction
    def _log_base(self, x: np.ndarray) -> np.ndarray:
        if self.booster is None:
            raise AccelModelError("the model is not trained (fit or load one)")
        if not len(x):
            return _base_score(x) + 0.0
        return _base_score(x) + self.booster.predict(x, num_threads=lightgbm_model.predict_threads(len(x)))

    def log_cycles(self, x: np.ndarray, target: AccelTarget) -> np.ndarray:
        out = self._log_base(x)
        entry = self.adapted.get(target.hash())
        return out + _correction(entry, x[:, _ADAPT_COLS]) if entry and len(x) else out

    def predict(self, layer: L.ConvLayer, schedules: Sequence[L.ConvSchedule], target: AccelTarget) -> np.ndarray:
        """Predicted cycles of each schedule of `layer` on `target`."""
        x = _matrix([features(layer, s, target) for s in schedules])
        return np.exp(self.log_cycles(x, target))

    def predict_utilization(
        self, layer: L.ConvLayer, schedules: Sequence[L.ConvSchedule], target: AccelTarget
    ) -> np.ndarray:
        """Predicted GEMM-core utilization: the schedule's GEMM products over predicted cycles."""
        x = _matrix([features(layer, s, target) for s in schedules])
        return gemm_ops(x) / np.exp(self.log_cycles(x, target))

    def predict_rows(self, rows: Sequence[dict], *, x: np.ndarray | None = None) -> np.ndarray:
        """Predicted cycles of corpus rows (each on its own config)."""
        x = matrix(rows) if x is None else x
        out = np.empty(len(rows))
        configs = [r["config"] for r in rows]
        for c in set(configs):
            idx = np.array([i for i, k in enumerate(configs) if k == c])
            out[idx] = np.exp(self.log_cycles(x[idx], AccelTarget.parse(c)))
        return out

    # ---- files
    def save(self, path: str) -> None:
        doc = {
            "format": FORMAT,
            "features": list(FEATURES),
            "configs": list(self.configs),
            "booster": self.booster.model_to_string(),
            "adapted": {
                h: {**e, "booster": e["booster"].model_to_string() if e["booster"] else None}
                for h, e in self.adapted.items()
            },
        }
        with gzip.open(path, "wt", compresslevel=9) as f:
            json.dump(doc, f)

    @staticmethod
    def load(path: str) -> AccelCostModel:
        with gzip.open(path, "rt") as f:
            doc = json.load(f)
        if doc.get("format") != FORMAT or doc.get("features") != list(FEATURES):
            raise AccelModelError(f"{path} is not a model of this feature schema: retrain it")
        adapted = {
            h: {**e, "booster": lgb.Booster(model_str=e["booster"]) if e["booster"] else None}
            for h, e in doc["adapted"].items()
        }
        return AccelCostModel(lgb.Booster(model_str=doc["booster"]), adapted, doc["configs"])


_SHIPPED: list[AccelCostModel] = []


def load_shipped() -> AccelCostModel:
    """The shipped model (`MODEL_PATH`), loaded once per process."""
    if not _SHIPPED:
        _SHIPPED.append(AccelCostModel.load(MODEL_PATH))
    return _SHIPPED[0]


# ------------------------------------------------------------------ evaluation
def pairwise(rows: Sequence[dict], predicted: np.ndarray) -> float:
    """Fraction of same-(layer, config) schedule pairs ordered as the simulator orders them
    (pairs tied in simulated cycles are skipped; a predicted tie counts half)."""
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault((r["config"], json.dumps(r["layer"], sort_keys=True)), []).append(i)
    right = total = 0.0
    for idx in groups.values():
        y = np.array([rows[i]["cycles"] for i in idx], np.float64)
        p = predicted[idx]
        dy = np.sign(y[:, None] - y[None, :])
        dp = np.sign(p[:, None] - p[None, :])
        mask = np.triu(dy != 0, 1)
        right += np.sum((dy == dp)[mask]) + 0.5 * np.sum((dp == 0)[mask])
        total += mask.sum()
    return right / total if total else float("nan")


def mape(rows: Sequence[dict], predicted: np.ndarray) -> float:
    y = np.array([r["cycles"] for r in rows], np.float64)
    return float(np.mean(np.abs(predicted - y) / y))


# ------------------------------------------------------------------ training the shipped model
def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m tilecraft.costmodel.accel_model", description="train the shipped model")
    p.add_argument("--corpus", default=accel_corpus.CORPUS_PATH)
    p.add_argument("--out", default=MODEL_PATH)
    args = p.parse_args(argv)
    rows = [r for r in accel_corpus.read(args.corpus) if r["config"] in accel_corpus.CONFIGS]
    AccelCostModel().fit(rows).save(args.out)
    print(
        f"trained on {len(rows)} rows of {len(accel_corpus.CONFIGS)} configs (not {accel_corpus.UNSEEN}) → {args.out}"
    )


if __name__ == "__main__":
    main()
