"""Every target-neutral pass, by name (backends register their own stages beside these).

On the passes floor. `tilecraft-opt --list-passes` prints them with their options; the
driver builds its pipeline from these classes.
"""

from __future__ import annotations

from tilecraft.passes.base import ModulePass
from tilecraft.passes.depthwise import DepthwiseTapsPass
from tilecraft.passes.drop_empty_ops import DropEmptyOpsPass
from tilecraft.passes.drop_unit_reads import DropUnitReadsPass
from tilecraft.passes.fold_unit_dims import FoldUnitDimsPass
from tilecraft.passes.fusion import FusePass
from tilecraft.passes.im2col import Im2colPass
from tilecraft.passes.inline_broadcasts import InlineBroadcastsPass
from tilecraft.passes.pad_weights import PadWeightsPass
from tilecraft.passes.panel_weights import PanelEpiloguesPass, PanelWeightsPass
from tilecraft.passes.parallel import ParallelizePass
from tilecraft.passes.precision import PrecisionPass
from tilecraft.passes.private_fills import PrivateFillsPass
from tilecraft.passes.sink_expand_shapes import SinkExpandShapesPass
from tilecraft.passes.sink_extract_slices import SinkExtractSlicesPass
from tilecraft.passes.sink_transposes import SinkTransposesPass
from tilecraft.passes.split_ragged import SplitRaggedPass
from tilecraft.passes.subpixel import SubpixelConvPass

PASSES: dict[str, type[ModulePass]] = {
    p.name: p
    for p in (
        PrecisionPass,
        DropEmptyOpsPass,
        SubpixelConvPass,
        Im2colPass,
        DepthwiseTapsPass,
        InlineBroadcastsPass,
        SinkTransposesPass,
        SinkExtractSlicesPass,
        PanelWeightsPass,
        PadWeightsPass,
        SinkExpandShapesPass,
        FoldUnitDimsPass,
        DropUnitReadsPass,
        PanelEpiloguesPass,
        SplitRaggedPass,
        PrivateFillsPass,
        ParallelizePass,
        FusePass,
    )
}
