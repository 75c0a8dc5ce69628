"""Rows of a function argument read down a k loop are prefetched ahead (`prefetch.py`)."""

import torch

from conftest import reference_target
from tilecraft import driver, frontend
from tilecraft.backends.cpu import prefetch
from tilecraft.passes import panel_weights

LOOPS = """
func.func @f(%w: memref<64x48xf32>, %x: memref<64x48xf32>, %out: memref<48xf32>) {
  %c0 = arith.constant 0 : index
  %c1 = arith.constant 1 : index
  %c2 = arith.constant 2 : index
  %c16 = arith.constant 16 : index
  %c64 = arith.constant 64 : index
  %local = memref.alloc() : memref<64x48xf32>
  %panel = memref.subview %w[0, 16] [64, 32] [1, 1]
    : memref<64x48xf32> to memref<64x32xf32, strided<[48, 1], offset: 16>>
  scf.for %k = %c0 to %c64 step %c2 {
    %row = arith.addi %k, %c1 : index
    %a = vector.load %panel[%row, %c0] : memref<64x32xf32, strided<[48, 1], offset: 16>>, vector<32xf32>
    %b = vector.load %local[%k, %c0] : memref<64x48xf32>, vector<16xf32>
    %c = vector.load %x[%k, %c0] : memref<64x48xf32>, vector<4xf32>
    %d = vector.load %x[%c1, %k] : memref<64x48xf32>, vector<16xf32>
    %e = vector.load %x[%c1, %c16] : memref<64x48xf32>, vector<16xf32>
  }
  return
}
"""


def test_a_weight_row_read_down_the_loop_is_prefetched_ahead():
    module = frontend.parse_mlir(LOOPS, context=frontend.new_context())
    # only %a: %b reads a buffer the function made, %c less than a vector, %d along its
    # contiguous dim (a stream the hardware follows), %e the same row every iteration
    assert prefetch.weight_prefetches(module) == 1
    text = str(module)
    assert text.count("memref.prefetch") == 1
    line = next(x for x in text.splitlines() if "memref.prefetch" in x)
    assert f"read, locality<{prefetch.LOCALITY}>, data" in line
    assert "strided<[48, 1], offset: 16>" in line  # through the view
    assert f"arith.constant {prefetch.DISTANCE} : index" in text  # iterations ahead, times the step


def test_off_inserts_nothing(monkeypatch):
    monkeypatch.setattr(prefetch, "ENABLED", False)
    module = frontend.parse_mlir(LOOPS, context=frontend.new_context())
    assert prefetch.weight_prefetches(module) == 0
    assert "memref.prefetch" not in str(module)


def test_a_linear_layer_with_prefetches_matches_eager(monkeypatch):
    added = []
    run = prefetch.weight_prefetches
    monkeypatch.setattr(prefetch, "weight_prefetches", lambda module: added.append(run(module)) or added[-1])
    torch.manual_seed(0)
    model, inputs = torch.nn.Linear(1024, 512).eval(), (torch.randn(49, 1024),)
    with torch.no_grad():
        ref = model(*inputs)
    monkeypatch.setattr(panel_weights, "ENABLED", False)  # (the weight as [K, N])
    for threads in (1, 2):
        compiled = driver.compile_model(
            frontend.import_module(model, inputs, spec="linear"), threads=threads, target=reference_target()
        )
        assert driver.compare(compiled.fn(*inputs), ref).ok
    assert all(n >= 1 for n in added)  # the weight's rows down the register tile's k loop
    # stored as column panels, consecutive rows are adjacent: a stream, its next panel
    # prefetched a line at a time (two lines a 32-float row) spread over the row tiles
    monkeypatch.setattr(panel_weights, "ENABLED", True)
    added.clear()
    compiled = driver.compile_model(
        frontend.import_module(model, inputs, spec="linear"), threads=1, target=reference_target()
    )
    assert driver.compare(compiled.fn(*inputs), ref).ok
    assert added == [2]  # (the reference target's 32-column register tiles)
    monkeypatch.setattr(prefetch, "STREAM", False)
    added.clear()
    compiled = driver.compile_model(
        frontend.import_module(model, inputs, spec="linear"), threads=1, target=reference_target()
    )
    assert added == [0]


PANEL = """
func.func @f(%w: memref<4x256x32xf32>, %out: memref<49x32xf32>) attributes {tc.bound_args = 1 : i64} {
  %c0 = arith.constant 0 : index
  %c1 = arith.constant 1 : index
  %c7 = arith.constant 7 : index
  %c49 = arith.constant 49 : index
  %c64 = arith.constant 64 : index
  %c256 = arith.constant 256 : index
  scf.for %k0 = %c0 to %c256 step %c64 {
    scf.for %m = %c0 to %c49 step %c7 {
      scf.for %k = %c0 to %c64 step %c1 {
        %row = arith.addi %k0, %k : index
        %a = vector.load %w[%c1, %row, %c0] : memref<4x256x32xf32>, vector<32xf32>
      }
    }
  }
  return
}
"""


def _interpret_index(text: str, k0: int, m: int, k: int) -> int:
    """The prefetch's row index in `text` (one prefetch nest as built), evaluated."""
    import re

    ivs = re.findall(r"scf.for (%\w+) =", text)  # (k0, m, k: outermost first)
    env = dict(zip(ivs, (k0, m, k)))
    for name, value in re.findall(r"(%\w+) = arith.constant (\d+) : index", text):
        env[name] = int(value)
    ops = {
        "addi": lambda a, b: a + b,
        "subi": lambda a, b: a - b,
        "muli": lambda a, b: a * b,
        "divui": lambda a, b: a // b,
    }
    for name, op, a, b in re.findall(r"(%\w+) = arith\.(addi|subi|muli|divui) (%\w+), (%\w+) : index", text):
        env[name] = ops[op](env[a], env[b])
    line = next(x for x in text.splitlines() if "memref.prefetch" in x)
    return env[re.search(r"memref.prefetch %\w+\[%\w+, (%\w+), ", line).group(1)]


def test_a_panel_stream_prefetches_the_next_chunk_spread_over_the_row_tiles():
    module = frontend.parse_mlir(PANEL, context=frontend.new_context())
    assert prefetch.weight_prefetches(module) == 2  # both cache lines of the 32-float row
    text = str(module)
    assert text.count("memref.prefetch") == 2
    assert f"locality<{prefetch.STREAM_LOCALITY}>" in text
    # the 7 row tiles x 64 steps of the chunk at k0 fetch rows floor(g / 7) of the next one
    rows = [_interpret_index(text, 64, m, k) for m in range(0, 49, 7) for k in range(64)]
    assert rows == [128 + g // 7 for g in range(7 * 64)]
    assert set(rows) == set(range(128, 192))  # every row of the next chunk, in order


def test_streams_off_leave_panels_alone(monkeypatch):
    monkeypatch.setattr(prefetch, "STREAM", False)
    module = frontend.parse_mlir(PANEL, context=frontend.new_context())
    assert prefetch.weight_prefetches(module) == 0


def test_a_stream_that_is_not_a_bound_weight_gets_no_prefetch():
    """An activation read row by row (here the same loops on an argument that is not
    among the bound weights) is followed by the hardware; its "next chunk" may be past
    its end (an elementwise op over [4096, 32]: every row + 4096)."""
    unbound = PANEL.replace("tc.bound_args = 1", "tc.bound_args = 0")
    module = frontend.parse_mlir(unbound, context=frontend.new_context())
    assert prefetch.weight_prefetches(module) == 0
    torch.manual_seed(0)

    class Ew(torch.nn.Module):
        def forward(self, x, y):
            return torch.relu(x) * y + 1

    inputs = (torch.randn(4096, 32), torch.randn(4096, 32))
    compiled = driver.compile_model(frontend.import_module(Ew(), inputs, spec="ew"), emit="vector")
    assert "memref.prefetch" not in compiled.text
