"""What each structured op of a module is: the analysis every floor above schedules by.

On the ground floor. `tag_ops` gives every structured op a `tc.op_id` (its number in walk
order) and describes it as an `OpInfo`: kind, loop extents, iterator types, dtypes, shapes,
and a structural `key` (independent of SSA names, of its position in the model and of
weight values, so the same layer in two models is one workload). `fused_ids` finds the ops
the fusion rewrite put into register tiles. Also the small tile arithmetic both the fusion
rewrite and the backends use (`divisor_at_most`, `budget_tile`). Writes only `tc.op_id`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import re
from collections.abc import Sequence

from torch_mlir import ir

from tilecraft.dialects.irutil import walk_ops
from tilecraft.dialects.tc import AMX, AMX_INIT, FUSED, OP_ID

# Ops tiled and vectorized as "the rest": elementwise, broadcast, reductions, copies.
NAMED_KINDS = {
    "linalg.matmul": "matmul",
    "linalg.batch_matmul": "batch_matmul",
    "linalg.conv_2d_nchw_fchw": "conv2d",
    "linalg.depthwise_conv_2d_nchw_chw": "depthwise_conv2d",
    "linalg.pooling_nchw_max": "pooling",
    "linalg.pooling_nchw_sum": "pooling",
}
KINDS = (*sorted(set(NAMED_KINDS.values())), "elementwise", "reduction")  # every OpInfo.kind
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
    shapes: tuple[tuple[int, ...], ...] = ()  # static shape of each operand
    body: str = ""  # normalized region text of a linalg.generic (what it computes)
    # an elementwise generic every operand of which reads its innermost loop contiguously,
    # or not at all (a broadcast): it vectorizes with plain loads (not part of `key`)
    unit_stride: bool = False

    @property
    def flops(self) -> int:
        return 2 * math.prod(self.extents) if self.kind in _FLOP_KINDS else math.prod(self.extents)

    @property
    def key(self) -> str:
        """Structural hash of the op: kind, shapes, dtypes, body. Independent of SSA names,
        of its position in the model, and of weight values."""
        payload = json.dumps(
            [self.name, self.kind, self.extents, self.iterators, self.strides, self.dtypes, self.shapes, self.body]
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


_FLOP_KINDS = {"matmul", "batch_matmul", "conv2d", "depthwise_conv2d"}


# ----------------------------------------------------------------------------- analysis
def tag_ops(module: ir.Module) -> list[OpInfo]:
    """Give every structured op a unique `tc.op_id` attribute and describe it (all but the
    `tc.amx` contractions, which `backends/cpu/amx.py` lowers whole)."""
    infos: list[OpInfo] = []
    state = ir.AsmState(module.operation)

    i64 = ir.IntegerType.get_signless(64, context=module.context)

    def visit(op: ir.Operation) -> None:
        if _tagged(op):
            op_id = len(infos)
            op.attributes[OP_ID] = ir.IntegerAttr.get(i64, op_id)
            infos.append(describe(op, op_id, state=state))

    walk_ops(module.operation, visit)
    return infos


def number_ops(module: ir.Module) -> int:
    """The `tc.op_id`s `tag_ops` gives, without describing the ops (a pass that only
    renumbers after moving ops); returns how many."""
    i64 = ir.IntegerType.get_signless(64, context=module.context)
    count = [0]

    def visit(op: ir.Operation) -> None:
        if _tagged(op):
            op.attributes[OP_ID] = ir.IntegerAttr.get(i64, count[0])
            count[0] += 1

    walk_ops(module.operation, visit)
    return count[0]


def _tagged(op: ir.Operation) -> bool:
    """Whether `tag_ops` gives `op` an id: a structured op, not one lowered whole (AMX)."""
    name = op.name
    attrs = op.attributes
    return name.startswith("linalg.") and name not in _SKIPPED and AMX not in attrs and AMX_INIT not in attrs


def fused_ids(module: ir.Module, infos: Sequence[OpInfo]) -> set[int]:
    """Op ids (as tagged) of ops the fusion pass fused into register tiles (at most
    4 × VECTOR_BUDGET elements: a larger one, whose loops could not be tiled, is
    scheduled like any other op)."""
    out: set[int] = set()

    def visit(op: ir.Operation) -> None:
        if FUSED in op.attributes and OP_ID in op.attributes:
            out.add(ir.IntegerAttr(op.attributes[OP_ID]).value)

    walk_ops(module.operation, visit)
    return {i.op_id for i in infos if i.op_id in out and register_elements(i) <= 4 * VECTOR_BUDGET}


def register_elements(info: OpInfo) -> int:
    """Elements a register tile of the op holds (a matmul's: its accumulator)."""
    if info.kind in ("matmul", "batch_matmul"):
        return math.prod(e for e, it in zip(info.extents, info.iterators) if it == "parallel")
    return math.prod(info.extents)


def _element_type(t: ir.Type) -> str:
    t = t.maybe_downcast()
    return str(t.element_type) if isinstance(t, ir.ShapedType) else str(t)


def _shape(value: ir.Value) -> list[int]:
    return list(ir.ShapedType(value.type).shape)


def _normalized_body(op: ir.Operation, state: ir.AsmState | None = None) -> str:
    """The generic's region as text, SSA names numbered in order of appearance. With
    `state` (one `AsmState` for the whole module) the op prints in microseconds; a block
    printed on its own builds the module's names again each time (milliseconds per op,
    a fifth of a 140-kernel compile). Same text either way."""
    if op.name != "linalg.generic":
        return ""
    if not op.regions:
        text = ""
    elif state is not None:
        buf = io.StringIO()
        op.print(state=state, file=buf)
        full = buf.getvalue()
        text = full[full.index("\n^bb0") + 1 : full.rindex("\n}") + 1]
    else:
        text = str(op.regions[0].blocks[0])
    names: dict[str, str] = {}
    return re.sub(r"%[\w.$-]+", lambda m: names.setdefault(m.group(0), f"%v{len(names)}"), text)


def describe(op: ir.Operation, op_id: int, *, state: ir.AsmState | None = None, body: bool = True) -> OpInfo:
    """Loop extents and iterator types of a structured op with static shapes. `body=False`:
    without the generic's normalized body (printing it is most of the cost)."""
    name = op.name
    kind = NAMED_KINDS.get(name)
    operands = list(op.operands)
    out = _shape(operands[-1]) if operands else []
    strides: tuple[int, ...] = ()
    if "strides" in op.attributes:
        strides = tuple(int(s) for s in ir.DenseIntElementsAttr(op.attributes["strides"]))
    if kind == "matmul":
        extents, its = (*out, _shape(operands[0])[1]), ("parallel",) * 2 + ("reduction",)
    elif kind == "batch_matmul":
        extents, its = (*out, _shape(operands[0])[-1]), ("parallel",) * 3 + ("reduction",)
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
    shapes = tuple(tuple(_shape(v)) if isinstance(v.type.maybe_downcast(), ir.ShapedType) else () for v in operands)
    text = _normalized_body(op, state) if body else ""
    unit = kind == "elementwise" and _unit_stride(op)
    return OpInfo(op_id, name, kind, tuple(int(e) for e in extents), tuple(its), strides, dtypes, shapes, text, unit)


def _unit_stride(op: ir.Operation) -> bool:
    """Every indexing map of the generic a projection keeping the loops' order (results:
    loop dims in increasing order, or constants): an operand that the innermost loop
    indexes has it as its last, contiguous dim. Transposes and gathers are not."""
    if op.name != "linalg.generic" or "indexing_maps" not in op.attributes:
        return False
    for m in ir.ArrayAttr(op.attributes["indexing_maps"]):
        last = -1
        for expr in ir.AffineMapAttr(m).value.results:
            expr = expr.maybe_downcast()
            if isinstance(expr, ir.AffineConstantExpr):
                continue
            if not isinstance(expr, ir.AffineDimExpr) or expr.position <= last:
                return False
            last = expr.position
    return True


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


def peeled_row_tile(rows: int, vectors: int, cap: int = 12) -> int:
    """Rows of a matmul's accumulator tile `vectors` wide on a target with `cap`
    accumulator registers, the last partial tile peeled: of cap/vectors rows and the two
    below, the fewest cycles per k step, a tile of x rows costing max(x·vectors/2, 4) + 1
    (two FMAs a cycle, four cycles' latency, and a line of B per tile). A remainder of one
    row is a latency-bound tile of its own: 49 rows run as 9×5 + 4, not 8×6 + 1 (a fused
    [16, 49, 256, 256] batched matmul took 2.22 ms as 8×6 + 1, against 1.88 for 48 rows,
    AVX2 Zen 3)."""
    top = max(1, cap // vectors)
    if rows <= top:
        return rows

    def tile(x: int) -> float:
        # (one row costs a whole tile: a one-row batched tile takes a slower path, and a
        # fused [16, 50, 256, 256] ran 2.07 ms to 49 rows' 2.22)
        return 0 if not x else max((top if x == 1 else x) * vectors / 2, 4) + 1

    def cycles(r: int) -> float:
        return rows // r * tile(r) + tile(rows % r)

    return min((r for r in range(top, max(top - 3, 0), -1)), key=cycles)


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


# ------------------------------------------------------------- generic-op predicates
def indexing_maps(op: ir.Operation) -> list[ir.AffineMap]:
    """A structured op's indexing maps, one per operand."""
    return [ir.AffineMapAttr(a).value for a in ir.ArrayAttr(op.attributes["indexing_maps"])]


def positions_any(amap: ir.AffineMap) -> list[int] | None:
    """The loops a map of dims and constants reads, or None."""
    out = []
    for expr in amap.results:
        expr = expr.maybe_downcast()
        if isinstance(expr, ir.AffineDimExpr):
            out.append(expr.position)
        elif not isinstance(expr, ir.AffineConstantExpr):
            return None
    return out


def is_elementwise(op: ir.Operation) -> bool:
    """An all-parallel generic with one result, its output read through the identity and
    its output value unused in the body (it can be given a fresh init)."""
    if op.name != "linalg.generic" or len(op.results) != 1:
        return False
    if any("parallel" not in str(a) for a in ir.ArrayAttr(op.attributes["iterator_types"])):
        return False
    maps = indexing_maps(op)
    if maps[-1] != ir.AffineMap.get_identity(maps[-1].n_dims, op.context):
        return False
    block = op.regions[0].blocks[0]
    if list(block.arguments[len(block.arguments) - 1].uses):
        return False
    return not any(o.name == "linalg.index" for o in block.operations)


def yields_its_input(op: ir.Operation) -> bool:
    """An elementwise generic of one input whose body yields that input unchanged."""
    if not is_elementwise(op) or len(op.operands) != 2:
        return False
    block = op.regions[0].blocks[0]
    ops = list(block.operations)
    return len(ops) == 1 and ops[0].operation.name == "linalg.yield" and ops[0].operands[0] == block.arguments[0]


def is_live(op: ir.Operation) -> bool:
    """Whether `op` is still in the IR (not erased by a rewrite)."""
    try:
        return op.parent is not None
    except Exception:  # an erased op
        return False
