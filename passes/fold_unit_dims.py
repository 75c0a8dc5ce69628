"""The `fold-unit-dims` pass: unit dims of generics, broadcasts and transposes folded.

On the passes floor; one of the canonical rewrites (`compiler/driver.py`). Reads and
rewrites a module with upstream `linalg-fold-unit-extent-dims` (broadcasts and transposes
generalized first so they lose theirs too): a transformer's [1, S, D] activations meet its
[S, D] GEMMs without reshapes, and a layer norm reduces [S, D] rows. Not done while a
named convolution or pooling is left (see `fold_unit_dims`).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from torch_mlir import ir

from tilecraft.dialects import opinfo
from tilecraft.dialects.irutil import ANY, apply_transform, named_sequence, run_pipeline, snapshot, walk_ops
from tilecraft.passes.base import ModulePass, Weights


def fold_unit_dims(module: ir.Module) -> ir.Module:
    """Drop the unit dims of every generic (`linalg-fold-unit-extent-dims`), broadcasts and
    transposes generalized first so they lose theirs too. A layer norm over [1, S, D] then
    reduces [S, D] into [S] instead of keeping [S, 1] rows (a result indexed by a constant:
    no tile of it maps back onto the loops, and `loops_to_sink` rejects it), a batch-1 bias
    broadcast is read without a reshape between it and the add, and a transformer's
    [1, S, D] activations meet its [S, D] GEMMs without reshapes. Not done while a named
    convolution or pooling is left (`_windowed`): it keeps its batch dim, and its folded
    epilogue would read it through a reshape, which no group crosses (mobilenet_v2 lost
    its depthwise + batch norm + ReLU6 groups). The unfused compile gets the same module
    (one stage: `driver.convolutions_as_gemms`)."""
    if _windowed(module):
        return module
    script = named_sequence(
        f"""    %n = transform.structured.match ops{{["linalg.broadcast", "linalg.transpose"]}} in %root
      : ({ANY}) -> {ANY}
    %g = transform.structured.generalize %n : ({ANY}) -> {ANY}""",
        consumed=False,
    )
    before = snapshot(module)
    apply_transform(module, script, stage="fold-unit-dims", reproduce="fold-unit-dims", before=before)
    pipeline = "builtin.module(func.func(linalg-fold-unit-extent-dims,canonicalize,cse))"
    return run_pipeline(module, pipeline, stage="fold-unit-dims", reproduce="fold-unit-dims", before=before)


WINDOWED = {name for name, kind in opinfo.NAMED_KINDS.items() if kind in ("conv2d", "depthwise_conv2d", "pooling")}


def _windowed(module: ir.Module) -> bool:
    """Whether a named windowed op (convolution, pooling) is left: `fold_unit_dims` would
    put a reshape between its [1, C, H, W] result and its folded epilogue."""
    found: list[str] = []
    walk_ops(module.operation, lambda op: found.append(op.name) if op.name in WINDOWED else None)
    return bool(found)


@dataclasses.dataclass(frozen=True)
class FoldUnitDimsPass(ModulePass):
    name: ClassVar[str] = "fold-unit-dims"
    summary: ClassVar[str] = "unit dims of generics, broadcasts and transposes folded ([1, S, D] → [S, D])"

    def apply(self, module: ir.Module, weights: Weights) -> None:
        fold_unit_dims(module)
