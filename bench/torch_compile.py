"""`torch.compile` backends side by side on the zoo: eager, `torch.compile` default
(Inductor) and `torch.compile(backend="tilecraft")`, 1 thread.

For each model: the first call's latency of each compiled form (the compile; Tilecraft's
with its on-disk cache empty — a fresh cache folder per run), every output checked against
eager (rtol 1e-4, atol 1e-5), then the steady state timed in interleaved rounds (medians
of their medians) and the ratios against eager and against Inductor.

    python bench/torch_compile.py [--models mlp,resnet18] [--json bench/results/torch_compile.json]
    python bench/torch_compile.py --quick        # mlp alone, fewer rounds
"""

from __future__ import annotations

import os

# Cold first calls for both compilers: Inductor's on-disk caches off (a previous run's
# warm cache made its first call 0.2 s against a cold Tilecraft), Tilecraft's in a fresh
# folder (below).
os.environ.setdefault("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import torch  # noqa: E402
from e2e import median_ms  # bench/ is on sys.path when run as a script

from tilecraft.corpus import zoo  # noqa: E402

MODELS = ("mlp", "resnet18", "mobilenet_v2", "bert_mini", "gpt2_block", "conv_autoencoder")
QUICK = ("mlp",)
RTOL, ATOL = 1e-4, 1e-5


def _first_call(fn, inputs) -> tuple[object, float]:
    t0 = time.perf_counter()
    with torch.no_grad():
        out = fn(*inputs)
    return out, time.perf_counter() - t0


def bench_one(name: str, *, rounds: int, runs: int) -> dict:
    torch._dynamo.reset()
    model, inputs = zoo.get(name)
    row: dict = {"model": name}
    with torch.no_grad():
        ref = model(*inputs)
    forms = {
        "inductor": torch.compile(model),
        "tilecraft": torch.compile(model, backend="tilecraft"),
    }
    for form, fn in forms.items():
        try:
            out, row[f"{form}_first_s"] = _first_call(fn, inputs)
            row[f"{form}_correct"] = bool(torch.allclose(out, ref, rtol=RTOL, atol=ATOL))
        except Exception as exc:  # the bench reports every model and form
            row[f"{form}_error"] = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
    timed = {"eager": model, **{f: fn for f, fn in forms.items() if row.get(f"{f}_correct")}}
    samples: dict[str, list[float]] = {f: [] for f in timed}
    with torch.no_grad():
        for _ in range(rounds):  # interleaved: drift hits every form alike
            for form, fn in timed.items():
                samples[form].append(median_ms(lambda fn=fn: fn(*inputs), runs))
    for form, s in samples.items():
        row[f"{form}_ms"] = statistics.median(s)
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--json")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    names = list(QUICK) if args.quick else [m for m in args.models.split(",") if m]
    unknown = [m for m in names if m not in MODELS]
    if unknown:
        print(f"error: unknown model {unknown[0]!r} (known: {', '.join(MODELS)})", file=sys.stderr)
        return 2
    rounds, runs = (2, 5) if args.quick else (5, 15)
    os.environ["TILECRAFT_CACHE_DIR"] = tempfile.mkdtemp(prefix="tilecraft-bench-cache-")  # first calls compile
    rows = []
    print(
        f"{'model':<18}{'inductor 1st s':>15}{'tilecraft 1st s':>16}{'eager ms':>10}{'inductor ms':>12}"
        f"{'tilecraft ms':>13}{'vs eager':>9}{'vs inductor':>12}"
    )
    for name in names:
        r = bench_one(name, rounds=rounds, runs=runs)
        rows.append(r)
        errors = [f"{k[:-6]}: {v}" for k, v in r.items() if k.endswith("_error")]
        wrong = [f for f in ("inductor", "tilecraft") if r.get(f"{f}_correct") is False]
        if errors or wrong:
            print(f"{name:<18}  " + "; ".join(errors + [f"{f}: WRONG OUTPUT" for f in wrong]))
        if "tilecraft_ms" not in r:
            continue
        ind = r.get("inductor_ms")
        r["vs_eager"] = r["eager_ms"] / r["tilecraft_ms"]
        r["vs_inductor"] = ind / r["tilecraft_ms"] if ind else None
        print(
            f"{name:<18}{r.get('inductor_first_s', float('nan')):>15.1f}{r['tilecraft_first_s']:>16.1f}"
            f"{r['eager_ms']:>10.3f}{ind or float('nan'):>12.3f}{r['tilecraft_ms']:>13.3f}"
            f"{r['vs_eager']:>9.2f}{r['vs_inductor'] or float('nan'):>12.2f}"
        )
    ok = [r for r in rows if r.get("vs_inductor")]
    if ok:
        geo = math.exp(statistics.mean(math.log(r["vs_inductor"]) for r in ok))
        geo_e = math.exp(statistics.mean(math.log(r["vs_eager"]) for r in ok))
        print(f"geomean: tilecraft vs eager {geo_e:.2f}, vs inductor {geo:.2f}")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json + ".tmp", "w") as f:
            json.dump(rows, f, indent=1)
        os.replace(args.json + ".tmp", args.json)
    return 0 if len(ok) == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
