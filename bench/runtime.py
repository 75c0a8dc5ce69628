"""OpenMP runtimes side by side: tcomp (ours) against libiomp5, on a quiet machine and with
a busy loop on one core.

Each model is compiled for N threads (default: the cores available) in two child
processes, one per runtime (`TILECRAFT_OPENMP=tcomp` / `iomp5`: one runtime per process),
and for 1 thread in a third; each child checks its output against eager before it is
timed. The parent then times the three in interleaved rounds (each round starts one
column later; a sample is `e2e.median_ms`'s, after a pause for idle workers to settle),
first quiet, then with a busy loop (`while True: pass`) pinned to the last core the
process may use, which the parent starts before the busy rounds and stops after (the
1-thread column is not pinned either: the OS may run it beside the busy loop). Prints
per model and condition the medians of the rounds and tcomp / libiomp5 (> 1: tcomp
faster); saves JSON.

    python bench/runtime.py [--models mlp,conv_autoencoder,mobilenet_v2] [--threads 2] [--rounds 5]
    python bench/runtime.py --quick     # CI: mlp, 2 rounds of 3 samples
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

QUICK = {"models": "mlp", "rounds": 2, "samples": 3, "json": "bench/results/quick/runtime.json"}
SETTLE_S = 0.3  # between samples: idle workers of the column before stop spinning
COLUMNS = (("tcomp", "tcomp", None), ("iomp5", "iomp5", None), ("1 thread", "tcomp", 1))


def child(name: str, threads: int) -> None:
    """Compile `name`, check it against eager, then answer `time K` with a median of K samples."""
    import warnings

    warnings.filterwarnings("ignore")
    import torch
    from e2e import median_ms

    from tilecraft import driver, frontend
    from tilecraft.corpus import zoo

    torch.set_num_threads(1)
    model, inputs = zoo.get(name)
    compiled = driver.compile_model(frontend.import_module(model, inputs, spec=name), threads=threads)
    with torch.no_grad():
        ok = driver.compare(compiled.fn(*inputs), model(*inputs)).ok
    print("ready" if ok else "wrong", flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] != "time":
            break
        print(median_ms(lambda: compiled.fn(*inputs), int(cmd[1])), flush=True)


def spawn(name: str, runtime: str, threads: int):
    env = {**os.environ, "TILECRAFT_OPENMP": runtime}
    cmd = [sys.executable, os.path.abspath(__file__), "--child", name, "--threads", str(threads)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    status = proc.stdout.readline().strip()
    if status != "ready":
        proc.kill()
        raise SystemExit(f"{name} with {runtime} at {threads} threads: {status or 'no answer'}")
    return proc


def sample(proc, samples: int) -> float:
    proc.stdin.write(f"time {samples}\n")
    proc.stdin.flush()
    return float(proc.stdout.readline())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="mlp,conv_autoencoder,mobilenet_v2")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--samples", type=int, default=6)
    p.add_argument("--json", default="bench/results/runtime.json")
    p.add_argument("--quick", action="store_true", help="CI: mlp, 2 rounds of 3 samples")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args.child, args.threads)
        return 0
    if args.quick:
        p.set_defaults(**QUICK)
        args = p.parse_args(argv)
    if args.threads < 2:
        print(f"error: --threads must be at least 2 (got {args.threads})", file=sys.stderr)
        return 2
    hog_cpu = max(os.sched_getaffinity(0))
    rows = []
    print(f"{'model':<18}{'condition':<14}{'tcomp ms':>10}{'iomp5 ms':>10}{'1 thread':>10}{'tcomp/iomp5':>13}")
    for name in args.models.split(","):
        procs = {label: spawn(name, runtime, t or args.threads) for label, runtime, t in COLUMNS}
        try:
            for condition in ("quiet", f"busy cpu {hog_cpu}"):
                hog = None
                if condition != "quiet":
                    hog = subprocess.Popen(["taskset", "-c", str(hog_cpu), sys.executable, "-c", "while True: pass"])
                    time.sleep(SETTLE_S)
                try:
                    times = {label: [] for label in procs}
                    labels = list(procs)
                    for r in range(args.rounds):
                        for label in labels[r % len(labels) :] + labels[: r % len(labels)]:
                            time.sleep(SETTLE_S)
                            times[label].append(sample(procs[label], args.samples))
                finally:
                    if hog is not None:
                        hog.kill()
                        hog.wait()
                med = {label: statistics.median(v) for label, v in times.items()}
                row = {"model": name, "condition": condition, "threads": args.threads, **med}
                rows.append(row)
                ratio = med["iomp5"] / med["tcomp"]
                print(
                    f"{name:<18}{condition:<14}{med['tcomp']:>10.3f}{med['iomp5']:>10.3f}{med['1 thread']:>10.3f}"
                    f"{ratio:>13.2f}",
                    flush=True,
                )
        finally:
            for proc in procs.values():
                proc.stdin.close()
                proc.wait(timeout=60)
    if args.json:
        from tilecraft.driver import atomic_write

        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        atomic_write(args.json, json.dumps(rows, indent=1).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
