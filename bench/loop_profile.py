"""Where a compiled model's time goes, loop nest by loop nest (Linux `perf` needed).

Compiles a zoo model to a shared library (`--emit so`: every kernel inlined into one
`forward`), checks it against eager, runs it in a timing loop under `perf record`, and
attributes the samples to the top-level loop nests of `forward` (maximal ranges of
backward branches in its machine code: one per kernel, in program order). Prints per nest
its share, its milliseconds per inference and what its code holds (instructions, FMAs,
max/min, divisions, vector moves and scatters), plus the samples outside `forward`
(malloc, memset). `tilecraft explain --measure` times kernels alone; this sees them as
they run in the model (copies and fills bufferization made included).

`--quick` (CI): mlp, 3 seconds of samples, the top 5 nests.

    python bench/loop_profile.py resnet18 [--unfused] [--seconds 15] [--top 25]
    python bench/loop_profile.py path/to/model.py:factory
    python bench/loop_profile.py --quick
"""

from __future__ import annotations

import argparse
import bisect
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings

import torch

from tilecraft import driver, frontend
from tilecraft.backends.cpu import dedup, runtime
from tilecraft.backends.cpu.backend import CpuOptions
from tilecraft.corpus import zoo
from tilecraft.costmodel.precision_plan import DEFAULT_BUDGET, relative_error

# the entry's code: `forward` is its own C interface (`lowering.inline_entries`)
ENTRY = "_mlir_ciface_forward"


def body(so: str, symbol: str = ENTRY) -> list[tuple[int, str, str]]:
    """(address, mnemonic, operands) of every instruction of `symbol`."""
    dis = subprocess.run(["objdump", "-d", "--no-show-raw-insn", so], capture_output=True, text=True, check=True)
    out, inside = [], False
    for line in dis.stdout.splitlines():
        if re.match(rf"^[0-9a-f]+ <{symbol}>:", line):
            inside = True
            continue
        if inside and re.match(r"^[0-9a-f]+ <", line):
            break
        m = re.match(r"\s+([0-9a-f]+):\s+(\S+)\s*(.*)", line)
        if inside and m:
            out.append((int(m.group(1), 16), m.group(2), m.group(3)))
    return out


def nests(insns: list[tuple[int, str, str]]) -> list[tuple[int, int]]:
    """Maximal [start, end] address ranges spanned by backward jumps: the top-level loops."""
    lo = insns[0][0]
    ranges = []
    for addr, op, args in insns:
        m = re.match(r"([0-9a-f]+) <", args)
        if op.startswith("j") and m and lo <= int(m.group(1), 16) < addr:
            ranges.append((int(m.group(1), 16), addr))
    merged: list[tuple[int, int]] = []
    for start, end in sorted(ranges, key=lambda r: (r[0], -r[1])):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def describe(insns, start: int, end: int) -> str:
    ops = collections.Counter(op for addr, op, _ in insns if start <= addr <= end)
    count = sum(ops.values())

    def n(*names):
        return sum(v for k, v in ops.items() if any(x in k for x in names))

    return (
        f"{count:5d} insns  fma {n('fmadd'):3d}  max/min {n('vmaxps', 'vminps'):3d}  div {n('vdivps'):2d}"
        f"  vmov {n('vmovups', 'vmovaps'):4d}  scatter {n('scatter'):3d}"
    )


def child(args) -> int:
    """Compile, check, then signal readiness and run the timing loop (perf attaches)."""
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    model, inputs = frontend.load_model(args.model)
    imported = frontend.import_module(model, inputs, spec=args.model)
    # whole: one `forward` holds every nest (the two-core compile moves half into another
    # symbol, and identical kernels would be one function called by each)
    dedup.ENABLED = False
    compiled = driver.compile_model(
        imported,
        fuse=not args.unfused,
        emit="so",
        output=args.so,
        options=CpuOptions(two_core_jit=False),
        precision=None if args.precision == "f32" else args.precision,
        threads=args.threads,
    )
    fn = runtime.from_shared_library(compiled.path, imported.func_name, imported.signature, bound=imported.params)
    with torch.no_grad():
        out, ref = fn(*inputs), model(*inputs)
        if not (driver.compare(out, ref).ok if args.precision == "f32" else relative_error(out, ref) <= DEFAULT_BUDGET):
            print(f"{args.model}: compiled output does not match eager", file=sys.stderr)
            return 1
    run = fn.prepare(*inputs)[0]
    for _ in range(5):
        run()
    open(args.ready, "w").close()
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < args.seconds:
        run()
        n += 1
    with open(args.ready, "w") as f:
        f.write(str((time.perf_counter() - t0) / n * 1e3))
    return 0


QUICK = {"model": "mlp", "seconds": 3.0, "top": 5}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="?", help="a zoo model or file.py:factory; required unless --quick")
    p.add_argument("--unfused", action="store_true")
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--top", type=int, default=25, help="nests to print, slowest first (0: all, in order)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--so", help=argparse.SUPPRESS)
    p.add_argument("--ready", help=argparse.SUPPRESS)
    p.add_argument(
        "--precision", default="f32", choices=("f32", "bf16", "int8", "auto"), help="checked within 1%% relative L2"
    )
    p.add_argument("--threads", type=int, default=1, help="threads (above 1, OpenMP regions show as their own symbols)")
    p.add_argument("--quick", action="store_true", help="CI: mlp, 3 s of samples, the top 5 nests")
    args = p.parse_args(argv)
    if args.quick:  # the quick defaults; options given still win
        p.set_defaults(**QUICK)
        args = p.parse_args(argv)
    if args.model is None:
        p.error("the following arguments are required: model")
    if ":" not in args.model and args.model not in zoo.ZOO:
        p.error(f"unknown model {args.model!r}: a zoo model ({', '.join(zoo.ZOO)}) or path/to/file.py:factory")
    if args.child:
        return child(args)
    if not shutil.which("perf") or not shutil.which("objdump"):
        print("loop_profile needs `perf` and `objdump` on PATH", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        so, ready, data = (os.path.join(tmp, x) for x in ("model.so", "ready", "perf.data"))
        cmd = [sys.executable, __file__, args.model, "--child", "--so", so, "--ready", ready]
        cmd += ["--seconds", str(args.seconds), "--precision", args.precision, "--threads", str(args.threads)]
        cmd += ["--unfused"] if args.unfused else []
        proc = subprocess.Popen(cmd)
        while not os.path.exists(ready):
            if proc.poll() is not None:
                return proc.returncode or 1
            time.sleep(0.5)
        rec = ["perf", "record", "-q", "-F", "4000", "-o", data, "-p", str(proc.pid), "--"]
        subprocess.run(rec + ["sleep", str(max(1.0, args.seconds - 2))], check=True, capture_output=True)
        if proc.wait() != 0:
            return proc.returncode
        ms = float(open(ready).read())
        script = subprocess.run(
            ["perf", "script", "-i", data, "-F", "ip,sym,symoff"], capture_output=True, text=True, check=True
        ).stdout
        insns = body(so)
        loops = nests(insns)
        starts = [s for s, _ in loops]
        lo = insns[0][0]
        counts: collections.Counter = collections.Counter()
        total = 0
        for line in script.splitlines():
            parts = line.split()
            if not parts:
                continue
            total += 1
            m = re.match(rf"{ENTRY}\+0x([0-9a-f]+)", parts[1]) if len(parts) > 1 else None
            if not m:
                counts["outside forward: " + (parts[1].split("+")[0] if len(parts) > 1 else "?")] += 1
                continue
            addr = lo + int(m.group(1), 16)
            i = bisect.bisect_right(starts, addr) - 1
            counts[i if i >= 0 and loops[i][0] <= addr <= loops[i][1] else "forward, outside loops"] += 1
    mode = "unfused" if args.unfused else "fused"
    print(f"{args.model} ({mode}): {ms:.3f} ms per inference, {total} samples, {len(loops)} loop nests")
    rows = [(k, c) for k, c in counts.items() if isinstance(k, int)]
    rows = sorted(rows, key=lambda kc: -kc[1])[: args.top] if args.top else sorted(rows)
    for k, c in rows:
        share = c / total
        print(f"  nest {k:3d} @{loops[k][0]:#8x}  {share:6.1%}  {share * ms:7.3f} ms  {describe(insns, *loops[k])}")
    others = 5 if args.threads == 1 else max(5, args.top)
    for k, c in sorted(((k, c) for k, c in counts.items() if isinstance(k, str)), key=lambda kc: -kc[1])[:others]:
        print(f"  {k:40s} {c / total:6.1%}  {c / total * ms:7.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
