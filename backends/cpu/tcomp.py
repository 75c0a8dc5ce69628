"""tcomp: the OpenMP runtime of Tilecraft's parallel kernels, built from `tcomp.c`.

On the backends floor; `lowering` loads it into the JIT and links it into `--emit so`. The
C source says what it does and why (iterations claimed, not assigned: a thread the OS has
not scheduled never stalls the region). Built once per source version with the C compiler
the shared-library path already needs (`cc`), into `_build/` beside the source, or the
user's cache (`$XDG_CACHE_HOME/tilecraft`) where the package folder is read-only; written
under a temporary name and renamed, so a build cut short leaves nothing half-written.

`library()` is None where no compiler is found or the build fails, and where
`TILECRAFT_OPENMP=iomp5` asks for the intel-openmp runtime instead (for A/B runs; one
runtime per process: whichever a process loads first serves all its compiled code).
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
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


def wanted() -> bool:
    return os.environ.get("TILECRAFT_OPENMP", "tcomp").strip().lower() != "iomp5"


def library() -> str | None:
    """The built runtime's path, or None (no compiler, a failed build, or iomp5 asked for)."""
    return _build() if wanted() else None


@functools.cache
def _build() -> str | None:
    cc = shutil.which("cc")
    if cc is None:
        return None
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
    name = f"libtcomp-{digest}.so"
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tilecraft"
    places = (SOURCE.parent / "_build", cache)
    for place in places:
        if (place / name).is_file():
            return str(place / name)
    for place in places:
        try:
            place.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".libtcomp-", suffix=".so", dir=place)
            os.close(fd)
        except OSError:
            continue
        try:
            subprocess.run(
                [cc, "-O2", "-shared", "-fPIC", "-pthread", "-o", tmp, str(SOURCE)],
                check=True,
                capture_output=True,
                timeout=120,
            )
            os.replace(tmp, place / name)
            return str(place / name)
        except (OSError, subprocess.SubprocessError):
            continue
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return None


def check_regions(module: ir.Module) -> None:
    """Every OpenMP parallel region of the LLVM-dialect module is the one shape tcomp runs:
    a single worksharing loop and nothing else (what `convert-scf-to-openmp` makes of a
    chunked kernel). Anything else is a bug of the backend, reported before it could run
    on a runtime that would not synchronize it."""
    for region in ops_named(module.operation, "omp.parallel"):
        blocks = list(region.regions[0].blocks)
        names = [op.operation.name for op in blocks[0].operations] if len(blocks) == 1 else []
        if names != ["omp.wsloop", "omp.terminator"]:
            raise RuntimeError(f"an OpenMP parallel region tcomp does not run: {names or len(blocks)} ops")
