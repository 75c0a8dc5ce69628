"""The CPU backend's schedule record: how each op is tiled and vectorized.

On the backends floor (`backends/cpu`). Reads the op analysis of `dialects/opinfo.py`
(`OpInfo`); defines `TileDecision` (cache and register tiles, loop order, packing,
decomposition, vectorization), an op's legal decisions (`space`) and the documented
per-kind heuristic (`default_decision`), resolves one decision per op (`decisions`: a
pin, else the op's `tc.schedule`, else the heuristic; `attach` writes them onto the ops
as `tc.schedule`, `attached` reads them back), and renders them as the transform script
the `cpu-tiled` stage applies (`tiling_script`). It never calls a cost model: planning
(`costmodel/search.py`) picks from `space`.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from collections.abc import Mapping, Sequence

from torch_mlir import ir

from tilecraft.dialects import tc
from tilecraft.dialects.irutil import ANY, named_sequence, ops_named, peel_parent_loop, walk_ops  # noqa: F401 (re-exported)
from tilecraft.dialects.opinfo import (  # noqa: F401 (re-exported: the analysis schedules are made from)
    LANES,
    NAMED_KINDS,
    VECTOR_BUDGET,
    OpInfo,
    budget_tile,
    describe,
    divisor_at_most,
    fused_ids,
    peeled_row_tile,
    register_elements,
    tag_ops,
)
from tilecraft.dialects.tc import AMX, AMX_INIT, FUSED, OP_ID  # noqa: F401 (re-exported)

# A one-row matmul (a classifier at batch 1: x[1, K] @ B[K, N]) reads each element of B
# once: its cache tile is all of N and ONE_ROW_K rows of K, so B streams through whole rows
# (contiguous, prefetched) instead of 64-byte stripes down K (a 4 KB page per row, each a
# demand miss). The gain is largest with B out of cache, as a model's weights are (a
# classifier's 1×1280 @ 1280×1008); K tiles of 4 do about as well, of 64 much worse (not
# offered: the cost model, trained on warm kernels, ranks it first).
ONE_ROW_K = 16


# No scalar schedule is offered for an elementwise op that vectorizes with plain loads
# (`OpInfo.unit_stride`) along an innermost loop of MIN_VECTOR_WIDTH or more: the cost
# model ranked such a schedule first where it ran about 2x slower than vectorized ones
# (MobileNet-V2's 3x3 depthwise taps over 960 channels at 7x7: 0.24 vs 0.11 ms with
# their batch norm), a corner its training rows barely cover.
SCALAR_ONLY_STRIDED = True
MIN_VECTOR_WIDTH = 4


@dataclasses.dataclass(frozen=True)
class TileDecision:
    """How one op is scheduled: tile sizes per level (outer = cache level first, last =
    register tile; one entry per loop, equal to the extent = untiled), the loop interchange
    of the first level, whether a contraction packs its right-hand operand's cache tile
    into a contiguous buffer (hoisted out of the loops that do not index it: with the
    (n, k, m) order it is packed once and reused across m), whether the register tile is
    decomposed (2-D conv/pool → 1-D) and whether it is vectorized."""

    tiles: tuple[tuple[int, ...], ...]
    interchange: tuple[int, ...] = ()
    pack: bool = False
    decompose: bool = False
    vectorize: bool = True

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    def to_dict(self) -> dict:
        """The record as plain values (`tc.schedule`'s fields)."""
        d = dataclasses.asdict(self)
        return {**d, "tiles": [list(level) for level in d["tiles"]], "interchange": list(d["interchange"])}

    @staticmethod
    def from_json(text: str | dict) -> TileDecision:
        d = json.loads(text) if isinstance(text, str) else dict(text)
        unknown = set(d) - {f.name for f in dataclasses.fields(TileDecision)}
        if unknown or "tiles" not in d:
            raise ValueError(f"not a TileDecision: {text!r}")
        return TileDecision(
            tiles=tuple(tuple(int(x) for x in level) for level in d["tiles"]),
            interchange=tuple(int(x) for x in d.get("interchange", ())),
            pack=bool(d.get("pack", False)),
            decompose=bool(d.get("decompose", False)),
            vectorize=bool(d.get("vectorize", True)),
        )

    def validate(self, info: OpInfo) -> None:
        """Raise ValueError unless the decision is legal for the op."""
        n = len(info.extents)
        extents = list(info.extents)
        for i, level in enumerate(self.tiles):
            if len(level) != n:
                raise ValueError(f"tile level {level} has {len(level)} sizes, op has {n} loops")
            for d, (t, x) in enumerate(zip(level, extents)):
                if t < 1 or (x % t and not (d == n - 3 and i > 0 and t < x and _peels_rows(info, self))):
                    raise ValueError(f"tile size {t} does not divide extent {x} (op {info.name})")
            extents = list(level)
        if self.interchange and sorted(self.interchange) != list(range(n)):
            raise ValueError(f"interchange {self.interchange} is not a permutation of {n} loops")
        if self.pack and (info.kind not in ("matmul", "batch_matmul") or len(self.tiles) < 2):
            raise ValueError("pack applies to matmul/batch_matmul with a cache and a register tile level")
        if self.decompose:
            if info.kind not in ("conv2d", "pooling"):
                raise ValueError(f"decompose applies to conv2d/pooling, not {info.kind}")
            kh_dim = 5 if info.kind == "conv2d" else 4
            if extents[2] != 1 or extents[kh_dim] != 1:
                raise ValueError("decompose needs register tiles of 1 along oh and kh")


PEELED = "tc.peeled"  # a register tile whose rows' loop was peeled, to vectorize once static
# 16-register targets' matmul tiles of cap/2 rows × two vectors (6×16) or cap rows × one
# (12×8) whatever the rows, the rest peeled. A 512³ matmul, packed, 1 thread (AVX2 Zen 3):
# 8×8 3.65 ms, 6×16 (64 = 10·6 + 4) 2.91 ms; MKL (torch) 2.89 ms.
PEEL_ROWS = True


def _peels_rows(info: OpInfo, d: TileDecision) -> bool:
    """A matmul's register tile may leave a remainder of rows in its cache tile: the last,
    partial row tile is peeled into a loop of its own (`tiling_script`), and both are
    vectorized with static shapes. (AVX2's 6×16 tile, 12 ymm accumulators whose B rows are
    whole 64-byte lines: 6 divides few extents.)"""
    return info.kind in ("matmul", "batch_matmul") and len(d.tiles) == 2


def peeled_rows(info: OpInfo, d: TileDecision) -> bool:
    """Whether the decision's register rows leave a remainder (see `_peels_rows`)."""
    if not _peels_rows(info, d):
        return False
    m = len(info.extents) - 3
    rows = min(d.tiles[0][m], info.extents[m])
    return d.tiles[1][m] < rows and rows % d.tiles[1][m] != 0


def register_tile_decision(info: OpInfo) -> TileDecision:
    """An op already the size of a register tile (fused): vectorized whole (a matmul: one
    rank-1 update per step of its k loop; the accumulator is hoisted into registers)."""
    if info.kind in ("matmul", "batch_matmul"):
        return TileDecision(tiles=((*info.extents[:-1], 1),))
    return TileDecision(tiles=(info.extents,), vectorize="i1" not in info.dtypes)


def accumulator_cap(target) -> int | None:
    """The most accumulator vectors a register tile may hold on a target with 16 vector
    registers (AVX2: ymm0-15): 12, leaving room for the operands' vectors. None with 32
    (AVX-512), whose schedules are as they were. On a 16-register host the 8×16 tile
    AVX-512 favours (16 accumulators) spilled: a 512³ matmul ran 9.9 ms against 4.5 ms
    for 8×8 (`docs/measurements.md`, sixteenth session); the cost model, trained where
    it fits, had no way to tell."""
    has = getattr(target, "has", None)
    if has is None or has("avx512"):
        return None
    return 12


def _fits(cap: int | None, rows: int, vectors: int) -> bool:
    return cap is None or rows * vectors <= cap


def _capped_matmul_tile(mc: int, nc: int, lanes: int, cap: int) -> tuple[int, int]:
    """The register tile of a 16-register target: cap/2 rows two vectors wide (6×16 on
    AVX2, its rows' remainder peeled: `_peels_rows`), else one vector and `cap` rows
    (12×8); where the rows are fewer, the old divisors: two vectors wide where a divisor of
    the rows up to cap/2 gives at least 4 rows, else one vector and up to `cap` rows."""
    if PEEL_ROWS and mc > cap // 2 and nc % (2 * lanes) == 0:
        return peeled_row_tile(mc, 2, cap), 2 * lanes
    if PEEL_ROWS and mc > cap and nc % lanes == 0:
        return peeled_row_tile(mc, 1, cap), lanes
    two = divisor_at_most(mc, cap // 2)
    if two >= 4 and nc % (2 * lanes) == 0:
        return two, 2 * lanes
    return divisor_at_most(mc, cap), math.gcd(lanes, nc)


def _capped_conv_tile(f: int, ow: int, lanes: int, cap: int) -> tuple[int, int]:
    """(output channels, output columns) of a 16-register target's convolution tile: the
    most accumulators, two vectors of channels on a tie."""
    options = [(divisor_at_most(f, 2 * lanes, multiple_of=lanes), divisor_at_most(ow, cap // 2))]
    options.append((divisor_at_most(f, lanes, multiple_of=lanes), divisor_at_most(ow, cap)))
    return max(options, key=lambda o: (max(1, o[0] // lanes) * o[1], o[0]))


def default_decision(info: OpInfo, target=None, *, one_row_stream: bool = True) -> TileDecision:
    """The hand-written per-kind schedule (heuristic fallback); vector widths follow
    `target.f32_lanes` (16 on AVX-512). `one_row_stream`: a one-row matmul streams B
    through whole rows (`ONE_ROW_K`; off only to compare)."""
    e = info.extents
    lanes = getattr(target, "f32_lanes", LANES)
    if info.kind in ("matmul", "batch_matmul"):
        *batch, m, n, k = e
        mc, nc, kc = divisor_at_most(m, 64), divisor_at_most(n, 128, multiple_of=lanes), divisor_at_most(k, 128)
        mr, nr = divisor_at_most(mc, 8), divisor_at_most(nc, 32, multiple_of=lanes)
        cap = accumulator_cap(target)
        if cap is not None and not _fits(cap, mr, max(1, nr // lanes)):
            mr, nr = _capped_matmul_tile(mc, nc, lanes, cap)
        b = [1] * len(batch)
        if m == 1 and one_row_stream:  # one row: stream B a few whole rows at a time
            return _one_row(len(batch), n, divisor_at_most(k, ONE_ROW_K), lanes)
        # Pack B's cache tile once it no longer fits L2 (strided rows thrash the caches) and
        # more than one row tile reads it (read once, as by a classifier's 1×1280 @
        # 1280×1008, the pack is a copy that nothing reuses); then order the cache loops
        # (n, k, m) so the pack is hoisted out of the m loop.
        l2 = getattr(target, "l2_bytes", 1 << 20)
        if k * n * 4 > l2 and m > mc:
            nc, kc = divisor_at_most(n, 256, multiple_of=lanes), divisor_at_most(k, 256)
            if nc % nr:  # (the register tile of the narrower cache tile: whole in the wider one)
                nr = divisor_at_most(nc, nr, multiple_of=lanes)
            nb = len(batch)
            order = (*range(nb), nb + 1, nb + 2, nb)
            return TileDecision(tiles=((*b, mc, nc, kc), (*b, mr, nr, 1)), interchange=order, pack=True)
        return TileDecision(tiles=((*b, mc, nc, kc), (*b, mr, nr, 1)))
    if info.kind == "conv2d":
        n, f, oh, ow, c, kh, kw = e
        fr = divisor_at_most(f, 2 * lanes, multiple_of=lanes)
        owr = divisor_at_most(ow, 8)
        cap = accumulator_cap(target)
        if cap is not None and not _fits(cap, owr, max(1, fr // lanes)):
            fr, owr = _capped_conv_tile(f, ow, lanes, cap)
        cr = divisor_at_most(c, 16)
        # f, c, kh outside oh, ow: the filter tile (and its transpose) is hoisted out of the
        # spatial loops; the small output tile is what moves.
        return TileDecision(tiles=((1, fr, 1, owr, cr, 1, kw),), interchange=(0, 1, 4, 5, 2, 3, 6), decompose=True)
    if info.kind == "pooling":
        n, c, oh, ow, kh, kw = e
        return TileDecision(tiles=((1, divisor_at_most(c, lanes), 1, divisor_at_most(ow, 8), 1, kw),), decompose=True)
    if info.kind == "depthwise_conv2d":
        n, oh, ow, c, kh, kw = e
        return TileDecision(tiles=((1, 1, ow, 1, kh, kw),), vectorize=False)
    # i1 memrefs hold a byte per element, but vector loads of i1 read packed bits: stay scalar.
    return TileDecision(tiles=(budget_tile(e),), vectorize="i1" not in info.dtypes)


def _one_row(batch: int, n: int, kc: int, lanes: int) -> TileDecision:
    """A one-row matmul's decision: cache tile all of N and `kc` rows of K (`ONE_ROW_K`),
    register tile one vector."""
    b = (1,) * batch
    return TileDecision(tiles=((*b, 1, n, kc), (*b, 1, math.gcd(lanes, n), 1)))


def _divisors(n: int, candidates) -> list[int]:
    return sorted({c for c in candidates if 0 < c <= n and n % c == 0} | ({n} if n <= max(candidates) else set()))


def _kc_candidates(k: int) -> list[int]:
    """Reduction cache tiles: 64, 256, and the whole K up to 1,152 (an im2col GEMM's
    K = 9·C: 3136×64×576 runs faster with K whole than in 64-slices, each of which reloads
    and stores the accumulator tile)."""
    return sorted(set(_divisors(k, (64, 256))) | ({k} if k <= 1152 else set()))


def space(info: OpInfo, target=None, *, one_row_stream: bool = True) -> list[TileDecision]:
    """The legal decisions for an op (every one passes `validate`), heuristic first.

    Matmuls: cache tiles × register tiles × loop orders; convolutions: register tiles of
    output channels × width × input channels, two loop orders; pooling and depthwise:
    register tiles; elementwise and reductions: register-tile budgets, vectorized or not.
    `target` (a `tilecraft.backends.cpu.target.Target`) sets the vector width preference."""
    lanes = getattr(target, "f32_lanes", LANES)
    e = info.extents
    out: list[TileDecision] = []
    if info.kind in ("matmul", "batch_matmul"):
        *batch, m, n, k = e
        b = (1,) * len(batch)
        nb = len(batch)
        orders = [(), tuple(range(nb)) + (nb, nb + 2, nb + 1), tuple(range(nb)) + (nb + 1, nb, nb + 2)]
        packed_order = (*range(nb), nb + 1, nb + 2, nb)
        # Cache tiles x register tiles x loop orders (3 plain, 1 packed): small enough to
        # measure exhaustively (240 decisions for 512^3), wide enough that the best and the
        # worst differ widely (`bench/schedules.py` prints the spread).
        reg_tiles = ((1, lanes), (4, 2 * lanes), (4, 4 * lanes), (8, 2 * lanes), (16, 2 * lanes))
        cap = accumulator_cap(target)
        if cap is not None:  # 16 registers: what fits them, and narrower tiles with more rows
            reg_tiles = (*reg_tiles, (6, 2 * lanes), (8, lanes), (12, lanes), (2, 4 * lanes))
        if m == 1 and one_row_stream:  # one row: whole rows of B, a few at a time
            out += [_one_row(nb, n, kc, lanes) for kc in _divisors(k, (4, ONE_ROW_K))]
        for mc, nc, kc in itertools.product(_divisors(m, (32, 64, 128)), _divisors(n, (128, 256)), _kc_candidates(k)):
            seen = set()
            for mr, nr in reg_tiles:
                peel = PEEL_ROWS and cap is not None and mr in (cap // 2, cap) and mc > mr and nc % nr == 0
                if peel:  # (6, 5 or 4 rows: `peeled_row_tile`)
                    mr = peeled_row_tile(mc, nr // lanes, cap)
                else:  # small or odd extents: shrink (49 rows: 7)
                    mr, nr = divisor_at_most(mc, mr), math.gcd(nr, nc)
                if not _fits(cap, mr, max(1, nr // lanes)) or (cap is not None and (mr, nr) in seen):
                    continue
                seen.add((mr, nr))
                tiles = ((*b, mc, nc, kc), (*b, mr, nr, 1))
                for order in orders:
                    out.append(TileDecision(tiles=tiles, interchange=order))
                if m > mc:  # a packed B tile is reused by every row tile: one row tile, no reuse
                    out.append(TileDecision(tiles=tiles, interchange=packed_order, pack=True))
    elif info.kind == "conv2d":
        n, f, oh, ow, c, kh, kw = e
        cap = accumulator_cap(target)
        frs, owrs = ((16, 32, 64), (1, 4, 7, 8)) if cap is None else ((lanes, 16, 32, 64), (1, 2, 4, 6, 7, 8, 12))
        for fr, owr, cr in itertools.product(_divisors(f, frs), _divisors(ow, owrs), _divisors(c, (4, 8, 32))):
            if fr * owr * cr * kw > 1024 * lanes:  # > 1024 unrolled FMAs: spills, and LLVM takes ~10 s
                continue
            if not _fits(cap, owr, max(1, fr // lanes)):
                continue
            for order in ((0, 1, 4, 5, 2, 3, 6), ()):
                out.append(TileDecision(tiles=((1, fr, 1, owr, cr, 1, kw),), interchange=order, decompose=True))
    elif info.kind == "pooling":
        n, c, oh, ow, kh, kw = e
        cap = accumulator_cap(target)
        for cr, owr in itertools.product(_divisors(c, (1, 8, 16, 32)), _divisors(ow, (1, 2, 4, 7, 8, 14, 16))):
            if not _fits(cap, owr, max(1, cr // lanes)):
                continue
            out.append(TileDecision(tiles=((1, cr, 1, owr, 1, kw),), decompose=True))
    elif info.kind == "depthwise_conv2d":
        n, oh, ow, c, kh, kw = e
        for owr in _divisors(ow, (1, 2, 4, 7, 8, 14, 16, 28, 32, 56, 64, 112)):
            out.append(TileDecision(tiles=((1, 1, owr, 1, kh, kw),), vectorize=False))
    else:
        vec = "i1" not in info.dtypes
        # 16 registers: up to 1024 elements (128 ymm a value). A 4096-element tile of a
        # [16, 16, 16] elementwise op, picked by the model, took LLVM 47 s to compile on AVX2.
        # (Capping at 256, the default too, slowed bert_mini and gpt2_block by 20-40%.)
        budgets = (16, 64, 256, 1024, 4096) if accumulator_cap(target) is None else (16, 64, 256, 1024)
        for budget in budgets:
            out.append(TileDecision(tiles=(budget_tile(e, budget),), vectorize=vec))
        if not (vec and SCALAR_ONLY_STRIDED and info.unit_stride and e and e[-1] >= MIN_VECTOR_WIDTH):
            out.append(TileDecision(tiles=(budget_tile(e, 256),), vectorize=False))
    default = default_decision(info, target, one_row_stream=one_row_stream)
    unique = list(dict.fromkeys([default, *out]))
    return unique


def decisions(
    infos: Sequence[OpInfo],
    explicit: Mapping[int | str, TileDecision] | None = None,
    target=None,
    *,
    attached: Mapping[int, TileDecision] | None = None,
    one_row_stream: bool = True,
) -> dict[int, TileDecision]:
    """One decision per op: explicit (by op id or by kernel key), else the one the module
    carries (`attached`: its `tc.schedule` attributes), else the heuristic."""
    explicit, attached = explicit or {}, attached or {}
    chosen = {}
    for info in infos:
        d = explicit.get(info.op_id) or explicit.get(info.key) or attached.get(info.op_id)
        if d is not None:
            d.validate(info)
        chosen[info.op_id] = d or default_decision(info, target, one_row_stream=one_row_stream)
    return chosen


def attach(module: ir.Module, chosen: Mapping[int, TileDecision]) -> None:
    """Write each tagged op's decision onto it as `tc.schedule` (ops tagged by `tag_ops`)."""
    ctx = module.context

    def visit(op: ir.Operation) -> None:
        if OP_ID in op.attributes:
            d = chosen.get(ir.IntegerAttr(op.attributes[OP_ID]).value)
            if d is not None:
                op.attributes[tc.SCHEDULE] = tc.schedule_attr(d.to_dict(), ctx)

    walk_ops(module.operation, visit)


def attached(module: ir.Module) -> dict[int, TileDecision]:
    """The `tc.schedule` decisions the module's tagged ops carry, by op id."""
    out: dict[int, TileDecision] = {}

    def visit(op: ir.Operation) -> None:
        if OP_ID in op.attributes:
            d = tc.read_schedule(op)
            if d is not None:
                out[ir.IntegerAttr(op.attributes[OP_ID]).value] = TileDecision.from_json(d)

    walk_ops(module.operation, visit)
    return out


# ------------------------------------------------------------------- transform scripts


def _tile_level(
    handle: str, sizes: Sequence[int], extents: Sequence[int], interchange: Sequence[int], tag: str, out: list[str]
) -> str:
    """One `tile_using_for`; a size equal to the extent is left untiled (0)."""
    sizes = [0 if s >= x else s for s, x in zip(sizes, extents)]
    loops = sum(1 for s in sizes if s)
    if not loops:
        return handle
    inter = f" interchange = [{', '.join(map(str, interchange))}]" if interchange else ""
    types = ", ".join([ANY] * (loops + 1))
    out.append(
        f"    %{tag}, %{tag}_loops:{loops} = transform.structured.tile_using_for {handle} "
        f"tile_sizes [{', '.join(map(str, sizes))}]{inter} : ({ANY}) -> ({types})"
    )
    return f"%{tag}"


def _pack_rhs(handle: str, info: OpInfo, out: list[str]) -> str:
    """Copy the right-hand operand's tile into its own buffer (a no-fold pad)."""
    tag = f"%p{info.op_id}"
    elem = info.dtypes[1] if len(info.dtypes) > 1 else "f32"
    zero = "0.0" if elem.startswith(("f", "bf")) else "0"
    dims = ", ".join(str(i) for i in range(len(info.extents)))
    out.append(
        f"    {tag}, {tag}_pad, {tag}_copy = transform.structured.pad {handle} {{"
        f"padding_values = [{zero} : {elem}, {zero} : {elem}, {zero} : {info.dtypes[-1]}], "
        f"padding_dimensions = [{dims}], "
        f'nofold_flags = [0, 1, 0], copy_back_op = "none"}} : ({ANY}) -> ({ANY}, {ANY}, {ANY})'
    )
    return tag


def _as_matmul(handle: str, op_id: int, out: list[str]) -> str:
    """A batched matmul's cache tile (batch 1) restated as a `linalg.matmul`: generalized,
    its unit batch dim folded away (rank-reducing slices), specialized back. Register tiles
    of the batched op keep the unit dim, and vectorized so their accumulator's read and
    write fold into different tensors: it was loaded and stored at every step of the k loop
    (a 4x128x128x64 batched matmul ran well below the speed of the same tiles as a
    matmul)."""
    g, loop, m = f"%bg{op_id}", f"%bl{op_id}", f"%bm{op_id}"
    out.append(
        f"""    {g} = transform.structured.generalize {handle} : ({ANY}) -> {ANY}
    {loop} = transform.get_parent_op {g} {{op_name = "scf.for"}} : ({ANY}) -> {ANY}
    transform.apply_patterns to {loop} {{
      transform.apply_patterns.linalg.fold_unit_extent_dims_via_slices
    }} : {ANY}
    %bf{op_id} = transform.structured.match ops{{["linalg.generic"]}} in {loop} : ({ANY}) -> {ANY}
    {m} = transform.structured.specialize %bf{op_id} : ({ANY}) -> {ANY}"""
    )
    return m


def _unit_batch(extents: Sequence[int]) -> bool:
    """A batched matmul of batch 1 with rows, columns and a k loop (its batch folds away)."""
    return len(extents) > 3 and all(x == 1 for x in extents[:-3]) and all(x > 1 for x in extents[-3:])


def _register_tile_as_matmul(handle: str, op_id: int, extents: Sequence[int], out: list[str]) -> str:
    """A batched matmul fused as a register tile (batch 1: `passes/panel_weights.py`'s
    panels) restated as a `linalg.matmul` (`_as_matmul`), inside a one-trip loop of its own
    (so the unit-dim folding touches no other op of the group). Vectorized as a batched
    contraction, its batch dim and broadcast left operand kept vector.contract from
    lowering to outer products: a scalar reduction per element."""
    sizes = ", ".join(str(x if i == len(extents) - 3 else 0) for i, x in enumerate(extents))
    out.append(
        f"    %rt{op_id}, %rt{op_id}_loop = transform.structured.tile_using_for {handle} "
        f"tile_sizes [{sizes}] : ({ANY}) -> ({ANY}, {ANY})"
    )
    return _as_matmul(f"%rt{op_id}", op_id, out)


def tiling_script(infos: Sequence[OpInfo], scheds: Mapping[int, TileDecision], *, vectorize: bool = False) -> str:
    """Transform script that tiles every op by its schedule (and decomposes conv tiles);
    with `vectorize`, each register tile is vectorized right after it is formed."""
    body: list[str] = []
    for info in infos:
        s = scheds[info.op_id]
        h = f"%op{info.op_id}"
        body.append(
            f"    {h} = transform.structured.match attributes{{{OP_ID} = {info.op_id} : i64}} in %root"
            f" : ({ANY}) -> {ANY}"
        )
        extents = list(info.extents)
        batch = 0  # leading batch dims still on the op
        if info.kind == "batch_matmul" and len(s.tiles) == 1 and vectorize and s.vectorize and _unit_batch(extents):
            # a fused group's accumulator tile: a matmul before its k loop is formed
            h, batch = _register_tile_as_matmul(h, info.op_id, extents, body), len(extents) - 3
            extents = extents[batch:]
        register_extents = extents
        for level, sizes in enumerate(s.tiles):
            sizes = sizes[batch:]
            if level == len(s.tiles) - 1:
                register_extents = list(extents)
            looped = any(t < x for t, x in zip(sizes, extents))
            h = _tile_level(h, sizes, extents, s.interchange if level == 0 else (), f"t{info.op_id}_{level}", body)
            if level == 0 and s.pack:
                h = _pack_rhs(h, info, body)
            extents = [min(t, x) if t else x for t, x in zip(sizes, extents)]
            if level == 0 and info.kind == "batch_matmul" and len(s.tiles) > 1 and not s.pack and vectorize:
                # (inside a loop, batch 1; an m, n or k of 1 would fold away too: no matmul left)
                if _unit_batch(extents):
                    # (a cache tile of the whole op, in a fused group's loop: a one-trip loop
                    # of its own first, as for a register tile; restated in the group's loop,
                    # the unit-dim folding would reach the group's other ops)
                    if looped:
                        h = _as_matmul(h, info.op_id, body)
                    else:
                        h = _register_tile_as_matmul(h, info.op_id, extents, body)
                    batch = len(extents) - 3
                    extents = extents[batch:]
        if s.decompose:
            body.append(f"    %d{info.op_id} = transform.structured.decompose {h} : ({ANY}) -> {ANY}")
            h = f"%d{info.op_id}"
        if s.vectorize and vectorize and peeled_rows(info, s):
            # the row loop's last, partial tile a loop of its own; its shapes turn static once
            # canonicalized, and both parts are vectorized then (`vectorize_script`)
            sizes = [0 if t >= x else t for t, x in zip(s.tiles[-1][batch:], register_extents)]
            nth = sum(1 for t in sizes[len(sizes) - 3 :] if t)  # (the rows' loop: m, then n and k inside)
            body.append(f'    transform.annotate {h} "{PEELED}" : {ANY}')  # (the tile has no op id left)
            body.append(peel_parent_loop(h, nth, str(info.op_id)))
            continue
        if s.vectorize and vectorize:
            # An op the vectorizer rejects stays scalar (lowered to loops later).
            # One row (a k loop around a 1×n×1 tile): its mul + reduction made a contraction
            # before the unit dims are cast away, else the accumulator is loaded and stored at
            # every k (a classifier's 1×1280 @ 1280×1008).
            one_row = info.kind == "matmul" and extents[0] == 1 and len(s.tiles) > 1 and s.tiles[-1][-1] == 1
            loop, parent, contract = f"%pl{info.op_id}", "", ""
            if one_row:
                parent = f'      {loop} = transform.get_parent_op {h} {{op_name = "scf.for"}} : ({ANY}) -> {ANY}\n'
                contract = (
                    f"\n      transform.apply_patterns to {loop} {{\n"
                    f"        transform.apply_patterns.vector.reduction_to_contract\n      }} : {ANY}"
                )
            body.append(
                f"    transform.sequence %root : {ANY} failures(suppress) {{\n    ^bb0(%r{info.op_id}: {ANY}):\n"
                f"{parent}      transform.structured.vectorize {h} {{vectorize_nd_extract}} : {ANY}{contract}\n    }}"
            )
    return named_sequence("\n".join(body), consumed=False)


def peeled_ids(infos: Sequence[OpInfo], scheds: Mapping[int, TileDecision]) -> list[int]:
    """Ops whose register rows `tiling_script` peels (and leaves to `vectorize_script`)."""
    return [i.op_id for i in infos if scheds[i.op_id].vectorize and peeled_rows(i, scheds[i.op_id])]


def vectorize_script() -> str:
    """Vectorize every register tile `tiling_script` marked peeled (each op's main and
    remainder tiles), once canonicalization made their shapes static; one at a time, so a
    tile the vectorizer rejects leaves the others vectorized."""
    return named_sequence(
        f"    %v = transform.structured.match attributes{{{PEELED}}} in %root : ({ANY}) -> {ANY}\n"
        f"    transform.foreach %v : {ANY} {{\n    ^bb0(%one: {ANY}):\n"
        f"      transform.sequence %root : {ANY} failures(suppress) {{\n      ^bb0(%vr: {ANY}):\n"
        f"        transform.structured.vectorize %one {{vectorize_nd_extract}} : {ANY}\n      }}\n    }}",
        consumed=False,
    )
