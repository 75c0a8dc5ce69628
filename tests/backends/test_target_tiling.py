"""Target detection and options; tile decisions as data; the legal decision space."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tilecraft import frontend
from tilecraft.backends.cpu import schedule as tiling
from tilecraft.backends.cpu.target import Target, TargetError, host
from tilecraft.corpus import generator, kernels


def test_host_target_reads_the_machine():
    t = host()
    assert t.cores >= 1 and t.l1d_bytes > 0 and t.l2_bytes >= t.l1d_bytes and t.clock_ghz > 0
    assert t.peak_gflops_f32 > 0
    assert Target.from_json(t.to_json()) == t and t.hash() == Target.from_json(t.to_json()).hash()


def test_target_options_and_files(tmp_path):
    t = Target.parse("cpu{avx512=false cores=1}")
    assert not t.has("avx512") and not t.has("avx512bf16") and t.cores == 1 and t.f32_lanes in (4, 8)
    assert t.hash() != host().hash()
    path = tmp_path / "t.json"
    path.write_text(t.to_json())
    assert Target.parse(str(path)) == t
    for bad in ("gpu", "cpu{nope=1}", "cpu{cores=x}", "cpu{avx512=maybe}", "cpu{x}"):
        with pytest.raises(TargetError):
            Target.parse(bad)
    with pytest.raises(TargetError):
        Target.from_json(json.dumps({"kind": "cpu", "bogus": 1}))


def test_decision_json_roundtrip_and_validation():
    info = tiling.OpInfo(0, "linalg.matmul", "matmul", (64, 64, 64), ("parallel", "parallel", "reduction"))
    d = tiling.TileDecision(tiles=((32, 64, 64), (8, 32, 1)), interchange=(0, 2, 1))
    assert tiling.TileDecision.from_json(d.to_json()) == d
    d.validate(info)
    with pytest.raises(ValueError, match="does not divide"):
        tiling.TileDecision(tiles=((48, 64, 64),)).validate(info)
    with pytest.raises(ValueError, match="permutation"):
        tiling.TileDecision(tiles=((32, 64, 64),), interchange=(0, 0, 1)).validate(info)
    with pytest.raises(ValueError, match="not a TileDecision"):
        tiling.TileDecision.from_json('{"tile": []}')


@pytest.mark.parametrize("k, n", [(1280, 1008), (512, 1000), (100, 24)])
def test_a_one_row_matmul_streams_whole_rows_of_its_right_operand(k, n):
    """x[1, K] @ B[K, N] (a classifier at batch 1): its default decision (and the space's
    one-row candidates) take all of N and a few rows of K per cache tile
    (`tiling.ONE_ROW_K`), so B is read row by row."""
    info = tiling.OpInfo(0, "linalg.matmul", "matmul", (1, n, k), ("parallel", "parallel", "reduction"))
    one_row = [d for d in tiling.space(info, host()) if d.tiles[0][1] == n and d.tiles[0][2] <= tiling.ONE_ROW_K]
    assert tiling.default_decision(info, host()) == one_row[0]
    assert one_row[0].tiles[0][2] == tiling.divisor_at_most(k, tiling.ONE_ROW_K)
    for d in one_row:
        d.validate(info)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000))
def test_every_decision_in_the_space_is_legal(seed):
    ctx = frontend.new_context()
    for k in generator.random_kernels(3, seed=seed, context=ctx):
        info = kernels.infos_of(k.mlir, ctx)
        space = tiling.space(info, host())
        assert space and space[0] == tiling.default_decision(info, host())
        assert len(set(space)) == len(space)
        for d in space:
            d.validate(info)


UNIT_STRIDE_OPS = """
#id = affine_map<(d0, d1, d2) -> (d0, d1, d2)>
#ch = affine_map<(d0, d1, d2) -> (d0)>
#tr = affine_map<(d0, d1, d2) -> (d2, d0, d1)>
func.func @f(%a: tensor<64x7x7xf32>, %b: tensor<64x7x7xf32>, %w: tensor<64xf32>, %t: tensor<7x64x7xf32>)
    -> (tensor<64x7x7xf32>, tensor<64x7x7xf32>) {
  %e = tensor.empty() : tensor<64x7x7xf32>
  %taps = linalg.generic {indexing_maps = [#id, #id, #ch, #id], iterator_types = ["parallel", "parallel", "parallel"]}
      ins(%a, %b, %w : tensor<64x7x7xf32>, tensor<64x7x7xf32>, tensor<64xf32>) outs(%e : tensor<64x7x7xf32>) {
  ^bb0(%x: f32, %y: f32, %s: f32, %o: f32):
    %m = arith.mulf %x, %s : f32
    %r = arith.addf %m, %y : f32
    linalg.yield %r : f32
  } -> tensor<64x7x7xf32>
  %tt = linalg.generic {indexing_maps = [#tr, #id], iterator_types = ["parallel", "parallel", "parallel"]}
      ins(%t : tensor<7x64x7xf32>) outs(%e : tensor<64x7x7xf32>) {
  ^bb0(%x: f32, %o: f32):
    linalg.yield %x : f32
  } -> tensor<64x7x7xf32>
  return %taps, %tt : tensor<64x7x7xf32>, tensor<64x7x7xf32>
}
"""


def test_no_scalar_schedule_for_an_op_that_vectorizes_with_plain_loads():
    """Depthwise taps with a per-channel weight read every operand contiguously (or
    broadcast): only vectorized schedules are offered, even along 7 columns. A transpose
    still gets the scalar one."""
    from tilecraft.dialects.opinfo import tag_ops

    ctx = frontend.new_context()
    module = frontend.parse_mlir(UNIT_STRIDE_OPS, context=ctx)
    taps, transpose = (i for i in tag_ops(module) if i.name == "linalg.generic")
    assert taps.unit_stride and not transpose.unit_stride
    assert all(d.vectorize for d in tiling.space(taps, host()))
    assert any(not d.vectorize for d in tiling.space(transpose, host()))
