"""The learned cost model: three LightGBM boosters over `features.py`'s vectors.

On the costmodel floor; the model the driver ranks decisions with by default. Reads
`Record`s (`train.py`, or measurements from search) to fit, and model files; writes model
files.

- latency: regression (Huber loss) on log latency, boosted from the analytical model's estimate (its
  log is each row's initial score, so the trees learn the roofline's error, not the scale);
- rank: LambdaRank within each kernel (a kernel's measured decisions form one query), what
  search and the compiler rank candidates by;
- utilization: regression on the measured utilization.

`update(records)` continues boosting from the current trees on the new measurements (a few
rounds: cheap enough to run between search rounds). Model files are gzip JSON with the
feature-schema version, the feature names and the three boosters as LightGBM text. A
loaded model predicts through lib_lightgbm directly (`lgb_native.py`), so a compile never
imports the `lightgbm` package; training and `update` do.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Sequence

import numpy as np

from tilecraft.backends.cpu.schedule import TileDecision
from tilecraft.backends.cpu.split import cores
from tilecraft.corpus.kernels import Kernel
from tilecraft.costmodel import features, lgb_native
from tilecraft.costmodel.model import MODEL_FORMAT, CostModelError, Predictions, Record, write_model_file

RELEVANCE_LEVELS = 31  # LambdaRank's default label_gain covers 0..30

PARAMS = {
    "learning_rate": 0.05,
    "num_leaves": 63,
    "min_data_in_leaf": 10,
    "feature_fraction": 0.8,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "verbose": -1,
    "num_threads": 2,
    "seed": 0,
    "deterministic": True,
}
ROUNDS = {"latency": 600, "rank": 300, "util": 300}
UPDATE_ROUNDS = 20
PARALLEL_PREDICT_ROWS = 2000  # fewer rows predict on at most two threads (see `predict_threads`)
PAIR_PREDICT_ROWS = 8  # fewer rows predict on one


def predict_threads(rows: int) -> int:
    """`num_threads` for a booster's `predict` of `rows` rows: one for a small batch
    (LightGBM's threaded path has a fixed cost per call far above a small batch's work, and
    the compiler predicts thousands of small batches: docs/measurements.md, compile time),
    two for a kernel's schedule space (a shipped booster costs about 42 µs a row: 30 rows
    took 1.30 ms on one thread, 0.81 on two, AMD EPYC Zen 3; a fusion plan predicts a
    hundred such batches), else LightGBM's default (0: every core)."""
    if rows < PAIR_PREDICT_ROWS:
        return 1
    return min(2, cores()) if rows < PARALLEL_PREDICT_ROWS else 0


def relevance(latencies: np.ndarray) -> np.ndarray:
    """Graded relevance within one kernel: 30 for the fastest, falling with best/latency."""
    best = latencies.min()
    return np.clip(np.floor((RELEVANCE_LEVELS - 1) * (best / latencies) ** 2 + 0.5), 0, RELEVANCE_LEVELS - 1)


def _standardized(a: np.ndarray) -> np.ndarray:
    sd = a.std()
    return (a - a.mean()) / sd if sd > 0 else np.zeros_like(a)


class LightGBMCostModel:
    kind = "lightgbm"

    def __init__(self, target, *, text: bool = True, params: dict | None = None, rounds: dict | None = None):
        self.target = target
        self.text = text
        self.params = {**PARAMS, **(params or {})}
        self.rounds = {**ROUNDS, **(rounds or {})}
        # lightgbm.Booster after training, lgb_native.Booster after loading: both predict
        self.boosters: dict = {}
        self.meta: dict = {}
        self.offsets: dict[str, float] = {}  # per-kernel log-latency calibration from `update`

    # ------------------------------------------------------------------ training
    def _matrix(self, kernel: Kernel, decisions: Sequence[TileDecision], target=None) -> tuple[np.ndarray, np.ndarray]:
        x = features.matrix([(kernel, d) for d in decisions], target or self.target, text=self.text)
        base = x[:, features.feature_names().index("log_analytical_s")] * math.log(2)  # natural log
        return x, base

    def _dataset(self, records: Sequence[Record]):
        # one ranking group per kernel and machine: each record featurized with the target
        # it was measured on (the target features let one model serve several machines)
        by_kernel: dict[tuple, list[Record]] = collections.defaultdict(list)
        for r in records:
            by_kernel[(r.kernel.key, r.target)].append(r)  # (a Target is frozen: hashable)
        xs, bases, lat, util, groups, rel = [], [], [], [], [], []
        for rs in by_kernel.values():
            x, base = self._matrix(rs[0].kernel, [r.decision for r in rs], rs[0].target)
            xs.append(x)
            bases.append(base)
            t = np.array([r.latency_s for r in rs])
            lat.append(np.log(t))
            util.append(np.array([r.utilization for r in rs]))
            groups.append(len(rs))
            rel.append(relevance(t))
        return np.concatenate(xs), np.concatenate(bases), np.concatenate(lat), np.concatenate(util), groups, rel

    def fit(self, records: Sequence[Record], *, client=None) -> LightGBMCostModel:
        """Fit the three boosters; with a `distributed.Client`, across its workers
        (`dask_train.py`: the same boosters, data-parallel)."""
        if not records:
            raise CostModelError("no measurements to train on")
        x, base, lat, util, groups, rel = self._dataset(records)
        names = features.feature_names(text=self.text)
        p = self.params

        placed = None
        if client is not None:
            from tilecraft.costmodel import dask_train

            placed = dask_train.Placement(client, x, groups, names)  # (the rows sent once, for all three)

        def train(params, y, rounds, *, init_score=None, group=None):
            import lightgbm as lgb

            if placed is not None:
                return placed.train(params, y, rounds, init_score=init_score, group=group)
            data = lgb.Dataset(x, y, init_score=init_score, group=group, feature_name=names)
            return lgb.train(params, data, rounds)

        # log-space Huber: a few pathological kernels stay outliers
        self.boosters["latency"] = train(
            {**p, "objective": "huber", "alpha": 0.3}, lat, self.rounds["latency"], init_score=base
        )
        self.boosters["rank"] = train(
            {**p, "objective": "lambdarank", "lambdarank_truncation_level": 10, "eval_at": [1, 5]},
            np.concatenate(rel),
            self.rounds["rank"],
            group=groups,
        )
        self.boosters["util"] = train({**p, "objective": "regression"}, util, self.rounds["util"])
        self.meta = {"rows": len(records), "kernels": len(groups)}
        return self

    def update(self, records: Sequence[Record]) -> None:
        """Continue boosting on new measurements (search calls this between rounds)."""
        if not records or not self.boosters:
            return
        import lightgbm as lgb

        # A kernel's measurements first recalibrate its level (trees cannot learn an offset
        # shared by every row: no split has gain), then new trees fit what is left.
        by_kernel: dict[str, list[Record]] = collections.defaultdict(list)
        for r in records:
            by_kernel[r.kernel.key].append(r)
        for key, rs in by_kernel.items():
            x, base = self._matrix(rs[0].kernel, [r.decision for r in rs])
            resid = np.log([r.latency_s for r in rs]) - (self.boosters["latency"].predict(x) + base)
            n_old = self.meta.setdefault("offset_counts", {}).get(key, 0)
            self.offsets[key] = (self.offsets.get(key, 0.0) * n_old + resid.sum()) / (n_old + len(rs))
            self.meta["offset_counts"][key] = n_old + len(rs)
        x, base, lat, util, groups, rel = self._dataset(records)
        # no bagging: a round of one or two measurements would sample no row at all
        p = {**self.params, "min_data_in_leaf": 2, "learning_rate": 0.2, "bagging_fraction": 1.0, "bagging_freq": 0}
        offsets = np.concatenate([np.full(len(rs), self.offsets[key]) for key, rs in by_kernel.items()])
        # Continued boosting starts from the old trees' raw output (LightGBM replaces any
        # init_score with it), so the label is what the trees model: the log latency less
        # the roofline base and the kernel's offset.
        self.boosters["latency"] = lgb.train(
            {**p, "objective": "regression"},
            lgb.Dataset(x, lat - base - offsets),
            UPDATE_ROUNDS,
            init_model=lgb_native.to_lightgbm(self.boosters["latency"]),
        )
        if max(groups) > 1:
            self.boosters["rank"] = lgb.train(
                {**p, "objective": "lambdarank"},
                lgb.Dataset(x, np.concatenate(rel), group=groups),  # (continues from the old trees' output)
                UPDATE_ROUNDS,
                init_model=lgb_native.to_lightgbm(self.boosters["rank"]),
            )
        self.boosters["util"] = lgb.train(
            {**p, "objective": "regression"},
            lgb.Dataset(x, util),
            UPDATE_ROUNDS,
            init_model=lgb_native.to_lightgbm(self.boosters["util"]),
        )

    # ---------------------------------------------------------------- prediction
    def predict(self, kernel: Kernel, decisions: Sequence[TileDecision]) -> Predictions:
        if not self.boosters:
            raise CostModelError("the model is not trained")
        x, base = self._matrix(kernel, decisions)
        kw = {"num_threads": predict_threads(len(x))}
        log_latency = self.boosters["latency"].predict(x, **kw) + base + self.offsets.get(kernel.key, 0.0)
        # Rank by the ranker and the latency regressor together (each standardized over the
        # candidates): on held-out kernels the blend orders pairs better than either alone.
        score = _standardized(self.boosters["rank"].predict(x, **kw)) + _standardized(-log_latency)
        return Predictions(
            latency_s=np.exp(log_latency),
            utilization=np.clip(self.boosters["util"].predict(x, **kw), 0.0, None),
            score=score,
        )

    # ------------------------------------------------------------------- files
    def to_doc(self) -> dict:
        return {
            "format": MODEL_FORMAT,
            "kind": self.kind,
            "schema": features.SCHEMA_VERSION,
            "text": self.text,
            "feature_names": features.feature_names(text=self.text),
            "target": self.target.to_json(),
            "params": self.params,
            "rounds": self.rounds,
            "meta": self.meta,
            "offsets": self.offsets,
            "boosters": {name: b.model_to_string() for name, b in self.boosters.items()},
        }

    def save(self, path: str) -> None:
        write_model_file(path, self.to_doc())

    @staticmethod
    def from_doc(doc: dict, target) -> LightGBMCostModel:
        m = LightGBMCostModel(target, text=bool(doc.get("text")), params=doc.get("params"), rounds=doc.get("rounds"))
        if doc.get("feature_names") != features.feature_names(text=m.text):
            raise CostModelError("model file's feature names differ from this Tilecraft's schema: retrain it")
        try:
            m.boosters = {name: lgb_native.Booster(s) for name, s in doc["boosters"].items()}
        except (KeyError, lgb_native.NativeError) as exc:
            raise CostModelError(f"model file is damaged: {exc}") from None
        if set(m.boosters) != {"latency", "rank", "util"}:
            raise CostModelError("model file lacks one of its latency/rank/util boosters")
        m.meta = dict(doc.get("meta", {}))
        m.offsets = {k: float(v) for k, v in doc.get("offsets", {}).items()}
        return m

    def copy(self) -> LightGBMCostModel:
        return LightGBMCostModel.from_doc(self.to_doc(), self.target)
