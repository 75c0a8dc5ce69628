"""Depthwise convolutions as sums of shifted slices (`passes/depthwise.py`)."""

import math

import pytest
import torch
from torch import nn
from torch_mlir import ir

from conftest import reference_target
from tilecraft import driver, frontend
from tilecraft.backends.cpu import schedule as tiling
from tilecraft.passes import depthwise, im2col
from tilecraft.passes.sink_transposes import transpose_of


def _block(c: int, stride: int, bias: bool) -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(c, c, 3, stride, 1, groups=c, bias=bias), nn.BatchNorm2d(c), nn.ReLU6()).eval()
    m[1].running_mean.normal_()
    m[1].running_var.uniform_(0.5, 2.0)
    return m


def _names(module) -> list[str]:
    names = []
    tiling.walk_ops(module.operation, lambda op: names.append(op.name))
    return names


@pytest.mark.parametrize("bias", [False, True])
def test_stride_one_depthwise_becomes_one_elementwise_op_and_matches_eager(bias):
    model, x = _block(32, 1, bias), torch.randn(1, 32, 14, 14)
    imported = frontend.import_module(model, (x,), spec="<test>")
    assert depthwise.rewrite(imported.module) == 1
    names = _names(imported.module)
    assert depthwise.DEPTHWISE not in names
    assert names.count("tensor.extract_slice") == 18  # 9 taps of the input, 9 of the filter
    if not bias:  # the zero fill is gone with the accumulator
        assert "linalg.fill" not in names
    with torch.no_grad():
        ref = model(x)
    for fuse in (True, False):
        compiled = driver.compile_model(frontend.import_module(model, (x,), spec="<test>"), fuse=fuse)
        assert driver.compare(compiled.fn(x), ref).ok


@pytest.mark.parametrize("hw, tiles", [(64, (1, 1, 16)), (56, (1, 2, 0)), (7, (1, 0, 0))])
def test_fused_depthwise_group_takes_small_register_tiles(hw, tiles):
    """Rows of whole vectors: one vector per tile; other rows: whole rows, about
    MANY_OPERANDS_BUDGET elements (not 14-wide quarter rows of 8 + 4 + 2 lanes)."""
    model, x = _block(32, 1, False), torch.randn(1, 32, hw, hw)
    compiled = driver.compile_model(frontend.import_module(model, (x,), spec="<test>"), target=reference_target())
    (group,) = compiled.fusion
    # the depthwise op, the folded batch norm's shift (`compiler/batchnorm.py`), the clamp's producer
    assert len(group.members) == 3
    assert group.tiles == tiles  # [C, H, W] after unit dims fold
    with torch.no_grad():
        assert driver.compare(compiled.fn(x), model(x)).ok


def test_strided_depthwise_keeps_the_named_op():
    model, x = _block(16, 2, False), torch.randn(1, 16, 16, 16)
    imported = frontend.import_module(model, (x,), spec="<test>")
    assert depthwise.rewrite(imported.module) == 0
    assert depthwise.DEPTHWISE in _names(imported.module)


@pytest.mark.parametrize(
    "c, k, pad, n, hw",
    [(8, 5, 2, 1, (12, 20)), (16, 3, 0, 2, (10, 9)), (4, (3, 1), (1, 0), 1, (7, 7))],
    ids=["5x5-bias", "batch2-unpadded", "3x1"],
)
def test_other_windows_and_batches_match_eager(c, k, pad, n, hw):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(c, c, k, 1, pad, groups=c), nn.ReLU()).eval()
    x = torch.randn(n, c, *hw)
    assert depthwise.rewrite(frontend.import_module(model, (x,), spec="<test>").module) == 1
    compiled = driver.compile_model(frontend.import_module(model, (x,), spec="<test>"))
    with torch.no_grad():
        assert driver.compare(compiled.fn(x), model(x)).ok


def test_a_window_over_the_tap_limit_keeps_the_named_op():
    model, x = nn.Conv2d(8, 8, 7, 1, 3, groups=8, bias=False).eval(), torch.randn(1, 8, 14, 14)
    assert depthwise.rewrite(frontend.import_module(model, (x,), spec="<test>").module) == 0


class _InvertedResidual(nn.Module):
    """MobileNet-V2's block: 1×1 expansion, depthwise k×k, 1×1 projection, each with batch
    norm (ReLU6 after the first two)."""

    def __init__(self, c: int, e: int, k: int, stride: int, bias: bool):
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(c, e, 1, bias=False), nn.BatchNorm2d(e), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(e, e, k, stride, k // 2, groups=e, bias=bias), nn.BatchNorm2d(e), nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(e, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return self.project(self.dw(self.expand(x)))


def _copies_left(monkeypatch) -> list:
    """The destination types of the buffer copies a compile leaves (once those of a
    buffer onto itself are erased), filled as it runs."""
    from tilecraft.backends.cpu import lowering

    copies, tidy = [], lowering.tidy_copies

    def spy(module, **kw):
        out = tidy(module, **kw)
        tiling.walk_ops(
            module.operation, lambda op: copies.append(op.operands[1].type) if op.name == "linalg.copy" else None
        )
        return out

    monkeypatch.setattr(lowering, "tidy_copies", spy)
    return copies


def _inverted_residual(c, e, k, stride, bias):
    torch.manual_seed(0)
    m = _InvertedResidual(c, e, k, stride, bias).eval()
    for bn in (m.expand[1], m.dw[1], m.project[1]):
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
    return m


@pytest.mark.parametrize(
    "e, k, stride, bias, hw",
    [(32, 3, 1, False, (14, 14)), (32, 3, 2, False, (15, 13)), (48, 3, 2, True, (16, 16)), (16, 5, 1, True, (9, 11))],
    ids=["3x3", "3x3-stride2-odd", "3x3-stride2-bias", "5x5-bias"],
)
def test_depthwise_between_nhwc_layers_runs_on_nhwc_without_padded_copies(e, k, stride, bias, hw, monkeypatch):
    """Between two 1×1 layers (NHWC GEMMs), a depthwise layer is restated on NHWC: every
    transpose between the three cancels, its padding is one flat pad (the expansion's
    result lies in it contiguously: bufferization copies nothing of that size), its filter
    is packed [KH, KW, C], and the masked edge columns (a column of padding reads the next
    row's pixel) match eager."""
    copies = _copies_left(monkeypatch)
    model, x = _inverted_residual(16, e, k, stride, bias), torch.randn(1, 16, *hw)
    imported = frontend.import_module(model, (x,), spec="<test>")
    driver.convolutions_as_gemms(imported)
    names = _names(imported.module)
    assert depthwise.DEPTHWISE not in names
    ops = []
    tiling.walk_ops(imported.module.operation, ops.append)
    transposes = [op for op in ops if op.name == "linalg.generic" and transpose_of(op) is not None]
    assert len(transposes) == 2  # the input's and the result's, no more
    pads = [op for op in ops if op.name == "tensor.pad"]
    assert len(pads) == 1 and ir.RankedTensorType(pads[0].results[0].type).rank == 2
    assert any(tuple(p.shape) == (k, k, e) for p in imported.params)
    compiled = driver.compile_model(frontend.import_module(model, (x,), spec="<test>"))
    big = [str(t) for t in copies if math.prod(ir.ShapedType(t).shape) >= hw[0] * hw[1] * e]
    assert not big, big
    with torch.no_grad():
        assert driver.compare(compiled.fn(x), model(x)).ok


def test_an_unbound_filter_is_transposed_in_the_module():
    model, x = _inverted_residual(16, 32, 3, 2, False), torch.randn(1, 16, 12, 12)
    imported = frontend.import_module(model, (x,), spec="<test>")
    with imported.module.context:
        imported.params[:], _ = im2col.rewrite(imported.module, imported.params)
        assert depthwise.rewrite(imported.module) == 1  # no bound weights at hand: the filter stays [C, KH, KW]
    assert "tensor<32x3x3xf32>" in str(imported.module)
    compiled = driver.compile_model(imported)
    with torch.no_grad():
        assert driver.compare(compiled.fn(x), model(x)).ok


def test_a_tap_chain_result_is_copied_into_the_padded_buffer_once(monkeypatch):
    """A 3-channel stem (a tap chain whose [OH, OW + 1, C] result carries a wrapped-around
    column per row) before an NHWC depthwise layer: its result without that column is
    copied straight into the flat padded buffer's interior (`backends/cpu/pads.py`), not
    compacted into a buffer of its own first."""
    copies = _copies_left(monkeypatch)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, 2, 1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU6(),
        _block(32, 1, False),
        nn.Conv2d(32, 16, 1),
    ).eval()
    x = torch.randn(1, 3, 96, 96)
    compiled = driver.compile_model(frontend.import_module(model, (x,), spec="<test>"))
    big = [str(t) for t in copies if math.prod(ir.ShapedType(t).shape) >= 48 * 48 * 32]
    assert len(big) == 1 and "48x48x32" in big[0], big
    with torch.no_grad():
        assert driver.compare(compiled.fn(x), model(x)).ok


def test_padded_buffers_of_one_shape_stay_apart(monkeypatch):
    """Two blocks whose depthwise inputs are padded to the same shape: CSE would merge
    their buffers' empty tensors (and their expansions' results), and bufferization then
    copied buffers and interiors apart (`lowering.DISTINCT_EMPTIES`)."""
    copies = _copies_left(monkeypatch)
    model = nn.Sequential(_inverted_residual(16, 48, 3, 1, False), _inverted_residual(16, 48, 3, 1, False)).eval()
    x = torch.randn(1, 16, 14, 14)
    compiled = driver.compile_model(frontend.import_module(model, (x,), spec="<test>"))
    big = [str(t) for t in copies if math.prod(ir.ShapedType(t).shape) >= 14 * 14 * 48]
    assert not big, big
    with torch.no_grad():
        assert driver.compare(compiled.fn(x), model(x)).ok
