"""Depthwise convolutions as sums of shifted slices (`passes/depthwise.py`)."""

import pytest
import torch
from torch import nn

from tilecraft import driver, frontend
from tilecraft.backends.cpu import schedule as tiling
from tilecraft.passes import depthwise


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
    compiled = driver.compile_model(frontend.import_module(model, (x,), spec="<test>"))
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
