"""The zoo on the accelerator: every model compiled for `accel{...}`, run on the simulator,
checked bit for bit against the exact integer reference and against eager (f32), with its
memory plan against the layer-by-layer, latency-first baseline measured on the simulator
too.

Prints one row per model: compile seconds, accelerator layers / host ops, cycles and the
time at the configured clock, GEMM-core utilization, DRAM traffic of the plan and of the
baseline (both simulated) and the cut, the plan's solve time, bit-exactness and the
relative L2 error against eager.

    python bench/accel.py [--models resnet18,mlp] [--target 'accel{...}'] [--json FILE]
    python bench/accel.py --quick        # mlp and conv_autoencoder
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

from tilecraft import accel_driver


def row(name: str, target: str) -> dict:
    plan = accel_driver.compile_accel(name, target, plan=True)
    r = accel_driver.run(plan)
    base = accel_driver.run(accel_driver.compile_accel(name, target, plan=False))
    planned, baseline = r["dram_read"] + r["dram_write"], base["dram_read"] + base["dram_write"]
    return {
        "model": name,
        "compile_s": plan.compile_seconds,
        "cost_model": plan.cost_model,
        "layers": r["layers"],
        "host_ops": r["host_ops"],
        "cycles": r["cycles"],
        "ms": r["ms_at_clock"],
        "utilization": r["utilization"],
        "dram_plan": planned,
        "dram_baseline": baseline,
        "cycles_baseline": base["cycles"],
        "cut": 1 - planned / baseline,
        "solve_s": plan.plan.solve_seconds,
        "solver": plan.plan.solver,
        "compulsory": plan.plan.compulsory_bytes,
        "bit_exact": r["bit_exact"] and base["bit_exact"],
        "rel_l2": r["rel_l2_vs_eager"],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="mlp,conv_autoencoder,bert_mini,mobilenet_v2,resnet18")
    p.add_argument("--target", default="accel")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    names = ["mlp", "conv_autoencoder"] if args.quick else args.models.split(",")
    head = (
        f"{'model':<17} {'compile s':>9} {'layers':>6} {'host':>4} {'cycles':>11} {'ms':>7} {'util':>5}"
        f" {'DRAM plan':>11} {'layer-by-layer':>14} {'cut':>6} {'solve s':>7} {'exact':>5} {'relL2':>7}"
    )
    print(f"target {args.target}")
    print(head)
    rows = []
    for name in names:
        d = row(name, args.target)
        rows.append(d)
        print(
            f"{name:<17} {d['compile_s']:>9.1f} {d['layers']:>6} {d['host_ops']:>4} {d['cycles']:>11,} {d['ms']:>7.2f}"
            f" {d['utilization']:>5.2f} {d['dram_plan']:>11,} {d['dram_baseline']:>14,} {d['cut']:>6.1%}"
            f" {d['solve_s']:>7.2f} {'yes' if d['bit_exact'] else 'NO':>5} {d['rel_l2']:>7.4f}",
            flush=True,
        )
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json + ".tmp", "w") as f:
            json.dump(rows, f, indent=1)
        os.replace(args.json + ".tmp", args.json)
    return 0 if all(d["bit_exact"] and d["rel_l2"] < 0.02 for d in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
