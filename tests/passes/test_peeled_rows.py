"""Matmul register tiles whose rows leave a remainder: the last, partial row tile peeled.

AVX2's 6×16 accumulator tile (12 ymm) divides few row counts (49, 196, 512); its last
partial tile is peeled into a loop of its own, and both parts vectorize with static
shapes. Fused groups get it on 8-lane targets (`fusion.peels_rows`); a schedule may pin it
on any target (`schedule.peeled_rows`). The code runs on any x86-64 host with AVX2.
"""

from __future__ import annotations

import pytest
import torch

from conftest import reference_target
from tilecraft import driver, frontend
from tilecraft.backends.cpu.schedule import TileDecision
from tilecraft.dialects.opinfo import peeled_row_tile
from tilecraft.passes import fusion


def avx2_target():
    """An 8-lane, 16-register class (AVX2 + FMA) of the reference machine."""
    return reference_target().with_options(
        cpu_name="AMD EPYC", avx512=False, avx512bf16=False, avx512vnni=False, avx512fp16=False,
        amx=False, amx_bf16=False, amx_int8=False, l2_bytes=512 << 10,
    )  # fmt: skip


class BmmEpilogue(torch.nn.Module):
    def forward(self, a, b):
        return torch.relu(torch.bmm(a, b) + 1.0)


class Mm(torch.nn.Module):
    def forward(self, a, b):
        return a @ b


def _tiled_text(imported, **kw) -> tuple[driver.Compiled, str]:
    seen = {}
    c = driver.compile_model(imported, on_step=lambda name, m, _: seen.__setitem__(name, str(m)), **kw)
    return c, seen["tiled"]


def test_peeled_register_tiles_pick_whole_lines_of_b():
    assert fusion._peeled_register_tile(48, 256, 8) == (6, 16)
    assert fusion._peeled_register_tile(56, 256, 8) == (6, 16)  # 9 x 6 + 2
    assert fusion._peeled_register_tile(49, 256, 8) == (5, 16)  # 9 x 5 + 4, not 8 x 6 + 1
    assert fusion._peeled_register_tile(48, 24, 8) == (12, 8)  # one vector wide: 12 rows
    assert fusion._peeled_register_tile(4, 32, 8) == (4, 16)  # fewer rows than a tile: whole
    assert fusion._peeled_register_tile(16, 10, 8) is None  # not whole vectors: as before
    assert fusion._peeled_register_tile(48, 64, 4) == (6, 8)  # SSE: 12 xmm accumulators too
    assert fusion.ragged_dims((1, 0, 0), (1, 6, 16), (16, 49, 256)) == [1]
    assert fusion.ragged_dims((1, 0, 0), (1, 7, 16), (16, 49, 256)) == []


@pytest.mark.parametrize("rows", [49, 13, 56])
def test_fused_group_with_ragged_rows_matches_eager_and_is_peeled(rows):
    a, b = torch.randn(4, rows, 64), torch.randn(4, 64, 32)
    imp = frontend.import_module(BmmEpilogue(), (a, b), spec="bmm")
    c, tiled = _tiled_text(imp, target=avx2_target(), threads=1)
    [g] = [g for g in c.fusion if g.registers]
    r = peeled_row_tile(rows, 2)
    assert g.inner[1] == r and g.inner[2] == 16 and rows % r
    torch.testing.assert_close(c.fn(a, b), torch.relu(torch.bmm(a, b) + 1.0), rtol=1e-4, atol=1e-4)
    # the peeled tile (rows % r) has static shapes, and nothing is left as a linalg op
    assert f"tensor<1x{rows % r}x64xf32>" in tiled or f"tensor<{rows % r}x64xf32>" in tiled
    assert "linalg.batch_matmul" not in tiled and "linalg.matmul" not in tiled


def test_two_threads_split_ragged_rows():
    a, b = torch.randn(1, 98, 64), torch.randn(1, 64, 64)
    imp = frontend.import_module(BmmEpilogue(), (a, b), spec="bmm")
    c = driver.compile_model(imp, target=avx2_target(), threads=2)
    torch.testing.assert_close(c.fn(a, b), torch.relu(torch.bmm(a, b) + 1.0), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "tiles, pack",
    [
        (((40, 128, 64), (6, 16, 1)), True),  # 40 = 6 x 6 + 4, packed B
        (((100, 64, 128), (12, 8, 1)), False),  # 100 = 8 x 12 + 4
        (((100, 64, 128), (7, 16, 1)), False),
    ],
)
def test_pinned_schedule_with_ragged_rows_matches_eager(tiles, pack):
    a, b = torch.randn(200, 128), torch.randn(128, 128)
    imp = lambda: frontend.import_module(Mm(), (a, b), spec="mm")  # noqa: E731
    key = next(ch.kernel.key for ch in driver.compile_model(imp(), fuse=False).choices if "matmul" in ch.kernel.name)
    d = TileDecision(tiles=tiles, interchange=(1, 2, 0) if pack else (), pack=pack)
    c, tiled = _tiled_text(imp(), fuse=False, decisions={key: d})
    torch.testing.assert_close(c.fn(a, b), a @ b, rtol=1e-4, atol=1e-4)
    rest = tiles[0][0] % tiles[1][0]
    assert f"tensor<{rest}x1xf32>" in tiled  # the peeled tile's column of A, static
    assert "linalg.matmul" not in tiled  # both parts vectorized


@pytest.mark.parametrize(
    "tiles",
    [
        ((64, 128, 64), (8, 16, 1)),  # a cache tile must still divide the rows (200)
        ((100, 128, 64), (4, 24, 1)),  # and a register tile the columns
    ],
)
def test_only_register_rows_may_leave_a_remainder(tiles):
    a, b = torch.randn(200, 128), torch.randn(128, 128)
    imp = lambda: frontend.import_module(Mm(), (a, b), spec="mm")  # noqa: E731
    key = next(ch.kernel.key for ch in driver.compile_model(imp(), fuse=False).choices if "matmul" in ch.kernel.name)
    with pytest.raises(ValueError, match="does not divide"):
        driver.compile_model(imp(), fuse=False, decisions={key: TileDecision(tiles=tiles)})


def test_peeled_row_tiles_leave_no_single_row():
    for rows in range(7, 60):  # (further up, one slow row weighs less than smaller tiles throughout)
        r = peeled_row_tile(rows, 2)
        assert 4 <= r <= 6 and rows % r != 1, rows
    assert peeled_row_tile(3136, 2) == 6 and peeled_row_tile(97, 2) == 6
    assert peeled_row_tile(5, 2) == 5  # a tile's worth or fewer: whole


def test_default_packed_tile_divides_the_wider_cache_tile():
    # AVX2, B larger than L2: the packed cache tile is re-chosen up to 256 columns wide;
    # the register tile must divide it (n = 1008: 112 columns, then 168)
    from tilecraft.backends.cpu import schedule
    from tilecraft.dialects import opinfo

    a, b = torch.randn(128, 1280), torch.randn(1280, 1008)
    c = driver.compile_model(frontend.import_module(Mm(), (a, b), spec="mm"), fuse=False, target=avx2_target())
    torch.testing.assert_close(c.fn(a, b), a @ b, rtol=1e-4, atol=1e-4)
    assert schedule.accumulator_cap(avx2_target()) == 12 and opinfo.LANES == 16  # (validated in the compile)
