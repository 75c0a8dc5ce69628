"""The `tilecraft` and `tilecraft-opt` command lines.

The outermost face: parses arguments, calls the driver, prints reports. Every error is one
line on stderr with exit code 2; `--verbose` adds the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import traceback


def _errors():
    from tilecraft.backends.cpu.lowering import PipelineError
    from tilecraft.backends.cpu.runtime import CallError
    from tilecraft.driver import DriverError
    from tilecraft.frontend import FrontendError
    from tilecraft.pipeline import PipelineSyntaxError
    from tilecraft.target import TargetError

    return (FrontendError, PipelineError, CallError, DriverError, PipelineSyntaxError, TargetError, FileNotFoundError)


def _fail(exc: BaseException, verbose: bool) -> int:
    if verbose:
        traceback.print_exception(exc)
    msg = " ".join(str(exc).split()) or type(exc).__name__
    print(f"error: {msg}", file=sys.stderr)
    reproducer, command = getattr(exc, "reproducer", None), getattr(exc, "command", None)
    if reproducer:
        print(f"error: input IR saved to {reproducer}; reproduce with: {command}", file=sys.stderr)
    return 2


def _guarded(fn, args) -> int:
    known = _errors()
    try:
        return fn(args) or 0
    except known as exc:
        return _fail(exc, args.verbose)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # unexpected: still one line, but say it is internal
        if args.verbose:
            traceback.print_exception(exc)
        print(f"error: internal error: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}", file=sys.stderr)
        print("error: rerun with --verbose for the traceback", file=sys.stderr)
        return 2


def _quiet_warnings() -> None:
    import warnings

    warnings.filterwarnings("ignore")


# --------------------------------------------------------------------------- commands
def cmd_compile(args) -> int:
    from tilecraft import driver

    compiled = driver.compile_model(
        args.model, target=args.target, emit=args.emit, output=args.output, dump_ir_dir=args.dump_ir_dir
    )
    if compiled.text is not None and not args.output:
        sys.stdout.write(compiled.text)
    elif args.emit == "jit":
        print(f"compiled {args.model} in {compiled.compile_seconds:.2f} s (JIT; use --emit to write an artifact)")
    else:
        print(f"wrote {compiled.path} ({compiled.compile_seconds:.2f} s)", file=sys.stderr)
    return 0


def _load_inputs(path: str):
    import numpy as np
    import torch

    if not os.path.exists(path):
        raise FileNotFoundError(f"inputs file not found: {path}")
    with np.load(path) as data:
        keys = sorted(data.files, key=lambda k: int(k.split("_")[-1]) if k.split("_")[-1].isdigit() else k)
        return [torch.from_numpy(data[k]) for k in keys]


def cmd_run(args) -> int:
    from tilecraft import driver

    inputs = _load_inputs(args.inputs) if args.inputs else None
    report = driver.run_and_check(
        args.model, target=args.target, threads=args.threads, inputs=inputs, dump_ir_dir=args.dump_ir_dir
    )
    print(report.table())
    if not report.comparison.ok:
        print(f"error: compiled output does not match {report.reference}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tilecraft", description="Compile PyTorch models to native code through MLIR.")
    p.add_argument("--verbose", action="store_true", help="print tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp):
        sp.add_argument("model", help="zoo name, path/to/file.py:factory, or a linalg-on-tensors .mlir file")
        sp.add_argument("--target", default="cpu", help="cpu, cpu{avx512=false ...} or a target JSON file")
        sp.add_argument("--dump-ir-dir", metavar="DIR", help="write the IR after every stage into DIR")
        sp.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help="print tracebacks on errors")

    c = sub.add_parser("compile", help="compile a model and emit IR or an artifact")
    common(c)
    c.add_argument("--emit", default="llvm", choices=["linalg", "tiled", "vector", "llvm", "asm", "obj", "so", "jit"])
    c.add_argument("-o", "--output", help="output file (default: stdout for text)")
    c.set_defaults(fn=cmd_compile)

    r = sub.add_parser("run", help="compile, run, compare with PyTorch eager, and time both")
    common(r)
    r.add_argument("--threads", type=int, default=1, help="torch threads for eager (Tilecraft code is single-threaded)")
    r.add_argument(
        "--inputs", metavar="NPZ", help="inputs as an .npz of arrays in argument order (default: the model's examples)"
    )
    r.set_defaults(fn=cmd_run)
    return p


def main(argv: list[str] | None = None) -> int:
    _quiet_warnings()
    args = build_parser().parse_args(argv)
    return _guarded(args.fn, args)


# -------------------------------------------------------------------------- tilecraft-opt
def opt_main(argv: list[str] | None = None) -> int:
    _quiet_warnings()
    p = argparse.ArgumentParser(
        prog="tilecraft-opt", description="Run Tilecraft passes and MLIR pipelines on a .mlir file."
    )
    p.add_argument("file", help="input .mlir file, or - for stdin")
    p.add_argument("-p", "--pipeline", default="", help="comma-separated passes, e.g. 'cpu-tiled{vectorize=false},cse'")
    p.add_argument("-o", "--output", help="output file (default: stdout)")
    p.add_argument("--dump-ir-dir", metavar="DIR", help="write the IR after every pipeline element into DIR")
    p.add_argument("--list-passes", action="store_true", help="list Tilecraft passes and named pipelines")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    return _guarded(_opt, args)


def _opt(args) -> int:
    from tilecraft import driver, frontend, pipeline

    if args.list_passes:
        for spec in pipeline.REGISTRY.values():
            opts = "".join(f"{{{k}=…}}" for k in spec.options)
            print(f"{spec.name}{opts:<20}  {spec.help}")
        for name, value in pipeline.NAMED.items():
            print(f"pipeline {name} = {value}")
        return 0
    text = sys.stdin.read() if args.file == "-" else _read(args.file)
    module = frontend.parse_mlir(text, context=frontend.new_context(), source=args.file)
    step = [0]

    def dump(name, mod):
        if args.dump_ir_dir:
            os.makedirs(args.dump_ir_dir, exist_ok=True)
            step[0] += 1
            driver._atomic_write(os.path.join(args.dump_ir_dir, f"{step[0]:02d}-{name}.mlir"), str(mod).encode())

    if args.pipeline:
        pipeline.run(module, args.pipeline, on_stage=dump)
    out = str(module)
    if args.output:
        driver._atomic_write(args.output, out.encode())
    else:
        with contextlib.suppress(BrokenPipeError):
            sys.stdout.write(out)
    return 0


def _read(path: str) -> str:
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path}")
    with open(path) as f:
        return f.read()


if __name__ == "__main__":
    sys.exit(main())
