"""LLVM-dialect kernels → PTX (through the LLVM inside `triton`), PTX → cubin (`ptxas`).

On the backends floor; the last two steps of the GPU backend, after `gpu-nvvm`. The
bundled MLIR's LLVM has no NVPTX target; the one inside `triton==3.9.0` (the same LLVM
generation) has. The kernels' LLVM-dialect module is parsed into triton's MLIR, translated
to LLVM IR, linked with the wheel's libdevice where it calls `__nv_*` math functions,
optimized at O3 and compiled for the architecture — in a worker process (`python -m
tilecraft.backends.gpu.ptx`), because a parse error in that library aborts its process.
`ptxas -v` assembles the PTX and reports each kernel's registers, shared memory, stack and
spills (`Resources`). `triton._C` is private: the `gpu` extra pins the version.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

TRIPLE = "nvptx64-nvidia-cuda"
LLVM_FLAGS = ["nvptx-mad-wide-opt", "nvptx-short-ptr"]
WORKER_TIMEOUT = 300


class PtxError(RuntimeError):
    """The PTX toolchain is missing or rejected a module (not a user mistake)."""


@dataclasses.dataclass(frozen=True)
class Resources:
    """What ptxas reports for one kernel."""

    registers: int = 0
    shared_bytes: int = 0
    stack_bytes: int = 0
    spill_stores: int = 0
    spill_loads: int = 0

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def available() -> str | None:
    """Why PTX cannot be produced here, or None when it can."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return "the GPU backend needs the gpu extra (pip install -e '.[gpu]': triton, cuda-python)"
    return None


def ptxas_path() -> str | None:
    """`TILECRAFT_PTXAS`, the ptxas inside the triton wheel, or one on PATH."""
    env = os.environ.get("TILECRAFT_PTXAS")
    if env:
        return env
    try:
        import triton

        bundled = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
        if os.access(bundled, os.X_OK):
            return bundled
    except ImportError:
        pass
    return shutil.which("ptxas")


def libdevice_path() -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "lib", "libdevice.10.bc")


def to_llvm_ir(kernels_mlir: str, *, arch: str, features: str) -> str:
    """The optimized LLVM IR of the kernels (what `to_ptx` compiles)."""
    return _run_worker({"mlir": kernels_mlir, "arch": arch, "features": features, "emit": "llvm"})


def to_ptx(kernels_mlir: str, *, arch: str, features: str) -> str:
    """PTX text of every kernel in the LLVM-dialect module `kernels_mlir`."""
    return _run_worker({"mlir": kernels_mlir, "arch": arch, "features": features, "emit": "ptx"})


def _run_worker(job: dict) -> str:
    why = available()
    if why:
        raise PtxError(why)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "tilecraft.backends.gpu.ptx"],
            input=json.dumps(job),
            capture_output=True,
            text=True,
            timeout=WORKER_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        raise PtxError(f"the PTX worker ran past {WORKER_TIMEOUT} s") from None
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()[-8:]
        raise PtxError(f"the PTX worker failed (exit {proc.returncode}): " + " | ".join(detail))
    return proc.stdout


def assemble(ptx: str, *, arch: str) -> tuple[bytes, dict[str, Resources]]:
    """`ptxas -v -arch=ARCH`: the cubin and each kernel's resources."""
    exe = ptxas_path()
    if not exe:
        raise PtxError("ptxas not found (install the gpu extra, or set TILECRAFT_PTXAS)")
    with tempfile.TemporaryDirectory() as tmp:
        src, out = os.path.join(tmp, "k.ptx"), os.path.join(tmp, "k.cubin")
        with open(src, "w") as f:
            f.write(ptx)
        proc = subprocess.run([exe, "-v", f"-arch={arch}", src, "-o", out], capture_output=True, text=True)
        if proc.returncode != 0:
            raise PtxError(f"ptxas rejected the PTX for {arch}: " + " | ".join(proc.stderr.strip().splitlines()[-6:]))
        with open(out, "rb") as f:
            cubin = f.read()
    return cubin, parse_ptxas_report(proc.stderr + proc.stdout)


def parse_ptxas_report(text: str) -> dict[str, Resources]:
    """Per kernel, from `ptxas -v`'s "Compiling entry function" sections."""
    out: dict[str, Resources] = {}
    name = None
    vals: dict[str, int] = {}
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '([^']+)'", line)
        if m:
            if name:
                out[name] = Resources(**vals)
            name, vals = m.group(1), {}
            continue
        if name is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            vals.update(stack_bytes=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            vals["registers"] = int(m.group(1))
        m = re.search(r"(\d+) bytes smem", line)
        if m:
            vals["shared_bytes"] = int(m.group(1))
    if name:
        out[name] = Resources(**vals)
    return out


# --------------------------------------------------------------------------- the worker
def _worker(job: dict) -> str:
    from triton._C.libtriton import ir, llvm, nvidia

    ctx = ir.context()
    ir.load_dialects(ctx)
    nvidia.load_dialects(ctx)
    with tempfile.NamedTemporaryFile("w", suffix=".mlir") as f:
        f.write(job["mlir"])
        f.flush()
        mod = ir.parse_mlir_module(f.name, ctx)
    llvm.init_targets()
    lctx = llvm.context()
    lmod = llvm.to_module(mod, lctx)
    arch, features = job["arch"], job["features"]
    llvm.attach_datalayout(lmod, TRIPLE, arch, features, LLVM_FLAGS)
    if nvidia.has_extern_deps(lmod):
        nvidia.set_nvvm_reflect_ftz(lmod)
        llvm.link_extern_libs(lmod, [libdevice_path()])
    llvm.optimize_module(lmod, llvm.OPTIMIZE_O3, flags=LLVM_FLAGS)
    ir_text = str(lmod)
    if job["emit"] == "llvm":
        return ir_text
    return llvm.translate_to_asm(ir_text, TRIPLE, arch, features, LLVM_FLAGS, True, False, False)


if __name__ == "__main__":
    sys.stdout.write(_worker(json.loads(sys.stdin.read())))
