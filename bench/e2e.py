"""End-to-end benchmark: every zoo model (and a 512³ matmul): torch eager, torch.compile
(Inductor, CPU, with freezing) and Tilecraft fused and unfused, in one run.

Same process, same inputs; eager at 1 and 2 threads, Tilecraft fused compiled for 1 and
for 2 threads (`threads=2`: large kernels split into a chunk a thread, on OpenMP);
Inductor at 1 thread. The 1-thread eager, fused and unfused columns are timed in 5
interleaved rounds (median of the rounds' medians) so that the shared machine's drift hits
them alike, and so are the two 2-thread columns; Inductor is the median of ≥ 30 samples
after warm-up. A sample is one call, or for a model under 5 ms the mean of the back-to-back
calls that fill 5 ms (`median_ms`). Every compiled result (Tilecraft fused and unfused,
Inductor) is checked against eager before it is timed. Prints a table with geomeans, saves JSON.

ONNX Runtime and OpenVINO (f32, `bench/peers.py`) at 1 and 2 threads are timed in the
rounds of their thread count; a second table sets Tilecraft against the best of every
peer per model and thread count.

`--quick` (CI) runs mlp alone, 5 samples a column, no Inductor, into bench/results/quick/.

    python bench/e2e.py [--models mlp,resnet18] [--runs 30] [--no-inductor] [--no-peers] [--json bench/results/e2e.json]
    python bench/e2e.py --quick
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings

import torch

from tilecraft import driver, frontend
from tilecraft.corpus import zoo

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peers  # noqa: E402  (bench/peers.py: ONNX Runtime, OpenVINO)


class MatMul512(torch.nn.Module):
    def forward(self, a, b):
        return a @ b


MIN_SAMPLE_S = 0.005  # a sample times back-to-back calls for at least this long


def median_ms(fn, runs: int) -> float:
    """Median over `runs` samples of one call's milliseconds. A sample times as many
    back-to-back calls as fill MIN_SAMPLE_S (one, for a model of 5 ms or more), so that a
    sub-millisecond model (mlp: 0.25 ms) is not timed one call at a time, where the
    timer's and the scheduler's jitter are as large as what is compared."""
    t0 = time.perf_counter()
    for _ in range(3):
        fn()
    reps = max(1, math.ceil(MIN_SAMPLE_S / max((time.perf_counter() - t0) / 3, 1e-9)))
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        samples.append((time.perf_counter() - t0) / reps)
    return statistics.median(samples) * 1e3


ROUNDS = 5  # the 1-thread columns are timed in interleaved rounds: drift hits them alike
# between columns: idle OpenMP workers spin after a parallel region before they sleep (ours
# 50 ms, libiomp5's KMP_BLOCKTIME 200 ms), on the core the next column would use
SETTLE_S = 0.3


def bench_one(
    name: str, model, inputs, runs: int, *, atol: float = driver.ATOL, inductor: bool = True, use_peers: bool = True
) -> dict:
    row = {"model": name}
    with torch.no_grad():
        ref = model(*inputs)
    ok = True
    fns = {}
    for label, fuse, threads in (("tilecraft", True, 1), ("unfused", False, 1), ("tilecraft_2t", True, 2)):
        t0 = time.perf_counter()
        imported = frontend.import_module(model, inputs, spec=name)
        row[f"{label}_export_s"] = time.perf_counter() - t0  # torch.export and the import to linalg
        compiled = driver.compile_model(imported, fuse=fuse, threads=threads)
        cmp = driver.compare(compiled.fn(*inputs), ref, atol=atol)
        ok = ok and cmp.ok
        row[f"{label}_compile_s"] = compiled.compile_seconds  # every stage after that
        row[f"{label}_max_abs"] = cmp.max_abs
        if threads == 1:
            row[f"{label}_ms_1t"] = None
        if cmp.ok:
            fns[label] = compiled.fn
        if label == "tilecraft":
            row["fused_groups"] = len(compiled.fusion)
    row["ok"], row["compile_s"], row["export_s"] = ok, row["tilecraft_compile_s"], row["tilecraft_export_s"]

    def eager():
        with torch.no_grad():
            return model(*inputs)

    one = {f"{label}_ms_1t": (lambda f=f: f(*inputs)) for label, f in fns.items() if label != "tilecraft_2t"}
    one["eager_ms_1t"] = eager
    two = {"eager_ms_2t": eager}
    if "tilecraft_2t" in fns:
        two["tilecraft_ms_2t"] = lambda: fns["tilecraft_2t"](*inputs)
    row["tilecraft_ms_2t"] = None
    for peer in peers.PEERS if use_peers else ():
        for threads, timed in ((1, one), (2, two)):
            key = f"{peer}_ms_{threads}t"
            row[key] = None
            try:
                fn = peers.runtime(peer, model, inputs, threads)
            except peers.PeerUnavailable as exc:
                print(f"{peer} on {name}: {exc}", file=sys.stderr)
                continue
            cmp = driver.compare(driver.flatten(fn()), driver.flatten(ref), atol=atol)
            if not cmp.ok:  # a wrong result is not timed
                print(f"{peer} on {name} ({threads} threads) differs from eager: {cmp}", file=sys.stderr)
                continue
            timed[key] = fn
    per_round = max(3, runs // ROUNDS)
    for threads, timed in ((1, one), (2, two)):
        torch.set_num_threads(threads)
        samples = {k: [] for k in timed}
        keys = list(timed)
        for r in range(ROUNDS):  # each round starts one column later: no column always follows the same one
            for key in keys[r % len(keys) :] + keys[: r % len(keys)]:
                time.sleep(SETTLE_S)
                samples[key].append(median_ms(timed[key], per_round))
        row.update({k: statistics.median(v) for k, v in samples.items()})
    row["inductor_ms_1t"] = inductor_ms(model, inputs, ref, runs, atol) if inductor else None
    return row


def inductor_ms(model, inputs, ref, runs: int, atol: float) -> float | None:
    """torch.compile (Inductor, CPU, freezing on), 1 thread; None if it fails or is wrong."""
    import torch._inductor.config as cfg

    torch.set_num_threads(1)
    cfg.freezing = True
    torch._dynamo.reset()
    try:
        compiled = torch.compile(model)
        with torch.no_grad():
            out = compiled(*inputs)
            if not driver.compare(out, ref, atol=max(atol, 1e-4)).ok:
                return None
            return median_ms(lambda: compiled(*inputs), runs)
    except Exception as exc:  # an Inductor failure is reported, not fatal
        print(f"inductor failed on {type(model).__name__}: {type(exc).__name__}: {str(exc)[:200]}", file=sys.stderr)
        return None


def geomean(xs) -> float:
    xs = [x for x in xs if x]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")


QUICK = {"models": "mlp", "runs": 5, "no_inductor": True, "json": "bench/results/quick/e2e.json"}


def main(argv=None) -> int:
    warnings.filterwarnings("ignore")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(["matmul512", *zoo.ZOO]))
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--json", default="bench/results/e2e.json")
    p.add_argument("--no-inductor", action="store_true", help="skip torch.compile")
    p.add_argument("--no-peers", action="store_true", help="skip ONNX Runtime and OpenVINO")
    p.add_argument("--quick", action="store_true", help="CI: mlp alone, 5 samples, no Inductor")
    args = p.parse_args(argv)
    if args.quick:  # the quick defaults; options given still win
        p.set_defaults(**QUICK)
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
        atol = 1e-4 if name == "matmul512" else driver.ATOL
        rows.append(
            bench_one(
                name, model, inputs, args.runs, atol=atol, inductor=not args.no_inductor, use_peers=not args.no_peers
            )
        )
        print(f"... {name} done", file=sys.stderr)

    def ratio(a, b):
        return a / b if a and b else None

    def f(x, spec=">10.3f"):
        return format(x, spec) if x is not None else f"{'-':>10}"

    print(
        f"{'model':<18}{'ok':>4}{'groups':>7}{'eager 1t':>10}{'unfused':>10}{'fused':>10}{'inductor':>10}"
        f"{'fused/unf':>10}{'vs eager':>10}{'ind/eager':>10}{'eager 2t':>10}{'fused 2t':>10}{'vs e 2t':>10}"
    )
    for r in rows:
        r["fusion_speedup"] = ratio(r["unfused_ms_1t"], r["tilecraft_ms_1t"])
        r["ratio_1t"] = ratio(r["eager_ms_1t"], r["tilecraft_ms_1t"])
        r["inductor_ratio_1t"] = ratio(r["eager_ms_1t"], r["inductor_ms_1t"])
        r["ratio_2t"] = ratio(r["eager_ms_2t"], r["tilecraft_ms_2t"])
        print(
            f"{r['model']:<18}{'yes' if r['ok'] else 'NO':>4}{r['fused_groups']:>7}{f(r['eager_ms_1t'])}"
            f"{f(r['unfused_ms_1t'])}{f(r['tilecraft_ms_1t'])}{f(r['inductor_ms_1t'])}"
            f"{f(r['fusion_speedup'], '>10.2f')}{f(r['ratio_1t'], '>10.2f')}{f(r['inductor_ratio_1t'], '>10.2f')}"
            f"{f(r['eager_ms_2t'])}{f(r['tilecraft_ms_2t'])}{f(r['ratio_2t'], '>10.2f')}"
        )
    zoo_rows = [r for r in rows if r["model"] != "matmul512"]
    print(
        f"{'geomean (zoo)':<29}{'':>40}{geomean(r['fusion_speedup'] for r in zoo_rows):>10.2f}"
        f"{geomean(r['ratio_1t'] for r in zoo_rows):>10.2f}{geomean(r['inductor_ratio_1t'] for r in zoo_rows):>10.2f}"
        f"{'':>20}{geomean(r['ratio_2t'] for r in zoo_rows):>10.2f}"
    )
    print("fused/unf = Tilecraft unfused / fused; vs eager, ind/eager = eager / that (> 1: faster than eager)")
    print()
    head = f"{'best 1t':>22}{'fused 1t':>10}{'ratio':>8}{'best 2t':>22}{'fused 2t':>10}{'ratio':>8}"
    head += f"{'export s':>10}{'compile s':>11}{'total s':>9}{'2t total s':>12}"
    print(f"{'against the best peer':<18}{head}")
    for r in rows:
        cells = ""
        for t in (1, 2):
            options = {p: r.get(f"{p}_ms_{t}t") for p in ("eager", "inductor", *peers.PEERS)}
            options = {p: ms for p, ms in options.items() if ms}
            best = min(options, key=options.get) if options else None
            r[f"best_peer_{t}t"] = best
            r[f"best_ratio_{t}t"] = ratio(options.get(best), r[f"tilecraft_ms_{t}t"])
            label = f"{options[best]:.3f} ({best})" if best else "-"
            cells += f"{label:>22}{f(r[f'tilecraft_ms_{t}t'])}{f(r[f'best_ratio_{t}t'], '>8.2f')}"
        total = r["export_s"] + r["compile_s"]
        total_2t = r["tilecraft_2t_export_s"] + r["tilecraft_2t_compile_s"]
        print(f"{r['model']:<18}{cells}{r['export_s']:>10.1f}{r['compile_s']:>11.1f}{total:>9.1f}{total_2t:>12.1f}")
    print(
        f"{'geomean (zoo)':<18}{'':>32}{geomean(r['best_ratio_1t'] for r in zoo_rows):>8.2f}"
        f"{'':>32}{geomean(r['best_ratio_2t'] for r in zoo_rows):>8.2f}"
    )
    print("best = the fastest of eager, Inductor (1 thread), ONNX Runtime and OpenVINO (f32), each checked first;")
    print("ratio = best / Tilecraft (> 1: Tilecraft ahead of every peer); the fused 1-thread compile, no cache, in")
    print("this process (imports done): export s = torch.export and the import to linalg, compile s = every stage")
    print("after it to machine code, total s = both; 2t total s: the same for the 2-thread compile (the CLI's")
    print("default on this machine), the third compile of the model in this process")
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    meta = {
        "torch": torch.__version__,
        "machine": platform.machine(),
        "runs": args.runs,
        "when": time.strftime("%Y-%m-%d %H:%M"),
    }
    driver.atomic_write(args.json, json.dumps({"meta": meta, "rows": rows}, indent=1).encode())
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
