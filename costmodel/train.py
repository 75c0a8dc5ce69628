"""Training: corpus database → records → a fitted LightGBM cost model file.

On the costmodel floor; behind `tilecraft costmodel train`. Reads the successful
measurements of one target from a corpus database (`corpus/db.py`), turns them into
`Record`s (kernel, decision, latency, utilization, the models the kernel occurs in), fits
`LightGBMCostModel` and writes it atomically.

    tilecraft costmodel train --db corpus/data/seed.db.gz --out model.json.gz
"""

from __future__ import annotations

import collections
import json
import time

from tilecraft.backends.cpu.schedule import TileDecision
from tilecraft.backends.cpu.target import Target
from tilecraft.corpus.db import CorpusDB, CorpusError, redacted
from tilecraft.corpus.kernels import Kernel
from tilecraft.costmodel.lightgbm_model import LightGBMCostModel
from tilecraft.costmodel.model import CostModelError, Record


def kernel_of_row(row: dict, mlir: str) -> Kernel:
    """The `Kernel` of a corpus row (`CorpusDB.rows`), given its workload's MLIR."""
    return Kernel(
        row["workload"],
        row["kind"],
        row["op"],
        tuple(row["extents"]),
        tuple(row["dtypes"]),
        tuple(tuple(s) for s in row["shapes"]),
        int(row["flops"]),
        mlir,
    )


def load_records(
    db_path: str, *, target: Target | None = None, all_targets: bool = False
) -> tuple[list[Record], Target]:
    """The corpus' successful measurements for `target` (default: the target with the most
    measurements), with each kernel's sources joined into `Record.source` (comma-separated).
    With `all_targets`, every machine's measurements, each record carrying its target
    (`Record.target`); the target returned is still the one with the most."""
    targets: dict[str, Target] = {}
    with CorpusDB(db_path, create=False) as db:
        if all_targets:
            targets = {h: Target.from_json(j) for h, j in db.targets().items()}
        if target is None:
            main = db.main_target()
            if main is None:
                raise CostModelError(f"{db.path} holds no measurements")
            target = Target.from_json(main)
        rows = db.rows(target=None if all_targets else target.hash())
        sources = db.sources()
        mlir = db.workload_mlirs()
    kernels: dict[str, Kernel] = {}
    records = []
    for r in rows:
        key = r["workload"]
        if r["kind"].startswith("amx_"):  # AMX contractions: their own model (costmodel/amx.py)
            continue
        if key not in kernels:
            kernels[key] = kernel_of_row(r, mlir[key])
        if not r["median_s"] or r["median_s"] <= 0:
            raise CorpusError(f"corrupt corpus row: workload {key} has latency {r['median_s']!r}")
        try:
            decision = TileDecision.from_json(r["decision"])
        except (ValueError, json.JSONDecodeError):
            raise CorpusError(f"corrupt corpus row: workload {key} has decision {r['decision']!r}") from None
        records.append(
            Record(
                kernels[key],
                decision,
                float(r["median_s"]),
                float(r["utilization"] or 0.0),
                ",".join(sources.get(key, [])),
                targets.get(r["target"]),
            )
        )
    return records, target


def train(
    db_path: str,
    out: str,
    *,
    text: bool = True,
    all_targets: bool = False,
    scheduler: str | None = None,
    for_target: str | None = None,
    repeat: int = 1,
) -> dict:
    """Fit on every record of the corpus (of its main target, or of every machine with
    `all_targets`) and save; returns a summary. With `scheduler` (a Dask scheduler's
    address), the boosting runs data-parallel on its workers (`dask_train.py`). With
    `for_target` (a target hash of the corpus), the model is that machine's, trained on
    every machine's rows with its own counted `repeat` times (so a machine with few rows
    steers the trees where it has them, and borrows the others' elsewhere)."""
    t0 = time.perf_counter()
    if repeat < 1:
        raise CostModelError(f"--repeat must be at least 1 (got {repeat})")
    records, target = load_records(db_path, all_targets=all_targets or for_target is not None)
    if for_target is not None:
        mine = [r for r in records if r.target.hash() == for_target]
        if not mine:
            raise CostModelError(f"{redacted(db_path)} holds no measurements of target {for_target}")
        target = mine[0].target
        records = [r for r in records if r.target.hash() != for_target] + mine * repeat
    model = LightGBMCostModel(target, text=text)
    if scheduler:
        from tilecraft.corpus.cluster import connect

        with connect(scheduler) as client:
            model.fit(records, client=client)
            n = len(client.scheduler_info()["workers"])
            model.meta["trained_on"] = f"{n} Dask worker{'s' if n != 1 else ''} at {scheduler}"
    else:
        model.fit(records)
    model.meta.update({"db": redacted(db_path), "trained_s": round(time.perf_counter() - t0, 1)})
    if all_targets or for_target is not None:
        model.meta["targets"] = dict(collections.Counter(r.target.cpu_name for r in records))
    if for_target is not None:
        model.meta.update({"for_target": for_target, "repeat": repeat})
    model.save(out)
    return {"rows": len(records), "kernels": model.meta["kernels"], "seconds": model.meta["trained_s"], "out": out}
