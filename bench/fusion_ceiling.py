"""How much of what fusion could win does it win? Per zoo model, where the fused time goes.

For each model: Tilecraft unfused and fused, timed as `bench/e2e.py` times them (1 thread,
interleaved rounds, median of the rounds' medians); then `tilecraft explain --measure`'s
kernels (each compiled and timed alone, warm; `compiler/explain.py`), summed over the
kernels that hold a contraction (GEMMs, tap chains, with whatever epilogue fusion gave
them) and over the rest. Fusion removes memory passes and kernels; it leaves the
contractions' arithmetic. So `unfused / contraction` bounds what fused/unfused could
reach if every non-contraction kernel cost nothing, and `won` is the share of that gap
fusion has closed. The bound is loose on purpose: a depthwise convolution (elementwise
shifted slices here) counts as the rest, and kernels timed alone run warmer than in the
model (the sum of bert_mini's kernels alone is some 20% under its fused run), so the
real ceiling is lower. Prints a table with geomeans, saves JSON.

`--quick` (CI) runs mlp alone, 5 samples a round, into bench/results/quick/.

    python bench/fusion_ceiling.py [--models mlp,bert_mini] [--json bench/results/fusion_ceiling.json]
    python bench/fusion_ceiling.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings

import torch

from tilecraft import driver, explain, frontend
from tilecraft.corpus import zoo

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from e2e import geomean, median_ms  # noqa: E402  (a script beside this one)

ROUNDS = 5


def one(name: str, runs: int) -> dict:
    model, inputs = zoo.get(name)
    with torch.no_grad():
        ref = model(*inputs)
    fns = {}
    for label, fuse in (("fused", True), ("unfused", False)):
        compiled = driver.compile_model(frontend.import_module(model, inputs, spec=name), fuse=fuse)
        if not driver.compare(compiled.fn(*inputs), ref).ok:
            raise SystemExit(f"{name}: {label} output differs from eager")
        fns[label] = compiled.fn
    torch.set_num_threads(1)
    samples = {k: [] for k in fns}
    for r in range(ROUNDS):
        for label in fns if r % 2 == 0 else list(fns)[::-1]:
            samples[label].append(median_ms(lambda f=fns[label]: f(*inputs), max(3, runs // ROUNDS)))
    row = {"model": name, **{f"{k}_ms": statistics.median(v) for k, v in samples.items()}}
    r = explain.explain(name, measure=True)
    row["kernels"] = len(r["kernels"])
    row["kernels_sum_ms"] = r["measured_total_ms"]
    row["contraction_ms"] = r["measured_contraction_ms"]
    row["rest_ms"] = r["measured_total_ms"] - r["measured_contraction_ms"]
    row["unmeasured"] = r["unmeasured_kernels"]
    row["fused_over_unfused"] = row["unfused_ms"] / row["fused_ms"]
    row["ceiling"] = row["unfused_ms"] / row["contraction_ms"]
    gap = row["unfused_ms"] - row["contraction_ms"]  # under 5% of unfused: within the noise, no share
    row["won"] = (row["unfused_ms"] - row["fused_ms"]) / gap if gap > 0.05 * row["unfused_ms"] else None
    return row


QUICK = {"models": "mlp", "runs": 5, "json": "bench/results/quick/fusion_ceiling.json"}


def main(argv=None) -> int:
    warnings.filterwarnings("ignore")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(zoo.ZOO))
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--json", default="bench/results/fusion_ceiling.json")
    p.add_argument("--quick", action="store_true", help="CI: mlp alone, 5 samples a round")
    args = p.parse_args(argv)
    if args.quick:  # the quick defaults; options given still win
        p.set_defaults(**QUICK)
        args = p.parse_args(argv)
    rows = []
    for name in args.models.split(","):
        rows.append(one(name, args.runs))
        print(f"... {name} done", file=sys.stderr)
    print(
        f"{'model':<18}{'unfused':>10}{'fused':>10}{'kernels':>9}{'contr.':>10}{'rest':>10}"
        f"{'fused/unf':>10}{'ceiling':>9}{'won':>7}"
    )
    for r in rows:
        won = f"{r['won']:>7.0%}" if r["won"] is not None else f"{'-':>7}"
        print(
            f"{r['model']:<18}{r['unfused_ms']:>10.3f}{r['fused_ms']:>10.3f}{r['kernels']:>9}"
            f"{r['contraction_ms']:>10.3f}{r['rest_ms']:>10.3f}{r['fused_over_unfused']:>10.2f}"
            f"{r['ceiling']:>9.2f}{won}"
        )
    print(
        f"{'geomean':<67}{geomean(r['fused_over_unfused'] for r in rows):>10.2f}"
        f"{geomean(r['ceiling'] for r in rows):>9.2f}"
    )
    print(
        "ms, 1 thread. contr. / rest: explain --measure's kernels (alone, warm) with / without a contraction;"
        " ceiling = unfused / contr.; won = (unfused - fused) / (unfused - contr.)"
    )
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    meta = {"torch": torch.__version__, "when": time.strftime("%Y-%m-%d %H:%M"), "runs": args.runs}
    driver.atomic_write(args.json, json.dumps({"meta": meta, "rows": rows}, indent=1).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
