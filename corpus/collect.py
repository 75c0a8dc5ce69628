"""Collection: measure (kernel, decision) pairs into the corpus database, resumably.

Reads kernels from zoo models and the workload generator, samples decisions from each
kernel's legal space (the heuristic default first, then a deterministic sample, so a
rerun picks the same pairs), measures them through the harness, and commits each result
as it lands. A rerun skips everything already measured: a collection killed mid-run loses
at most the candidate in flight and repeats nothing.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable

from tilecraft.corpus import generator, kernels, measure
from tilecraft.corpus.db import CorpusDB
from tilecraft.passes import tiling


def sample_decisions(kernel: kernels.Kernel, count: int, *, seed: int, target, context) -> list[tiling.TileDecision]:
    info = kernels.infos_of(kernel.mlir, context)
    space = tiling.space(info, target)
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
) -> dict[str, int]:
    from torch_mlir import ir

    ctx = ir.Context()
    target_hash = db.add_target(target)
    todo = []
    for kernel, source in pairs:
        db.add_workload(kernel, source=source)
        for d in sample_decisions(kernel, decisions_per_kernel, seed=seed, target=target, context=ctx):
            if not db.has_measurement(kernel.key, d.to_json(), target_hash):
                todo.append((kernel, d))
    counts = {"measured": 0, "failed": 0, "todo": len(todo)}
    start = time.perf_counter()
    with measure.MeasureWorker(timeout_s=timeout_s) as worker:
        for i, (kernel, decision) in enumerate(todo):
            m = worker.measure(kernel, decision, target)
            db.commit_measurement(m, target_hash)
            counts["measured"] += 1
            counts["failed"] += m.status != "ok"
            if progress:
                progress(i + 1, len(todo), time.perf_counter() - start)
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
    """Distinct kernels of the given model modules ({name: linalg module}) plus
    `random_count` generated ones, each tagged with where it came from."""
    pairs = [(k, f"zoo:{name}") for name, module in model_modules.items() for k in kernels.extract(module)]
    pairs += [(k, f"random:{seed}") for k in generator.random_kernels(random_count, seed=seed)]
    seen, unique = set(), []
    for k, src in pairs:
        if k.key not in seen:
            seen.add(k.key)
            unique.append((k, src))
    return unique
