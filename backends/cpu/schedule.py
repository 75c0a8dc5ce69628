"""CPU schedules: what each linalg op of a module is, and how it is tiled and vectorized.

Sits between the frontend's linalg-on-tensors module and the CPU lowering stages
(`backends/cpu/lowering.py`). Reads a module, writes nothing: it tags every structured
op with a `tc.op_id`, describes it as an `OpInfo` (kind, loop extents, iterator types),
picks a heuristic default `OpSchedule` per op kind, and renders the schedules as a
transform-dialect script that the lowering applies.

The heuristic is the documented fallback of the resolution order (explicit decision →
cost-model search → heuristic); later passes hand in decisions through `overrides`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

from torch_mlir import ir

OP_ID = "tc.op_id"

# Ops tiled and vectorized as "the rest": elementwise, broadcast, reductions, copies.
_NAMED_KINDS = {
    "linalg.matmul": "matmul",
    "linalg.batch_matmul": "batch_matmul",
    "linalg.conv_2d_nchw_fchw": "conv2d",
    "linalg.depthwise_conv_2d_nchw_chw": "depthwise_conv2d",
    "linalg.pooling_nchw_max": "pooling",
    "linalg.pooling_nchw_sum": "pooling",
}
_SKIPPED = {"linalg.yield", "linalg.index"}

# Elements one vectorized register tile may hold (keeps vectors in the register file).
VECTOR_BUDGET = 1024
LANES = 16  # f32 lanes of a zmm register


@dataclasses.dataclass(frozen=True)
class OpInfo:
    """A structured op as the scheduler sees it."""

    op_id: int
    name: str  # e.g. "linalg.matmul"
    kind: str  # matmul | batch_matmul | conv2d | depthwise_conv2d | pooling | elementwise | reduction
    extents: tuple[int, ...]  # static loop extents, in iteration-domain order
    iterators: tuple[str, ...]  # "parallel" | "reduction" per loop
    strides: tuple[int, ...] = ()  # convolution/pooling strides
    dtypes: tuple[str, ...] = ()  # element type of each operand

    @property
    def flops(self) -> int:
        return 2 * math.prod(self.extents) if self.kind in _FLOP_KINDS else math.prod(self.extents)


_FLOP_KINDS = {"matmul", "batch_matmul", "conv2d", "depthwise_conv2d"}


@dataclasses.dataclass(frozen=True)
class OpSchedule:
    """How one op is scheduled: tiling levels (outer first), optional interchange of the
    first level, and whether the register tile is decomposed (2-D conv → 1-D) and vectorized."""

    tiles: tuple[tuple[int, ...], ...]
    interchange: tuple[int, ...] = ()
    decompose: bool = False
    vectorize: bool = True


# ----------------------------------------------------------------------------- analysis
def tag_ops(module: ir.Module) -> list[OpInfo]:
    """Give every structured op a unique `tc.op_id` attribute and describe it."""
    infos: list[OpInfo] = []

    def visit(op: ir.Operation) -> None:
        name = op.name
        if name.startswith("linalg.") and name not in _SKIPPED:
            op_id = len(infos)
            op.attributes[OP_ID] = ir.IntegerAttr.get(ir.IntegerType.get_signless(64), op_id)
            infos.append(describe(op, op_id))

    _walk(module.operation, visit)
    return infos


def _walk(op: ir.Operation, fn) -> None:
    for region in op.regions:
        for block in region.blocks:
            for child in block.operations:
                child = child.operation
                fn(child)
                if not child.name.startswith("linalg."):
                    _walk(child, fn)


def _element_type(t: ir.Type) -> str:
    t = t.maybe_downcast()
    return str(t.element_type) if isinstance(t, ir.ShapedType) else str(t)


def _shape(value: ir.Value) -> list[int]:
    return list(ir.ShapedType(value.type).shape)


def describe(op: ir.Operation, op_id: int) -> OpInfo:
    """Loop extents and iterator types of a structured op with static shapes."""
    name = op.name
    kind = _NAMED_KINDS.get(name)
    operands = list(op.operands)
    out = _shape(operands[-1]) if operands else []
    strides: tuple[int, ...] = ()
    if "strides" in op.attributes:
        strides = tuple(int(s) for s in ir.DenseIntElementsAttr(op.attributes["strides"]))
    if kind == "matmul":
        extents, its = (*out, _shape(operands[0])[1]), ("parallel",) * 2 + ("reduction",)
    elif kind == "batch_matmul":
        extents, its = (*out, _shape(operands[0])[2]), ("parallel",) * 3 + ("reduction",)
    elif kind == "conv2d":  # (n, f, oh, ow, c, kh, kw)
        extents, its = (*out, *_shape(operands[1])[1:]), ("parallel",) * 4 + ("reduction",) * 3
    elif kind == "depthwise_conv2d":  # (n, oh, ow, c, kh, kw)
        n, c, oh, ow = out
        extents, its = (n, oh, ow, c, *_shape(operands[1])[1:]), ("parallel",) * 4 + ("reduction",) * 2
    elif kind == "pooling":  # (n, c, oh, ow, kh, kw)
        extents, its = (*out, *_shape(operands[1])), ("parallel",) * 4 + ("reduction",) * 2
    else:
        extents, its = _generic_domain(op, name)
        kind = "reduction" if "reduction" in its else "elementwise"
    if any(e < 0 for e in extents):
        raise ValueError(f"dynamic shapes are not supported: {name} at {op.location}")
    dtypes = tuple(_element_type(v.type) for v in operands)
    return OpInfo(op_id, name, kind, tuple(int(e) for e in extents), tuple(its), strides, dtypes)


def _generic_domain(op: ir.Operation, name: str) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """Extents from indexing maps: each loop dim is read off an operand dim it indexes."""
    if "indexing_maps" in op.attributes:
        maps = [ir.AffineMapAttr(m).value for m in ir.ArrayAttr(op.attributes["indexing_maps"])]
        its = tuple(
            str(ir.Attribute(a)).split("<")[-1].rstrip(">") for a in ir.ArrayAttr(op.attributes["iterator_types"])
        )
        extents = [-1] * maps[0].n_dims
        for value, amap in zip(op.operands, maps):
            for i, expr in enumerate(amap.results):
                expr = expr.maybe_downcast()
                if isinstance(expr, ir.AffineDimExpr):
                    extents[expr.position] = _shape(value)[i]
        return tuple(extents), its
    # linalg.fill / transpose / broadcast / copy …: the init operand spans the domain.
    out = _shape(op.operands[-1])
    return tuple(out), ("parallel",) * len(out)


# ---------------------------------------------------------------------------- heuristic
def divisor_at_most(n: int, cap: int, *, multiple_of: int = 1) -> int:
    """Largest divisor of n that is ≤ cap, preferring multiples of `multiple_of`."""
    cap = max(1, min(n, cap))
    divs = [d for d in range(cap, 0, -1) if n % d == 0]
    preferred = [d for d in divs if d % multiple_of == 0]
    return (preferred or divs)[0]


def budget_tile(extents: Sequence[int], budget: int = VECTOR_BUDGET) -> tuple[int, ...]:
    """Register tile for an op with no better rule: innermost dims whole while they fit the
    vector budget, then the largest dividing slice of the next dim, 1 further out."""
    tile = [1] * len(extents)
    room = budget
    for d in reversed(range(len(extents))):
        t = divisor_at_most(extents[d], room)
        tile[d] = t
        if t < extents[d]:
            break
        room //= t
    return tuple(tile)


def default_schedule(info: OpInfo) -> OpSchedule:
    """The hand-written per-kind schedule (heuristic fallback)."""
    e = info.extents
    if info.kind in ("matmul", "batch_matmul"):
        *batch, m, n, k = e
        mc, nc, kc = divisor_at_most(m, 64), divisor_at_most(n, 128, multiple_of=LANES), divisor_at_most(k, 128)
        mr, nr = divisor_at_most(mc, 8), divisor_at_most(nc, 32, multiple_of=LANES)
        b = [1] * len(batch)
        return OpSchedule(tiles=((*b, mc, nc, kc), (*b, mr, nr, 1)))
    if info.kind == "conv2d":
        n, f, oh, ow, c, kh, kw = e
        fr = divisor_at_most(f, 2 * LANES, multiple_of=LANES)
        owr = divisor_at_most(ow, 8)
        cr = divisor_at_most(c, 16)
        # f, c, kh outside oh, ow: the filter tile (and its transpose) is hoisted out of the
        # spatial loops; the small output tile is what moves.
        return OpSchedule(tiles=((1, fr, 1, owr, cr, 1, kw),), interchange=(0, 1, 4, 5, 2, 3, 6), decompose=True)
    if info.kind == "pooling":
        n, c, oh, ow, kh, kw = e
        return OpSchedule(tiles=((1, divisor_at_most(c, LANES), 1, divisor_at_most(ow, 8), 1, kw),), decompose=True)
    if info.kind == "depthwise_conv2d":
        n, oh, ow, c, kh, kw = e
        return OpSchedule(tiles=((1, 1, ow, 1, kh, kw),), vectorize=False)
    # i1 memrefs hold a byte per element, but vector loads of i1 read packed bits: stay scalar.
    return OpSchedule(tiles=(budget_tile(e),), vectorize="i1" not in info.dtypes)


def schedules(infos: Sequence[OpInfo], overrides: Mapping[int, OpSchedule] | None = None) -> dict[int, OpSchedule]:
    overrides = overrides or {}
    return {i.op_id: overrides.get(i.op_id) or default_schedule(i) for i in infos}


# ------------------------------------------------------------------- transform scripts
_ANY = "!transform.any_op"


def _tile_level(
    handle: str, sizes: Sequence[int], extents: Sequence[int], interchange: Sequence[int], tag: str, out: list[str]
) -> str:
    """One `tile_using_for`; a size equal to the extent is left untiled (0)."""
    sizes = [0 if s >= x else s for s, x in zip(sizes, extents)]
    loops = sum(1 for s in sizes if s)
    if not loops:
        return handle
    inter = f" interchange = [{', '.join(map(str, interchange))}]" if interchange else ""
    types = ", ".join([_ANY] * (loops + 1))
    out.append(
        f"    %{tag}, %{tag}_loops:{loops} = transform.structured.tile_using_for {handle} "
        f"tile_sizes [{', '.join(map(str, sizes))}]{inter} : ({_ANY}) -> ({types})"
    )
    return f"%{tag}"


def tiling_script(infos: Sequence[OpInfo], scheds: Mapping[int, OpSchedule], *, vectorize: bool = False) -> str:
    """Transform script that tiles every op by its schedule (and decomposes conv tiles);
    with `vectorize`, each register tile is vectorized right after it is formed."""
    body: list[str] = []
    for info in infos:
        s = scheds[info.op_id]
        h = f"%op{info.op_id}"
        body.append(
            f"    {h} = transform.structured.match attributes{{{OP_ID} = {info.op_id} : i64}} in %root"
            f" : ({_ANY}) -> {_ANY}"
        )
        extents = list(info.extents)
        for level, sizes in enumerate(s.tiles):
            h = _tile_level(h, sizes, extents, s.interchange if level == 0 else (), f"t{info.op_id}_{level}", body)
            extents = [min(t, x) if t else x for t, x in zip(sizes, extents)]
        if s.decompose:
            body.append(f"    %d{info.op_id} = transform.structured.decompose {h} : ({_ANY}) -> {_ANY}")
            h = f"%d{info.op_id}"
        if s.vectorize and vectorize:
            # An op the vectorizer rejects stays scalar (lowered to loops later).
            body.append(
                f"    transform.sequence %root : {_ANY} failures(suppress) {{\n    ^bb0(%r{info.op_id}: {_ANY}):\n"
                f"      transform.structured.vectorize {h} {{vectorize_nd_extract}} : {_ANY}\n    }}"
            )
    return _named_sequence("\n".join(body), consumed=False)


def vectorize_script(*, vectorize: bool = True) -> str:
    """Clean up the vectorized tiles, hoist accumulators, bufferize, lower vectors."""
    vec = (
        f"""    %fv = transform.structured.match ops{{["func.func"]}} in %root : ({_ANY}) -> {_ANY}
    transform.apply_patterns to %fv {{
      transform.apply_patterns.vector.transfer_permutation_patterns
      transform.apply_patterns.vector.reduction_to_contract
      transform.apply_patterns.vector.sink_ops
      transform.apply_patterns.vector.cast_away_vector_leading_one_dim
      transform.apply_patterns.vector.drop_unit_dims_with_shape_cast
      transform.apply_patterns.canonicalization
      transform.apply_patterns.tensor.fold_tensor_subset_ops_into_vector_transfers
      transform.apply_patterns.linalg.tiling_canonicalization
    }} : {_ANY}
    transform.apply_cse to %fv : {_ANY}
    %loops = transform.structured.match ops{{["scf.for"]}} in %fv : ({_ANY}) -> {_ANY}
    transform.apply_licm to %loops : {_ANY}
    transform.loop.hoist_loop_invariant_subsets %loops : {_ANY}
"""
        if vectorize
        else ""
    )
    return _named_sequence(
        vec
        + f"""    %b = transform.bufferization.one_shot_bufferize layout{{IdentityLayoutMap}} %root
        {{bufferize_function_boundaries = true, memcpy_op = "linalg.copy"}} : ({_ANY}) -> {_ANY}
    %g = transform.structured.match ops{{["func.func"]}} in %b : ({_ANY}) -> {_ANY}
    transform.apply_patterns to %g {{
      transform.apply_patterns.vector.lower_contraction lowering_strategy = "outerproduct"
      transform.apply_patterns.vector.transfer_permutation_patterns
      transform.apply_patterns.vector.reorder_multi_reduction_dims lowering_strategy = "innerparallel"
      transform.apply_patterns.vector.multi_reduction_flattening lowering_strategy = "innerparallel"
      transform.apply_patterns.vector.multi_reduction_unrolling lowering_strategy = "innerparallel"
      transform.apply_patterns.vector.split_transfer_full_partial split_transfer_strategy = "linalg-copy"
      transform.apply_patterns.vector.transfer_to_scf max_transfer_rank = 1 full_unroll = true
      transform.apply_patterns.vector.lower_transfer max_transfer_rank = 1
      transform.apply_patterns.vector.lower_outerproduct
    }} : {_ANY}
    transform.apply_patterns to %g {{
      transform.apply_patterns.vector.lower_shape_cast
      transform.apply_patterns.vector.lower_transpose lowering_strategy = "shuffle_1d"
    }} : {_ANY}
""",
        consumed=True,
    )


def _named_sequence(body: str, *, consumed: bool) -> str:
    mode = "transform.consumed" if consumed else "transform.readonly"
    return (
        "module attributes {transform.with_named_sequence} {\n"
        f"  transform.named_sequence @__transform_main(%root: {_ANY} {{{mode}}}) {{\n"
        f"{body}\n    transform.yield\n  }}\n}}\n"
    )
