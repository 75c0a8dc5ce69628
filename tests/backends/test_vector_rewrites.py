"""The CPU vector stage's in-place rewrites of vectorized IR: a row broadcast spelled as a
transpose (`backends/cpu/broadcasts.py`) and a product's one add (`backends/cpu/fma.py`)."""

import pytest
import torch
from torch_mlir import ir

from tilecraft import frontend
from tilecraft.backends.cpu import broadcasts, fma
from tilecraft.backends.cpu.target import host

# A register tile of a fused GEMM whose k loop steps by one (the tiling pass's schedule of
# a fused contraction): A's column of 6 rows read as vector<6x1>, broadcast over 16
# columns through a transpose, multiplied by B's row and added to the accumulator.
TILE = """
func.func @tile(%a: vector<6x1xf32>, %b: vector<16xf32>, %acc: vector<6x16xf32>) -> vector<6x16xf32> {
  %0 = vector.broadcast %a : vector<6x1xf32> to vector<16x6x1xf32>
  %1 = vector.shape_cast %0 : vector<16x6x1xf32> to vector<16x6xf32>
  %2 = vector.transpose %1, [1, 0] : vector<16x6xf32> to vector<6x16xf32>
  %3 = vector.broadcast %b : vector<16xf32> to vector<6x16xf32>
  %4 = arith.mulf %2, %3 : vector<6x16xf32>
  %5 = arith.addf %acc, %4 : vector<6x16xf32>
  return %5 : vector<6x16xf32>
}
"""


def _module(text: str) -> ir.Module:
    return ir.Module.parse(text, frontend.new_context())


def test_a_column_broadcast_through_a_shape_cast_is_one_broadcast_per_row():
    """(ResNet-18's 49-tap stem: 96 inserts and a 96-lane shuffle per tap and k, 15,000
    lines of vector IR and 3 s of LLVM; now six broadcasts.)"""
    m = _module(TILE)
    assert broadcasts.rows_without_transposes(m) == 1
    text = str(m)
    assert "vector.transpose" not in text and "vector.shape_cast" not in text
    assert "vector.broadcast %arg0 : vector<6x1xf32> to vector<6x16xf32>" in text
    m.operation.verify()


def test_a_row_broadcast_of_a_1d_vector_still_becomes_a_column_broadcast():
    m = _module("""
func.func @f(%a: vector<8xf32>) -> vector<8x32xf32> {
  %0 = vector.broadcast %a : vector<8xf32> to vector<32x8xf32>
  %1 = vector.transpose %0, [1, 0] : vector<32x8xf32> to vector<8x32xf32>
  return %1 : vector<8x32xf32>
}
""")
    assert broadcasts.rows_without_transposes(m) == 1
    text = str(m)
    assert "vector.transpose" not in text and "vector<8x1xf32> to vector<8x32xf32>" in text
    m.operation.verify()


def test_a_transpose_of_anything_else_stays():
    m = _module("""
func.func @f(%a: vector<6x2xf32>, %b: vector<16x6xf32>) -> (vector<6x16xf32>, vector<6x16xf32>) {
  %0 = vector.broadcast %a : vector<6x2xf32> to vector<8x6x2xf32>
  %1 = vector.shape_cast %0 : vector<8x6x2xf32> to vector<16x6xf32>
  %2 = vector.transpose %1, [1, 0] : vector<16x6xf32> to vector<6x16xf32>
  %3 = vector.transpose %b, [1, 0] : vector<16x6xf32> to vector<6x16xf32>
  return %2, %3 : vector<6x16xf32>, vector<6x16xf32>
}
""")
    assert broadcasts.rows_without_transposes(m) == 0


@pytest.mark.skipif(not host().has("fma"), reason="this host has no FMA")
def test_a_products_one_add_is_a_fused_multiply_add():
    m = _module(TILE)
    broadcasts.rows_without_transposes(m)
    assert fma.fused_multiply_adds(m) == 1
    text = str(m)
    assert "math.fma" in text and "arith.mulf" not in text and "arith.addf" not in text
    m.operation.verify()


@pytest.mark.skipif(not host().has("fma"), reason="this host has no FMA")
def test_a_product_read_twice_or_under_fast_math_flags_stays():
    m = _module("""
func.func @f(%a: vector<8xf32>, %b: vector<8xf32>, %c: vector<8xf32>) -> (vector<8xf32>, vector<8xf32>, vector<8xf32>) {
  %0 = arith.mulf %a, %b : vector<8xf32>
  %1 = arith.addf %0, %c : vector<8xf32>
  %2 = arith.mulf %a, %c fastmath<fast> : vector<8xf32>
  %3 = arith.addf %2, %b : vector<8xf32>
  %4 = arith.mulf %b, %c : vector<8xf32>
  %5 = arith.addf %4, %4 : vector<8xf32>
  return %0, %1, %3 : vector<8xf32>, vector<8xf32>, vector<8xf32>
}
""")
    assert fma.fused_multiply_adds(m) == 0


def test_fused_multiply_adds_off_without_fma(monkeypatch):
    monkeypatch.setattr(fma, "host", lambda: type("T", (), {"has": lambda self, f: False})())
    assert fma.fused_multiply_adds(_module(TILE)) == 0


def test_a_stem_like_tap_chain_fused_with_its_epilogue_matches_eager():
    """MobileNet-V2's opening (a 3-channel 3×3/2 chain, batch norm, ReLU6, a 1×1 layer) on
    a small image, its chain fused with the epilogue in register tiles, checked against
    eager; the zoo's own (ResNet-18's and MobileNet-V2's stems, whose k loops step by one
    and take both rewrites) are checked by `bench/e2e.py` and the zoo tests."""
    from tilecraft import driver

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 3, stride=2, padding=1, bias=False),
        torch.nn.BatchNorm2d(32),
        torch.nn.ReLU6(),
        torch.nn.Conv2d(32, 16, 1),
    ).eval()
    model[1].running_mean.uniform_(-0.5, 0.5)
    model[1].running_var.uniform_(0.5, 1.5)
    x = torch.randn(1, 3, 64, 64)
    compiled = driver.compile_model(frontend.import_module(model, (x,), spec="<test>"))
    assert any(g.registers and len(g.ops) > 10 for g in compiled.fusion)
    with torch.no_grad():
        assert driver.compare(compiled.fn(x), model(x)).ok
