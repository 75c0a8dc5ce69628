"""A/B of one module constant: the zoo models compiled with it off and on, timed side by side.

Sets `MODULE.NAME` to each of two values, compiles every model at every thread count with
each (outputs checked against eager), then times all the compiled functions in 7
interleaved rounds (median of the rounds' medians, `e2e.median_ms`'s samples) so that the
shared machine's drift hits both sides alike. Prints per model and thread count the two
medians and their ratio (> 1: the second value faster). How this session's A/B numbers in
docs/measurements.md were taken.

    python bench/ab.py tilecraft.backends.cpu.scratch ENABLED --models bert_mini,gpt2_block
    python bench/ab.py tilecraft.costmodel.parallel_plan MIN_POINTS --values 65536,16384 --threads 2
    python bench/ab.py --quick
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys
import time
import warnings

import torch

from tilecraft import driver, frontend
from tilecraft.corpus import zoo

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e  # noqa: E402  (bench/e2e.py: median_ms)

QUICK = {
    "module": "tilecraft.backends.cpu.schedule",
    "name": "SCALAR_ONLY_STRIDED",
    "models": "mlp",
    "threads": "1",
    "rounds": 2,
}


def parse_value(text: str, current):
    """`text` as the constant's own type (bools: 0/1, false/true)."""
    if isinstance(current, bool):
        if text.lower() not in ("0", "1", "false", "true"):
            raise ValueError(f"{text!r} is not a boolean (0/1, false/true)")
        return text.lower() in ("1", "true")
    return type(current)(text)


def main(argv=None) -> int:
    warnings.filterwarnings("ignore")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("module", nargs="?", help="e.g. tilecraft.backends.cpu.scratch")
    p.add_argument("name", nargs="?", help="the module constant, e.g. ENABLED")
    p.add_argument("--values", default=None, help="OFF,ON (default for a bool: false,true)")
    p.add_argument("--models", default="mobilenet_v2,resnet18")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--quick", action="store_true", help="CI: mlp, 1 thread, 2 rounds, a schedule-space flag")
    args = p.parse_args(argv)
    if args.quick:
        p.set_defaults(**QUICK)
        args = p.parse_args(argv)
    if not args.module or not args.name:
        p.error("MODULE and NAME are required unless --quick")
    try:
        module = importlib.import_module(args.module)
    except ImportError as exc:
        print(f"ab: no module {args.module!r} ({exc})", file=sys.stderr)
        return 2
    if not hasattr(module, args.name):
        print(f"ab: {args.module} has no constant {args.name!r}", file=sys.stderr)
        return 2
    current = getattr(module, args.name)
    try:
        texts = args.values.split(",") if args.values else (["false", "true"] if isinstance(current, bool) else [])
        if len(texts) != 2:
            raise ValueError("--values needs two values, OFF,ON")
        values = [parse_value(t, current) for t in texts]
        threads = [int(t) for t in args.threads.split(",")]
    except ValueError as exc:
        print(f"ab: {exc}", file=sys.stderr)
        return 2
    unknown = [m for m in args.models.split(",") if m not in zoo.ZOO]
    if unknown:
        print(f"ab: unknown model {unknown[0]!r} (one of {', '.join(zoo.ZOO)})", file=sys.stderr)
        return 2
    try:
        for name in args.models.split(","):
            model, inputs = zoo.get(name)
            with torch.no_grad():
                ref = model(*inputs)
            fns = {}
            for value in values:
                setattr(module, args.name, value)
                for t in threads:
                    compiled = driver.compile_model(frontend.import_module(model, inputs, spec=name), threads=t)
                    if not driver.compare(compiled.fn(*inputs), ref).ok:
                        print(f"ab: {name} with {args.name}={value} ({t} threads) differs from eager", file=sys.stderr)
                        return 1
                    fns[(value, t)] = (t, compiled.fn.prepare(*inputs)[0])
            samples = {k: [] for k in fns}
            for _ in range(args.rounds):
                for key, (t, run) in fns.items():
                    torch.set_num_threads(t)
                    time.sleep(e2e.SETTLE_S)
                    samples[key].append(e2e.median_ms(run, 10))
            for t in threads:
                a, b = (statistics.median(samples[(v, t)]) for v in values)
                print(
                    f"{name:<18}{t:>2}t  {args.name}={values[0]}: {a:9.3f} ms  {args.name}={values[1]}: {b:9.3f} ms"
                    f"  ratio {a / b:.3f}",
                    flush=True,
                )
    finally:
        setattr(module, args.name, current)
    return 0


if __name__ == "__main__":
    sys.exit(main())
