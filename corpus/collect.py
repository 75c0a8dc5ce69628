"""Collection: measure (kernel, decision) pairs into the corpus database, resumably.

On the corpus floor; behind `tilecraft corpus collect`. Writes the corpus database
(`corpus/db.py`) that the cost-model trainer reads. Reads kernels from zoo models and the
workload generator, samples decisions from each kernel's legal space (the heuristic
default first, then a deterministic sample, so a rerun picks the same pairs), measures
them through the harness, and commits each result as it lands. A rerun skips everything
already measured: a collection killed mid-run loses at most the candidate in flight and
repeats nothing.
"""

from __future__ import annotations

import os
import queue
import random
import sys
import threading
import time
from collections.abc import Callable

from tilecraft.backends.cpu import schedule as tiling
from tilecraft.corpus import generator, kernels, measure
from tilecraft.corpus.db import CorpusDB


def sample_decisions(kernel: kernels.Kernel, count: int, *, seed: int, target, context) -> list[tiling.TileDecision]:
    info = kernels.infos_of(kernel.mlir, context)
    space = tiling.space(info, target)
    if count <= 0:  # the whole space
        return space
    head, rest = space[:1], space[1:]
    rng = random.Random(f"{seed}:{kernel.key}")
    return head + rng.sample(rest, min(len(rest), max(0, count - 1)))


def collect(
    db: CorpusDB,
    pairs: list[tuple[kernels.Kernel, str]],
    *,
    decisions_per_kernel: int,
    target,
    seed: int = 0,
    timeout_s: float = 120.0,
    progress: Callable[[int, int, float], None] | None = None,
    workers: int = 1,
) -> dict[str, int]:
    """Measure every sampled pair not yet in `db`. With `workers` > 1, that many measuring
    subprocesses run side by side, each pinned to its own core; results are committed by
    this thread as they arrive, so a kill loses at most the candidates in flight."""
    from torch_mlir import ir

    ctx = ir.Context()
    target_hash = db.add_target(target)
    todo = []
    seen = set()
    for kernel, source in pairs:
        db.add_workload(kernel, source=source)
        if kernel.key in seen:
            continue
        seen.add(kernel.key)
        for d in sample_decisions(kernel, decisions_per_kernel, seed=seed, target=target, context=ctx):
            if not db.has_measurement(kernel.key, d.to_json(), target_hash):
                todo.append((kernel, d))
    counts = {"measured": 0, "failed": 0, "todo": len(todo)}
    start = time.perf_counter()
    results: queue.Queue = queue.Queue()
    jobs: queue.Queue = queue.Queue()
    for item in todo:
        jobs.put(item)
    cores = sorted(os.sched_getaffinity(0))
    n = max(1, min(workers, len(todo)))
    stop = threading.Event()

    def run(index: int) -> None:
        cpu = cores[index % len(cores)] if n > 1 else None
        with measure.MeasureWorker(timeout_s=timeout_s, cpu=cpu) as worker:
            while not stop.is_set():
                try:
                    kernel, decision = jobs.get_nowait()
                except queue.Empty:
                    break
                results.put(worker.measure(kernel, decision, target))
        results.put(None)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    finished = 0
    try:
        while finished < n:
            m = results.get()
            if m is None:
                finished += 1
                continue
            db.commit_measurement(m, target_hash)
            counts["measured"] += 1
            counts["failed"] += m.status != "ok"
            if progress:
                progress(counts["measured"], len(todo), time.perf_counter() - start)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout_s + 10)
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
