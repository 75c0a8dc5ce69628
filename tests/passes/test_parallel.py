"""Threads: kernels split into one chunk a thread (passes/parallel.py, costmodel/parallel_plan.py),
run on OpenMP threads (the CPU backend's LLVM stage and runtime)."""

from __future__ import annotations

import collections
import re
import subprocess
import sys

import pytest
import torch

from conftest import reference_target
from tilecraft import driver
from tilecraft.backends.cpu import runtime, tcomp
from tilecraft.driver import compare, flatten
from tilecraft.passes.parallel import ParallelDecision, chunk_ok


def test_chunks_are_whole_tiles():
    assert chunk_ok(512, 2) and not chunk_ok(510, 4) and not chunk_ok(64, 1)
    assert chunk_ok(512, 2, tile=128) and not chunk_ok(512, 2, tile=96)
    assert not chunk_ok(512, 2, tile=256)  # one tile a chunk: nothing left to fuse the group into ...
    assert chunk_ok(512, 2, tile=256, inner=32)  # ... unless a register tile stays (the tile is dropped)
    assert not chunk_ok(160, 2, inner=32)  # 80 is no whole number of register tiles
    assert not chunk_ok(64, 2, inner=32)  # one register tile a chunk
    d = ParallelDecision(4, (3, 2, 0), 1, 2)
    assert ParallelDecision.from_json(d.to_json()) == d


def test_a_group_tile_is_cut_to_fit_its_chunks():
    from tilecraft.costmodel.parallel_plan import fit_tile

    assert fit_tile(512, 2, 128, 0) == 128  # whole tiles already
    assert fit_tile(12544, 2, 256, 32) == 224  # 6272 = 28 × 224 (a multiple of the register tile)
    assert fit_tile(144, 2, 48, 1) == 36
    assert fit_tile(160, 2, 0, 32) is None  # untiled there: nothing to cut
    assert fit_tile(192, 2, 64, 8) == 48 and fit_tile(98, 2, 64, 16) is None
    assert fit_tile(96, 2, 64, 0) is None  # 48 would be one tile a chunk, with no register tile left
    assert fit_tile(160, 2, 32, 0) == 16  # whole vectors stay whole (20 would divide 80 too)


def test_a_register_tile_is_halved_to_fit_its_chunks(monkeypatch):
    from tilecraft.costmodel import parallel_plan

    assert parallel_plan.fit_levels(160, 2, 0, 32) == (0, 16)  # 80 columns a thread: 5 tiles of 16
    assert parallel_plan.fit_levels(256, 2, 0, 32) == (0, 32)  # 128 a thread: kept
    assert parallel_plan.fit_levels(144, 2, 0, 48) is None  # 72: not a whole number of vectors
    assert parallel_plan.fit_levels(98, 2, 0, 16) is None  # one vector already
    monkeypatch.setattr(parallel_plan, "HALVE_REGISTER_TILES", False)
    assert parallel_plan.fit_levels(160, 2, 0, 32) is None


def test_pinned_groups_keep_their_tiles():
    from tilecraft import frontend

    torch.manual_seed(0)
    model, x = _DepthwiseBlock().eval(), torch.randn(1, 24, 56, 56)
    planned = driver.compile_model(frontend.import_module(model, (x,), spec="<t>"), threads=2, emit="decided")
    pinned = driver.compile_model(frontend.import_module(model, (x,), spec="<t>"), emit="decided").fusion
    again = driver.compile_model(frontend.import_module(model, (x,), spec="<t>"), threads=2, fusion=pinned, im2col=True)
    assert again.fusion == pinned  # (not rewritten; a kernel the pinned tiles do not fit stays whole)
    assert len(again.parallel) <= len(planned.parallel)
    with torch.no_grad():
        assert compare(again.fn(x), model(x)).ok


class _DepthwiseBlock(torch.nn.Module):
    """MobileNet-V2's expand → depthwise → project at 56²: a 1×1 conv whose tiles (256
    columns) did not fit half of 3136, and a depthwise conv of under 4 MFLOP."""

    def __init__(self):
        super().__init__()
        self.expand = torch.nn.Conv2d(24, 144, 1, bias=False)
        self.dw = torch.nn.Conv2d(144, 144, 3, padding=1, groups=144, bias=False)
        self.bn = torch.nn.BatchNorm2d(144)

    def forward(self, x):
        return torch.clamp(self.bn(self.dw(torch.relu(self.expand(x)))), 0, 6)


def test_memory_bound_kernels_are_split_too():
    from tilecraft import frontend

    torch.manual_seed(0)
    model, x = _DepthwiseBlock().eval(), torch.randn(1, 24, 56, 56)
    c = driver.compile_model(frontend.import_module(model, (x,), spec="<test>"), threads=2)
    kernels = 1 + len(c.fusion) if c.fusion else 0
    assert len(c.parallel) >= 2 and kernels >= 2, (c.parallel, c.fusion)
    with torch.no_grad():
        assert compare(c.fn(x), model(x)).ok


@pytest.mark.parametrize("name", ["mlp", "gpt2_block", "conv_autoencoder"])
def test_zoo_model_on_two_threads_matches_eager(name):
    c = driver.compile_model(name, threads=2)
    assert c.parallel and all(d.chunks == 2 for d in c.parallel)
    imported = c.imported
    c2 = compare(flatten(c.fn(*imported.inputs)), flatten(imported.reference(*imported.inputs)))
    assert c2.ok, c2


def test_heuristic_schedules_and_uneven_thread_counts(tmp_path):
    """Without a cost model (no fusion plan, so fills made private only here), and with a
    thread count no loop splits into (3): the most chunks that fit, each a thread."""
    c = driver.compile_model("gpt2_block", threads=2, cost_model="heuristic")
    assert c.parallel
    got = compare(flatten(c.fn(*c.imported.inputs)), flatten(c.imported.reference(*c.imported.inputs)))
    assert got.ok, got
    c = driver.compile_model("mlp", threads=3)
    assert c.parallel and {d.chunks for d in c.parallel} == {2}
    got = compare(flatten(c.fn(*c.imported.inputs)), flatten(c.imported.reference(*c.imported.inputs)))
    assert got.ok, got


def test_split_kernels_are_foralls_then_openmp_loops():
    c = driver.compile_model("mlp", threads=2, emit="decided")
    text = str(c.imported.module)
    assert "tc.parallelized" in text and text.count("scf.forall (") == len(c.parallel)
    ids = collections.Counter(re.findall(r"tc.op_id = (\d+)", text))
    assert max(ids.values()) == 1  # every op once: the records still name them
    c = driver.compile_model("mlp", threads=2, emit="llvm")
    assert str(c.imported.module).count("omp.parallel num_threads") == len(c.parallel)
    one = driver.compile_model("mlp", threads=1, emit="llvm")
    assert not one.parallel and "omp." not in str(one.imported.module)


def test_small_kernels_stay_on_one_thread(tmp_path):
    path = tmp_path / "small.mlir"
    path.write_text(
        """func.func @forward(%a: tensor<8x16xf32>) -> tensor<8x16xf32> {
  %e = tensor.empty() : tensor<8x16xf32>
  %r = linalg.generic {indexing_maps = [affine_map<(d0, d1) -> (d0, d1)>, affine_map<(d0, d1) -> (d0, d1)>],
    iterator_types = ["parallel", "parallel"]} ins(%a : tensor<8x16xf32>) outs(%e : tensor<8x16xf32>) {
  ^bb0(%x: f32, %o: f32):
    %y = arith.addf %x, %x : f32
    linalg.yield %y : f32
  } -> tensor<8x16xf32>
  return %r : tensor<8x16xf32>
}
"""
    )
    assert not driver.compile_model(str(path), threads=2, emit="decided").parallel


def test_shared_library_links_the_openmp_runtime(tmp_path):
    out = str(tmp_path / "mlp.so")
    c = driver.compile_model("mlp", threads=2, emit="so", output=out)
    done = c.imported
    fn = done.eager_semantics(runtime.from_shared_library(out, done.func_name, done.signature, bound=done.params))
    got = compare(flatten(fn(*done.inputs)), flatten(done.reference(*done.inputs)))
    assert got.ok, got
    deps = subprocess.run(["ldd", out], capture_output=True, text=True).stdout
    assert "not found" not in deps
    if tcomp.static_object() is None:  # (without tcomp: libiomp5, by rpath)
        assert "libiomp5" in deps


def test_cli_threads():
    run = [sys.executable, "-m", "tilecraft.cli", "run", "mlp", "--threads", "2", "--no-cache"]
    proc = subprocess.run(run, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"threads\s+2", proc.stdout) and re.search(r"matches reference\s+yes", proc.stdout)
    bad = subprocess.run([*run[:5], "--threads", "0"], capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: --threads must be a whole number from 1 to 256 (got 0)"
    gpu = [sys.executable, "-m", "tilecraft.cli", "compile", "mlp", "--target", "gpu", "--threads", "2"]
    gpu = subprocess.run([*gpu, "--emit", "linalg"], capture_output=True, text=True)
    assert gpu.returncode == 2 and "--threads is not supported" in gpu.stderr


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bert_mini", "resnet18", "mobilenet_v2"])
def test_large_zoo_model_on_two_threads_matches_eager(name):
    test_zoo_model_on_two_threads_matches_eager(name)


class _ExpandStrided(torch.nn.Module):
    """A 1×1 convolution to 8 channels (on NCHW: `im2col.POINTWISE_NCHW_BELOW`) whose output
    is zero-padded for a stride-2 depthwise one: the pad's interior is a 1.6 MB copy (the
    GEMM's rows are no view of the padded buffer)."""

    def __init__(self):
        super().__init__()
        self.expand = torch.nn.Conv2d(16, 8, 1, bias=False)
        self.dw = torch.nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8, bias=False)

    def forward(self, x):
        return self.dw(torch.relu(self.expand(x)))


def test_large_copies_are_split_across_threads(monkeypatch):
    from tilecraft import frontend
    from tilecraft.backends.cpu import lowering

    seen = []
    tidy = lowering.tidy_copies

    def spy(module, **kw):
        out = tidy(module, **kw)
        seen.extend(out)
        return out

    monkeypatch.setattr(lowering, "tidy_copies", spy)
    torch.manual_seed(0)
    model, x = _ExpandStrided().eval(), torch.randn(1, 16, 224, 224)
    c = driver.compile_model(frontend.import_module(model, (x,), spec="<t>"), threads=2)
    split = [chunks for _, _, chunks in seen if chunks]
    assert split and all(sum(1 for t in chunks if t) == 1 for chunks in split), seen
    with torch.no_grad():
        assert compare(c.fn(x), model(x)).ok


def test_consecutive_kernels_split_their_rows_and_wide_matmuls_their_columns(monkeypatch):
    """Row splits keep a thread on the rows it wrote (`parallel_plan.OUTERMOST`); a matmul
    much wider than tall (a weight-bound layer) splits its columns (`WIDE`)."""
    from tilecraft import frontend
    from tilecraft.costmodel import parallel_plan

    class Block(torch.nn.Module):  # 196 x 384 (expansion), then 32 x 512 (wide)
        def __init__(self):
            super().__init__()
            self.expand = torch.nn.Linear(64, 384)
            self.wide = torch.nn.Linear(384, 512)

        def forward(self, x, y):
            return torch.relu(self.expand(x)), self.wide(y)

    torch.manual_seed(0)
    model, inputs = Block().eval(), (torch.randn(196, 64), torch.randn(32, 384))

    def loops(**flags):
        for k, v in flags.items():
            monkeypatch.setattr(parallel_plan, k, v)
        imported = frontend.import_module(model, inputs, spec="<t>")
        done = driver.compile_model(imported, threads=2, emit="decided", target=reference_target())
        return sorted((d.loop for d in done.parallel), reverse=True)

    assert loops() == [1, 0]  # the expansion by rows (196 < 384), the wide one by columns
    assert loops(OUTERMOST=False) == [1, 1]  # each along its longest loop
    compiled = driver.compile_model(frontend.import_module(model, inputs, spec="<t>"), threads=2)
    with torch.no_grad():
        assert compare(compiled.fn(*inputs), model(*inputs)).ok
