"""Measurement harness: compile and time one kernel under one tile decision, honestly.

On the corpus floor; called by collection and by `tilecraft tune`. Reads a `Kernel`
(corpus/kernels.py) and a `TileDecision` (backends/cpu/schedule.py), compiles it with the CPU
backend's stages; returns a `Measurement` record. The work happens in an isolated worker
process (`MeasureWorker`) with a timeout: a candidate that crashes the compiler or the
kernel, hangs, or computes wrong values is recorded as failed, the worker is restarted,
and collection goes on.

In the worker: fixed-seed random inputs; the reference output is the same kernel lowered
naively to scalar loops (cached per kernel); warm-up, then timing batches until the
spread is tight (IQR ≤ 5% of the median over ≥ 10 runs) or a cap on runs or time is hit.
Recorded: median, min, IQR, runs, achieved GFLOP/s, and utilization — achieved over the
roofline bound (peak FLOP/s, or intensity × bandwidth of the level the data fits in).
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import os
import statistics
import time
import traceback

from tilecraft.backends.cpu.schedule import TileDecision
from tilecraft.corpus.kernels import KERNEL_FUNC, Kernel

STATUSES = ("ok", "wrong", "compile_error", "crash", "timeout")


@dataclasses.dataclass(frozen=True)
class Measurement:
    kernel_key: str
    decision: str  # TileDecision JSON ("" = heuristic default)
    status: str  # one of STATUSES
    median_s: float | None = None
    min_s: float | None = None
    iqr_s: float | None = None
    runs: int = 0
    gflops: float | None = None
    utilization: float | None = None
    compile_s: float | None = None
    error: str = ""

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @staticmethod
    def from_json(text: str) -> Measurement:
        return Measurement(**json.loads(text))


@dataclasses.dataclass(frozen=True)
class MeasureOptions:
    min_runs: int = 10
    max_runs: int = 300
    max_seconds: float = 1.0
    tight_iqr: float = 0.05
    rtol: float = 1e-4
    atol: float = 1e-5


# ------------------------------------------------------------------------ in the worker
_REFERENCE_CACHE: dict[str, list] = {}


def _compile(kernel_text: str, decision: TileDecision | None, *, tile: bool = True):
    from torch_mlir import ir

    from tilecraft.backends.cpu import lowering, runtime

    ctx = ir.Context()
    module = ir.Module.parse(kernel_text, context=ctx)
    signature = runtime.Signature.of_func(module, KERNEL_FUNC)
    with ctx:
        if tile:
            from tilecraft.backends.cpu.target import host  # (no decision: the default for this host's registers)

            lowering.to_tiled(module, {0: decision} if decision else None, target=host())
        lowering.to_vector(module, vectorize=tile)
        lowering.to_llvm(module)
        engine = lowering.jit(module)
    return runtime.from_engine(engine, KERNEL_FUNC, signature)


def _inputs(fn, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    out = []
    for spec in fn.signature.inputs:
        dt = spec.torch_dtype
        if dt.is_floating_point:
            out.append(torch.randn(spec.shape, generator=g).to(dt))
        elif dt == torch.bool:
            out.append(torch.randint(0, 2, spec.shape, generator=g).bool())
        else:  # small non-negative integers are valid indices for gathers in the zoo
            out.append(torch.randint(0, 4, spec.shape, generator=g, dtype=dt))
    return out


def _as_list(x):
    return list(x) if isinstance(x, tuple) else [x]


def measure_in_process(kernel: Kernel, decision: TileDecision | None, target, options: MeasureOptions) -> Measurement:
    """The measurement itself (runs inside the worker; call directly only in tests)."""
    import torch

    torch.set_num_threads(1)
    dec_json = decision.to_json() if decision else ""
    t0 = time.perf_counter()
    try:
        fn = _compile(kernel.mlir, decision)
    except Exception as exc:
        return Measurement(kernel.key, dec_json, "compile_error", error=_one_line(exc))
    compile_s = time.perf_counter() - t0
    inputs = _inputs(fn)
    if kernel.key not in _REFERENCE_CACHE:
        _REFERENCE_CACHE[kernel.key] = _as_list(_compile(kernel.mlir, None, tile=False)(*inputs))
    ref = _REFERENCE_CACHE[kernel.key]
    out = _as_list(fn(*inputs))
    for o, r in zip(out, ref):
        problem = mismatch(o, r, rtol=options.rtol, atol=options.atol)
        if problem:
            return Measurement(kernel.key, dec_json, "wrong", compile_s=compile_s, error=problem)
    run, _ = fn.prepare(*inputs)  # no per-call allocation or checks inside the timing loop
    samples: list[float] = []
    run()  # warm-up
    start = time.perf_counter()
    while len(samples) < options.max_runs:
        t = time.perf_counter()
        run()
        samples.append(time.perf_counter() - t)
        if len(samples) >= max(options.min_runs, 2):
            q = statistics.quantiles(samples, n=4)
            if (q[2] - q[0]) <= options.tight_iqr * statistics.median(samples):
                break
            if time.perf_counter() - start > options.max_seconds:
                break
    gflops = kernel.flops / statistics.median(samples) / 1e9
    # achieved / attainable (roofline: compute peak or bandwidth of the level holding the data)
    utilization = gflops / target.roofline_gflops(kernel.flops, kernel.bytes_moved) if target is not None else None
    return timed(kernel, dec_json, samples, compile_s=compile_s, utilization=utilization)


def timed(kernel: Kernel, decision: str, samples: list[float], *, compile_s: float, utilization=None) -> Measurement:
    """The `ok` record of a kernel's timing samples (seconds): median, min, IQR, GFLOP/s."""
    q = statistics.quantiles(samples, n=4) if len(samples) >= 2 else [samples[0]] * 3
    median = statistics.median(samples)
    return Measurement(
        kernel.key,
        decision,
        "ok",
        median_s=median,
        min_s=min(samples),
        iqr_s=q[2] - q[0],
        runs=len(samples),
        gflops=kernel.flops / median / 1e9,
        utilization=utilization,
        compile_s=compile_s,
    )


def mismatch(out, ref, *, rtol: float, atol: float) -> str:
    """'' if `out` matches `ref`, else what is wrong. Normwise on finite entries:
    |out - ref| <= atol + rtol * max|ref| (two summation orders of a long f32 reduction
    differ by ~1e-6 of the output's scale; a real bug is off by O(1) of it); non-finite
    entries (a kernel fed random data may overflow) must sit at the same places."""
    import torch

    if out.shape != ref.shape:
        return f"shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    o, r = out.double(), ref.double()
    finite = torch.isfinite(r)
    same_special = torch.equal(torch.isnan(o), torch.isnan(r)) and torch.equal(o[torch.isinf(r)], r[torch.isinf(r)])
    if not same_special or not torch.isfinite(o[finite]).all():
        return "non-finite values differ from the reference"
    if not finite.any():
        return ""
    err = (o[finite] - r[finite]).abs().max().item()
    scale = r[finite].abs().max().item()
    return "" if err <= atol + rtol * scale else f"max abs error {err:.3e} (scale {scale:.3e})"


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:500]


def _worker_main(conn, cpu: int | None = None) -> None:
    import warnings

    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    warnings.filterwarnings("ignore")
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        kernel, decision, target, options = msg
        try:
            result = measure_in_process(kernel, decision, target, options)
        except Exception as exc:
            result = Measurement(kernel.key, decision.to_json() if decision else "", "crash", error=_one_line(exc))
            traceback.print_exc()
        try:
            conn.send(result)
        except (BrokenPipeError, ConnectionResetError):
            return  # the parent gave up on this candidate (timeout) and is replacing us


# --------------------------------------------------------------------- in the parent
class MeasureWorker:
    """A measuring subprocess, restarted whenever a candidate kills or hangs it."""

    def __init__(self, *, timeout_s: float = 120.0, options: MeasureOptions | None = None, cpu: int | None = None):
        self.timeout_s, self.options, self.cpu = timeout_s, options or MeasureOptions(), cpu
        self._ctx = mp.get_context("spawn")
        self._proc = None
        self._conn = None

    def _start(self) -> None:
        parent, child = self._ctx.Pipe()
        self._proc = self._ctx.Process(target=_worker_main, args=(child, self.cpu), daemon=True)
        self._proc.start()
        child.close()
        self._conn = parent

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.join(5)
        self._proc = self._conn = None

    def measure(self, kernel: Kernel, decision: TileDecision | None, target=None) -> Measurement:
        if self._proc is None or not self._proc.is_alive():
            self._start()
        dec_json = decision.to_json() if decision else ""
        try:
            self._conn.send((kernel, decision, target, self.options))
            if not self._conn.poll(self.timeout_s):
                self._kill()
                return Measurement(kernel.key, dec_json, "timeout", error=f"no result within {self.timeout_s:.0f} s")
            return self._conn.recv()
        except (EOFError, BrokenPipeError, ConnectionResetError, OSError):
            code = self._proc.exitcode if self._proc is not None else None
            self._kill()
            return Measurement(kernel.key, dec_json, "crash", error=f"worker died (exit code {code})")

    def interrupt(self) -> None:
        """Kill the candidate running now (safe from another thread): the `measure` waiting
        on it returns a crash at once."""
        proc = self._proc
        if proc is not None:
            proc.kill()

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.send(None)
            except OSError:
                pass
        if self._proc is not None:
            self._proc.join(5)
            if self._proc.is_alive():
                self._proc.kill()
        self._proc = self._conn = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ------------------------------------------------------------------ one core per worker
_CORE_LOCKS: dict[int, object] = {}  # core -> its open lock file: ours while this process lives


def claim_core() -> int | None:
    """A core of this process's affinity that no other measuring worker on this machine
    holds (a lock file per core, released when the holding process exits, however it
    exits): measurements side by side never share a core, whichever process or cluster
    worker started them. None when every core is taken."""
    import fcntl
    import tempfile

    for cpu in sorted(os.sched_getaffinity(0)):
        f = open(os.path.join(tempfile.gettempdir(), f"tilecraft-measure-core-{cpu}.lock"), "a")  # noqa: SIM115
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            continue
        _CORE_LOCKS[cpu] = f
        return cpu
    return None


def release_core(cpu: int | None) -> None:
    import fcntl

    f = _CORE_LOCKS.pop(cpu, None)
    if f is not None:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()
