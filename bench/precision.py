"""Mixed precision benchmark: AMX bf16/int8 contractions against PyTorch, and `--precision
auto` against f32 on the zoo.

Part 1 (1024³ GEMMs, one thread, side by side in one run):
- bf16: torch eager `a @ b` on bf16 tensors (oneDNN, AMX) against Tilecraft's AMX kernel on
  the same bf16 operands (B VNNI-packed and blocked, as a layer's weight is packed at
  compile time; a fresh f32 result), and against a compiled bf16 `Linear`
  (f32 input converted in the compiled code, weight packed at compile time);
- int8: `torch._int_mm` against the AMX int8 kernel, and a compiled int8 `Linear`
  (quantize, AMX, dequantize).
Every result is checked: the kernels against exact references, the layers against eager f32
within the error the plan predicts.

Part 2 (zoo models, at each `--threads` count, by default one thread): Tilecraft f32 (the
shipped cost model, fusion on) against `--precision auto` under the default 1% error budget,
with the measured relative L2 error of the output against eager f32 and the per-layer
decisions.

`--quick` (CI): 256³ GEMMs and mlp, timed for 0.2 s each; on a CPU without AMX
(`backends/cpu/amx.available`) it says so and runs part 2 alone, with the AVX-512 kernels
where the CPU has AVX512-BF16/VNNI. `--target 'cpu{amx=false}'` runs part 2 that way on an
AMX machine.

    python bench/precision.py [--models resnet18,bert_mini] [--threads 1,2] [--target T] [--json out.json]
    python bench/precision.py --quick
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from tilecraft import driver, frontend
from tilecraft.backends.cpu import amx
from tilecraft.backends.cpu.target import Target
from tilecraft.corpus import amx as amx_workloads
from tilecraft.costmodel import amx as amx_cost
from tilecraft.costmodel import precision_plan


def _time(fn, budget: float) -> float:
    return driver.median_seconds(fn, min_runs=10, budget=budget)


def gemm_rows(n: int = 1024, *, budget: float = 2.0) -> list[dict]:
    torch.manual_seed(0)
    rows = []
    model = amx_cost.AmxCostModel.load()
    flops = 2 * n**3

    # bf16 ------------------------------------------------------------------------------
    a = torch.randn(n, n).to(torch.bfloat16)
    b = torch.randn(n, n).to(torch.bfloat16)
    eager_bf16 = _time(lambda: a @ b, budget)
    kernel = amx_workloads.workload(1, n, n, n, "bf16")  # B blocked: [N/16, K/2, 16, 2]
    sched, _ = model.best(kernel)
    fn = amx_workloads.compile_workload(kernel, sched, accumulate=False)
    a3 = a.reshape(n, n // 2, 2)
    bp = b.reshape(n // 2, 2, n // 16, 16).permute(2, 0, 3, 1).contiguous()
    out = fn(a3, bp).reshape(n, n)
    ref = a.double() @ b.double()
    err = float((out.double() - ref).abs().max() / ref.abs().max())
    ours = _time(lambda: fn(a3, bp), budget)
    rows.append(_row("bf16 kernel (bf16 in, f32 out)", "torch eager bf16", eager_bf16, ours, flops, sched, err))
    layer_s, layer_err = _linear(n, "bf16", budget)
    rows.append(_row("bf16 Linear (f32 in/out)", "torch eager bf16", eager_bf16, layer_s, flops, None, layer_err))

    # int8 ------------------------------------------------------------------------------
    ai = torch.randint(-127, 128, (n, n), dtype=torch.int8)
    bi = torch.randint(-127, 128, (n, n), dtype=torch.int8)
    eager_i8 = _time(lambda: torch._int_mm(ai, bi), budget)
    kernel = amx_workloads.workload(1, n, n, n, "int8")
    sched, _ = model.best(kernel)
    fn = amx_workloads.compile_workload(kernel, sched, accumulate=False)
    a3 = ai.reshape(n, n // 4, 4)
    bp = bi.reshape(n // 4, 4, n // 16, 16).permute(2, 0, 3, 1).contiguous()
    out = fn(a3, bp).reshape(n, n)
    exact = int((out.long() - torch._int_mm(ai, bi).long()).abs().max())
    ours = _time(lambda: fn(a3, bp), budget)
    rows.append(_row("int8 kernel (int8 in, i32 out)", "torch._int_mm", eager_i8, ours, flops, sched, float(exact)))
    layer_s, layer_err = _linear(n, "int8", budget)
    rows.append(_row("int8 Linear (f32 in/out)", "torch._int_mm", eager_i8, layer_s, flops, None, layer_err))
    return rows


def _linear(n: int, mode: str, budget: float) -> tuple[float, float]:
    lin = torch.nn.Linear(n, n, bias=False)
    x = torch.randn(n, n)
    imp = frontend.import_module(lin, (x,), spec=f"linear{n}")
    compiled = driver.compile_model(imp, precision=mode, error_budget=1.0)  # (the kernel is timed; its error shown)
    out = compiled.fn(x)
    with torch.no_grad():
        err = precision_plan.relative_error(out, lin(x))
    return _time(lambda: compiled.fn(x), budget), err


def _row(what, peer, peer_s, ours_s, flops, sched, err) -> dict:
    return {
        "case": what,
        "peer": peer,
        "peer_ms": peer_s * 1e3,
        "tilecraft_ms": ours_s * 1e3,
        "peer_gops": flops / peer_s / 1e9,
        "tilecraft_gops": flops / ours_s / 1e9,
        "ratio": peer_s / ours_s,
        "schedule": dataclasses_str(sched),
        "error": err,
    }


def dataclasses_str(sched) -> str:
    if sched is None:
        return "compiled model"
    return f"{sched.mr}x{sched.nr} kc {sched.kc} {sched.order}" + (f" nc {sched.nc}" if sched.nc else "")


def model_rows(names: list[str], *, budget: float = 2.0, target: str = "cpu", threads: int = 1) -> list[dict]:
    rows = []
    torch.set_num_threads(threads)  # (eager's intra-op threads, as the compiled code's)
    for name in names:
        imp = frontend.import_spec(name)
        with torch.no_grad():
            eager_s = _time(lambda: imp.model(*imp.inputs), budget)
            ref = imp.model(*imp.inputs)
        f32 = driver.compile_model(imp, target=target, threads=threads)
        f32_err = precision_plan.relative_error(f32.fn(*imp.inputs), ref)
        f32_s = _time(lambda: f32.fn(*imp.inputs), budget)
        imp = frontend.import_spec(name)  # fresh module: compiling rewrites it in place
        low = driver.compile_model(imp, precision="auto", target=target, threads=threads)
        plan = low.precision
        low_err = precision_plan.relative_error(low.fn(*imp.inputs), ref)
        low_s = _time(lambda: low.fn(*imp.inputs), budget)
        print(f"\n{name} --precision auto:\n{plan.table()}", file=sys.stderr)
        rows.append(
            {
                "model": name,
                "threads": threads,
                "eager_ms": eager_s * 1e3,
                "f32_ms": f32_s * 1e3,
                "auto_ms": low_s * 1e3,
                "speedup_over_f32": f32_s / low_s,
                "speedup_over_eager": eager_s / low_s,
                "f32_error": f32_err,
                "auto_error": low_err,
                "budget": plan.budget,
                "emulated_error": plan.error,
                "within_budget": low_err <= plan.budget,
                "layers": {p: sum(d.precision == p for d in plan.decisions) for p in ("bf16", "int8", "f32")},
                "message": plan.message,
            }
        )
    return rows


QUICK = {"models": "mlp", "size": 256, "budget": 0.2}


def _thread_counts(p: argparse.ArgumentParser, text: str) -> list[int]:
    try:
        counts = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        p.error(f"--threads: thread counts of at least 1, comma-separated (got {text!r})")
    return counts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet18,bert_mini")
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--budget", type=float, default=2.0, help="seconds of timing per measurement")
    p.add_argument("--json", help="also write the rows as JSON")
    p.add_argument("--threads", default="1", help="part 2's thread counts, comma-separated (e.g. 1,2)")
    p.add_argument("--quick", action="store_true", help="CI: 256^3 GEMMs (with AMX) and mlp, briefly")
    p.add_argument(
        "--target",
        default="cpu",
        help="part 2's target; cpu{amx=false} runs the AVX-512 kernels (vdpbf16ps, vpdpbusd) on an AMX machine",
    )
    args = p.parse_args(argv)
    if args.quick:  # the quick defaults; options given still win
        p.set_defaults(**QUICK)
        args = p.parse_args(argv)
    torch.set_num_threads(1)
    gemms = []
    no_amx = not amx.available() or not Target.parse(args.target).has("amx")
    if no_amx and (args.quick or args.target != "cpu"):
        print("no AMX (on this CPU or in --target): part 1 (the AMX GEMMs) skipped", file=sys.stderr)
    else:
        amx.enable()
        gemms = gemm_rows(args.size, budget=args.budget)
        print(f"\n{args.size}^3 GEMM, 1 thread (ratio = peer time / Tilecraft time; >= 0.5 is the target)")
        print(f"{'case':<32}{'peer':<18}{'peer GOP/s':>11}{'ours GOP/s':>11}{'ratio':>7}  {'schedule':<20}{'error':>9}")
        for r in gemms:
            print(
                f"{r['case']:<32}{r['peer']:<18}{r['peer_gops']:>11.0f}{r['tilecraft_gops']:>11.0f}"
                f"{r['ratio']:>7.2f}  {r['schedule']:<20}{r['error']:>9.1e}"
            )
    names = [m for m in args.models.split(",") if m]
    models = [
        r
        for t in _thread_counts(p, args.threads)
        for r in model_rows(names, budget=args.budget, target=args.target, threads=t)
    ]
    print("\nzoo: Tilecraft f32 vs --precision auto at each thread count (default budget; errors vs eager f32)")
    print(
        f"{'model':<14}{'threads':>8}{'eager ms':>9}{'f32 ms':>9}{'auto ms':>9}{'auto/f32':>9}{'auto/eager':>11}"
        f"{'error':>10}{'budget':>8}  layers"
    )
    for r in models:
        layers = ", ".join(f"{n} {p}" for p, n in r["layers"].items() if n)
        print(
            f"{r['model']:<14}{r['threads']:>8}{r['eager_ms']:>9.2f}{r['f32_ms']:>9.2f}{r['auto_ms']:>9.2f}"
            f"{r['speedup_over_f32']:>8.2f}x{r['speedup_over_eager']:>10.2f}x{r['auto_error']:>10.2e}"
            f"{r['budget']:>8g}  {layers}"
        )
    if args.json:
        driver.atomic_write(args.json, json.dumps({"gemm": gemms, "models": models}, indent=1).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
