"""Identical kernels compiled once (`backends/cpu/dedup.py`): which kernels share a
function, and compiled models that compute what they computed with every kernel inline."""

import pytest
import torch
from torch_mlir import ir

from tilecraft import driver, frontend
from tilecraft.backends.cpu import dedup, split
from tilecraft.corpus import zoo
from tilecraft.frontend import new_context

KERNELS = """
func.func @forward(%a: memref<64xf32>, %b: memref<64xf32>, %c: memref<64xf32>, %d: memref<64xf32>) {
  %c0 = arith.constant 0 : index
  %c1 = arith.constant 1 : index
  %c32 = arith.constant 32 : index
  %c64 = arith.constant 64 : index
  %two = arith.constant 2.0 : f32
  %three = arith.constant 3.0 : f32
  scf.for %i = %c0 to %c64 step %c1 {
    %x = memref.load %a[%i] : memref<64xf32>
    %y = arith.mulf %x, %two : f32
    memref.store %y, %b[%i] : memref<64xf32>
  }
  scf.for %i = %c0 to %c64 step %c1 {
    %x = memref.load %c[%i] : memref<64xf32>
    %y = arith.mulf %x, %two : f32
    memref.store %y, %d[%i] : memref<64xf32>
  }
  scf.for %i = %c0 to %c64 step %c1 {
    %x = memref.load %a[%i] : memref<64xf32>
    %y = arith.mulf %x, %three : f32
    memref.store %y, %b[%i] : memref<64xf32>
  }
  scf.for %i = %c0 to %c32 step %c1 {
    %x = memref.load %a[%i] : memref<64xf32>
    %y = arith.mulf %x, %two : f32
    memref.store %y, %b[%i] : memref<64xf32>
  }
  scf.for %i = %c0 to %c64 step %c1 {
    %x = memref.load %a[%i] : memref<64xf32>
    %y = arith.mulf %x, %two : f32
    memref.store %y, %a[%i] : memref<64xf32>
  }
  scf.for %i = %c0 to %c64 step %c1 {
    %x = memref.load %b[%i] : memref<64xf32>
    %y = arith.mulf %x, %two : f32
    memref.store %y, %c[%i] : memref<64xf32>
  }
  return
}
"""


def _dedup(text: str) -> tuple[ir.Module, int]:
    module = ir.Module.parse(text, new_context())
    fn = next(iter(module.body.operations)).operation
    return module, dedup.dedup_kernels(module, fn)


def test_identical_kernels_share_one_function(monkeypatch):
    monkeypatch.setattr(dedup, "MIN_WEIGHT", 0)
    module, shared = _dedup(KERNELS)
    assert module.operation.verify()
    funcs = [op.operation for op in module.body.operations]
    kernels = [f for f in funcs if ir.StringAttr(f.attributes["sym_name"]).value.startswith(dedup.PREFIX)]
    # loops 1, 2 and 6 (a → b, c → d, b → c: the same pattern of buffers) share one; loop 3
    # multiplies by another constant, loop 4 runs to another bound, loop 5 reads and
    # writes one buffer
    assert shared == 2 and len(kernels) == 1
    forward = next(f for f in funcs if ir.StringAttr(f.attributes["sym_name"]).value == "forward")
    body = [op.operation.name for op in forward.regions[0].blocks[0].operations]
    assert body.count("func.call") == 3 and body.count("scf.for") == 3
    kernel = kernels[0]
    assert "#llvm.linkage<internal>" in str(kernel.attributes["llvm.linkage"])
    assert "noinline" in str(kernel.attributes["llvm.passthrough"])
    # the constants it reads are copied in: its loop bound and factor stay constants
    text = str(kernel)
    assert "arith.constant 64 : index" in text and "arith.constant 2.000000e+00 : f32" in text
    assert len(kernel.regions[0].blocks[0].arguments) == 2  # (the two buffers)


def test_off_leaves_the_module_alone(monkeypatch):
    monkeypatch.setattr(dedup, "MIN_WEIGHT", 0)
    monkeypatch.setattr(dedup, "ENABLED", False)
    module, shared = _dedup(KERNELS)
    assert shared == 0 and len(list(module.body.operations)) == 1


def test_light_kernels_stay_inline():
    module, shared = _dedup(KERNELS)  # (each loop weighs less than `MIN_WEIGHT`)
    assert shared == 0 and len(list(module.body.operations)) == 1


def test_a_half_counts_each_shared_kernel_once():
    assert split._once([5, 7, 7, 3, 7], [None, "k", "k", None, "k"]) == [0, 5, 12, 12, 15, 15]


@pytest.mark.parametrize("name,threads", [("bert_mini", 1), ("resnet18", 2)])
def test_shared_kernels_compute_what_inline_ones_did(name, threads, monkeypatch):
    model, inputs = zoo.get(name)
    counts = []
    orig = dedup.dedup_kernels

    def counted(module, fn):
        counts.append(orig(module, fn))
        return counts[-1]

    monkeypatch.setattr(dedup, "dedup_kernels", counted)
    shared = driver.compile_model(frontend.import_module(model, inputs, spec=name), threads=threads)
    monkeypatch.setattr(dedup, "ENABLED", False)
    inline = driver.compile_model(frontend.import_module(model, inputs, spec=name), threads=threads)
    assert counts[0] > 0 and counts[1] == 0
    with torch.no_grad():
        ref = model(*inputs)
    out = shared.fn(*inputs)
    assert driver.compare(out, ref).ok
    assert torch.equal(out, inline.fn(*inputs))


SWAPPED = """
func.func @forward(%a: memref<64xf32>, %b: memref<64xf32>, %c: memref<64xf32>, %s: f32) {
  %c0 = arith.constant 0 : index
  %c1 = arith.constant 1 : index
  %c64 = arith.constant 64 : index
  %two = arith.constant 2.0 : f32
  scf.for %i = %c0 to %c64 step %c1 {
    %x = memref.load %a[%i] : memref<64xf32>
    %y = arith.subf %x, %two : f32
    %z = arith.mulf %y, %s : f32
    memref.store %z, %b[%i] : memref<64xf32>
  }
  scf.for %i = %c0 to %c64 step %c1 {
    %x = memref.load %a[%i] : memref<64xf32>
    %y = arith.subf %x, %s : f32
    %z = arith.mulf %y, %two : f32
    memref.store %z, %c[%i] : memref<64xf32>
  }
  return
}
"""


def test_a_constant_and_a_passed_value_swapped_are_two_kernels(monkeypatch):
    """The same text (names numbered), but a constant where the other passes a value:
    (x - 2)·s is not (x - s)·2 (review: one shared function computed both as the first)."""
    monkeypatch.setattr(dedup, "MIN_WEIGHT", 0)
    _, shared = _dedup(SWAPPED)
    assert shared == 0


def test_swapped_operands_in_a_model_compute_eager_results():
    class Swapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor(3.0))

        def forward(self, x, y):
            return (x - self.w) * 2.0, (y - 2.0) * self.w

    model, inputs = Swapped().eval(), (torch.randn(64, 256), torch.randn(64, 256))
    compiled = driver.compile_model(frontend.import_module(model, inputs))
    with torch.no_grad():
        assert driver.compare(compiled.fn(*inputs), model(*inputs)).ok


def test_shared_parallel_kernels_keep_their_threads(monkeypatch):
    """Chunked kernels moved into a shared function still run as OpenMP parallel loops
    (review: the thread count was read from the entry function's loops alone)."""
    from tilecraft.backends.cpu import lowering
    from tilecraft.backends.cpu.backend import CpuOptions

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256), torch.nn.ReLU()
    ).eval()
    x = torch.randn(128, 256)
    lowered, counts = [], []
    convert, orig = lowering.convert_to_llvm, dedup.dedup_kernels

    def spy(module, **kw):
        lowered.append(lowering.uses_openmp(convert(module, **kw)))
        return module

    def counted(module, fn):
        counts.append(orig(module, fn))
        return counts[-1]

    monkeypatch.setattr(lowering, "convert_to_llvm", spy)
    monkeypatch.setattr(dedup, "dedup_kernels", counted)
    compiled = driver.compile_model(
        frontend.import_module(model, (x,)), threads=2, options=CpuOptions(two_core_jit=False)
    )
    assert counts and counts[0] > 0 and lowered == [True]
    with torch.no_grad():
        assert driver.compare(compiled.fn(x), model(x)).ok


def test_a_top_level_generic_body_does_not_disable_sharing(monkeypatch):
    """A `linalg.generic` prints its body's block label at the body's indent; the text
    still splits into one chunk per op (review: it turned sharing off for the function)."""
    monkeypatch.setattr(dedup, "MIN_WEIGHT", 0)
    generic = """  linalg.generic {indexing_maps = [affine_map<(d0) -> (d0)>, affine_map<(d0) -> (d0)>],
      iterator_types = ["parallel"]} ins(%a : memref<64xf32>) outs(%d : memref<64xf32>) {
  ^bb0(%in: f32, %out: f32):
    %z = arith.addf %in, %out : f32
    linalg.yield %z : f32
  }
  return"""
    module, shared = _dedup(KERNELS.replace("  return", generic, 1))
    assert shared == 2 and module.operation.verify()
