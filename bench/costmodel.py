"""Cost-model benchmark: every number of the cost-model issue in one run.

1. Held-out prediction and ranking (5-fold split by kernel; leave-one-model-out): MAPE,
   Spearman, pairwise-order accuracy, top-1/top-5 — analytical vs LightGBM; the MLIR-text
   feature ablation.
2. Search on held-out kernels whose whole space is measured: model-guided vs random.
3. Zero-measurement compile of the zoo vs the tuned result: for each zoo model, a LightGBM
   model trained *without that model's kernels* picks every schedule with no measurement;
   "tuned" pins each kernel to the fastest decision measured in the corpus. Both are
   compiled, checked against eager and timed (1 thread, medians).

`--quick` runs all three on a slice of the corpus (`quick_corpus`: mlp's kernels, a few
dozen others and two AMX contractions, on the machine with the most rows) with 2 folds,
and compares mlp alone in 5 samples; it writes under bench/results/quick/.

    python bench/costmodel.py [--db corpus/data/seed.db.gz] [--models zoo] [--json bench/results/costmodel.json]
    python bench/costmodel.py --quick
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sqlite3
import sys
import tempfile
import warnings

import torch
from e2e import median_ms  # bench/ is on sys.path when run as a script

from tilecraft import driver, frontend
from tilecraft.corpus import zoo
from tilecraft.corpus.db import CorpusDB
from tilecraft.costmodel import evaluate, search, train
from tilecraft.costmodel.lightgbm_model import LightGBMCostModel

QUICK_MODEL = "mlp"  # the smallest zoo model: its kernels' whole spaces are in the seed corpus


def quick_corpus(db: str, out: str, *, model: str = QUICK_MODEL, others: int = 40, amx: int = 2) -> str:
    """Write to `out` a slice of the corpus `db`, for --quick: the measurements, on the
    machine with the most, of every kernel of the zoo model `model`, of the first `others`
    kernels (by key) of no zoo model, and of `amx` AMX contractions (the full corpus holds
    them beside the tiled kernels, and every study must leave them to their own model)."""
    with CorpusDB(db, create=False) as src:
        src.conn.execute("VACUUM INTO ?", (out,))
    conn = sqlite3.connect(out, isolation_level=None)
    try:
        (target,) = conn.execute(
            "SELECT target FROM measurements GROUP BY target ORDER BY COUNT(*) DESC LIMIT 1"
        ).fetchone()
        measured = "SELECT DISTINCT m.workload FROM measurements m JOIN workloads w ON w.key = m.workload"
        conn.executescript("BEGIN; CREATE TEMP TABLE keep (key TEXT PRIMARY KEY);")
        conn.execute("INSERT INTO keep SELECT workload FROM workload_sources WHERE source = ?", (f"zoo:{model}",))
        conn.execute(  # generated kernels (in no zoo model: leave-one-model-out trains one model)
            f"INSERT OR IGNORE INTO keep SELECT * FROM ({measured} WHERE m.target = ? AND w.kind NOT LIKE 'amx_%'"
            " AND m.workload NOT IN (SELECT workload FROM workload_sources WHERE source LIKE 'zoo:%')"
            " ORDER BY m.workload LIMIT ?)",
            (target, others),
        )
        conn.execute(
            f"INSERT OR IGNORE INTO keep SELECT * FROM ({measured} WHERE m.target = ? AND w.kind LIKE 'amx_%'"
            " ORDER BY m.workload LIMIT ?)",
            (target, amx),
        )
        conn.execute("DELETE FROM measurements WHERE target != ? OR workload NOT IN (SELECT key FROM keep)", (target,))
        for table, column in (("decisions", "workload"), ("workload_sources", "workload"), ("workloads", "key")):
            conn.execute(f"DELETE FROM {table} WHERE {column} NOT IN (SELECT key FROM keep)")
        conn.execute("DELETE FROM targets WHERE hash != ?", (target,))
        conn.execute("COMMIT")
        conn.execute("VACUUM")
    finally:
        conn.close()
    return out


def zero_vs_tuned(db: str, models: list[str], *, runs: int = 20) -> list[dict]:
    records, target = train.load_records(db)
    best: dict[str, tuple[float, object]] = {}
    for r in records:
        if r.kernel.key not in best or r.latency_s < best[r.kernel.key][0]:
            best[r.kernel.key] = (r.latency_s, r.decision)
    rows = []
    for name in models:
        tag = f"zoo:{name}"
        held_out = LightGBMCostModel(target).fit([r for r in records if tag not in r.source.split(",")])
        imported = frontend.import_spec(name)
        with imported.module.context:
            choices = search.pick(imported.module, held_out, target)
        # pinned by kernel key, on the kernels as imported (the corpus' kernels): compiled
        # without the canonical rewrites (im2col), whose GEMMs and op ids are not these
        zero = {c.kernel.key: c.decision for c in choices}
        tuned = {c.kernel.key: best[c.kernel.key][1] if c.kernel.key in best else c.decision for c in choices}
        covered = sum(c.kernel.key in best for c in choices)
        row = {"model": name, "kernels": len(choices), "tuned_kernels_measured": covered}
        torch.set_num_threads(1)
        inputs = imported.inputs
        with torch.no_grad():
            ref = imported.model(*inputs)
            row["eager_ms"] = median_ms(lambda: imported.model(*inputs), runs)
        for label, decisions in (("zero", zero), ("tuned", tuned)):
            compiled = driver.compile_model(
                frontend.import_spec(name), decisions=decisions, cost_model=None, im2col=False
            )
            ok = driver.compare(compiled.fn(*inputs), ref).ok
            row[f"{label}_ms"] = median_ms(lambda fn=compiled.fn: fn(*inputs), runs)
            row[f"{label}_ok"] = ok
            print(f"  {name} {label}: {row[f'{label}_ms']:.3f} ms (matches eager: {ok})", file=sys.stderr)
        rows.append(row)
    return rows


QUICK = {  # --quick's defaults (the corpus is sliced too): results beside, not over, the full run's
    "models": QUICK_MODEL,
    "folds": 2,
    "runs": 5,
    "out_dir": "bench/results/quick",
    "json": "bench/results/quick/costmodel.json",
}


def main(argv=None) -> int:
    warnings.filterwarnings("ignore")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db", default="corpus/data/seed.db.gz")
    p.add_argument("--models", default="zoo", help="zoo models for the zero-measurement comparison ('' to skip)")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--runs", type=int, default=20, help="timed samples of each compiled model")
    p.add_argument("--out-dir", default="bench/results")
    p.add_argument("--json", default="bench/results/costmodel.json")
    p.add_argument("--quick", action="store_true", help="CI: a slice of the corpus, 2 folds, mlp alone")
    args = p.parse_args(argv)
    if args.quick:  # the quick defaults; options given still win
        p.set_defaults(**QUICK)
        args = p.parse_args(argv)
    say = lambda msg: print(f"... {msg}", file=sys.stderr)  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="tilecraft-bench-") as tmp:
        db = quick_corpus(args.db, os.path.join(tmp, "quick.db")) if args.quick else args.db
        report = evaluate.report(db, folds=args.folds, out_dir=args.out_dir, progress=say)
        print(evaluate.format_report(report))
        names = list(zoo.ZOO) if args.models == "zoo" else [m for m in args.models.split(",") if m]
        if names:
            say("zero-measurement compile vs tuned")
            rows = zero_vs_tuned(db, names, runs=args.runs)
            report["zero_vs_tuned"] = rows
            print("\nzero-measurement compile (LightGBM trained without the model's kernels) vs tuned (1 thread)")
            print(f"{'model':<18}{'eager ms':>10}{'zero ms':>10}{'tuned ms':>10}{'zero/tuned':>12}{'correct':>9}")
            for r in rows:
                print(
                    f"{r['model']:<18}{r['eager_ms']:>10.3f}{r['zero_ms']:>10.3f}{r['tuned_ms']:>10.3f}"
                    f"{r['zero_ms'] / r['tuned_ms']:>12.3f}{'yes' if r['zero_ok'] and r['tuned_ok'] else 'NO':>9}"
                )
            geo = math.exp(sum(math.log(r["zero_ms"] / r["tuned_ms"]) for r in rows) / len(rows))
            report["zero_over_tuned_geomean"] = geo
            print(f"geomean zero/tuned latency: {geo:.3f} (target <= 1.15)")
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json + ".tmp", "w") as f:
        json.dump(report, f, indent=1, default=float)
    os.replace(args.json + ".tmp", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
