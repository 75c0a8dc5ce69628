"""Data-movement loops LLVM keeps rolled (`backends/cpu/unroll.py`)."""

import torch
from torch_mlir import ir

from tilecraft import driver, frontend
from tilecraft.backends.cpu import unroll

COPY_AND_SCALE = """
func.func @f(%src: memref<28x28x64xf32>, %dst: memref<28x28x64xf32>, %out: memref<28x64xf32>) {
  %c0 = arith.constant 0 : index
  %c1 = arith.constant 1 : index
  %c28 = arith.constant 28 : index
  %s = arith.constant dense<2.0> : vector<64xf32>
  scf.for %i = %c0 to %c28 step %c1 {
    scf.for %j = %c0 to %c28 step %c1 {
      %v = vector.load %src[%i, %j, %c0] : memref<28x28x64xf32>, vector<64xf32>
      vector.store %v, %dst[%i, %j, %c0] : memref<28x28x64xf32>, vector<64xf32>
    }
  }
  scf.for %i = %c0 to %c28 step %c1 {
    %v = vector.load %src[%i, %c0, %c0] : memref<28x28x64xf32>, vector<64xf32>
    %w = arith.mulf %v, %s : vector<64xf32>
    vector.store %w, %out[%i, %c0] : memref<28x64xf32>, vector<64xf32>
  }
  return
}
"""


def test_only_the_loops_of_a_kernel_that_moves_data_are_marked():
    m = ir.Module.parse(COPY_AND_SCALE, frontend.new_context())
    assert unroll.rolled_copies(m) == 1
    text = str(m)
    assert text.count("{loop_annotation = ") == 2  # the copy's two loops, not the scaling loop
    assert text.rindex("{loop_annotation = ") < text.index("arith.mulf")


def test_a_padded_layer_s_copies_reach_llvm_rolled_and_compute_as_before():
    """The pad's interior copy: its back edges carry `unroll disable` in the LLVM dialect
    (the branch's own attribute, which the translation reads); the output matches eager."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU()).eval()
    x = torch.randn(1, 16, 28, 28)
    imported = lambda: frontend.import_module(model, (x,), spec="<test>")  # noqa: E731
    text = driver.compile_model(imported(), emit="llvm").text
    assert "{loop_annotation = #" in text and "{llvm.loop_annotation" not in text
    assert "#llvm.loop_unroll<disable = true>" in text
    compiled = driver.compile_model(imported())
    with torch.no_grad():
        assert driver.compare(compiled.fn(x), model(x)).ok


def test_off_marks_nothing(monkeypatch):
    monkeypatch.setattr(unroll, "ENABLED", False)
    m = ir.Module.parse(COPY_AND_SCALE, frontend.new_context())
    assert unroll.rolled_copies(m) == 0 and "{loop_annotation" not in str(m)
