"""tcomp: the OpenMP runtime of Tilecraft's parallel kernels, built from `tcomp.c`.

On the backends floor; `lowering` binds the JIT to it and links it into `--emit so`. The C
source says what it does and why (iterations claimed, not assigned: a thread the OS has
not scheduled never stalls the region). Built once per source version, compiler and flags
with the C compiler the shared-library path already needs (`cc`), into `_build/` beside the
source, or the user's cache (`$XDG_CACHE_HOME/tilecraft`) where the package folder is
read-only; written under a temporary name and renamed, so a build cut short leaves nothing
half-written. Two products: a shared library for the JIT, whose symbols `bind` registers
with each engine one by one (a library loaded globally would shadow a real OpenMP runtime
that other libraries in the process load later), and a position-independent object with
hidden symbols that `--emit so` links in (the output then depends on nothing we built).

`library()` and `static_object()` are None where no compiler is found or the build fails
(said once on stderr), and where `TILECRAFT_OPENMP=iomp5` asks for the intel-openmp
runtime instead (for A/B runs).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from torch_mlir import ir

from tilecraft.dialects.irutil import ops_named

SOURCE = Path(__file__).with_name("tcomp.c")
# the entry points LLVM's OpenMP translation calls for the regions the backend emits
KMPC_CALLS = (
    "__kmpc_global_thread_num",
    "__kmpc_push_num_threads",
    "__kmpc_fork_call",
    "__kmpc_for_static_init_8u",
    "__kmpc_for_static_fini",
    "__kmpc_barrier",
)
FLAGS = ("-O2", "-fPIC", "-pthread")
PRODUCTS = {"shared": (*FLAGS, "-shared"), "static": (*FLAGS, "-c", "-DTCOMP_STATIC")}


def wanted() -> bool:
    return os.environ.get("TILECRAFT_OPENMP", "tcomp").strip().lower() != "iomp5"


def library() -> str | None:
    """The shared runtime (for the JIT), or None (no compiler, a failed build, iomp5 asked for)."""
    return _build("shared") if wanted() else None


def static_object() -> str | None:
    """The runtime as an object to link into a shared library, its symbols hidden; or None."""
    return _build("static") if wanted() else None


@functools.cache
def _loaded(path: str) -> ctypes.CDLL:
    return ctypes.CDLL(path)  # RTLD_LOCAL: its symbols reach only what is bound to them


def hold() -> str:
    """The shared runtime, loaded (locally) and kept loaded for the rest of the process:
    its workers run its code, so nothing may unload it (a shared library of this process
    linked against it, then closed, drops only its own reference)."""
    path = library()
    _loaded(path)
    return path


def bind(engine) -> None:
    """Resolve the engine's OpenMP calls to tcomp (before its first lookup compiles it)."""
    rt = _loaded(hold())
    for name in KMPC_CALLS:
        engine.raw_register_runtime(name, ctypes.cast(getattr(rt, name), ctypes.c_void_p))


@functools.cache
def _build(kind: str) -> str | None:
    cc = shutil.which("cc")
    if cc is None:
        _say("no C compiler (cc) on PATH")
        return None
    flags = PRODUCTS[kind]
    key = hashlib.sha256(SOURCE.read_bytes())
    key.update(repr((flags, os.path.realpath(cc), platform.machine())).encode())
    name = f"libtcomp-{key.hexdigest()[:16]}" + (".so" if kind == "shared" else ".o")
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tilecraft"
    places = (SOURCE.parent / "_build", cache)
    for place in places:
        if (place / name).is_file():
            return str(place / name)
    error = ""
    for place in places:
        try:
            place.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".libtcomp-", suffix=Path(name).suffix, dir=place)
            os.close(fd)
        except OSError as exc:
            error = f"{place}: {exc.strerror}"
            continue
        try:
            subprocess.run(
                [cc, *flags, "-o", tmp, str(SOURCE)], check=True, capture_output=True, text=True, timeout=120
            )
            os.replace(tmp, place / name)
            return str(place / name)
        except subprocess.CalledProcessError as exc:
            _say(f"{cc} failed on {SOURCE}: {(exc.stderr or '').strip()[:300]}")
            return None  # the same compiler fails the same way in the other place
        except (OSError, subprocess.SubprocessError) as exc:
            error = str(exc)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    _say(f"cannot build it: {error}")
    return None


@functools.cache  # (once: both products fail alike)
def _say(why: str) -> None:
    print(f"tilecraft: the tcomp OpenMP runtime is unavailable ({why}); using intel-openmp", file=sys.stderr)


# omp.wsloop attributes that leave it the plain static loop tcomp runs
PLAIN_WSLOOP = {"operandSegmentSizes", "nowait"}


def check_regions(module: ir.Module) -> None:
    """Every OpenMP parallel region of the LLVM-dialect module is the one shape tcomp runs:
    a single worksharing loop (static schedule, no reduction, no ordered clause, over i64)
    and nothing else, what `convert-scf-to-openmp` makes of a chunked kernel. Anything else
    is a bug of the backend, reported before it could run on a runtime that would not
    synchronize it."""
    for region in ops_named(module.operation, "omp.parallel"):
        blocks = list(region.regions[0].blocks)
        ops = [op.operation for op in blocks[0].operations] if len(blocks) == 1 else []
        names = [op.name for op in ops]
        why = "" if names == ["omp.wsloop", "omp.terminator"] else f"ops {names or len(blocks)}"
        if not why:
            loop = ops[0]
            extra = sorted({getattr(a, "name", a) for a in loop.attributes} - PLAIN_WSLOOP)
            nests = [op.operation for op in loop.regions[0].blocks[0].operations]
            if len(loop.operands) or extra:
                why = f"a worksharing loop with {extra or 'operands'}"
            elif len(nests) != 1 or nests[0].name != "omp.loop_nest":
                why = "a worksharing loop that is not one loop nest"
            elif any(str(a.type) != "i64" for a in nests[0].regions[0].blocks[0].arguments):
                why = "a loop over something other than i64"
        if why:
            raise RuntimeError(f"an OpenMP parallel region tcomp does not run: {why}")
