"""Data-parallel boosting on a Dask cluster, behind `costmodel train --scheduler`.

On the costmodel floor; `LightGBMCostModel.fit(records, client=…)` places its rows once
(`Placement`) and trains each of its three boosters there instead of `lightgbm.train`.
Each worker of the cluster runs `lightgbm.train` on its share of the rows, and LightGBM's data-parallel learner sums
their histograms over its own sockets, so every split sees every row. The result is an
ordinary `lightgbm.Booster`: the model file is the same as a single-process fit's.

What makes the fit repeatable and close to a single-process one:
- **Placement is ours.** Partition i goes to the i-th worker (by address), and that worker
  is LightGBM's rank i. (`lightgbm.dask` trained wherever Dask had happened to compute
  each chunk: sometimes both on one worker, sometimes split, a different model each time.)
- **Whole kernels, dealt in turn.** A ranking query must not straddle two partitions, and
  a corpus is stored kernel by kernel: contiguous partitions would give one worker the
  convolutions and another the matmuls.
- **One set of bins.** Every worker bins its rows by the bin boundaries of one sample of
  all rows (`SAMPLE_ROWS`, the same sample everywhere), as a single process does. Left to
  itself, distributed LightGBM bins each feature from one worker's rows alone.
"""

from __future__ import annotations

import socket
from urllib.parse import urlparse

import lightgbm as lgb
import numpy as np

from tilecraft.costmodel.model import CostModelError

SAMPLE_ROWS = 50_000  # rows every worker bins by (LightGBM samples at most 200,000 itself)
TIME_OUT_MIN = 10  # how long a worker waits for the others to connect
_NETWORK = ("machines", "local_listen_port", "num_machines", "num_threads", "tree_learner", "time_out")
_NETWORK_LINES = tuple(f"[{k}: " for k in _NETWORK)


def deal(blocks: list[int], parts: int) -> list[tuple[np.ndarray, list[int]]]:
    """Row indices and block sizes of each partition, the blocks (a kernel's rows, which
    stay together) dealt to the partitions in turn; empty partitions left out."""
    starts = np.concatenate([[0], np.cumsum(blocks)[:-1]]).astype(int)
    out = []
    for p in range(parts):
        mine = range(p, len(blocks), parts)
        if len(mine):
            rows = np.concatenate([np.arange(starts[k], starts[k] + blocks[k]) for k in mine])
            out.append((rows, [blocks[k] for k in mine]))
    return out


def _open_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _ports(client, workers: list[str]) -> dict[str, int]:
    """A free port on each worker, no two alike on one host."""
    for _ in range(5):
        ports = client.run(_open_port, workers=workers)
        if len({(urlparse(w).hostname, ports[w]) for w in workers}) == len(workers):
            return ports
    raise CostModelError("could not find a free port on every Dask worker for LightGBM's network")


def _train_part(params, dataset_params, sample, x, part, rounds, feature_name):
    """One rank's share of a data-parallel fit (runs on a Dask worker)."""
    y, init_score, group = part
    reference = lgb.Dataset(sample, feature_name=feature_name, params=dataset_params)
    data = lgb.Dataset(x, y, init_score=init_score, group=group, reference=reference, feature_name=feature_name)
    try:
        return lgb.train(params, data, rounds).model_to_string()
    finally:
        # (on failure too: the booster `lgb.train` made lives on in the traceback Dask
        # keeps, and a rank whose sockets stay open blocks the others until `time_out`)
        lgb.basic._safe_call(lgb.basic._LIB.LGBM_NetworkFree())


def _without_network(model: str) -> str:
    """The model text without the parameters of the fit's network (its workers' addresses
    and ports, random per fit): the same rows give the same model file."""
    return "\n".join(line for line in model.split("\n") if not line.startswith(_NETWORK_LINES))


class Placement:
    """One fit's rows on the client's workers, sent once for all its boosters: rank i's
    share of `x` (whole kernels, dealt in turn) on the i-th worker, and the sample every
    worker bins by on each. `kernels`: rows per kernel, in order (None: one row each)."""

    def __init__(self, client, x: np.ndarray, kernels: list[int] | None = None, feature_name: list[str] | None = None):
        self.client, self.info = client, client.scheduler_info()["workers"]
        workers = sorted(self.info)
        if not workers:
            raise CostModelError("the Dask scheduler has no workers to train on")
        self.kernels = [int(n) for n in (kernels if kernels is not None else [1] * len(x))]
        self.parts = deal(self.kernels, len(workers))
        self.workers = workers[: len(self.parts)]
        self.feature_name = feature_name or "auto"
        rng = np.random.default_rng(0)
        sample = x if len(x) <= SAMPLE_ROWS else x[np.sort(rng.choice(len(x), SAMPLE_ROWS, replace=False))]
        # (hash=False: keys of their own. Content-hashed keys are shared with an earlier fit
        # of the same rows, whose release as it is collected loses this fit's data)
        self.sample = client.scatter(sample, broadcast=True, workers=self.workers, hash=False)
        self.x = [client.scatter(x[rows], workers=[w], hash=False) for w, (rows, _) in zip(self.workers, self.parts)]

    def train(
        self,
        params: dict,
        y: np.ndarray,
        rounds: int,
        *,
        init_score: np.ndarray | None = None,
        group: list[int] | None = None,
    ) -> lgb.Booster:
        """`lightgbm.train(params, Dataset(x, y, …), rounds)` across the workers. `group`
        (a ranking objective's queries) must be the kernels. (Boosting from the average, as
        the regressions without `init_score` do, starts from the mean of the ranks' means,
        which differs a little from the mean of all rows: partitions of whole kernels
        differ in size.)"""
        if group is not None and [int(n) for n in group] != self.kernels:
            raise CostModelError("a ranking query must be one kernel's rows")
        client = self.client
        params = {k: v for k, v in params.items() if k not in (*_NETWORK, "eval_at")}
        dataset_params = {k: v for k, v in params.items() if k != "objective"}
        ports = _ports(client, self.workers)
        machines = ",".join(f"{urlparse(w).hostname}:{ports[w]}" for w in self.workers)
        futures = []
        for w, x, (rows, sizes) in zip(self.workers, self.x, self.parts):
            scores = None if init_score is None else init_score[rows]
            network = {
                "machines": machines,
                "local_listen_port": ports[w],
                "num_machines": len(self.workers),
                "num_threads": self.info[w].get("nthreads", 1),
                "tree_learner": "data",
                "time_out": TIME_OUT_MIN,
            }
            part = (y[rows], scores, sizes if group is not None else None)
            futures.append(
                client.submit(
                    _train_part,
                    {**params, **network},
                    dataset_params,
                    self.sample,
                    x,
                    part,
                    rounds,
                    self.feature_name,
                    workers=[w],
                    allow_other_workers=False,
                    pure=False,
                )
            )
        try:
            models = client.gather(futures)
        except Exception as exc:  # LightGBM's errors, a worker lost (KilledWorker, a closed comm), bad data
            client.cancel(futures)
            why = " ".join(str(exc).split())[:300] or type(exc).__name__
            raise CostModelError(f"data-parallel training on the Dask workers failed: {why}") from None
        return lgb.Booster(model_str=_without_network(models[0]))


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
    kernels: list[int] | None = None,
) -> lgb.Booster:
    """One booster across the client's workers (`Placement`, for one fit's rows);
    `kernels` default to the ranking queries, else one row each."""
    return Placement(client, x, kernels if kernels is not None else group, feature_name).train(
        params, y, rounds, init_score=init_score, group=group
    )
