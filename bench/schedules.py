"""Schedule-space benchmark: the best tile decision found by measurement vs torch eager.

For 512³ and 1024³ f32 matmuls and three ResNet-18 convolutions: measure every decision
of the kernel's legal space (or a seeded sample of `--sample N` of them) through the
measurement harness, then time the best and the heuristic default side by side with torch
eager at 1 thread. Prints best/worst latency spread (do the decisions matter?) and the
best decision's speed as a fraction of eager's.

    python bench/schedules.py [--sample 200] [--json bench/results/schedules.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import warnings

import torch
from e2e import median_ms  # bench/ is on sys.path when run as a script

from tilecraft.corpus import generator, kernels, measure
from tilecraft.passes import tiling
from tilecraft.target import host


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


def eager_ms(case: str, runs: int = 30) -> float:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    fn = CASES[case][1]()
    with torch.no_grad():
        return median_ms(fn, runs)


def main(argv=None) -> int:
    warnings.filterwarnings("ignore")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--sample", type=int, default=0, help="measure a seeded sample of N decisions (0: all)")
    p.add_argument("--json", default="bench/results/schedules.json")
    args = p.parse_args(argv)
    from torch_mlir import ir

    ctx = ir.Context()
    target = host()
    rows = []
    with measure.MeasureWorker(timeout_s=120) as worker:
        for case in args.cases.split(","):
            kernel = kernels.extract(ir.Module.parse(CASES[case][0], context=ctx))[0]
            space = tiling.space(kernels.infos_of(kernel.mlir, ctx), target)
            chosen = (
                space
                if not args.sample
                else space[:1] + random.Random(0).sample(space[1:], min(args.sample, len(space) - 1))
            )
            results = []
            t0 = time.perf_counter()
            for i, d in enumerate(chosen):
                m = worker.measure(kernel, d, target)
                results.append((d, m))
                print(f"\r{case}: {i + 1}/{len(chosen)} decisions", end="", file=sys.stderr)
            print(file=sys.stderr)
            ok = [(d, m) for d, m in results if m.status == "ok"]
            best_d, best = min(ok, key=lambda x: x[1].median_s)
            worst = max(m.median_s for _, m in ok)
            default = results[0][1]
            eager = eager_ms(case)
            rows.append(
                {
                    "case": case,
                    "space": len(space),
                    "measured": len(chosen),
                    "failed": len(results) - len(ok),
                    "search_s": time.perf_counter() - t0,
                    "eager_ms": eager,
                    "default_ms": default.median_s * 1e3 if default.status == "ok" else None,
                    "best_ms": best.median_s * 1e3,
                    "worst_ms": worst * 1e3,
                    "best_gflops": best.gflops,
                    "best_decision": json.loads(best_d.to_json()),
                }
            )
    print(f"{'case':<22}{'measured':>9}{'eager ms':>10}{'default':>10}{'best':>10}{'best/eager':>11}{'worst/best':>11}")
    for r in rows:
        default = f"{r['default_ms']:.3f}" if r["default_ms"] else "fail"
        print(
            f"{r['case']:<22}{r['measured']:>5}/{r['space']:<4}{r['eager_ms']:>9.3f}{default:>10}{r['best_ms']:>10.3f}"
            f"{r['eager_ms'] / r['best_ms']:>11.2f}{r['worst_ms'] / r['best_ms']:>11.1f}"
        )
    print("best/eager = eager median / best decision's median at 1 thread (1.0 = eager's speed)")
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json + ".tmp", "w") as f:
        json.dump({"target": json.loads(target.to_json()), "rows": rows}, f, indent=1)
    os.replace(args.json + ".tmp", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
