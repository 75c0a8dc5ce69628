"""Fusion benchmark: on small graphs, is the partition the cost model picks the fastest?

For each case (a PyTorch snippet of ≤ 12 structured ops: a linear layer and its epilogue,
conv + batch-norm + activation, softmax, layer norm, attention scores, …) every legal
partition into fusion groups is compiled and timed (1 thread, median), each output
checked against eager. The partitions within 15% of the fastest, and the one the
compiler picks with no measurement (`costmodel/fusion_plan.partition`, shipped LightGBM model),
are then timed again in interleaved rounds (median over rounds), and the pick is compared
with the best of them; a pick over 5% slower than the best is timed again against it
alone, in twice the rounds, and that head-to-head decides. Prints a table and the share of cases within 5% of the best;
saves JSON.

    python bench/fusion.py [--cases linear_relu,softmax] [--json bench/results/fusion.json]

`--calibrate` instead fits the fused-kernel calibration the partitioner uses
(`costmodel/data/fusion-calibration.json`): candidate groups of the zoo models, each
compiled and timed fused and unfused; per group class (matmul, conv, reduction, light) the median of
(measured fused / measured unfused) / (composed prediction / predicted unfused).

    python bench/fusion.py --calibrate [--models mlp,resnet18,...] [--per-class 6]

`--quick` (CI) times one small case's partitions briefly, or with `--calibrate` one group
per class of mlp; either writes under bench/results/quick/, never the shipped calibration.

    python bench/fusion.py --quick [--calibrate]
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
from torch import nn
from torch.nn import functional as F

from tilecraft import driver, frontend
from tilecraft.backends.cpu.target import Target
from tilecraft.costmodel import fusion_plan
from tilecraft.passes import fusion

MAX_PARTITIONS = 64
CLOSE = 1.15  # partitions within 15% of the best on the first pass are timed again, interleaved
ROUNDS = 5
MISS = 1.05  # the pick counts as a miss when it is over 5% slower than the best partition
CONFIRM_ROUNDS = 2 * ROUNDS
MIN_CALIBRATION_S = 50e-6  # groups predicted faster than this (unfused) are not calibrated on


class Linear(nn.Module):
    def __init__(self, k, n, act):
        super().__init__()
        self.fc, self.act = nn.Linear(k, n), act

    def forward(self, x):
        return self.act(self.fc(x))


class ConvBN(nn.Module):
    def __init__(self, cin, cout, k, groups=1, act=F.relu):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False)
        self.bn, self.act = nn.BatchNorm2d(cout), act

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class BNResidual(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x, y):
        return F.relu(self.bn(x) + y)


class Softmax(nn.Module):
    def forward(self, x):
        return torch.softmax(x, dim=-1)


class LayerNorm(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.ln = nn.LayerNorm(d)

    def forward(self, x):
        return self.ln(x)


class SiLUMul(nn.Module):
    def forward(self, x, y):
        return F.silu(x) * y + x


class Scores(nn.Module):
    def forward(self, q, k):
        return torch.softmax(q @ k.transpose(-1, -2) * 0.125, dim=-1)


class MLP2(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.a, self.b = nn.Linear(d, h), nn.Linear(h, d)

    def forward(self, x):
        return self.b(F.relu(self.a(x)))


def _bn_init(m: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 1.5)
    return m.eval()


def cases() -> dict[str, tuple[nn.Module, tuple[torch.Tensor, ...]]]:
    torch.manual_seed(0)
    r = torch.randn
    relu6 = F.relu6
    return {
        "linear_relu_64x256x512": (Linear(256, 512, F.relu), (r(64, 256),)),
        "linear_gelu_128x256x256": (Linear(256, 256, F.gelu), (r(128, 256),)),
        "linear_relu_32x512x512": (Linear(512, 512, F.relu), (r(32, 512),)),
        "mlp2_64x256x512": (MLP2(256, 512), (r(64, 256),)),
        "conv3x3_bn_relu_32x56": (_bn_init(ConvBN(32, 32, 3)), (r(1, 32, 56, 56),)),
        "conv1x1_bn_relu6_64x28": (_bn_init(ConvBN(32, 64, 1, act=relu6)), (r(1, 32, 28, 28),)),
        "dwconv_bn_relu6_96x56": (_bn_init(ConvBN(96, 96, 3, groups=96, act=relu6)), (r(1, 96, 56, 56),)),
        "bn_residual_relu_64x56": (_bn_init(BNResidual(64)), (r(1, 64, 56, 56), r(1, 64, 56, 56))),
        "softmax_256x512": (Softmax(), (r(256, 512),)),
        "softmax_4x128x128": (Softmax(), (r(4, 128, 128),)),
        "layernorm_128x256": (LayerNorm(256), (r(128, 256),)),
        "layernorm_512x128": (LayerNorm(128), (r(512, 128),)),
        "silu_mul_256x1024": (SiLUMul(), (r(256, 1024), r(256, 1024))),
        "scores_4x128x64": (Scores(), (r(4, 128, 64), r(4, 128, 64))),
    }


def partitions(ops: list[int], groups: list[fusion.FusionDecision], limit: int) -> list[list[fusion.FusionDecision]]:
    """Every exact cover of `ops` by candidate groups (the rest singletons), up to `limit`."""
    out: list[list[fusion.FusionDecision]] = []

    def rec(i: int, covered: frozenset[int], chosen: list[fusion.FusionDecision]) -> None:
        if len(out) >= limit:
            return
        while i < len(ops) and ops[i] in covered:
            i += 1
        if i == len(ops):
            out.append(list(chosen))
            return
        op = ops[i]
        rec(i + 1, covered | {op}, chosen)  # op on its own
        for g in groups:
            if op in g.ops and not (set(g.ops) & covered):
                rec(i + 1, covered | set(g.ops), [*chosen, g])

    rec(0, frozenset(), [])
    return out


def compile_checked(model, inputs, groups):
    """The model compiled with `groups` pinned, and whether it matches eager."""
    imported = frontend.import_module(model, inputs)
    compiled = driver.compile_model(imported, fusion=groups)
    with torch.no_grad():
        ok = driver.compare(compiled.fn(*inputs), model(*inputs)).ok
    return compiled, ok


def measure(model, inputs, groups, budget: float) -> tuple[float, bool]:
    compiled, ok = compile_checked(model, inputs, groups)
    return driver.median_seconds(lambda: compiled.fn(*inputs), budget=budget, max_runs=2000) * 1e3, ok


def retime(model, inputs, contenders: list[dict], budget: float, rounds: int = ROUNDS) -> None:
    """Time the close contenders again, interleaved (round-robin, `rounds` times), and
    replace each one's milliseconds by the median over the rounds: drift on a shared
    machine then hits every contender alike instead of whichever ran during it."""
    fns = []
    for r in contenders:
        compiled, _ = compile_checked(model, inputs, [fusion.FusionDecision.from_json(g) for g in r["groups"]])
        fns.append(compiled.fn)
    samples: list[list[float]] = [[] for _ in contenders]
    for k in range(rounds):
        order = list(zip(fns, samples))
        for fn, out in order if k % 2 == 0 else order[::-1]:  # alternate the order: no contender always first
            out.append(driver.median_seconds(lambda fn=fn: fn(*inputs), budget=budget / rounds, max_runs=2000) * 1e3)
    for r, out in zip(contenders, samples):
        r.setdefault("first_ms", r["ms"])  # the first pass's time, kept
        r["ms"] = statistics.median(out)


def bench_case(name, model, inputs, target, model_cm, budget: float) -> dict:
    imported = frontend.import_module(model, inputs, spec=name)
    with imported.module.context:
        chosen, report = fusion_plan.partition(imported.module, model_cm, target)
        nodes = fusion.analyze(imported.module)
    ops = sorted(nodes)
    cands = [g for g, _ in report["candidates"]]
    parts = partitions(ops, cands, MAX_PARTITIONS)
    key = lambda gs: frozenset((g.sink, g.members) for g in gs)  # noqa: E731
    rows = []
    for gs in parts:
        ms, ok = measure(model, inputs, gs, budget)
        rows.append({"groups": [json.loads(g.to_json()) for g in gs], "ms": ms, "ok": ok, "key": key(gs)})
    mine = next((r for r in rows if r["key"] == key(chosen)), None)
    if mine is None:  # not among the enumerated (the limit): measure it on its own
        ms, ok = measure(model, inputs, chosen, budget)
        mine = {"groups": [json.loads(g.to_json()) for g in chosen], "ms": ms, "ok": ok, "key": key(chosen)}
    good = [r for r in rows if r["ok"]]
    first_best = min(r["ms"] for r in good)
    # every partition within CLOSE of the first pass's best, and the chosen one, timed again
    contenders = [r for r in good if r["ms"] <= CLOSE * first_best]
    contenders += [mine] if mine["ok"] and all(r is not mine for r in contenders) else []
    retime(model, inputs, contenders, budget * ROUNDS / 2)
    best = min([*good, *([mine] if mine["ok"] else [])], key=lambda r: r["ms"])
    if mine["ok"] and best is not mine and mine["ms"] > MISS * best["ms"]:
        # an apparent miss is confirmed head to head, in twice the rounds: the pick and the
        # best alone, interleaved, so that a burst of drift cannot make or unmake a miss
        for r in (mine, best):
            r["rounds_ms"] = r["ms"]  # the contenders' rounds, kept; "ms" becomes the head-to-head's
        retime(model, inputs, [mine, best], budget * CONFIRM_ROUNDS, rounds=CONFIRM_ROUNDS)
        best = best if best["ms"] < mine["ms"] else mine
    unfused = next(r for r in rows if not r["key"])
    for r in rows:
        r.pop("key", None)
    mine.pop("key", None)
    return {
        "case": name,
        "ops": len(ops),
        "partitions": len(parts),
        "all_ok": all(r["ok"] for r in rows) and mine["ok"],
        "chosen_ms": mine["ms"],
        "chosen_groups": mine["groups"],
        "best_ms": best["ms"],
        "best_groups": best["groups"],
        "unfused_ms": unfused["ms"],
        "predicted_fused_ms": report["fused_s"] * 1e3,
        "predicted_unfused_ms": report["unfused_s"] * 1e3,
        "measured": rows,
    }


def calibrate(models: list[str], per_class: int, out: str) -> int:
    import random
    import statistics

    from torch_mlir import ir

    from tilecraft import explain
    from tilecraft.costmodel import model as cm
    from tilecraft.driver import atomic_write

    torch.set_num_threads(1)
    target = Target.parse("cpu")
    model_cm = cm.create("lightgbm", target)
    raw = {"matmul": 1.0, "conv": 1.0, "reduction": 1.0, "light": 1.0}
    samples: dict[str, list[dict]] = {k: [] for k in raw}
    for name in models:
        imported = frontend.import_spec(name)
        with imported.module.context:
            _, report = fusion_plan.partition(imported.module, model_cm, target, calibration=raw)
            nodes = fusion.analyze(imported.module)
            state = ir.AsmState(imported.module.operation)
            by_class: dict[str, list] = {k: [] for k in raw}
            seen = set()
            for g, cost in report["candidates"]:
                text = fusion.outline_group(nodes, g.ops, state)
                if text in seen:
                    continue
                seen.add(text)
                unfused = sum(report["singles"].get(o, 0.0) for o in g.ops)
                if unfused < MIN_CALIBRATION_S:
                    continue  # timed through Python, a tiny group is all call overhead
                by_class[fusion_plan.group_class(nodes[o].info.kind for o in g.ops)].append((g, cost, unfused, text))
        rng = random.Random(0)
        for cls, items in by_class.items():
            for g, cost, unfused, text in rng.sample(items, min(per_class, len(items))):
                m_fused = explain.measure_group(text, g, target, fused=True)
                m_unfused = explain.measure_group(text, g, target, fused=False)
                if not m_fused or not m_unfused or cost <= 0 or unfused <= 0:
                    continue
                k = (m_fused / m_unfused) / (cost / unfused)
                samples[cls].append(
                    {
                        "model": name,
                        "ops": len(g.ops),
                        "measured_fused_ms": m_fused,
                        "measured_unfused_ms": m_unfused,
                        "predicted_fused_ms": cost * 1e3,
                        "predicted_unfused_ms": unfused * 1e3,
                        "factor": k,
                    }
                )
                print(
                    f"{name:<18}{cls:<8}{len(g.ops):>3} ops  measured fused/unfused {m_fused / m_unfused:.2f}"
                    f"  predicted {cost / unfused:.2f}  factor {k:.2f}",
                    file=sys.stderr,
                )
    factors = {cls: statistics.median(s["factor"] for s in rows) for cls, rows in samples.items() if rows}
    doc = {
        "factors": factors,
        "groups": {cls: len(rows) for cls, rows in samples.items()},
        "command": f"python bench/fusion.py --calibrate --models {','.join(models)} --per-class {per_class}",
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "samples": samples,
    }
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    atomic_write(out, json.dumps(doc, indent=1).encode())
    print(f"factors {factors}; wrote {out}")
    return 0


QUICK = {  # --quick's defaults: results beside, not over, the full run's and the shipped ones
    "cases": "softmax_4x128x128",
    "budget": 0.02,
    "json": "bench/results/quick/fusion.json",
    "models": "mlp",
    "per_class": 1,
    "calibration_json": "bench/results/quick/fusion-calibration.json",
}


def main(argv=None) -> int:
    warnings.filterwarnings("ignore")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default="")
    p.add_argument("--budget", type=float, default=0.3, help="seconds of timing per partition")
    p.add_argument("--json", default="bench/results/fusion.json")
    p.add_argument("--calibrate", action="store_true", help="fit costmodel/data/fusion-calibration.json instead")
    p.add_argument("--models", default="mlp,resnet18,mobilenet_v2,bert_mini,gpt2_block,conv_autoencoder")
    p.add_argument("--per-class", type=int, default=6)
    p.add_argument("--calibration-json", help="where --calibrate writes (default: the shipped calibration)")
    p.add_argument("--quick", action="store_true", help=f"CI: {QUICK['cases']} (or mlp) only, briefly")
    args = p.parse_args(argv)
    if args.quick:  # the quick defaults; options given still win
        p.set_defaults(**QUICK)
        args = p.parse_args(argv)
    if args.calibrate:
        from tilecraft.costmodel.model import SHIPPED_DIR

        out = args.calibration_json or os.path.join(SHIPPED_DIR, "fusion-calibration.json")
        return calibrate(args.models.split(","), args.per_class, out)
    from tilecraft.costmodel import model as cm

    torch.set_num_threads(1)
    target = Target.parse("cpu")
    model_cm = cm.create("lightgbm", target)
    all_cases = cases()
    names = args.cases.split(",") if args.cases else list(all_cases)
    rows = []
    for name in names:
        model, inputs = all_cases[name]
        rows.append(bench_case(name, model, inputs, target, model_cm, args.budget))
        print(f"... {name} done", file=sys.stderr)
    print(
        f"{'case':<26}{'ops':>4}{'parts':>6}{'unfused ms':>11}{'chosen ms':>10}{'best ms':>9}"
        f"{'chosen/best':>12}{'fused speedup':>14}  ok"
    )
    within = 0
    for r in rows:
        ratio = r["chosen_ms"] / r["best_ms"]
        within += ratio <= MISS
        print(
            f"{r['case']:<26}{r['ops']:>4}{r['partitions']:>6}{r['unfused_ms']:>11.4f}{r['chosen_ms']:>10.4f}"
            f"{r['best_ms']:>9.4f}{ratio:>12.3f}{r['unfused_ms'] / r['chosen_ms']:>14.2f}"
            f"  {'yes' if r['all_ok'] else 'NO'}"
        )
    print(f"chosen partition within 5% of the best measured: {within}/{len(rows)} ({within / len(rows):.0%})")
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    meta = {"torch": torch.__version__, "machine": platform.machine(), "when": time.strftime("%Y-%m-%d %H:%M")}
    driver.atomic_write(args.json, json.dumps({"meta": meta, "rows": rows}, indent=1).encode())
    return 0 if all(r["all_ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
