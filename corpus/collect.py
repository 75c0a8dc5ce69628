"""Collection: measure (kernel, decision) pairs into the corpus database, resumably.

On the corpus floor; behind `tilecraft corpus collect`. Writes the corpus database
(`corpus/db.py`) that the cost-model trainer reads. Reads kernels from zoo models and the
workload generator, samples decisions from each kernel's legal space (the heuristic
default first, then a deterministic sample, so a rerun picks the same pairs), puts the
pairs not yet measured on the database's work queue, and claims a few at a time for a
runner that measures them: `LocalRunner` (measuring processes on this machine, one core
each) or `cluster.DaskRunner` (a Dask cluster's workers). Each result is committed as it
lands, which takes its task off the queue. A rerun skips everything already measured: a
collection killed mid-run loses at most the candidates in flight and repeats nothing, and
collectors sharing one database (several machines on one PostgreSQL server) split the
work without measuring a pair twice.
"""

from __future__ import annotations

import concurrent.futures
import random
import sys
import threading
import time
from collections.abc import Callable

from tilecraft.backends.cpu import schedule as tiling
from tilecraft.corpus import generator, kernels, measure
from tilecraft.corpus.db import CorpusDB, CorpusError, new_owner

POLL_S = 1.0  # how often a collector waiting on others' claims looks again


def sample_decisions(kernel: kernels.Kernel, count: int, *, seed: int, target, context) -> list[tiling.TileDecision]:
    info = kernels.infos_of(kernel.mlir, context)
    space = tiling.space(info, target)
    if count <= 0:  # the whole space
        return space
    head, rest = space[:1], space[1:]
    rng = random.Random(f"{seed}:{kernel.key}")
    return head + rng.sample(rest, min(len(rest), max(0, count - 1)))


class LocalRunner:
    """`workers` measuring subprocesses on this machine, each on a core of its own."""

    def __init__(self, target, *, workers: int = 1, timeout_s: float = 120.0):
        if workers < 1:
            raise CorpusError(f"--workers must be at least 1 (got {workers})")
        self.targets = {target.hash(): target}
        self.timeout_s = timeout_s
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="measure")
        self._workers = workers
        self._local = threading.local()
        self._started: list[measure.MeasureWorker] = []
        self._lock = threading.Lock()

    def slots(self, target_hash: str) -> int:
        return self._workers

    def _measure(self, kernel, decision, target):
        worker = getattr(self._local, "worker", None)
        if worker is None:
            worker = self._local.worker = measure.MeasureWorker(timeout_s=self.timeout_s, cpu=measure.claim_core())
            with self._lock:
                self._started.append(worker)
        return worker.measure(kernel, decision, target), target

    def submit(self, target_hash: str, kernel, decision):
        return self._pool.submit(self._measure, kernel, decision, self.targets[target_hash])

    def wait(self, futures: list, timeout: float) -> set:
        return concurrent.futures.wait(futures, timeout, return_when=concurrent.futures.FIRST_COMPLETED).done

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        for worker in self._started:
            worker.close()
            measure.release_core(worker.cpu)


def collect(
    db: CorpusDB,
    pairs: list[tuple[kernels.Kernel, str]],
    *,
    decisions_per_kernel: int,
    runner,
    seed: int = 0,
    progress: Callable[[int, int, float], None] | None = None,
) -> dict[str, int]:
    """Measure every sampled pair not yet in `db` on every machine class `runner` offers
    (`runner.targets`), committing each result as it arrives. Returns counts: measured,
    failed, todo (unmeasured when this collector started), by_others (finished meanwhile
    by other collectors on the same database), repeated (measured here although already
    in the database: the queue's claims keep this 0)."""
    from torch_mlir import ir

    ctx = ir.Context()
    by_key: dict[str, kernels.Kernel] = {}
    for kernel, source in pairs:
        db.add_workload(kernel, source=source)
        by_key.setdefault(kernel.key, kernel)
    db.release_dead_owners()
    plans: dict[str, list[int]] = {}  # target hash -> this collection's task ids
    for th, target in runner.targets.items():
        db.add_target(target)
        planned = [
            (k.key, d.to_json())
            for k in by_key.values()
            for d in sample_decisions(k, decisions_per_kernel, seed=seed, target=target, context=ctx)
        ]
        plans[th] = db.enqueue(th, planned)
    todo = sum(db.unfinished(ids) for ids in plans.values())
    counts = {"measured": 0, "failed": 0, "todo": todo, "by_others": 0, "repeated": 0}
    owner = new_owner()
    lease_s = 2 * runner.timeout_s + 60
    renewed = time.monotonic()
    in_flight: dict = {}  # future -> target hash
    start = time.perf_counter()
    try:
        while True:
            for th, ids in plans.items():
                free = runner.slots(th) - sum(1 for t in in_flight.values() if t == th)
                for _, key, decision in db.claim(owner, ids, free, lease_s=lease_s):
                    d = tiling.TileDecision.from_json(decision) if decision else None
                    in_flight[runner.submit(th, by_key[key], d)] = th
            if not in_flight:
                left = sum(db.unfinished(ids) for ids in plans.values())
                if left == 0:
                    break
                time.sleep(POLL_S)  # the rest is held by other collectors: wait for it or for their leases
            for future in runner.wait(list(in_flight), POLL_S):
                th = in_flight.pop(future)
                try:
                    m, measured_on = future.result()
                except Exception as exc:  # the runner itself failed (a candidate's failure is a record)
                    raise CorpusError(f"a measuring task failed: {' '.join(str(exc).split())[:300]}") from None
                if measured_on.hash() != th:  # a worker of another machine class took it: its own target
                    th = db.add_target(measured_on)
                counts["repeated"] += not db.commit_measurement(m, th)
                counts["measured"] += 1
                counts["failed"] += m.status != "ok"
                if progress:
                    progress(counts["measured"], todo, time.perf_counter() - start)
            if time.monotonic() - renewed > lease_s / 4:
                db.renew(owner, lease_s=lease_s)
                renewed = time.monotonic()
    finally:
        db.release(owner)
        runner.close()
    counts["by_others"] = todo - counts["measured"]
    if progress and counts["by_others"]:
        progress(todo, todo, time.perf_counter() - start)
    return counts


def progress_bar(done: int, total: int, elapsed: float) -> None:
    """A one-line progress bar with ETA on stderr."""
    width = 30
    filled = int(width * done / max(total, 1))
    eta = elapsed / done * (total - done) if done else 0.0
    sys.stderr.write(
        f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total}  {elapsed:6.0f}s elapsed  ETA {eta:6.0f}s"
    )
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def gather(model_modules: dict, random_count: int, *, seed: int) -> list[tuple[kernels.Kernel, str]]:
    """Kernels of the given model modules ({name: linalg module}) plus `random_count`
    generated ones, each tagged with where it came from (a kernel several models share
    appears once per model; `collect` measures it once)."""
    pairs = [(k, f"zoo:{name}") for name, module in model_modules.items() for k in kernels.extract(module)]
    pairs += [(k, f"random:{seed}") for k in generator.random_kernels(random_count, seed=seed)]
    return pairs
