"""The frontend's export in one trace (`frontend.export_decomposed`): the graph
`torch.export.export(...).run_decompositions(table)` gives, made by one trace instead of two."""

from __future__ import annotations

import collections

import torch
import torch.nn.functional as F

from tilecraft import frontend


class _Mixed(torch.nn.Module):
    """Ops the table decomposes (batch norm, GELU), one it keeps whole (nearest upsampling,
    a composite op `run_decompositions` preserves) and a linear layer."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(16, 5)

    def forward(self, x):
        y = F.gelu(self.bn(self.conv(x)))
        y = F.interpolate(y, scale_factor=2.0, mode="nearest")
        return self.fc(y.mean(dim=(2, 3)).repeat(1, 4))


def _targets(prog) -> collections.Counter:
    return collections.Counter(str(n.target) for n in prog.graph.nodes if n.op == "call_function")


def test_one_trace_gives_the_two_trace_graph():
    from torch_mlir.extras.fx_decomp_util import get_decomposition_table

    model, x = _Mixed().eval(), torch.randn(1, 3, 4, 4)
    table = get_decomposition_table()
    two = torch.export.export(model, (x,), strict=False).run_decompositions(table)
    one = frontend.export_decomposed(model, (x,), table)
    assert _targets(one) == _targets(two)
    assert any("upsample_nearest2d" in t for t in _targets(one))  # (kept whole, as before)
    assert [s.kind for s in one.graph_signature.input_specs] == [s.kind for s in two.graph_signature.input_specs]
    torch.testing.assert_close(one.module()(x), model(x))


def test_tracer_restored_after_a_failing_export():
    from torch.export import _trace

    before = _trace._export_to_aten_ir

    class _Bad(torch.nn.Module):
        def forward(self, x):
            raise ValueError("no")

    try:
        frontend.export_decomposed(_Bad(), (torch.randn(2),), {})
    except Exception:
        pass
    assert _trace._export_to_aten_ir is before
