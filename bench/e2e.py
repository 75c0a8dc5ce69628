"""End-to-end benchmark: every zoo model (and a 512³ matmul), torch eager vs Tilecraft.

Same process, same inputs; eager at 1 and 2 threads, Tilecraft's code is single-threaded
(its 2-thread column is the same code). Median of ≥ 30 runs after warm-up. Every compiled
result is checked against eager before it is timed. Prints a table, saves JSON.

    python bench/e2e.py [--models mlp,resnet18] [--runs 30] [--json bench/results/e2e.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings

import torch

from tilecraft import driver, frontend
from tilecraft.corpus import zoo


class MatMul512(torch.nn.Module):
    def forward(self, a, b):
        return a @ b


def median_ms(fn, runs: int) -> float:
    for _ in range(3):
        fn()
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1e3


def bench_one(name: str, model, inputs, runs: int, *, atol: float = driver.ATOL) -> dict:
    imported = frontend.import_module(model, inputs, spec=name)
    compiled = driver.compile_model(imported)
    with torch.no_grad():
        ref = model(*inputs)
    cmp = driver.compare(compiled.fn(*inputs), ref, atol=atol)
    row = {"model": name, "compile_s": compiled.compile_seconds, "max_abs": cmp.max_abs, "ok": cmp.ok}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        with torch.no_grad():
            row[f"eager_ms_{threads}t"] = median_ms(lambda: model(*inputs), runs)
        row[f"tilecraft_ms_{threads}t"] = median_ms(lambda: compiled.fn(*inputs), runs) if cmp.ok else None
    return row


def main(argv=None) -> int:
    warnings.filterwarnings("ignore")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(["matmul512", *zoo.ZOO]))
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--json", default="bench/results/e2e.json")
    args = p.parse_args(argv)
    rows = []
    for name in args.models.split(","):
        if name == "matmul512":
            torch.manual_seed(0)
            model, inputs = MatMul512(), (torch.randn(512, 512), torch.randn(512, 512))
        else:
            model, inputs = zoo.get(name)
        # A 512-term f32 dot product: elements near zero differ by ~1e-5 between any two
        # summation orders, so the matmul is checked with atol 1e-4 (rtol stays 1e-4).
        row = bench_one(name, model, inputs, args.runs, atol=1e-4 if name == "matmul512" else driver.ATOL)
        rows.append(row)
        print(f"... {name} done", file=sys.stderr)
    print(
        f"{'model':<18}{'ok':>4}{'compile s':>11}{'eager 1t':>10}{'tc 1t':>10}{'ratio 1t':>10}"
        f"{'eager 2t':>10}{'ratio 2t':>10}"
    )
    for r in rows:
        tc = r["tilecraft_ms_1t"]
        ratio1 = r["eager_ms_1t"] / tc if tc else float("nan")
        ratio2 = r["eager_ms_2t"] / r["tilecraft_ms_2t"] if r["tilecraft_ms_2t"] else float("nan")
        print(
            f"{r['model']:<18}{'yes' if r['ok'] else 'NO':>4}{r['compile_s']:>11.1f}{r['eager_ms_1t']:>10.3f}"
            f"{(tc or float('nan')):>10.3f}{ratio1:>10.2f}{r['eager_ms_2t']:>10.3f}{ratio2:>10.2f}"
        )
    print("ratio = eager median / Tilecraft median (> 1 means Tilecraft is faster)")
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    meta = {
        "torch": torch.__version__,
        "machine": platform.machine(),
        "runs": args.runs,
        "when": time.strftime("%Y-%m-%d %H:%M"),
    }
    tmp = args.json + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    os.replace(tmp, args.json)
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
