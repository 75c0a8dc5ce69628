"""Padded buffers filled only along their borders (`backends/cpu/pads.py`)."""

import torch

from tilecraft import driver, frontend
from tilecraft.backends.cpu import pads
from tilecraft.backends.cpu.backend import CpuOptions

PAD = """
func.func @forward(%x: tensor<2x4x5xf32>) -> tensor<2x8x6xf32> {
  %cst = arith.constant 0.5 : f32
  %p = tensor.pad %x low[0, 1, 0] high[0, 3, 1] {
  ^bb0(%i: index, %j: index, %k: index):
    tensor.yield %cst : f32
  } : tensor<2x4x5xf32> to tensor<2x8x6xf32>
  return %p : tensor<2x8x6xf32>
}
"""


def test_slabs_cover_the_border_exactly_once():
    shape, low, high = [2, 8, 6], [0, 1, 0], [0, 3, 1]
    hits = torch.zeros(shape, dtype=torch.int32)
    for offsets, sizes in pads._slabs(shape, low, high):
        hits[tuple(slice(o, o + s) for o, s in zip(offsets, sizes))] += 1
    interior = hits[:, 1:5, 0:5]
    assert int(interior.sum()) == 0
    hits[:, 1:5, 0:5] = 1
    assert bool((hits == 1).all())


def test_a_pad_becomes_border_fills_and_an_insert():
    from torch_mlir import ir

    module = ir.Module.parse(PAD, context=frontend.new_context())
    assert pads.border_fills(module) == 1
    text = str(module)
    assert "tensor.pad" not in text
    assert text.count("linalg.fill") == 3  # rows before and after, the column after (no column before)
    assert "insert_slice %arg0 into" in text and "[0, 1, 0] [2, 4, 5] [1, 1, 1]" in text


class _Padded(torch.nn.Module):
    def forward(self, x):  # an asymmetric constant pad, then a consumer and a depthwise conv's pad
        y = torch.nn.functional.pad(x * 2.0, (2, 1, 0, 3), value=0.25)
        return torch.nn.functional.conv2d(y, torch.ones(4, 1, 3, 3) / 9, padding=1, groups=4)


def test_border_filled_pads_match_eager_and_the_whole_buffer_fill():
    torch.manual_seed(0)
    model, x = _Padded().eval(), torch.randn(1, 4, 10, 12)
    ref = model(x)
    for border in (True, False):
        imported = frontend.import_module(model, (x,), spec="<test>")
        fn = driver.compile_model(imported, options=CpuOptions(border_fills=border)).fn
        assert driver.compare(fn(x), ref).ok, border
