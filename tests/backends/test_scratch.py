"""Small scratch buffers made in loops go on the stack, once per thread (`scratch.py`)."""

import torch

from tilecraft import driver, frontend
from tilecraft.backends.cpu import scratch

LOOPS = """
func.func @f(%out: memref<2x8xf32>, %big: memref<8x8xf32>) -> memref<4xf32> {
  %c0 = arith.constant 0 : index
  %c1 = arith.constant 1 : index
  %c8 = arith.constant 8 : index
  %z = arith.constant 0.0 : f32
  scf.forall (%t) in (2) {
    scf.for %i = %c0 to %c8 step %c1 {
      %acc = memref.alloc() {alignment = 64 : i64} : memref<1x1xf32>
      linalg.fill ins(%z : f32) outs(%acc : memref<1x1xf32>)
      %v = memref.load %acc[%c0, %c0] : memref<1x1xf32>
      memref.store %v, %out[%t, %i] : memref<2x8xf32>
    }
  }
  %r = scf.for %i = %c0 to %c8 step %c1 iter_args(%prev = %big) -> (memref<8x8xf32>) {
    %kept = memref.alloc() : memref<8x8xf32>
    %view = memref.alloc() : memref<2x2xf32>
    %sub = memref.subview %view[0, 0] [1, 2] [1, 1] : memref<2x2xf32> to memref<1x2xf32, strided<[2, 1]>>
    %loose = memref.alloc() : memref<2xf32>
    memref.store %z, %loose[%c0] : memref<2xf32>
    scf.yield %kept : memref<8x8xf32>
  }
  %top = memref.alloc() : memref<4xf32>
  return %top : memref<4xf32>
}
"""


def test_scratch_in_a_loop_moves_to_its_threads_stack():
    ctx = frontend.new_context()
    module = frontend.parse_mlir(LOOPS, context=ctx)
    assert scratch.stack_scratch(module) == 2
    text = str(module)
    forall = text.index("scf.forall")
    first = text.index("memref.alloca() {alignment = 64 : i64} : memref<1x1xf32>")
    assert forall < first < text.index("scf.for %")  # at the top of the chunk's body, before its loop
    assert "memref.alloca() : memref<2xf32>" in text.split("scf.forall")[0]  # a plain scratch: function entry
    for stays in ("memref<8x8xf32>", "memref<2x2xf32>", "memref<4xf32>"):  # yielded, viewed, not in a loop
        assert f"memref.alloc() : {stays}" in text


def test_softmax_on_two_threads_matches_eager(monkeypatch):
    moved = []
    run = scratch.stack_scratch
    monkeypatch.setattr(scratch, "stack_scratch", lambda module: moved.append(run(module)) or moved[-1])

    class Attention(torch.nn.Module):
        def forward(self, q, k):
            return torch.softmax(q @ k.transpose(-1, -2) / 8.0, dim=-1)

    torch.manual_seed(0)
    model, inputs = Attention(), (torch.randn(4, 128, 64), torch.randn(4, 128, 64))
    compiled = driver.compile_model(frontend.import_module(model, inputs, spec="attention"), threads=2)
    assert sum(moved) >= 2  # the rows' max and sum accumulators
    assert driver.compare(compiled.fn(*inputs), model(*inputs)).ok
