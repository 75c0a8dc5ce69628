"""Features: what a cost model sees of one (kernel, decision, target) triple.

On the costmodel floor; every model's input. Reads a `Kernel` (corpus/kernels.py: kind,
loop extents, operand shapes and dtypes, the kernel's MLIR), a `TileDecision`
(backends/cpu/schedule.py) and a `Target` (backends/cpu/target.py); writes a fixed-length float
vector whose layout is `FEATURE_NAMES`, versioned by `SCHEMA_VERSION` (bump it whenever
the layout or a meaning changes: models carry the version they were trained with and
refuse a mismatch).

Groups: the op (kind, extents, FLOPs, bytes, intensity, dtype, body op counts); each tile
level (tile volume, per-operand footprint relative to L1/L2/L3, trip counts, partial-tile
fractions); the register tile (vector lanes used, accumulator registers, unrolled vector
ops, contiguity of each operand along the vector dim); the loop order; packing and
decomposition; the target; the roofline estimate of the analytical model. Optionally
(`text=True`) hashed token uni/bi-gram counts of the kernel's MLIR ("ML-driven Hardware
Cost Model for MLIR"), kept only where the ablation in `tilecraft costmodel eval` shows it
helps.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
from collections.abc import Sequence

import numpy as np

from tilecraft.backends.cpu.schedule import TileDecision
from tilecraft.corpus.kernels import ELEMENT_BYTES, Kernel

SCHEMA_VERSION = 1

KINDS = ("matmul", "batch_matmul", "conv2d", "depthwise_conv2d", "pooling", "elementwise", "reduction")
MAX_LOOPS = 7
MAX_OPERANDS = 4  # the last operand is the output; extra inputs beyond 3 are folded into the third
TEXT_BINS = 64
_REDUCTION_KINDS = {"matmul": 1, "batch_matmul": 1, "conv2d": 3, "depthwise_conv2d": 2, "pooling": 2}


class FeatureError(ValueError):
    pass


# ------------------------------------------------------------------ kernel structure
@functools.cache
def _scratch_context():
    """One MLIR context for parsing kernels here: making a context (loading every dialect)
    costs more than parsing a kernel, and a fusion plan featurizes hundreds."""
    from torch_mlir import ir

    return ir.Context()


@functools.lru_cache(maxsize=4096)
def access_maps(mlir: str, n_loops: int) -> tuple[tuple[tuple[int, ...], ...], ...]:
    """Per operand, per dimension: the loops its subscript uses, read off the indexing maps
    of the op generalized to `linalg.generic`. Falls back to "every operand spans every
    loop" when the op does not generalize."""
    from torch_mlir import ir, passmanager

    with _scratch_context():
        try:
            module = ir.Module.parse(mlir)
            passmanager.PassManager.parse("builtin.module(func.func(linalg-generalize-named-ops))").run(
                module.operation
            )
        except Exception:
            return ()
        found: list[ir.Operation] = []

        def visit(op):
            if op.name == "linalg.generic":
                found.append(op)
            for region in op.regions:
                for block in region.blocks:
                    for inner in block.operations:
                        visit(inner.operation)

        visit(module.operation)
        if len(found) != 1:
            return ()
        maps = [ir.AffineMapAttr(a).value for a in ir.ArrayAttr(found[0].attributes["indexing_maps"])]
        if not maps or maps[0].n_dims != n_loops:
            return ()
        return tuple(tuple(tuple(int(d) for d in re.findall(r"d(\d+)", str(e))) for e in m.results) for m in maps)


@functools.lru_cache(maxsize=4096)
def _body_counts(mlir: str) -> tuple[int, int]:
    """(arith ops, math ops) in the kernel: the work per element beyond loads and stores."""
    return len(re.findall(r"\barith\.(?!constant)\w+", mlir)), len(re.findall(r"\bmath\.\w+", mlir))


@functools.lru_cache(maxsize=4096)
def _text_features(mlir: str) -> np.ndarray:
    """Hashed counts of token unigrams and bigrams (SSA names and numbers normalized)."""
    text = re.sub(r"%[\w.$-]+", "%v", mlir)
    text = re.sub(r"\b\d+\b", "N", text)
    tokens = re.findall(r"[A-Za-z_][\w.]*|[<>(){}\[\]:,=x%]", text)
    out = np.zeros(TEXT_BINS)
    for gram in [*tokens, *(a + " " + b for a, b in zip(tokens, tokens[1:]))]:
        out[int(hashlib.md5(gram.encode()).hexdigest()[:8], 16) % TEXT_BINS] += 1
    return np.log1p(out)


# ------------------------------------------------------------------------ the vector
def footprints(maps, tile: Sequence[int], sizes: Sequence[int]) -> list[float]:
    """Bytes of each operand a tile touches: per dim, the span of the loops indexing it
    (a sum of loop indices, as in convolution windows, spans their sum minus the overlap)."""
    out = []
    for amap, size in zip(maps, sizes):
        n = 1
        for loops in amap:
            n *= (sum(tile[i] for i in loops) - len(loops) + 1) if loops else 1
        out.append(float(n * size))
    return out


def _log2(x: float) -> float:
    return math.log2(max(x, 1e-30))


def feature_names(*, text: bool = False) -> list[str]:
    names = [f"kind_{k}" for k in KINDS]
    names += [f"log_extent_{i}" for i in range(MAX_LOOPS)] + ["n_loops", "n_reduction_loops"]
    names += ["log_flops", "log_bytes", "log_intensity", "dtype_bits", "is_int", "n_operands", "arith_ops", "math_ops"]
    for level in ("cache", "reg"):
        names += [f"{level}_log_volume", f"{level}_log_trips", f"{level}_partial_frac"]
        names += [f"{level}_log_fp_{i}" for i in range(MAX_OPERANDS)]
        names += [f"{level}_fp_over_l1", f"{level}_fp_over_l2", f"{level}_fp_over_l3"]
        names += [f"{level}_tile_frac_{i}" for i in range(MAX_LOOPS)]
    names += ["vectorize", "vec_inner_extent", "lanes_used", "lane_remainder", "log_acc_regs", "acc_spill"]
    names += ["log_unrolled_vector_ops", "contiguous_inputs", "strided_inputs", "broadcast_inputs"]
    names += ["pack", "decompose", "n_levels", "has_interchange", "innermost_is_reduction", "outermost_is_reduction"]
    names += [f"innermost_loop_{i}" for i in range(MAX_LOOPS)] + [f"outermost_loop_{i}" for i in range(MAX_LOOPS)]
    names += ["target_lanes", "target_log_l1", "target_log_l2", "target_log_l3", "target_peak_gflops", "target_amx"]
    names += ["log_roofline_s", "log_analytical_s"]
    if text:
        names += [f"text_{i}" for i in range(TEXT_BINS)]
    return names


def featurize(kernel: Kernel, decision: TileDecision, target, *, text: bool = False) -> np.ndarray:
    """The feature vector of one (kernel, decision, target), laid out as `feature_names`."""
    from tilecraft.costmodel.analytical import estimate, roofline_seconds

    e = list(kernel.extents)
    n = len(e)
    if n == 0 or n > MAX_LOOPS:
        raise FeatureError(f"kernel {kernel.key}: {n} loops (features support 1..{MAX_LOOPS})")
    if kernel.kind not in KINDS:
        raise FeatureError(f"kernel {kernel.key}: unknown op kind {kernel.kind!r}")
    sizes = kernel.element_bytes
    maps = access_maps(kernel.mlir, n) or tuple(tuple((i,) for i in range(n)) for _ in kernel.dtypes)
    maps = maps[: len(sizes)]
    n_red = _REDUCTION_KINDS.get(kernel.kind, 0)
    if kernel.kind == "reduction":  # loops the output does not index
        out_loops = {i for loops in maps[-1] for i in loops}
        n_red = n - len(out_loops)
    bytes_moved = kernel.bytes_moved
    f: list[float] = [float(kernel.kind == k) for k in KINDS]
    f += [_log2(x) for x in e] + [0.0] * (MAX_LOOPS - n) + [n, n_red]
    arith, mth = _body_counts(kernel.mlir)
    out_dtype = kernel.dtypes[-1] if kernel.dtypes else "f32"
    f += [
        _log2(kernel.flops),
        _log2(bytes_moved),
        _log2(kernel.flops / max(bytes_moved, 1)),
        8 * ELEMENT_BYTES.get(out_dtype, 4),
        float(out_dtype.startswith("i")),
        len(kernel.dtypes),
        arith,
        mth,
    ]
    levels = list(decision.tiles) or [tuple(e)]
    cache, reg = (levels[0], levels[-1]) if len(levels) > 1 else (tuple(e), levels[0])
    caches = (target.l1d_bytes, target.l2_bytes, target.l3_bytes)
    for tile in (cache, reg):
        fp = footprints(maps, tile, sizes)
        total = sum(fp)
        partial = sum(1 for t, x in zip(tile, e) if t < x and x % t) / n
        fps = (fp[:-1][: MAX_OPERANDS - 1] + [0.0] * MAX_OPERANDS)[: MAX_OPERANDS - 1] + fp[-1:]
        f += [_log2(math.prod(tile)), _log2(math.prod(e) / math.prod(tile)), partial]
        f += [_log2(x) if x else 0.0 for x in fps]
        f += [_log2(total / c) for c in caches]
        f += [t / x for t, x in zip(tile, e)] + [0.0] * (MAX_LOOPS - n)
    # The register tile as vectors: the output's fastest dim is the vector dim.
    lanes = target.f32_lanes * 4 // max(ELEMENT_BYTES.get(out_dtype, 4), 1)
    out_fast = maps[-1][-1] if maps and maps[-1] and maps[-1][-1] else (n - 1,)
    inner_loop = out_fast[0]
    inner = reg[inner_loop] if decision.vectorize else 1
    out_regs = math.prod(reg[i] for loops in maps[-1] for i in loops) if maps and maps[-1] else math.prod(reg)
    acc_regs = math.ceil(out_regs / lanes) if decision.vectorize else out_regs
    unrolled = math.prod(reg) / (lanes if decision.vectorize else 1)
    contiguous = strided = broadcast = 0
    for amap in maps[:-1]:
        used = {i for loops in amap for i in loops}
        if inner_loop not in used:
            broadcast += 1
        elif amap and inner_loop in amap[-1]:
            contiguous += 1
        else:
            strided += 1
    f += [
        float(decision.vectorize),
        _log2(inner),
        min(inner, lanes) / lanes,
        (inner % lanes) / lanes,
        _log2(acc_regs),
        float(acc_regs > 28),
        _log2(max(unrolled, 1)),
        contiguous,
        strided,
        broadcast,
    ]
    order = list(decision.interchange) or list(range(n))
    tiled = [i for i in order if levels[0][i] < e[i]] or order
    red = set(range(n - n_red, n)) if kernel.kind != "reduction" else set(range(n)) - out_loops
    f += [
        float(decision.pack),
        float(decision.decompose),
        len(decision.tiles),
        float(bool(decision.interchange)),
        float(tiled[-1] in red),
        float(tiled[0] in red),
    ]
    f += [float(tiled[-1] == i) for i in range(MAX_LOOPS)] + [float(tiled[0] == i) for i in range(MAX_LOOPS)]
    f += [
        target.f32_lanes,
        _log2(target.l1d_bytes),
        _log2(target.l2_bytes),
        _log2(target.l3_bytes),
        target.peak_gflops_f32,
        float(target.has("amx")),
    ]
    f += [_log2(roofline_seconds(kernel, target)), _log2(estimate(kernel, decision, target, maps=maps))]
    vec = np.asarray(f, dtype=np.float64)
    if text:
        vec = np.concatenate([vec, _text_features(kernel.mlir)])
    return vec


def matrix(pairs: Sequence[tuple[Kernel, TileDecision]], target, *, text: bool = False) -> np.ndarray:
    width = len(feature_names(text=text))
    if not pairs:
        return np.zeros((0, width))
    out = np.stack([featurize(k, d, target, text=text) for k, d in pairs])
    assert out.shape[1] == width, (out.shape, width)
    return out
