"""Cross-check of the accelerator simulator's GEMM cycle counts against SCALE-Sim 3.0.0.

Both model the same array: our GEMM core does one 16 x 16 block product (256 int8 MACs) per
cycle, SCALE-Sim a 16 x 16 systolic array of PEs (256 MACs per cycle). Each (M, K, N) GEMM
(M output rows, K reduction, N output columns) runs on our side as a 1 x 1 convolution with
cin=K, cout=N over a 1 x M image, on a target with DRAM so fast (`dram_gbs=1e4`,
`dram_latency=1`) that the count is compute-bound like SCALE-Sim's with its 32 MiB
scratchpads; of the first `--schedules` legal schedules the one with the fewest simulated
cycles is kept. Reported: the GEMM core's busy cycles (block products plus each GEMM
instruction's pipeline drain), the ideal M·ceil(K/16)·ceil(N/16), the layer's total cycles
(which add the int32→int8 epilogue on the ALU and the DMAs that do not overlap), and
SCALE-Sim's weight-stationary "Total Cycles" (its output-stationary closed form beside it).

SCALE-Sim runs for real (source "sim") on shapes whose closed form is below `--sim-limit`
cycles (~50 µs per simulated cycle) when its venv (bench/scalesim_peer.py) exists or
`--scalesim` is given (which creates it); otherwise, and for larger shapes, the closed form
that reproduces it exactly (source "formula"). A table of both, and a paragraph computed
from the numbers explaining where they differ by more than 20%, is printed.

    python bench/accel_crosscheck.py [--scalesim] [--json PATH]
    python bench/accel_crosscheck.py --quick     # CI: small shapes, < 20 s
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

from scalesim_peer import DEFAULT_VENV, SCALESIM_VERSION, closed_form_cycles, ensure_venv, gemm_cycles

from tilecraft.backends.accel import lower as L
from tilecraft.backends.accel import sim
from tilecraft.backends.accel.target import AccelTarget
from tilecraft.dialects import accel as isa

ROWS = COLS = 16  # SCALE-Sim's array = our block

# (name, M, K, N): resnet18@224's 3x3 convs by im2col (M = output pixels, K = 9·cin, N = cout),
# bert-base's projections at 128 tokens, the mlp's layer, a few small and mid shapes
SHAPES = [
    ("small", 16, 16, 16),
    ("small", 64, 64, 64),
    ("small", 256, 64, 64),
    ("small", 1024, 64, 64),
    ("small", 64, 256, 256),
    ("small", 256, 256, 256),
    ("mlp", 32, 256, 512),
    ("bert", 128, 256, 768),
    ("bert", 128, 1024, 256),
    ("resnet18", 3136, 576, 64),
    ("resnet18", 784, 1152, 128),
    ("resnet18", 196, 2304, 256),
    ("resnet18", 49, 4608, 512),
]
QUICK_SHAPES = [("small", 16, 16, 16), ("small", 64, 64, 64), ("small", 256, 64, 64), ("bert", 128, 256, 768)]


def target() -> AccelTarget:
    """The default array (block 16, gemm_ii 1, pipeline 4) with DRAM that never stalls it."""
    return AccelTarget(dram_gbs=1e4, dram_latency=1)


def ours(m: int, k: int, n: int, t: AccelTarget, n_schedules: int = 20) -> dict:
    """Our simulator's counts for the GEMM, under the fastest of the first `n_schedules`."""
    b = t.block
    layer = L.ConvLayer("gemm", b * math.ceil(k / b), b * math.ceil(n / b), 1, m)
    layer.pre_shift = 1  # as the corpus's layers; timing only, so no weights or constants needed
    best = None
    for s in L.space(layer, t, limit=n_schedules):
        binary = L.layer_program(layer, s, t)
        r = sim.simulate(binary, t)
        if best is None or r.cycles < best[0].cycles:
            insns = isa.decode_arrays(binary)[0]
            best = (r, s, sum(1 for i in insns if i["op"] == "gemm" and not i["reset"]))
    if best is None:
        raise RuntimeError(f"no legal schedule for the ({m}, {k}, {n}) GEMM")
    r, s, n_gemm = best
    return {
        "gemm_cycles": r.op_cycles.get("gemm", 0),
        "ideal": m * math.ceil(k / b) * math.ceil(n / b),
        "block_products": r.gemm_ops,
        "gemm_insns": n_gemm,
        "total": r.cycles,
        "alu_cycles": r.op_cycles.get("alu", 0),
        "schedule": s.to_json(),
    }


def run(shapes, *, use_sim: bool, sim_limit: int, n_schedules: int) -> list[dict]:
    t = target()
    rows = []
    for name, m, k, n in shapes:
        ws = closed_form_cycles(m, k, n, rows=ROWS, cols=COLS, dataflow="ws")
        os_ = closed_form_cycles(m, k, n, rows=ROWS, cols=COLS, dataflow="os")
        rows.append(dict(name=name, M=m, K=k, N=n, ws=ws, ws_formula=ws, os=os_, source="formula"))
        rows[-1].update(ours(m, k, n, t, n_schedules))
    if use_sim:
        picked = [r for r in rows if r["ws_formula"] < sim_limit]
        if picked:
            python = ensure_venv()
            res = gemm_cycles([(r["M"], r["K"], r["N"]) for r in picked], rows=ROWS, cols=COLS, python=python)
            for r, s in zip(picked, res):
                r["ws"], r["source"] = s["compute_cycles"], "sim"
                r["ws_stalls"] = s["stall_cycles"]
    for r in rows:
        r["ratio"] = r["gemm_cycles"] / r["ws"]
        r["ratio_os"] = r["gemm_cycles"] / r["os"]
    return rows


def table(rows: list[dict]) -> str:
    head = "| shape (M, K, N) | ours GEMM cycles | ideal M·K/16·N/16 | ours total | SCALE-Sim WS | ratio ours/SCALE-Sim"
    head += " | SCALE-Sim OS (formula) | source |"
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in rows:
        lines.append(
            f"| {r['name']} ({r['M']}, {r['K']}, {r['N']}) | {r['gemm_cycles']} | {r['ideal']} | {r['total']}"
            f" | {r['ws']} | {r['ratio']:.3f} | {r['os']} | {r['source']} |"
        )
    return "\n".join(lines)


def explain(rows: list[dict]) -> str:
    """A paragraph on where and why the counts differ, every figure taken from the rows."""
    fill = 2 * ROWS + COLS - 2
    out = []
    mism = [r for r in rows if r["source"] == "sim" and r["ws"] != r["ws_formula"]]
    n_sim = sum(r["source"] == "sim" for r in rows)
    if n_sim:
        out.append(
            f"SCALE-Sim {SCALESIM_VERSION} ran for {n_sim} of {len(rows)} shapes; its count "
            + (
                "equals the closed form on every one of them."
                if not mism
                else "differs from the closed form on "
                + ", ".join(f"({r['M']}, {r['K']}, {r['N']})" for r in mism)
                + "."
            )
        )
    # our GEMM core: ideal block products plus a pipeline drain per GEMM instruction
    over = sorted((r["gemm_cycles"] - r["ideal"]) / r["ideal"] for r in rows)
    worst = max(rows, key=lambda r: (r["gemm_cycles"] - r["ideal"]) / r["ideal"])
    out.append(
        f"Our GEMM core's busy cycles exceed the ideal M·ceil(K/16)·ceil(N/16) by {100 * over[len(over) // 2]:.1f}%"
        f" (median), at most {100 * over[-1]:.0f}% (({worst['M']}, {worst['K']}, {worst['N']}): its"
        f" {worst['gemm_insns']} GEMM instructions each add a {target().pipeline}-cycle pipeline drain to"
        f" {worst['ideal']} block products)."
    )
    far = [r for r in rows if abs(r["ratio"] - 1) > 0.2]
    if far:
        # the smallest M from which on every shape agrees within 20%
        agree = [r["M"] for r in rows if all(abs(q["ratio"] - 1) <= 0.2 for q in rows if q["M"] >= r["M"])]
        out.append(
            f"The counts differ by more than 20% on {len(far)} of {len(rows)} shapes: "
            + ", ".join(f"({r['M']}, {r['K']}, {r['N']}) ratio {r['ratio']:.2f}" for r in far)
            + (f"; every shape with M ≥ {min(agree)} agrees within 20%" if agree else "")
            + "."
        )
    else:
        out.append("The counts agree within 20% on every shape.")
    # the model of the gap: SCALE-Sim pays `fill` cycles per fold of ceil(K/R)·ceil(N/C) folds
    err = max(abs(r["ideal"] / r["ws"] - r["M"] / (r["M"] + fill)) for r in rows)
    out.append(
        f"The gap is SCALE-Sim's fill and drain: in weight-stationary mode each of its ceil(K/{ROWS})·ceil(N/{COLS})"
        f" folds first preloads the weights into the PEs ({ROWS} cycles), then streams the M input rows, whose"
        f" operands and partial sums skew through the {ROWS}×{COLS} array, so a fold takes 2R+C−2+M = {fill}+M cycles"
        f" for M useful ones. Our VTA-style GEMM core reads a whole {ROWS}×{COLS} weight tile from its weight SRAM in"
        f" one cycle and completes one block product per cycle behind a fixed {target().pipeline}-stage pipeline, so it"
        f" has no per-fold overhead. Hence ideal/SCALE-Sim = M/(M+{fill}) (within {err:.4f} on every shape) and"
        f" ratio = M/(M+{fill}) × ours/ideal"
    )
    # does the ratio grow with M? Shapes whose own pipeline drains cost us > 5% are set apart
    by_m = sorted(rows, key=lambda r: r["M"])
    drained = [r for r in by_m if r["gemm_cycles"] > 1.05 * r["ideal"]]
    rest = [r for r in by_m if r not in drained]
    mono = all(a["ratio"] < b["ratio"] for a in rest for b in rest if a["M"] < b["M"])
    lo, hi = rest[0] if rest else by_m[0], by_m[-1]
    out[-1] += (
        f": the difference shrinks as M grows ({'strictly' if mono else 'though not strictly'}"
        + (
            " apart from "
            + ", ".join(f"({r['M']}, {r['K']}, {r['N']})" for r in drained)
            + ", where our pipeline drains dominate"
            if drained
            else ""
        )
        + f"; ratio {lo['ratio']:.2f} at M={lo['M']}, {hi['ratio']:.3f} at M={hi['M']});"
        " the fill-and-drain share does not depend on K or N."
    )
    os_model = [r["M"] / (ROWS * math.ceil(r["M"] / ROWS)) * r["K"] / (r["K"] + ROWS + COLS - 2) for r in rows]
    os_err = max(abs(r["ideal"] / r["os"] - q) for r, q in zip(rows, os_model))
    os_far = [r for r in rows if abs(r["ratio_os"] - 1) > 0.2]
    out.append(
        f"Output-stationary SCALE-Sim instead pays R+C−2 = {ROWS + COLS - 2} cycles per output fold against K"
        f" reduction cycles and pads M to whole {ROWS}-row folds: ideal/OS = M/({ROWS}·ceil(M/{ROWS})) ×"
        f" K/(K+{ROWS + COLS - 2}) (within {os_err:.4f}), closest on the deep-K layers whose M fills its folds;"
        f" it differs from ours by more than 20% on {len(os_far)} of {len(rows)} shapes."
    )
    tot = [r["gemm_cycles"] / r["total"] for r in rows]
    out.append(
        f"Our total cycles also count what SCALE-Sim leaves out: the int32→int8 epilogue on the ALU, which shares"
        f" the compute module with the GEMM core, and DMA not hidden behind it; the GEMM core is busy"
        f" {100 * min(tot):.0f}–{100 * max(tot):.0f}% of the total."
    )
    return " ".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="CI: a few small shapes, < 20 s")
    p.add_argument("--scalesim", action="store_true", help="run SCALE-Sim (creating its venv if need be)")
    p.add_argument("--sim-limit", type=int, default=60_000, help="run SCALE-Sim below this many cycles")
    p.add_argument("--schedules", type=int, default=20, help="schedules of the space to simulate per shape")
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args()
    shapes = QUICK_SHAPES if args.quick else SHAPES
    use_sim = args.scalesim or (DEFAULT_VENV / f".scalesim-{SCALESIM_VERSION}-ok").exists()
    t0 = time.perf_counter()
    rows = run(shapes, use_sim=use_sim, sim_limit=args.sim_limit, n_schedules=args.schedules)
    took = time.perf_counter() - t0
    print(
        f"accelerator simulator vs SCALE-Sim {SCALESIM_VERSION} ({ROWS}x{COLS}, WS; SCALE-Sim "
        f"{'run below ' + str(args.sim_limit) + ' cycles' if use_sim else 'closed form only'}), {took:.1f} s\n"
    )
    print(table(rows))
    print()
    print(explain(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
