"""Data-parallel boosting on a Dask cluster: `lightgbm.dask` behind `costmodel train --scheduler`.

On the costmodel floor; `LightGBMCostModel.fit(records, client=…)` calls `train_booster`
for each of its three boosters instead of `lightgbm.train`. The rows (already featurized
by the model) are cut into one contiguous partition per worker — whole kernels per
partition, since a ranking query must not straddle two — and LightGBM's data-parallel
learner builds the trees across the workers. The result is an ordinary `lightgbm.Booster`,
so the model file is the same as a single-process fit's.
"""

from __future__ import annotations

import lightgbm as lgb
import numpy as np

from tilecraft.costmodel.model import CostModelError


def _partitions(n_rows: int, groups: list[int] | None, parts: int) -> tuple[list[int], list[int] | None]:
    """Row counts per partition (and query counts, with groups): contiguous, about equal."""
    if groups is None:
        edges = np.linspace(0, n_rows, parts + 1).round().astype(int)
        return [int(b - a) for a, b in zip(edges[:-1], edges[1:]) if b > a], None
    rows, queries, acc, q = [], [], 0, 0
    per_part = n_rows / parts
    for g in groups:
        acc += g
        q += 1
        if acc >= per_part * (len(rows) + 1) - 1e-9 or acc == n_rows:
            rows.append(acc - sum(rows))
            queries.append(q - sum(queries))
    return rows, queries


def train_booster(
    client,
    params: dict,
    x: np.ndarray,
    y: np.ndarray,
    rounds: int,
    *,
    init_score: np.ndarray | None = None,
    group: list[int] | None = None,
    feature_name: list[str] | None = None,
) -> lgb.Booster:
    import dask.array as da

    try:
        import lightgbm.dask as lgb_dask
    except (ImportError, lgb.basic.LightGBMError) as exc:  # lightgbm.dask needs scikit-learn and dask
        raise CostModelError(f"training on a cluster needs pip install 'tilecraft[cluster]' ({exc})") from None

    workers = list(client.scheduler_info()["workers"])
    if not workers:
        raise CostModelError("the Dask scheduler has no workers to train on")
    rows, queries = _partitions(len(y), group, len(workers))
    chunks = tuple(rows)
    data = {
        "X": da.from_array(x, chunks=(chunks, x.shape[1])),
        "y": da.from_array(y, chunks=(chunks,)),
    }
    fit_args: dict = {"feature_name": feature_name or "auto"}
    if init_score is not None:
        fit_args["init_score"] = da.from_array(init_score, chunks=(chunks,))
    if group is not None:
        fit_args["group"] = da.from_array(np.asarray(group), chunks=(tuple(queries),))
    params = dict(params)
    objective = params.pop("objective")
    params.pop("eval_at", None)
    estimator = (lgb_dask.DaskLGBMRanker if objective == "lambdarank" else lgb_dask.DaskLGBMRegressor)(
        client=client, objective=objective, n_estimators=rounds, **params
    )
    estimator.fit(data["X"], data["y"], **fit_args)
    return estimator.booster_
