"""Every target-neutral pass, by name (backends register their own stages beside these).

On the passes floor. `tilecraft-opt --list-passes` prints them with their options; the
driver builds its pipeline from these classes.
"""

from __future__ import annotations

from tilecraft.passes.base import ModulePass
from tilecraft.passes.depthwise import DepthwiseTapsPass
from tilecraft.passes.fusion import FoldUnitDimsPass, FusePass, PrivateFillsPass
from tilecraft.passes.im2col import DropUnitReadsPass, Im2colPass, PadWeightsPass, SinkExpandShapesPass
from tilecraft.passes.layout import InlineBroadcastsPass, SinkExtractSlicesPass, SinkTransposesPass
from tilecraft.passes.precision import PrecisionPass

PASSES: dict[str, type[ModulePass]] = {
    p.name: p
    for p in (
        PrecisionPass,
        Im2colPass,
        DepthwiseTapsPass,
        InlineBroadcastsPass,
        SinkTransposesPass,
        SinkExtractSlicesPass,
        PadWeightsPass,
        SinkExpandShapesPass,
        FoldUnitDimsPass,
        DropUnitReadsPass,
        PrivateFillsPass,
        FusePass,
    )
}
