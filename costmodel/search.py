"""Search over one kernel's decision space: model-guided, random, exhaustive.

On the costmodel floor; used by the driver (picking each kernel's decision) and by
`tilecraft tune`. Reads a kernel, its legal space (`tiling.space`), a cost model and a
`measure` callback (decision → seconds, or None when the candidate failed); writes nothing
itself — recording measurements into a corpus and saving the improved model are the
caller's callbacks, so search stays pure (TVM meta_schedule's split).

Model-guided search ranks the whole space with the model each round (our spaces are at
most a few hundred decisions, so scoring all of them is exact and takes milliseconds; a
space past `MAX_SCORED` is sampled), measures the best-ranked candidates not yet
measured, folds the measurements back into the model (`update`), and stops when the best
latency has not improved by `min_gain` (1%: below the measurement noise) for `patience`
rounds, or the budget is spent.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence

import numpy as np

from tilecraft.backends.cpu.schedule import TileDecision
from tilecraft.corpus.kernels import Kernel
from tilecraft.costmodel.model import CostModel, Record

MAX_SCORED = 20_000
Measure = Callable[[TileDecision], float | None]


@dataclasses.dataclass
class SearchResult:
    best: TileDecision | None
    best_s: float
    trace: list[tuple[TileDecision, float | None]]  # in measurement order

    @property
    def measurements(self) -> int:
        return len(self.trace)

    def curve(self) -> np.ndarray:
        """Best latency found after each measurement (inf until the first success)."""
        ys = np.array([t if t is not None else np.inf for _, t in self.trace])
        return np.minimum.accumulate(ys) if len(ys) else ys


def _result(trace: list[tuple[TileDecision, float | None]]) -> SearchResult:
    ok = [(d, t) for d, t in trace if t is not None]
    best = min(ok, key=lambda x: x[1]) if ok else (None, float("inf"))
    return SearchResult(best[0], best[1], trace)


def model_guided(
    kernel: Kernel,
    space: Sequence[TileDecision],
    model: CostModel,
    measure: Measure,
    *,
    budget: int,
    per_round: int = 4,
    patience: int = 2,
    min_gain: float = 0.01,
    utilization: Callable[[TileDecision, float], float] | None = None,
    seed: int = 0,
) -> SearchResult:
    """Measure the model's top candidates round by round, updating the model in between."""
    rng = random.Random(seed)
    pool = list(space) if len(space) <= MAX_SCORED else rng.sample(list(space), MAX_SCORED)
    measured: dict[TileDecision, float | None] = {}
    trace: list[tuple[TileDecision, float | None]] = []
    best, stale = float("inf"), 0
    while len(trace) < budget and len(measured) < len(pool):
        score = model.predict(kernel, pool).score
        order = [pool[i] for i in np.argsort(-score, kind="stable") if pool[i] not in measured]
        batch = order[: min(per_round, budget - len(trace))]
        new = []
        for d in batch:
            t = measure(d)
            measured[d] = t
            trace.append((d, t))
            if t is not None:
                util = utilization(d, t) if utilization else 0.0
                new.append(Record(kernel, d, t, util))
        model.update(new)
        round_best = min((t for _, t in trace if t is not None), default=float("inf"))
        stale = 0 if round_best < best * (1 - min_gain) else stale + 1
        best = min(best, round_best)
        if stale >= patience:
            break
    return _result(trace)


def random_search(
    kernel: Kernel, space: Sequence[TileDecision], measure: Measure, *, budget: int, seed: int = 0
) -> SearchResult:
    order = list(space)
    random.Random(seed).shuffle(order)
    return _result([(d, measure(d)) for d in order[:budget]])


def exhaustive(kernel: Kernel, space: Sequence[TileDecision], measure: Measure) -> SearchResult:
    return _result([(d, measure(d)) for d in space])


# ------------------------------------------------------------------ zero-measurement pick
@dataclasses.dataclass(frozen=True)
class Choice:
    """What the compiler chose for one kernel, and what it expects."""

    op_ids: tuple[int, ...]
    kernel: Kernel
    decision: TileDecision
    predicted_s: float
    runner_up: TileDecision | None
    runner_up_s: float | None


# A model trained on another register file (`model.ModelChoice.other_registers`: the
# shipped AVX-512 models on an AVX2 host) ranks contractions' register and cache tiles for
# registers the host does not have: on an AVX2 Zen 3 its picks ran a 512³ matmul in 5.7 ms,
# 3136×64×576 in 5.4 and 128×1024×256 in 1.6, where the defaults (which know the register
# file: `schedule.accumulator_cap`) ran 3.5, 4.1 and 1.0. Such a model's contractions take
# the default schedule; it still ranks the rest, and fusion.
FOREIGN_REGISTERS_DEFAULT = True
CONTRACTIONS = ("matmul", "batch_matmul", "conv2d")


def pick(module, model: CostModel, target, *, memo: dict | None = None, infos=None) -> list[Choice]:
    """One decision per distinct kernel of a linalg module: the model's best-ranked
    candidate of the kernel's legal space, with no measurement. Kernels the features do
    not cover keep the heuristic default (they get no Choice). `memo`: the model's
    predictions by kernel and space, kept by a caller that asks about the same kernels
    again with the same model (a planner pricing groups that share ops). `infos`: what
    `tag_ops` gave for the module as it is now, in order (else it is tagged here)."""
    from tilecraft.backends.cpu import schedule as tiling
    from tilecraft.corpus import kernels
    from tilecraft.costmodel.features import FeatureError

    memo = {} if memo is None else memo
    infos = tiling.tag_ops(module) if infos is None else infos  # (a caller's, of the module as it is)
    fused = tiling.fused_ids(module, infos)  # register-tile ops of fused groups: scheduled whole
    ops: dict[str, list[int]] = {}
    first_info: dict[str, tiling.OpInfo] = {}
    for info in infos:
        if info.op_id in fused:
            continue
        ops.setdefault(info.key, []).append(info.op_id)
        first_info.setdefault(info.key, info)
    by_key = None
    out = []
    for key, op_ids in ops.items():
        space = tiling.space(first_info[key], target)
        known = (key, tuple(space))
        if known not in memo:
            by_key = by_key if by_key is not None else {k.key: k for k in kernels.extract(module, infos)}
            kernel = by_key.get(key)
            if kernel is None:  # an op with no results (nothing to outline): heuristic default
                memo[known] = None
            else:
                try:
                    memo[known] = (kernel, model.predict(kernel, space))
                except FeatureError:  # outside the feature schema (a 0-d fill, say): heuristic default
                    memo[known] = None
        if memo[known] is None:
            continue
        kernel, p = memo[known]
        order = np.argsort(-p.score, kind="stable")
        first, second = order[0], (order[1] if len(order) > 1 else None)
        if FOREIGN_REGISTERS_DEFAULT and getattr(model, "foreign_registers", False) and kernel.kind in CONTRACTIONS:
            first, second = 0, (order[0] if order[0] != 0 else second)  # the default (space[0]); the model's pick
        out.append(
            Choice(
                tuple(op_ids),
                kernel,
                space[first],
                float(p.latency_s[first]),
                space[second] if second is not None else None,
                float(p.latency_s[second]) if second is not None else None,
            )
        )
    return out
