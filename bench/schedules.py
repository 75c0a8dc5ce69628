"""Schedule-space benchmark: the best tile decision found by measurement vs torch eager.

For 512³ and 1024³ f32 matmuls and three ResNet-18 convolutions: measure every decision
of the kernel's legal space (or a seeded sample of `--sample N` of them) through the
measurement harness into a corpus database (resumable), then re-time the fastest few and
the heuristic default one at a time beside torch eager at 1 thread. Prints best/worst
latency spread (do the decisions matter?) and the best decision's speed as a fraction of
eager's.

`--quick` (CI) sweeps a sample of 4 decisions of a 128³ matmul into a fresh temporary
database, re-times the fastest beside the default, and writes under bench/results/quick/.

    python bench/schedules.py [--sample 200] [--db bench/results/schedules.db] [--workers 2]
    python bench/schedules.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings

import torch
from e2e import median_ms  # bench/ is on sys.path when run as a script

from tilecraft.backends.cpu import schedule as tiling
from tilecraft.backends.cpu.target import host
from tilecraft.corpus import collect, generator, kernels, measure
from tilecraft.corpus.db import CorpusDB


def _matmul(n: int):
    a, b = torch.randn(n, n), torch.randn(n, n)
    return lambda: a @ b


def _conv(c: int, hw: int):
    # The same unpadded problem the kernel computes: input (hw + 2)², 3x3, stride 1.
    x, w = torch.randn(1, c, hw + 2, hw + 2), torch.randn(c, c, 3, 3)
    return lambda: torch.nn.functional.conv2d(x, w)


CASES = {
    "matmul 512^3": (generator.matmul(512, 512, 512), lambda: _matmul(512)),
    "matmul 1024^3": (generator.matmul(1024, 1024, 1024), lambda: _matmul(1024)),
    "conv 64->64 3x3 56": (generator.conv2d(64, 64, 56, 3, 1), lambda: _conv(64, 56)),
    "conv 128->128 3x3 28": (generator.conv2d(128, 128, 28, 3, 1), lambda: _conv(128, 28)),
    "conv 256->256 3x3 14": (generator.conv2d(256, 256, 14, 3, 1), lambda: _conv(256, 14)),
}


QUICK_CASES = {"matmul 128^3": (generator.matmul(128, 128, 128), lambda: _matmul(128))}  # not in the full run
ALL_CASES = {**CASES, **QUICK_CASES}
QUICK = {  # --quick's defaults ("db": a temporary one): results beside, not over, the full run's
    "cases": ",".join(QUICK_CASES),
    "sample": 4,
    "retime": 1,
    "db": "",
    "json": "bench/results/quick/schedules.json",
}


def eager_ms(case: str, runs: int = 30) -> float:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    fn = ALL_CASES[case][1]()
    with torch.no_grad():
        return median_ms(fn, runs)


def main(argv=None) -> int:
    warnings.filterwarnings("ignore")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--sample", type=int, default=0, help="measure a seeded sample of N decisions (0: all)")
    p.add_argument("--db", default="bench/results/schedules.db", help="corpus database the sweep is recorded in")
    p.add_argument("--workers", type=int, default=1, help="measuring processes during the sweep")
    p.add_argument("--retime", type=int, default=3, help="re-time the N fastest decisions beside eager")
    p.add_argument("--json", default="bench/results/schedules.json")
    p.add_argument("--quick", action="store_true", help="CI: 4 decisions of a 128^3 matmul, a temporary database")
    args = p.parse_args(argv)
    if args.quick:  # the quick defaults; options given still win
        p.set_defaults(**QUICK)
        args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tilecraft-bench-") as tmp:
        return run(args, args.db or os.path.join(tmp, "schedules.db"))


def run(args, db_path: str) -> int:
    """Sweep, re-time and print every case of `args`, recording the sweep in `db_path`."""
    from torch_mlir import ir

    ctx = ir.Context()
    target = host()
    rows = []
    os.makedirs(os.path.dirname(os.path.abspath(db_path)), exist_ok=True)
    with CorpusDB(db_path) as db:
        for case in args.cases.split(","):
            kernel = kernels.extract(ir.Module.parse(ALL_CASES[case][0], context=ctx))[0]
            space = tiling.space(kernels.infos_of(kernel.mlir, ctx), target)
            count = args.sample or len(space)
            # 1. The sweep: every decision (resumable: a rerun measures only what is missing).
            t0 = time.perf_counter()
            progress = lambda done, total, el, case=case: print(  # noqa: E731
                f"\r{case}: {done}/{total} decisions", end="" if done < total else "\n", file=sys.stderr
            )
            collect.collect(
                db,
                [(kernel, "bench:schedules")],
                decisions_per_kernel=count,
                runner=collect.LocalRunner(target, workers=args.workers),
                progress=progress,
            )
            sweep_s = time.perf_counter() - t0
            chosen = {d.to_json() for d in collect.sample_decisions(kernel, count, seed=0, target=target, context=ctx)}
            measured = [r for r in db.rows(target=target.hash(), status=None) if r["workload"] == kernel.key]
            measured = [r for r in measured if r["decision"] in chosen]
            ok = sorted((r for r in measured if r["status"] == "ok"), key=lambda r: r["median_s"])
            # 2. Re-time the fastest few and the heuristic default beside eager, sequentially.
            default_json = space[0].to_json()
            retimed = {}
            with measure.MeasureWorker(timeout_s=120) as worker:
                for dj in dict.fromkeys([r["decision"] for r in ok[: args.retime]] + [default_json]):
                    m = worker.measure(kernel, tiling.TileDecision.from_json(dj), target)
                    retimed[dj] = m.median_s if m.status == "ok" else None
            eager = eager_ms(case)
            best_json = min((d for d in retimed if retimed[d]), key=lambda d: retimed[d])
            rows.append(
                {
                    "case": case,
                    "space": len(space),
                    "measured": len(measured),
                    "failed": len(measured) - len(ok),
                    "sweep_s": sweep_s,
                    "eager_ms": eager,
                    "default_ms": retimed[default_json] * 1e3 if retimed.get(default_json) else None,
                    "best_ms": retimed[best_json] * 1e3,
                    "sweep_best_ms": ok[0]["median_s"] * 1e3,
                    "worst_ms": ok[-1]["median_s"] * 1e3,
                    "best_decision": json.loads(best_json),
                }
            )
    print(f"{'case':<22}{'measured':>9}{'eager ms':>10}{'default':>10}{'best':>10}{'best/eager':>11}{'worst/best':>11}")
    for r in rows:
        default = f"{r['default_ms']:.3f}" if r["default_ms"] else "fail"
        print(
            f"{r['case']:<22}{r['measured']:>5}/{r['space']:<4}{r['eager_ms']:>9.3f}{default:>10}{r['best_ms']:>10.3f}"
            f"{r['eager_ms'] / r['best_ms']:>11.2f}{r['worst_ms'] / r['sweep_best_ms']:>11.1f}"
        )
    print(
        "best = the sweep's fastest decisions re-timed one at a time beside eager (1 thread); best/eager = eager"
        " median / best median (1.0 = eager's speed); worst/best over the sweep"
    )
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json + ".tmp", "w") as f:
        json.dump({"target": json.loads(target.to_json()), "rows": rows}, f, indent=1)
    os.replace(args.json + ".tmp", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
