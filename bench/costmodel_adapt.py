"""Adapting the cost model to this machine (`tilecraft costmodel adapt`), scored on held-out rows.

1. Held-out rows of this machine: `--heldout-kernels` generated kernels (seed
   HELDOUT_SEED; none of them in the seed corpus, which is the pool adapt measures from, so
   they are disjoint from adapt's rows by construction) x `--heldout-decisions` decisions
   each (the heuristic default, then a deterministic sample), measured `--repeats` times
   with one worker into `--heldout-db` (one database per repeat, cached: a rerun measures
   only what is missing). A row's latency is the geometric mean of its repeats; how often
   one repeat orders a pair as another does is printed as the noise ceiling.
2. Bases trained without this machine's rows: the shipped Intel Xeon model
   (costmodel/data/cpu-avx512.json.gz) and, harder, a model trained only on the seed
   corpus' AMD EPYC rows (elementwise and reduction kernels only).
3. For each base: pairwise order and MAPE on the held-out rows before; `adapt.adapt` with
   `--budget` seconds of measuring here; the same after; and "native": a model trained
   from scratch on only the rows adapt measured.

    python bench/costmodel_adapt.py [--budget 120] [--json bench/results/costmodel_adapt.json]
    python bench/costmodel_adapt.py --quick      # CI: 20 s budgets, 6 held-out kernels, one repeat
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import math
import os
import sys
import time
import warnings

import numpy as np

from tilecraft.backends.cpu.target import host
from tilecraft.corpus import collect, generator
from tilecraft.corpus.db import CorpusDB
from tilecraft.costmodel import adapt, evaluate, train
from tilecraft.costmodel import model as cm
from tilecraft.costmodel.lightgbm_model import LightGBMCostModel
from tilecraft.driver import atomic_write

HELDOUT_SEED = 2027
SEED_DB = adapt.SEED_CORPUS
QUICK = {  # --quick's defaults: results beside, not over, the full run's
    "budget": 20.0,  # (a slower machine measured nothing in 8 s: its worker starts in ~5 s)
    "heldout_kernels": 6,
    "heldout_decisions": 4,
    "repeats": 1,
    "out_dir": "bench/results/quick/costmodel_adapt",
    "json": "bench/results/quick/costmodel_adapt.json",
}


def heldout_kernels(n: int):
    """`n` generated kernels of which the seed corpus holds none."""
    with CorpusDB(SEED_DB, create=False) as db:
        seen = set(db.workload_mlirs())
    fresh = [k for k in generator.random_kernels(3 * n, seed=HELDOUT_SEED) if k.key not in seen]
    return fresh[:n]


def heldout_rows(kernels, target, *, decisions: int, repeats: int, out_dir: str, say) -> list[list]:
    """Per repeat, this machine's records of the held-out pairs (measured where missing)."""
    os.makedirs(out_dir, exist_ok=True)
    out = []
    for i in range(repeats):
        path = os.path.join(out_dir, f"heldout-{target.hash()}-r{i + 1}.db")
        with CorpusDB(path) as db:
            runner = collect.LocalRunner(target, workers=1, timeout_s=30)
            c = collect.collect(
                db,
                [(k, f"random:{HELDOUT_SEED}") for k in kernels],
                decisions_per_kernel=decisions,
                runner=runner,
                seed=HELDOUT_SEED,
            )
        say(f"held-out repeat {i + 1}: {c['measured']} measured now ({c['failed']} failed), {path}")
        keys = {k.key for k in kernels}
        records, _ = train.load_records(path, target=target)
        out.append([dataclasses.replace(r, target=target) for r in records if r.kernel.key in keys])
    return out


def mean_of_repeats(runs: list[list]) -> list:
    """Each pair measured in every repeat, at the geometric mean of its latencies."""
    lat = collections.defaultdict(list)
    for rs in runs:
        for r in rs:
            lat[(r.kernel.key, r.decision.to_json())].append(r.latency_s)
    out = []
    for r in runs[0]:
        ts = lat[(r.kernel.key, r.decision.to_json())]
        if len(ts) == len(runs):
            out.append(dataclasses.replace(r, latency_s=math.exp(sum(map(math.log, ts)) / len(ts))))
    return out


def repeat_agreement(runs: list[list]) -> float | None:
    """Pairwise order of repeat 2 scored against repeat 1, as a model would be."""
    if len(runs) < 2:
        return None
    second = {(r.kernel.key, r.decision.to_json()): r.latency_s for r in runs[1]}
    hits = total = 0
    for key, rs in evaluate.by_kernel(runs[0]).items():
        rs = [r for r in rs if (key, r.decision.to_json()) in second]
        if len(rs) < 2:
            continue
        s = evaluate.kernel_scores(
            np.array([r.latency_s for r in rs]), -np.array([second[(key, r.decision.to_json())] for r in rs])
        )
        if "pairs" in s:
            hits += s["pairwise"] * s["pairs"]
            total += s["pairs"]
    return hits / total if total else None


def amd_only_model(target) -> LightGBMCostModel:
    """Trained on the seed corpus' AMD EPYC rows alone; it predicts for `target`."""
    records, _ = train.load_records(SEED_DB, all_targets=True)
    amd = [r for r in records if r.target.cpu_name.startswith("AMD")]
    model = LightGBMCostModel(amd[0].target).fit(amd)
    model.target = target
    return model


def main(argv=None) -> int:
    warnings.filterwarnings("ignore")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=120.0, help="seconds of measuring for each adapt run")
    p.add_argument("--heldout-kernels", type=int, default=48)
    p.add_argument("--heldout-decisions", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2, help="held-out measurements of each pair (noise: see above)")
    p.add_argument("--bases", default="xeon,amd-only", help="comma-separated: xeon (shipped), amd-only")
    p.add_argument("--out-dir", default="bench/results/costmodel_adapt", help="held-out databases (a cache)")
    p.add_argument("--json", default="bench/results/costmodel_adapt.json")
    p.add_argument("--seed", type=int, default=0, help="adapt's --seed")
    p.add_argument("--workers", type=int, default=None, help="adapt's --workers (default: its own)")
    p.add_argument("--quick", action="store_true", help="CI: 20 s budgets, 6 held-out kernels, one repeat")
    args = p.parse_args(argv)
    if args.quick:  # the quick defaults; options given still win
        p.set_defaults(**QUICK)
        args = p.parse_args(argv)
    say = lambda msg: print(f"... {msg}", file=sys.stderr, flush=True)  # noqa: E731
    target = host()
    kernels = heldout_kernels(args.heldout_kernels)
    runs = heldout_rows(
        kernels, target, decisions=args.heldout_decisions, repeats=args.repeats, out_dir=args.out_dir, say=say
    )
    held = evaluate.by_kernel(mean_of_repeats(runs))
    kinds = collections.Counter(rs[0].kernel.kind for rs in held.values())
    ceiling = repeat_agreement(runs)
    report = {
        "target": json.loads(target.to_json()),
        "target_hash": target.hash(),
        "budget_s": args.budget,
        "heldout": {"rows": sum(map(len, held.values())), "kernels": len(held), "kinds": dict(kinds)},
        "repeats": args.repeats,
        "repeat_agreement": ceiling,
        "bases": {},
    }
    print(f"this machine: {target.cpu_name} (target {target.hash()})")
    print(
        f"held-out: {report['heldout']['rows']} rows of {len(held)} kernels "
        f"({', '.join(f'{k} {n}' for k, n in sorted(kinds.items()))}), latency = geomean of {args.repeats} "
        f"repeat(s)" + (f"; repeat 2 orders pairs as repeat 1 does {ceiling:.3f} of the time" if ceiling else "")
    )
    pool = adapt.reference_pool()
    header = f"{'base':<10}{'rows':>6}{'kernels':>9}{'seconds':>9}  {'mode':<14}{'pairwise':>18}{'MAPE':>20}"
    header += f"{'native':>9}"
    lines = []
    for name in [b for b in args.bases.split(",") if b]:
        if name == "xeon":
            base = cm.load(cm.SHIPPED_MODELS[0].path, target)
        elif name == "amd-only":
            base = amd_only_model(target)
        else:
            raise SystemExit(f"unknown base {name!r} (xeon, amd-only)")
        before = evaluate.score_model(base, held)
        first = evaluate.by_kernel(runs[0])  # one repeat's latencies, for comparison
        say(f"{name}: adapting with {args.budget:g} s of measuring")
        t0 = time.perf_counter()
        r = adapt.adapt(
            base, target, budget_s=args.budget, base_name=name, pool=pool, seed=args.seed, workers=args.workers
        )
        wall = time.perf_counter() - t0
        after = evaluate.score_model(r.model, held)
        native = evaluate.score_model(LightGBMCostModel(target).fit(r.measured.records), held)
        rows, ks = len(r.measured.records), len({x.kernel.key for x in r.measured.records})
        report["bases"][name] = {
            "before": before,
            "after": after,
            "before_repeat1": evaluate.score_model(base, first),
            "after_repeat1": evaluate.score_model(r.model, first),
            "native": native,
            "mode": r.mode,
            "cv": r.cv,
            "rows": rows,
            "kernels": ks,
            "kinds": r.measured.kinds(),
            "measured_s": r.measured.seconds,
            "workers": r.measured.workers,
            "failed": r.measured.failed,
            "adapt_wall_s": wall,
        }
        lines.append(
            f"{name:<10}{rows:>6}{ks:>9}{r.measured.seconds:>9.1f}  {r.mode:<14}"
            f"{before['pairwise']:>8.3f} -> {after['pairwise']:.3f}"
            f"{before['mape']:>10.1%} -> {after['mape']:.1%}{native['pairwise']:>9.3f}"
        )
    print("\nbefore -> after adapt, on the held-out rows (pairwise order, MAPE; native: trained on adapt's rows only)")
    print(header)
    print("\n".join(lines))
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    atomic_write(args.json, json.dumps(report, indent=1, default=float).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
