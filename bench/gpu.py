"""The zoo on a GPU: Tilecraft against eager CUDA and Inductor, a large f16 matmul against
cuBLAS, GPU corpus rows, and the GPU cost model trained on them — one script, for the few
minutes a GPU is lent (`device` tool: `python bench/gpu.py --out $OUT`).

With a CUDA GPU, per zoo model: compile for the GPU's arch, check the output against eager
CUDA (f32: rtol 1e-4), then time eager CUDA, `torch.compile` (Inductor) and Tilecraft
(CUDA events, medians of interleaved rounds); then Tilecraft's 4096³ f16 matmul against
`torch.matmul` (cuBLAS); then corpus rows: each model recompiled with random legal
schedules (`--variants`) and every launch timed alone (`GpuFunction.time_launches`), each
row the cost model's features (with ptxas's resources) and the measured seconds,
written to OUT/gpu-corpus.jsonl.gz; then the learned model trained on them
(OUT/gpu-model.json.gz) with its held-out-by-model pairwise ranking against the
analytical model's.

Without a GPU (CI, most sessions) it compiles the models to PTX and cubin and prints the
compile-only table: launches, compile seconds, the largest register count, spills and the
predicted time — so the script never rots.

    python bench/gpu.py [--models mlp,resnet18] [--variants 6] [--out DIR]
    python bench/gpu.py --quick          # mlp and conv_autoencoder, 2 variants
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = ("mlp", "conv_autoencoder", "gpt2_block", "bert_mini", "resnet18", "mobilenet_v2")


def matmul_f16():
    """The 4096³ f16 matmul (as a model file factory: `bench/gpu.py:matmul_f16`)."""
    import torch

    class MatMul(torch.nn.Module):
        def forward(self, a, b):
            return a @ b

    g = torch.Generator().manual_seed(0)
    a = torch.randn(4096, 4096, generator=g).half()
    b = torch.randn(4096, 4096, generator=g).half()
    return MatMul(), (a, b)


def compile_only(models, archs=("sm_80", "sm_90")) -> list[dict]:
    """`models`: zoo names or (label, spec) pairs."""
    from tilecraft import gpu_driver

    rows = []
    for entry in models:
        name, spec = entry if isinstance(entry, tuple) else (entry, entry)
        for arch in archs:
            t0 = time.perf_counter()
            c = gpu_driver.compile_gpu(spec, target=f"gpu{{arch={arch}}}", emit="ptx")
            rows.append(
                {
                    "model": name,
                    "arch": arch,
                    "compile_s": time.perf_counter() - t0,
                    "launches": len(c.launches),
                    "tensor_core_launches": sum("mma" in r.schedule for r in c.launches),
                    "max_regs": max(r.resources.registers for r in c.launches),
                    "spill_bytes": sum(r.resources.spill_stores + r.resources.spill_loads for r in c.launches),
                    "predicted_us": c.predicted_us,
                }
            )
            r = rows[-1]
            print(
                f"{name:<18}{arch:<7}{r['compile_s']:>9.2f}{r['launches']:>10}{r['tensor_core_launches']:>6}"
                f"{r['max_regs']:>10}{r['spill_bytes']:>10}{r['predicted_us']:>14.1f}",
                flush=True,
            )
    return rows


def interleaved(fns: dict, rounds: int) -> dict:
    from tilecraft.gpu_driver import cuda_ms

    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            times[k].append(cuda_ms(fn, rounds=10))
    return {k: statistics.median(v) for k, v in times.items()}


def on_gpu_zoo(models, rounds: int) -> list[dict]:
    import copy

    import torch

    from tilecraft import gpu_driver
    from tilecraft.driver import compare, flatten

    rows = []
    for name in models:
        t = gpu_driver.device_target("gpu")
        c = gpu_driver.compile_gpu(name, target=t, emit="ptx")
        fn = gpu_driver.load(c)
        imp = c.imported
        xs = [x.cuda() for x in imp.inputs]
        model = copy.deepcopy(imp.model).cuda().eval()
        with gpu_driver.no_tf32(), torch.no_grad():  # eager in true f32
            ref = model(*xs)
            out = fn(*xs)
            cmp = compare([o.cpu() for o in flatten(out)], [r.cpu() for r in flatten(ref)])
            try:
                inductor = torch.compile(copy.deepcopy(model))
                inductor(*xs)
            except Exception as exc:  # a peer that cannot compile is reported, not fatal
                print(f"  ({name}: torch.compile failed: {type(exc).__name__})", file=sys.stderr)
                inductor = None
            fns = {"eager": lambda: model(*xs), "tilecraft": lambda: fn(*xs)}
            if inductor is not None:
                fns["inductor"] = lambda: inductor(*xs)
            ms = interleaved(fns, rounds)
        r = {
            "model": name,
            "device": torch.cuda.get_device_name(),
            "arch": t.arch,
            "correct": cmp.ok,
            "max_rel": cmp.max_rel,
            "launches": len(c.launches),
            "compile_s": c.compile_seconds,
            "eager_ms": ms["eager"],
            "inductor_ms": ms.get("inductor"),
            "tilecraft_ms": ms["tilecraft"],
            "predicted_ms": c.predicted_us / 1e3,
        }
        rows.append(r)
        ind = f"{r['inductor_ms']:>12.3f}" if r["inductor_ms"] else f"{'-':>12}"
        print(
            f"{name:<18}{'yes' if r['correct'] else 'NO':>8}{r['eager_ms']:>10.3f}{ind}{r['tilecraft_ms']:>12.3f}"
            f"{r['eager_ms'] / r['tilecraft_ms']:>10.2f}{r['predicted_ms']:>12.3f}",
            flush=True,
        )
    return rows


def on_gpu_matmul(rounds: int) -> dict:

    from tilecraft import gpu_driver

    spec = f"{os.path.abspath(__file__)}:matmul_f16"
    c = gpu_driver.compile_gpu(spec, target=gpu_driver.device_target("gpu"), emit="ptx")
    fn = gpu_driver.load(c)
    a, b = (x.cuda() for x in c.imported.inputs)
    ref = a.float() @ b.float()
    out = fn(a, b).float()
    rel_l2 = float((out - ref).norm() / ref.norm())
    ms = interleaved({"cublas": lambda: a @ b, "tilecraft": lambda: fn(a, b)}, rounds)
    flops = 2 * 4096**3
    r = {
        "rel_l2": rel_l2,
        "cublas_ms": ms["cublas"],
        "tilecraft_ms": ms["tilecraft"],
        "cublas_tflops": flops / ms["cublas"] / 1e9,
        "tilecraft_tflops": flops / ms["tilecraft"] / 1e9,
        "of_cublas": ms["cublas"] / ms["tilecraft"],
    }
    print(
        f"matmul 4096^3 f16: rel L2 {rel_l2:.2e}  cuBLAS {r['cublas_ms']:.3f} ms ({r['cublas_tflops']:.1f} TFLOP/s)  "
        f"Tilecraft {r['tilecraft_ms']:.3f} ms ({r['tilecraft_tflops']:.1f} TFLOP/s): {r['of_cublas']:.1%} of cuBLAS"
    )
    return r


def pairwise(rows, key: str) -> float:
    """Fraction of same-kernel pairs with different measured times that `key` orders right."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["model"], r["key"]), []).append(r)
    right = total = 0
    for g in groups.values():
        for i in range(len(g)):
            for j in range(i + 1, len(g)):
                a, b = g[i], g[j]
                if abs(a["seconds"] - b["seconds"]) < 0.02 * min(a["seconds"], b["seconds"]):
                    continue
                total += 1
                right += (a[key] < b[key]) == (a["seconds"] < b["seconds"])
    return right / total if total else float("nan")


def train_and_evaluate(rows, out_dir: str) -> dict:
    """Leave one model out: the learned model's and the analytical model's pairwise
    ranking on the held-out model's rows; then the model trained on every row."""
    import numpy as np

    from tilecraft.costmodel import gpu_model

    models = sorted({r["model"] for r in rows})
    held = []
    for m in models:
        train = [(r["features"], r["seconds"]) for r in rows if r["model"] != m]
        test = [r for r in rows if r["model"] == m]
        if len(train) < 20 or not test:
            continue
        booster = gpu_model.train(train, rounds=200)
        pred = booster.predict(np.asarray([r["features"] for r in test]))
        for r, p in zip(test, pred):
            r["learned"] = float(np.exp(p)) * r["analytical"]
        held += test
    result = {
        "rows": len(rows),
        "pairwise_analytical": pairwise(held or rows, "analytical"),
        "pairwise_learned": pairwise(held, "learned") if held else float("nan"),
    }
    path = os.path.join(out_dir, "gpu-model.json.gz")
    gpu_model.train([(r["features"], r["seconds"]) for r in rows], path=path)
    print(
        f"cost model, held out by model: pairwise learned {result['pairwise_learned']:.3f}, "
        f"analytical {result['pairwise_analytical']:.3f} ({len(rows)} rows); wrote {path}"
    )
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--variants", type=int, default=6, help="random schedule assignments per model for the corpus")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=os.path.join(HERE, "results", "gpu"), help="results, corpus rows and the model")
    p.add_argument("--no-matmul", action="store_true")
    p.add_argument("--quick", action="store_true", help="mlp and conv_autoencoder, 2 variants, 2 rounds")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    models = [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        print(f"error: unknown model {unknown[0]!r} (one of {', '.join(MODELS)})", file=sys.stderr)
        return 2
    if args.quick:
        models, args.variants, args.rounds = ["mlp", "conv_autoencoder"], 2, 2
        args.out = os.path.join(HERE, "results", "quick", "gpu")
    os.makedirs(args.out, exist_ok=True)
    from tilecraft import gpu_driver
    from tilecraft.backends.gpu import runtime

    why = runtime.gpu_available()
    doc: dict = {"quick": args.quick}
    if why:
        print(f"no GPU ({why}): compile-only table (PTX and cubin by ptxas for sm_80 and sm_90)")
        print(f"{'model':<18}{'arch':<7}{'compile s':>9}{'launches':>10}{'mma':>6}{'max regs':>10}{'spill B':>10}"
              f"{'predicted us':>14}")  # fmt: skip
        matmul = ("matmul_f16 4096^3", f"{os.path.abspath(__file__)}:matmul_f16")
        extra = [] if args.no_matmul or args.quick else [matmul]
        doc["compile_only"] = compile_only(models + extra)
    else:
        print(f"{'model':<18}{'correct':>8}{'eager ms':>10}{'inductor ms':>12}{'tilecraft ms':>12}{'speedup':>10}"
              f"{'pred ms':>12}")  # fmt: skip
        doc["zoo"] = on_gpu_zoo(models, args.rounds)
        if not args.no_matmul and not args.quick:
            doc["matmul_f16"] = on_gpu_matmul(args.rounds)
        rows = gpu_driver.collect_corpus(models, variants=args.variants, seed=args.seed)
        gpu_driver.write_rows(os.path.join(args.out, "gpu-corpus.jsonl.gz"), rows)
        doc["costmodel"] = train_and_evaluate(rows, args.out)
    with open(os.path.join(args.out, "gpu.json"), "w") as f:
        json.dump(doc, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
