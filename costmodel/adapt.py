"""Adaptation: fit a cost model trained on other machines to this one, from minutes of measurement.

On the costmodel floor; behind `tilecraft costmodel adapt`. Reads a base model file (by
default the shipped model `model.choose` gives this machine) and the reference kernels of
the seed corpus (`corpus/data/seed.db.gz`: zoo and generated kernels of every op kind, with
the decisions the seed machine measured and how long each took); measures a chosen few
(kernel, decision) pairs here with the harness (`corpus/measure.py`: isolated workers,
output checked against a reference, repeated until stable); writes the fine-tuned model,
whose target is this machine, to the per-user model directory under this target's hash
(`model.installed_path`, where `create("lightgbm", target)` finds it) or to `--out`, and
optionally the measurements to a corpus database.

Choosing, HELP-style (few samples, each informative), within a wall-clock budget that the
measurements spend: kernels round-robin over op kinds; within a kind, the kernel farthest
(in log FLOPs, bytes and intensity) from those already chosen, among those whose
decisions' latencies spread widest on the seed machine (a kernel whose candidates all run
alike teaches no order) and that are cheap enough to measure (the seed machine's compile
and timing seconds); per kernel a handful of decisions spread evenly down the base model's
predicted ranking of it, so each kernel adds pairs that teach order and a range that
teaches level.

Fine-tuning: continued boosting of the base's boosters on the new rows, each featurized
with this machine's target. `latency` continues the latency regressor (on log latency
less the analytical estimate it is boosted from) and the utilization regressor;
`latency+rank` also continues the LambdaRank ranker. Which (or neither) is chosen by
cross-validation over the measured kernels (folds by kernel): a few rows of a machine much
like the base's only add noise to a good ranker, while a ranker that never saw a kind
learns it from them (`bench/costmodel_adapt.py` measures both cases).
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import math
import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import lightgbm as lgb
import numpy as np

from tilecraft.backends.cpu.schedule import TileDecision
from tilecraft.corpus import measure
from tilecraft.corpus.db import CorpusDB
from tilecraft.corpus.kernels import Kernel
from tilecraft.costmodel import evaluate, features, lgb_native
from tilecraft.costmodel.lightgbm_model import LightGBMCostModel, relevance
from tilecraft.costmodel.model import CostModelError, Record

SEED_CORPUS = os.path.join(os.path.dirname(os.path.dirname(measure.__file__)), "corpus", "data", "seed.db.gz")
BUDGET_S = 120.0
PER_KERNEL = 6
KINDS = ("matmul", "conv2d", "elementwise", "reduction", "batch_matmul", "depthwise_conv2d", "pooling")
MAX_WORKERS = 2  # measuring workers side by side by default (`--workers`; more untried: 2 cores here)
CANDIDATE_TIMEOUT_S = 60.0  # a candidate that runs longer counts as hung (the budget may cut it sooner)
KERNEL_SHARE = 0.12  # no kernel may be expected to take more of the budget than this
MIN_SPREAD = 1.15  # slowest / fastest of a kernel's decisions on the seed machine, to be chosen
FOLDS = 4
MARGIN = 0.02  # cross-validated pairwise a mode must gain to be preferred to a simpler one
MODES = ("base", "latency", "latency+rank")
TUNE = {"rounds": 100, "learning_rate": 0.1, "num_leaves": 15, "min_data_in_leaf": 10}


def default_workers() -> int:
    """Measuring workers side by side: one per core this process may use, at most
    MAX_WORKERS. Two on this 2-core machine measure 2.6x the rows of one in 120 s, and the
    model ranks held-out pairs better for it (docs/costmodel-adapt.md)."""
    return max(1, min(MAX_WORKERS, len(os.sched_getaffinity(0))))


# ------------------------------------------------------------------------- the pool
@dataclasses.dataclass(frozen=True)
class PoolKernel:
    """A reference kernel and the decisions the seed machine measured for it, each with
    the seconds that measurement took there (compile, warm-up and timing runs)."""

    kernel: Kernel
    source: str
    decisions: tuple[TileDecision, ...]
    cost_s: tuple[float, ...]
    spread: float  # slowest / fastest latency on the seed machine

    def estimate_s(self, chosen: Sequence[int]) -> float:
        """Seconds to measure the chosen decisions here: theirs on the seed machine, the
        reference (the kernel lowered to scalar loops, run once) and a margin."""
        return 1.3 * (sum(self.cost_s[i] for i in chosen) + 0.2 + self.kernel.flops / 1e9)


def reference_pool(db_path: str = SEED_CORPUS) -> list[PoolKernel]:
    """Every kernel with two or more successful measurements on the corpus' main machine."""
    from tilecraft.backends.cpu.target import Target
    from tilecraft.costmodel.train import kernel_of_row

    with CorpusDB(db_path, create=False) as db:
        main = db.main_target()
        if main is None:
            raise CostModelError(f"{db_path} holds no measurements to choose kernels from")
        rows = db.rows(target=Target.from_json(main).hash())
        mlir = db.workload_mlirs()
        sources = db.sources()
    by_key: dict[str, list[dict]] = collections.defaultdict(list)
    seen = set()
    for r in rows:
        if r["kind"] not in KINDS or not r["median_s"] or r["median_s"] <= 0:
            continue
        r["decision"] = TileDecision.from_json(r["decision"])
        pair = (r["workload"], r["decision"].to_json())  # the seed corpus spells a few decisions two ways
        if pair not in seen:
            seen.add(pair)
            by_key[r["workload"]].append(r)
    pool = []
    for key, rs in sorted(by_key.items()):
        if len(rs) < 2:
            continue
        lat = [r["median_s"] for r in rs]
        pool.append(
            PoolKernel(
                kernel_of_row(rs[0], mlir[key]),
                ",".join(sources.get(key, [])),
                tuple(r["decision"] for r in rs),
                tuple((r["compile_s"] or 0.5) + r["median_s"] * ((r["runs"] or 10) + 1) for r in rs),
                max(lat) / min(lat),
            )
        )
    return pool


# ---------------------------------------------------------------------- choosing
def _spread_indices(n: int, k: int) -> list[int]:
    """k positions spread evenly over 0..n-1, both ends included."""
    if n <= k:
        return list(range(n))
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)}) if k > 1 else [0]


def _shape(kernel: Kernel) -> np.ndarray:
    nbytes = max(kernel.bytes_moved, 1)
    return np.array([math.log2(max(kernel.flops, 1)), math.log2(nbytes), math.log2(max(kernel.flops, 1) / nbytes)])


def plan(
    model, target, pool: Sequence[PoolKernel], *, budget_s: float, per_kernel: int = PER_KERNEL, seed: int = 0
) -> Iterator[tuple[PoolKernel, list[TileDecision], float]]:
    """(kernel, decisions to measure, expected seconds) in the order to measure them:
    round-robin over op kinds, in each the kernel farthest from those already chosen."""
    rng = random.Random(seed)
    by_kind: dict[str, list[PoolKernel]] = collections.defaultdict(list)
    for p in pool:
        by_kind[p.kernel.kind].append(p)
    cap = KERNEL_SHARE * budget_s
    ready: dict[str, list[tuple[PoolKernel, list[int]]]] = {}
    for kind, ps in by_kind.items():
        ranked = [(p, _spread_indices(len(p.decisions), per_kernel)) for p in ps]
        cheap = [(p, idx) for p, idx in ranked if p.estimate_s(idx) <= cap]
        informative = [(p, idx) for p, idx in cheap if p.spread >= MIN_SPREAD]
        ready[kind] = informative or cheap
    chosen_shapes: dict[str, list[np.ndarray]] = collections.defaultdict(list)
    kinds = [k for k in KINDS if ready.get(k)]
    while kinds:
        for kind in list(kinds):
            cands = ready[kind]
            if not cands:
                kinds.remove(kind)
                continue
            if not chosen_shapes[kind]:
                i = rng.randrange(len(cands))
            else:
                seen = np.stack(chosen_shapes[kind])
                far = [float(np.min(np.linalg.norm(seen - _shape(p.kernel), axis=1))) for p, _ in cands]
                i = int(np.argmax(far))
            p, _ = cands.pop(i)
            chosen_shapes[kind].append(_shape(p.kernel))
            # the decisions: spread over the base model's ranking of the measured ones
            order = np.argsort(-model.predict(p.kernel, list(p.decisions)).score, kind="stable")
            idx = [int(order[j]) for j in _spread_indices(len(order), per_kernel)]
            yield p, [p.decisions[i] for i in idx], p.estimate_s(idx)


# --------------------------------------------------------------------- measuring
@dataclasses.dataclass
class Measured:
    records: list[Record]
    results: list[tuple[Kernel, str, measure.Measurement]]  # every measurement, failed ones too
    seconds: float
    workers: int = 1  # the workers that measured, side by side
    pinned: bool = True  # each on a core of its own (False: every core was held elsewhere)

    @property
    def failed(self) -> int:
        return sum(m.status != "ok" for _, _, m in self.results)

    def kinds(self) -> dict[str, int]:
        return dict(collections.Counter(r.kernel.kind for r in {r.kernel.key: r for r in self.records}.values()))


def measure_planned(
    planned: Iterator[tuple[PoolKernel, list[TileDecision], float]],
    target,
    *,
    budget_s: float,
    workers: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> Measured:
    """Measure planned kernels here until the budget is spent (starting the workers
    counts): `workers` (default `default_workers()`) isolated workers side by side, each
    on a core of its own (as many as are free, at least one), each taking the next planned
    kernel when it is done with one. A kernel expected to overrun what is left is skipped
    for a cheaper one, and a candidate still running when the budget ends is stopped and
    left out (it did not fail: it was cut short). Rows come back in the plan's order,
    whichever worker measured them. A worker that fails stops the others after their
    current candidate, and its error is raised; an interrupt stops them at once (their
    candidates killed). `progress` is called from one worker at a time."""
    start = time.perf_counter()
    lock, stop = threading.Lock(), threading.Event()
    planned = iter(planned)
    done: dict[int, tuple[list[Record], list]] = {}  # plan position -> its rows and results
    ends = [start]
    position = itertools.count()
    running: list[measure.MeasureWorker] = []
    said = threading.Lock()

    def take() -> tuple[int, PoolKernel, list[TileDecision]] | None:
        with lock:  # (the plan is a generator: one thread at a time)
            if stop.is_set():
                return None
            for p, decisions, expected in planned:
                left = budget_s - (time.perf_counter() - start)
                if left <= 0.5:
                    return None
                if expected <= left:
                    return next(position), p, decisions
            return None

    def work(cpu: int | None) -> None:
        with measure.MeasureWorker(timeout_s=CANDIDATE_TIMEOUT_S, cpu=cpu) as worker:
            running.append(worker)
            while (item := take()) is not None:
                i, p, decisions = item
                t0, rows, results = time.perf_counter(), [], []
                for d in decisions:
                    left = budget_s - (time.perf_counter() - start)
                    if left <= 0 or stop.is_set():
                        break
                    worker.timeout_s = min(left, CANDIDATE_TIMEOUT_S)
                    m = worker.measure(p.kernel, d, target)
                    ends.append(time.perf_counter())
                    if m.status == "timeout" and left < CANDIDATE_TIMEOUT_S:
                        break  # the budget ran out under it
                    results.append((p.kernel, p.source, m))
                    if m.status == "ok":
                        rows.append(Record(p.kernel, d, m.median_s, m.utilization or 0.0, p.source, target))
                done[i] = (rows, results)
                if progress:
                    extents = "x".join(map(str, p.kernel.extents))
                    took = time.perf_counter() - t0
                    with said:
                        progress(f"{p.kernel.kind} {extents}: {len(rows)} of {len(decisions)} in {took:.1f} s")

    errors: list[Exception] = []

    def guarded(cpu: int | None) -> None:
        try:
            work(cpu)
        except Exception as exc:  # (raised again once every worker is done)
            stop.set()
            errors.append(exc)

    cpus: list[int | None] = []
    threads: list[threading.Thread] = []
    try:
        for _ in range(max(1, workers or default_workers())):
            if (cpu := measure.claim_core()) is not None:
                cpus.append(cpu)
        pinned = bool(cpus)
        cpus = cpus or [None]  # (every core held by other measurements: one worker, unpinned)
        threads = [threading.Thread(target=guarded, args=(c,), daemon=True) for c in cpus[1:]]
        for t in threads:
            t.start()
        guarded(cpus[0])
        for t in threads:
            t.join()
    except BaseException:  # an interrupt: the other workers stop now, their candidates killed
        stop.set()
        for w in list(running):
            w.interrupt()
        for t in threads:
            t.join(timeout=10)
        raise
    finally:
        for c in cpus:
            measure.release_core(c)
    if errors:
        raise errors[0]
    records = [r for i in sorted(done) for r in done[i][0]]
    results = [m for i in sorted(done) for m in done[i][1]]
    return Measured(records, results, max(ends) - start, len(cpus), pinned)


# ------------------------------------------------------------------- fine-tuning
def _matrix(model: LightGBMCostModel, records: Sequence[Record]):
    """Features (each record with its own target), log latency, utilization, relevance and
    query sizes, a kernel's rows contiguous."""
    by_kernel: dict[str, list[Record]] = collections.defaultdict(list)
    for r in records:
        by_kernel[r.kernel.key].append(r)
    xs, lat, util, rel, groups = [], [], [], [], []
    for rs in by_kernel.values():
        pairs = [(r.kernel, r.decision) for r in rs]
        xs.append(features.matrix(pairs, rs[0].target or model.target, text=model.text))
        t = np.array([r.latency_s for r in rs])
        lat.append(np.log(t))
        util.append(np.array([r.utilization for r in rs]))
        rel.append(relevance(t))
        groups.append(len(rs))
    x = np.concatenate(xs)
    analytical = x[:, features.feature_names(text=model.text).index("log_analytical_s")] * math.log(2)
    return x, analytical, np.concatenate(lat), np.concatenate(util), np.concatenate(rel), groups


def fine_tune(base: LightGBMCostModel, records: Sequence[Record], mode: str, *, target=None) -> LightGBMCostModel:
    """A copy of `base` boosted on `records` for a few more rounds (`mode`: MODES). The base
    is left as it is; the copy's target is `target` (default: the base's)."""
    if mode not in MODES:
        raise CostModelError(f"unknown fine-tuning mode {mode!r} ({', '.join(MODES)})")
    m = LightGBMCostModel(target or base.target, text=base.text, params=base.params, rounds=base.rounds)
    m.boosters, m.meta = dict(base.boosters), dict(base.meta)
    if mode == "base" or not records:
        return m
    x, analytical, lat, util, rel, groups = _matrix(m, records)
    names = features.feature_names(text=m.text)
    p = {**m.params, "bagging_fraction": 1.0, "bagging_freq": 0, "verbose": -1}
    p.update({k: v for k, v in TUNE.items() if k != "rounds"})

    def more(name: str, params: dict, y, **data) -> None:
        # init_model: LightGBM starts from the old trees' raw scores (any init_score given
        # is overridden), so the label is what the booster itself models
        ds = lgb.Dataset(x, y, feature_name=names, **data)
        m.boosters[name] = lgb.train(
            {**p, **params}, ds, TUNE["rounds"], init_model=lgb_native.to_lightgbm(m.boosters[name])
        )

    # least squares, not the base's Huber loss: rows all off by the same far factor would
    # give Huber equal gradients, no split, and (after the first tree) no correction
    more("latency", {"objective": "regression"}, lat - analytical)
    more("util", {"objective": "regression"}, util)
    if mode == "latency+rank" and max(groups) > 1:
        more("rank", {"objective": "lambdarank"}, rel, group=groups)
    return m


def cross_validate(
    base: LightGBMCostModel, records: Sequence[Record], *, folds: int = FOLDS, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Pooled held-out scores of each mode over folds of the measured kernels."""
    k = folds
    if len(evaluate.by_kernel(records)) < k:  # (fewer kernels than folds: too few to choose by)
        return {}
    splits = evaluate.kernel_folds(records, k, seed=seed)
    make = {mode: (lambda train, mode=mode: fine_tune(base, train, mode)) for mode in MODES}
    return evaluate.cross_validate(make, splits)


def pick_mode(cv: dict[str, dict[str, float]]) -> str:
    """`latency` unless the ranker's rows pay off by MARGIN; `base` when tuning only hurt."""
    if not cv:
        return "latency"
    best = "latency"
    if cv["latency+rank"]["pairwise"] >= cv["latency"]["pairwise"] + MARGIN:
        best = "latency+rank"
    worse_order = cv[best]["pairwise"] < cv["base"]["pairwise"] - MARGIN
    if worse_order and cv[best]["mape"] >= cv["base"]["mape"]:
        return "base"
    return best


# ------------------------------------------------------------------------ adapt
@dataclasses.dataclass
class Adapted:
    model: LightGBMCostModel
    measured: Measured
    mode: str
    cv: dict[str, dict[str, float]]
    tune_s: float


def adapt(
    base: LightGBMCostModel,
    target,
    *,
    budget_s: float = BUDGET_S,
    base_name: str = "",
    pool: Sequence[PoolKernel] | None = None,
    per_kernel: int = PER_KERNEL,
    seed: int = 0,
    workers: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> Adapted:
    """Measure here within `budget_s` seconds, cross-validate the fine-tuning modes on what
    was measured, and fine-tune `base` (named `base_name` in the result's metadata) on all
    of it with the mode chosen."""
    if not budget_s > 0:
        raise CostModelError(f"--budget must be a positive number of seconds (got {budget_s})")
    pool = reference_pool() if pool is None else pool
    local = LightGBMCostModel(target, text=base.text, params=base.params, rounds=base.rounds)
    local.boosters = base.boosters  # ranks the pool as the base does, with this machine's features
    planned = plan(local, target, pool, budget_s=budget_s, per_kernel=per_kernel, seed=seed)
    measured = measure_planned(planned, target, budget_s=budget_s, workers=workers, progress=progress)
    if not measured.records:
        raise CostModelError(f"nothing was measured in {budget_s:g} s: give adapt a larger --budget")
    t0 = time.perf_counter()
    cv = cross_validate(local, measured.records, seed=seed)
    mode = pick_mode(cv)
    model = fine_tune(local, measured.records, mode, target=target)
    model.meta["adapted"] = {
        "target": target.hash(),
        "base": base_name,
        "mode": mode,
        "rows": len(measured.records),
        "kernels": len({r.kernel.key for r in measured.records}),
        "measured_s": round(measured.seconds, 1),
        "cv": cv,
    }
    return Adapted(model, measured, mode, cv, time.perf_counter() - t0)


def record_measurements(db_path: str, target, measured: Measured) -> int:
    """Add every measurement (failed ones too, as collection does) to a corpus database."""
    with CorpusDB(db_path) as db:
        th = db.add_target(target)
        new = 0
        for kernel, source, m in measured.results:
            db.add_workload(kernel, source=source or "adapt")
            new += db.commit_measurement(m, th)
    return new
