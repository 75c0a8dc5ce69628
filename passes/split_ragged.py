"""The `split-ragged` pass: an op over a ragged extent split into a friendly part and a rest.

On the passes floor; the last of the canonical rewrites (`compiler/driver.py`), so fusion
and the schedules see its parts. Reads and rewrites a module.

A schedule tiles an op by sizes that divide its extents: every tile is static, so it
vectorizes and its loops need no bounds checks (only a matmul's register rows may leave a
remainder, peeled into a static tile of its own: `schedule.peeled_rows`). An extent with
no useful divisor (a ViT's 197 tokens: prime) leaves one-row tiles and, as a vector
dimension, no multiple of the 16 lanes — its matmuls ran scalar, a ViT at 0.43× eager.
Here every structured op is split along each ragged *parallel* loop at the last multiple
of `QUANTUM` (197 → 192 + 5; `transform.structured.split`): two static ops over slices of
the same operands, their results inserted into one tensor. Splitting every op of the model
at the same point lines the parts up: a consumer's part reads exactly its producer's part,
and `fold_slices` folds the slice of an insert into the inserted value, so each part
becomes its own chain (the 192-row matmul, its bias and GELU fuse as before; the 5-row
rest is a small chain of its own). Reduction loops are never split (a softmax's 197 keys
stay one row).
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

from torch_mlir import ir

from tilecraft.dialects.irutil import ANY, apply_transform, named_sequence, owner_op, run_pipeline
from tilecraft.dialects.opinfo import NAMED_KINDS, describe
from tilecraft.passes.base import ModulePass, Weights

QUANTUM = 16  # a split point is a multiple of this: whole f32 vectors, whole 8- and 16-row tiles
SMALLEST = 17  # extents below this are tiled whole
_MARK = "tc.split_mark"
_SPLIT_KINDS = {"matmul", "batch_matmul", "elementwise", "reduction"}


def _bodies(module: ir.Module) -> list[ir.Block]:
    return [
        f.regions[0].blocks[0]
        for f in module.body.operations
        if f.operation.name == "func.func" and f.regions[0].blocks
    ]


def ragged(extent: int) -> bool:
    """An extent worth splitting: no divisor from 4 to 64 (197, 211, 67·3 = 201), so its
    tiles would be 1 or 2 rows, or whole."""
    return extent >= SMALLEST and not any(extent % d == 0 for d in range(4, min(65, extent)))


def _split_dims(op: ir.Operation, extents: set[int] | None = None) -> list[tuple[int, int]]:
    """(loop, split point) for each ragged parallel loop of a structured op worth
    splitting: every one of a contraction's (its rows and columns are register tiles);
    of another op, its innermost loop (vectorized) and any loop over an extent a
    contraction splits (`extents`: so its parts line up with the contraction's). An outer
    ragged loop of a copy (a padded input's 31 rows) is tiled by 1 anyway."""
    if not op.name.startswith("linalg.") or op.name in ("linalg.fill", "linalg.yield", "linalg.index"):
        return []
    if op.name not in NAMED_KINDS and op.name != "linalg.generic":
        return []
    if not op.results or any(not isinstance(v.type.maybe_downcast(), ir.RankedTensorType) for v in op.results):
        return []
    try:
        info = describe(op, -1, body=False)  # extents and kind only
    except (ValueError, ir.MLIRError):
        return []
    if info.kind not in _SPLIT_KINDS:
        return []
    contraction = info.kind in ("matmul", "batch_matmul")
    last = len(info.extents) - 1
    return [
        (d, x - x % QUANTUM)
        for d, (x, it) in enumerate(zip(info.extents, info.iterators))
        if it == "parallel" and ragged(x) and (contraction or d == last or (extents is not None and x in extents))
    ]


def _contraction_extents(ops: list[ir.Operation]) -> set[int]:
    """The ragged extents the module's contractions are split along."""
    out: set[int] = set()
    for op in ops:
        if op.name in ("linalg.matmul", "linalg.batch_matmul"):
            dims = _split_dims(op)
            if dims:
                info = describe(op, -1, body=False)  # extents and kind only
                out |= {info.extents[d] for d, _ in dims}
    return out


def _static(op: ir.Operation) -> tuple[list[int], list[int], list[int]] | None:
    """Offsets, sizes and strides of a slice op that has them all static, unit strides and
    no rank change; else None."""
    try:
        offs, sizes, strides = (
            list(ir.DenseI64ArrayAttr(op.attributes[k])) for k in ("static_offsets", "static_sizes", "static_strides")
        )
    except KeyError:
        return None
    dyn = ir.ShapedType.get_dynamic_size()
    if (
        dyn in offs
        or dyn in sizes
        or any(s != 1 for s in strides)
        or len(op.operands) != (1 if op.name == "tensor.extract_slice" else 2)
    ):
        return None
    small = op.results[0] if op.name == "tensor.extract_slice" else op.operands[0]
    if ir.RankedTensorType(small.type).rank != len(sizes):  # rank-reducing / expanding
        return None
    return offs, sizes, strides


def fold_slices(module: ir.Module) -> int:
    """Read each static slice from where its elements were written: a slice of an
    `insert_slice` is the inserted value (same region), a slice of it (inside), or a slice
    of the destination (disjoint); a slice of a slice is one slice. Returns how many
    slices were rewritten (the dead inserts are left to canonicalization)."""
    changed = 0
    for body in _bodies(module):
        changed += _fold_slices(body)
    return changed


def _fold_slices(body: ir.Block) -> int:
    changed = 0
    progress = True
    while progress:
        progress = False
        for op in list(body.operations):
            op = op.operation
            if op.name != "tensor.extract_slice" or not list(op.results[0].uses):
                continue
            mine = _static(op)
            src = owner_op(op.operands[0])
            if mine is not None and src is not None and src.name == "linalg.fill" and len(src.results) == 1:
                _fill_slice(op, src)
                changed += 1
                progress = True
                continue
            theirs = (
                _static(src)
                if src is not None and src.name in ("tensor.insert_slice", "tensor.extract_slice")
                else None
            )
            if mine is None or theirs is None:
                continue
            eo, es, _ = mine
            so, ss, _ = theirs
            if src.name == "tensor.extract_slice":
                _reslice(op, src.operands[0], [a + b for a, b in zip(eo, so)])
            elif eo == so and es == ss:
                op.results[0].replace_all_uses_with(src.operands[0])
                op.erase()
            elif any(a + n <= b or b + m <= a for a, n, b, m in zip(eo, es, so, ss)):
                _reslice(op, src.operands[1], eo)
            elif all(b <= a and a + n <= b + m for a, n, b, m in zip(eo, es, so, ss)):
                _reslice(op, src.operands[0], [a - b for a, b in zip(eo, so)])
            else:
                continue
            changed += 1
            progress = True
    return changed


def _fill_slice(op: ir.Operation, fill: ir.Operation) -> None:
    """A slice of a fill: a fill of the slice of its init (each part its own
    accumulator's zero, which fusion can keep in registers)."""
    with ir.InsertionPoint(op), op.location:
        init = op.clone()
        init.operands[0] = fill.operands[1]
        new = fill.clone()
        new.operands[1] = init.results[0]
        new.results[0].set_type(op.results[0].type)
    op.results[0].replace_all_uses_with(new.results[0])
    op.erase()


def drop_overwritten_fills(module: ir.Module) -> int:
    """A fill whose every element a chain of `insert_slice`s overwrites (the parts of a
    split op, reassembled) is never read: the chain starts from its init instead.
    Returns how many chains were rewritten."""
    n = 0
    for op in [op.operation for body in _bodies(module) for op in body.operations]:
        base = owner_op(op.operands[1]) if op.name == "tensor.insert_slice" else None
        if base is None or base.name != "linalg.fill" or _static(op) is None:
            continue
        regions, cur = [], op
        while cur is not None:
            st = _static(cur)
            if st is None:
                break
            regions.append(st[:2])
            users = [owner_op(u) for u in cur.results[0].uses]
            nxt = users[0] if len(users) == 1 else None
            cur = (
                nxt
                if nxt is not None and nxt.name == "tensor.insert_slice" and nxt.operands[1] == cur.results[0]
                else None
            )
        shape = ir.RankedTensorType(base.results[0].type).shape
        disjoint = all(
            any(a + n_ <= b or b + m <= a for a, n_, b, m in zip(o1, s1, o2, s2))
            for i, (o1, s1) in enumerate(regions)
            for o2, s2 in regions[i + 1 :]
        )
        if disjoint and sum(math.prod(sz) for _, sz in regions) == math.prod(shape):
            op.operands[1] = base.operands[1]
            n += 1
    return n


def _reslice(op: ir.Operation, source: ir.Value, offsets: list[int]) -> None:
    op.operands[0] = source
    op.attributes["static_offsets"] = ir.DenseI64ArrayAttr.get(offsets, context=op.context)


def split_ragged(module: ir.Module) -> int:
    """Split every structured op along its ragged parallel loops; returns how many ops
    were split."""
    i64 = ir.IntegerType.get_signless(64, context=module.context)
    script: list[str] = []
    n = 0
    ops = [op.operation for body in _bodies(module) for op in body.operations]
    extents = _contraction_extents(ops)
    for op in ops:
        dims = _split_dims(op, extents)
        if not dims:
            continue
        op.attributes[_MARK] = ir.IntegerAttr.get(i64, n)
        parts = [f"%s{n}"]
        script.append(
            f"    %s{n} = transform.structured.match attributes{{{_MARK} = {n} : i64}} in %root : ({ANY}) -> {ANY}"
        )
        for d, at in dims:
            halves = []
            for p in parts:
                h = f"{p}_{d}"
                script.append(f"    {h} = transform.structured.split {p} after {at} {{dimension = {d}}} : {ANY}")
                script.append(f"    {h}a, {h}b = transform.split_handle {h} : ({ANY}) -> ({ANY}, {ANY})")
                halves += [f"{h}a", f"{h}b"]
            parts = halves
        n += 1
    if not n:
        return 0
    apply_transform(
        module, named_sequence("\n".join(script), consumed=False), stage="split-ragged", reproduce="split-ragged"
    )

    def unmark(op: ir.Operation) -> None:
        if _MARK in op.attributes:
            del op.attributes[_MARK]
        for region in op.regions:
            for block in region.blocks:
                for inner in block.operations:
                    unmark(inner.operation)

    unmark(module.operation)
    fold_slices(module)
    drop_overwritten_fills(module)
    run_pipeline(module, "builtin.module(func.func(canonicalize,cse))", stage="split-ragged", reproduce="split-ragged")
    return n


@dataclasses.dataclass(frozen=True)
class SplitRaggedPass(ModulePass):
    name: ClassVar[str] = "split-ragged"
    summary: ClassVar[str] = (
        "ops over a ragged extent (no divisor 4..64: 197 tokens) split at a multiple of 16 into static parts"
    )

    def apply(self, module: ir.Module, weights: Weights) -> None:
        split_ragged(module)
