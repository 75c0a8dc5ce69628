"""The frontend's export in one trace (`frontend.export_decomposed`): the graph
`torch.export.export(...).run_decompositions(table)` gives, made by one trace instead of two."""

from __future__ import annotations

import collections

import pytest
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


def _export_specs(prog):
    ins = [(s.kind, s.target) for s in prog.graph_signature.input_specs]
    outs = [s.kind for s in prog.graph_signature.output_specs]
    return ins, outs


class _Mutates(torch.nn.Module):
    def forward(self, a, b):
        a.add_(b)
        return a, a * torch.tensor([1.0, 2.0, 3.0])  # (a constant in forward: lifted)


class _NoInputs(torch.nn.Module):
    def forward(self):
        return torch.tensor([1.0, 2.0]) * 2 + torch.tensor([3.0, 4.0])  # (two constants, no placeholder)


def test_aot_path_gives_the_export_graph():
    """AOTAutograd's inference export (`_aot_export`) gives export's graph, signature and
    output structure: a model's parameters and buffers, an updated input, a constant."""
    from torch_mlir.extras.fx_decomp_util import get_decomposition_table

    table = get_decomposition_table()
    cases = (
        (_Mixed().eval(), (torch.randn(1, 3, 4, 4),)),
        (_Mutates(), (torch.randn(3), torch.randn(3))),
        (_NoInputs(), ()),
    )
    for model, args in cases:
        aot = frontend._aot_export(model, args, table)
        ref = frontend._export_in_one_trace(model, args, table)
        assert aot is not None
        assert _targets(aot) == _targets(ref)
        assert _export_specs(aot)[1] == _export_specs(ref)[1]
        assert [k for k, _ in _export_specs(aot)[0]] == [k for k, _ in _export_specs(ref)[0]]
        assert aot.call_spec.out_spec == ref.call_spec.out_spec
        torch.testing.assert_close(aot.module()(*[a.clone() for a in args]), model(*[a.clone() for a in args]))
    assert frontend._aot_export(_Mixed().eval(), (torch.randn(1, 3, 4, 4),), table).state_dict.keys() == set(
        _Mixed().state_dict()
    )


class _Counts(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("calls", torch.zeros(3))

    def forward(self, x):
        self.calls.add_(1)
        return x + self.calls


class _Returns(torch.nn.Module):
    def forward(self, x):
        return x + 1, None


def test_aot_path_leaves_what_it_cannot_take_to_export():
    """A weight updated in place and an output that is not a tensor: export's tracer
    takes them (and says what it refuses), as before."""
    model = _Counts()
    lifted = frontend._Lifted(model, ["calls"])
    assert frontend._aot_export(lifted, (torch.zeros(3), torch.randn(3)), {}) is None
    with pytest.raises(frontend._NotTensors):
        frontend._aot_export(_Returns(), (torch.randn(3),), {})
    prog = frontend.export_decomposed(_Returns(), (torch.randn(3),), {})
    assert [s.arg.value for s in prog.graph_signature.output_specs if hasattr(s.arg, "value")] == [None]
