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


CHAIN = """
func.func @forward(%x: tensor<48x4xf32>, %y: tensor<48x4xf32>) -> tensor<8x7x4xf32> {
  %cst = arith.constant -1.0 : f32
  %e = tensor.empty() : tensor<48x4xf32>
  %s = linalg.add ins(%x, %y : tensor<48x4xf32>, tensor<48x4xf32>) outs(%e : tensor<48x4xf32>) -> tensor<48x4xf32>
  %v = tensor.expand_shape %s [[0, 1, 2], [3]] output_shape [1, 6, 8, 4] : tensor<48x4xf32> into tensor<1x6x8x4xf32>
  %o = tensor.extract_slice %v[0, 0, 0, 0] [1, 6, 5, 4] [1, 1, 1, 1] : tensor<1x6x8x4xf32> to tensor<6x5x4xf32>
  %p = tensor.pad %o low[1, 1, 0] high[1, 1, 0] {
  ^bb0(%i: index, %j: index, %k: index):
    tensor.yield %cst : f32
  } : tensor<6x5x4xf32> to tensor<8x7x4xf32>
  return %p : tensor<8x7x4xf32>
}
"""


def test_a_chain_result_is_written_into_the_padded_buffer():
    """A flat result with wrapped-around columns (rows of 8, 5 of them real), padded to
    rows of 7: written from flat row 1·8 + 1 of a [8·8, 4] buffer, its garbage columns on
    the border, which is filled after it; the pad's rows are a view of the first 7
    columns."""
    from torch_mlir import ir

    module = ir.Module.parse(CHAIN, context=frontend.new_context())
    assert pads.border_fills(module) == 1
    text = str(module)
    assert "tensor.pad" not in text and "linalg.copy" not in text
    assert "tensor.empty() : tensor<64x4xf32>" in text
    assert "[9, 0] [48, 4] [1, 1]" in text  # the chain's rows from flat row 9
    assert text.count("linalg.fill") == 4  # rows before and after, columns before and after
    assert "[0, 0, 0] [8, 7, 4] [1, 1, 1] : tensor<8x8x4xf32> to tensor<8x7x4xf32>" in text


class _Block(torch.nn.Module):
    """A stem (7x7, stride 2) into a max pool, then a residual block of two 3x3
    convolutions: tap chains whose results are padded for their consumers."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = torch.nn.Conv2d(3, 32, 7, stride=2, padding=3)
        self.pool = torch.nn.MaxPool2d(3, 2, 1)
        self.c1 = torch.nn.Conv2d(32, 32, 3, padding=1)
        self.c2 = torch.nn.Conv2d(32, 32, 3, padding=1)
        self.c3 = torch.nn.Conv2d(32, 32, 3, padding=1)
        self.down = torch.nn.Conv2d(32, 32, 1)

    def forward(self, x):
        y = self.pool(torch.relu(self.stem(x)))
        h = torch.relu(self.c1(y))  # a chain's result, padded for c2 and read at the end as well
        z = self.c2(h)
        out = torch.relu(z + y)  # padded for c3 and read by the 1x1 as well
        return self.c3(out) + self.down(out) + h


def test_chains_and_shared_sources_written_into_padded_buffers_match_eager(monkeypatch):
    """Tap chains written into their consumers' padded buffers (`CHAIN_INTO_PAD`), and a
    padded source's other reader reading the buffer's interior (`INTERIOR_READS`): each
    on and off, outputs as eager's."""
    model, x = _Block().eval(), torch.randn(1, 3, 128, 112)
    with torch.no_grad():
        ref = model(x)
    hits = {"_chain_rows": [], "_later_uses": []}
    for name, hit in hits.items():
        real = getattr(pads, name)

        def spy(*args, real=real, hit=hit):
            found = real(*args)
            hit.append(bool(found))
            return found

        monkeypatch.setattr(pads, name, spy)
    for on in (True, False):
        monkeypatch.setattr(pads, "CHAIN_INTO_PAD", on)
        monkeypatch.setattr(pads, "INTERIOR_READS", on)
        for hit in hits.values():
            hit.clear()
        fn = driver.compile_model(frontend.import_module(model, (x,), spec="<test>"), threads=1).fn
        assert driver.compare(fn(x), ref).ok, on
        assert any(hits["_chain_rows"]) == on and any(hits["_later_uses"]) == on, hits
