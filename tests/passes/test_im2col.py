"""Convolutions as GEMMs (`passes/im2col.py`): which layers are rewritten, and the
rewritten model matches eager (strides, bias as a non-zero accumulator init, batch > 1,
gathered tap by tap or in one gather)."""

import dataclasses
import re

import pytest
import torch

from conftest import reference_target
from tilecraft import driver, frontend
from tilecraft.passes import im2col, pad_weights, sink_expand_shapes


def _imported(model, x):
    return frontend.import_module(model.eval(), (x,), spec="<test>")


@pytest.mark.parametrize(
    "c, f, k, stride, bias, n, h",
    [
        (16, 32, 3, 1, False, 1, 14),
        (32, 16, 3, 2, True, 1, 15),
        (16, 16, 5, 1, True, 2, 9),
        (3, 16, 3, 1, False, 1, 8),
        (24, 8, 1, 1, True, 1, 8),  # pointwise, few outputs: a GEMM on the input as it stands
        (24, 40, 1, 1, True, 1, 8),  # 40 outputs: the im2col path (its gather a transpose), NHWC
        (24, 40, 1, 1, False, 1, 7),  # 7x7 pixels: the im2col path (its gather a transpose)
        (16, 40, 1, 1, False, 1, 7),  # ... whole vectors of channels too (the gather is a transpose)
        (32, 16, 1, 2, True, 1, 14),  # a strided 1×1 (ResNet's downsample): one strided tap
        (16, 32, 3, 1, True, 1, 28),  # wide rows: a chain of 9 tap matmuls, no gather
        (32, 16, 5, 1, False, 1, 52),  # ... of 25
    ],
)
def test_rewritten_convolution_matches_eager(c, f, k, stride, bias, n, h):
    torch.manual_seed(0)
    model = torch.nn.Conv2d(c, f, k, stride=stride, padding=k // 2, bias=bias)
    x = torch.randn(n, c, h, h)
    imported = _imported(model, x)
    with imported.module.context:
        params, done = im2col.rewrite(imported.module, imported.params)
    assert len(done) == 1 and done[0].gemm == (n * done[0].oh * done[0].ow, f, c * k * k)
    text = str(imported.module)
    assert im2col.CONV not in text and "linalg.matmul" in text
    # whole vectors of channels: gathered tap by tap, each tap a copy from the input transposed once
    assert done[0].pointwise == (k == 1 and stride == 1 and h % 4 == 0 and f < im2col.POINTWISE_NCHW_BELOW)
    assert done[0].by_taps == (c % 16 == 0 and (k > 1 or stride > 1))
    wide = k - 1 <= im2col.MAX_CHAIN_WASTE * h and f % 16 == 0
    assert done[0].by_chain == (c % 16 == 0 and k > 1 and stride == 1 and n == 1 and wide)
    assert text.count("tensor.insert_slice") == (k * k if done[0].by_taps and not done[0].by_chain else 0)
    assert text.count("linalg.matmul") == (k * k if done[0].by_chain else 1)
    packed = (f, c) if done[0].pointwise else (k * k, c, f) if done[0].by_chain else (c * k * k, f)
    assert any(tuple(p.shape) == packed for p in params)
    compiled = driver.compile_model(_imported(model, x))  # default: rewritten, fused, tiled
    with torch.no_grad():
        assert driver.compare(compiled.fn(x), model(x)).ok


@pytest.mark.parametrize(
    "c, f, k, stride, pad, h",
    [
        (3, 16, 7, 2, 3, 112),  # ResNet's stem: 4 phase planes, 49 taps of K = 3
        (3, 32, 3, 2, 1, 31),  # MobileNet's: odd input, planes padded
        (3, 16, 2, 2, 0, 15),  # the input's last column cut (no window reaches it)
        (3, 16, 3, 1, 1, 40),  # thin at stride 1: one plane
    ],
)
def test_thin_convolution_runs_as_a_tap_chain_when_fusing(c, f, k, stride, pad, h):
    """Fusing, a thin layer (its one gather would run scalar) is a chain of tap matmuls
    over its stride phases; unfused, it keeps the gather (one K = C GEMM per tap would
    pass over the accumulator KH·KW times)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(c, f, k, stride=stride, padding=pad, bias=False), torch.nn.BatchNorm2d(f), torch.nn.ReLU()
    ).eval()
    x = torch.randn(1, c, h, h)
    imported = _imported(model, x)
    with imported.module.context:
        _, done = im2col.rewrite(imported.module, imported.params, thin=True)  # thin: fusion follows
    assert done[0].by_chain and not dataclasses.replace(done[0], fusing=False).by_chain
    assert str(imported.module).count("linalg.matmul") == k * k
    planes = stride * stride if stride > 1 else 0
    assert str(imported.module).count("tensor.insert_slice") == planes
    compiled = driver.compile_model(_imported(model, x))  # fused: the chain, one kernel
    assert any(len(d.members) + 1 >= k * k for d in compiled.fusion)
    with torch.no_grad():
        assert driver.compare(compiled.fn(x), model(x)).ok


def test_layers_that_stay_direct():
    thin = torch.nn.Sequential(
        torch.nn.Conv2d(3, 64, 7, stride=2, padding=3), torch.nn.Conv2d(64, 24, 1), torch.nn.Conv2d(24, 8, 1, stride=2)
    )
    imported = _imported(thin, torch.randn(1, 3, 224, 224))
    with imported.module.context:
        found = im2col.layers(imported.module, len(imported.params))
    assert [bool(x.why_not) for x in found] == [True, False, True]
    assert "transpose" in found[0].why_not and "strided" in found[2].why_not
    with imported.module.context:  # fusing: the thin stem's output transpose folds into its epilogue
        found = im2col.layers(imported.module, len(imported.params), thin=True)
    assert [bool(x.why_not) for x in found] == [False, False, True]


def _pointwise_bn_relu6(f: int, hw: int):
    """16 → f channels 1×1 with batch norm (non-trivial statistics) and ReLU6, then a 3×3."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(16, f, 1, bias=False), torch.nn.BatchNorm2d(f), torch.nn.ReLU6(), torch.nn.Conv2d(f, 8, 3)
    ).eval()
    model[1].running_mean.uniform_(-0.5, 0.5)
    model[1].running_var.uniform_(0.5, 1.5)
    model[1].weight.data.uniform_(0.5, 1.5)
    return model, torch.randn(1, 16, hw, hw)


def test_pointwise_gemm_and_its_batch_norm_chain_become_one_group():
    model, x = _pointwise_bn_relu6(8, 16)
    imported = _imported(model, x)
    with imported.module.context:
        im2col.rewrite(imported.module, imported.params)
        sink_expand_shapes.sink_expand_shapes(imported.module)
    text = str(imported.module)
    # the chain runs on the GEMM's [F, H·W]; the GEMM's expand_shape moved below it, to the 3×3 conv
    expands = [line for line in text.splitlines() if "tensor<8x256xf32> into tensor<1x8x16x16xf32>" in line]
    assert len(expands) == 1
    chain = text.split(expands[0])[0].split("linalg.matmul")[-1]
    # the batch norm folded into the GEMM's weights (`compiler/batchnorm.py`): its shift, 2 ops of relu6
    assert chain.count("linalg.generic") == 3 and chain.count('iterator_types = ["parallel", "parallel"]') == 3
    compiled = driver.compile_model(_imported(model, x))
    groups = [g for g in compiled.fusion if len(g.ops) >= 5]  # fill + matmul + the shift + 2 ops of relu6
    assert groups
    with torch.no_grad():
        assert driver.compare(compiled.fn(x), model(x)).ok


def test_pointwise_gemm_batch_norm_runs_in_its_accumulator_registers():
    """The per-channel batch norm of a pointwise GEMM on [F, H·W] reads one value per row:
    its [F, 1, 1] scales are read as [F] (`drop_unit_reads`: a map with constants is not
    vectorized), the group keeps its 8×32 accumulator tiles in registers
    (`fusion.ROW_BROADCASTS_IN_REGISTERS`), and each row's scale is one broadcast, not a
    transpose of a broadcast (`backends/cpu/broadcasts.py`)."""
    model, x = _pointwise_bn_relu6(8, 32)
    imported = _imported(model, x)
    with imported.module.context:
        driver.convolutions_as_gemms(imported)
    text = str(imported.module)
    assert "tensor<8x1x1xf32> into tensor<8xf32>" in text and not re.search(r"-> \(d0, 0, 0\)>", text)
    compiled = driver.compile_model(_imported(model, x), emit="vector", target=reference_target())  # (8×8 on AVX2)
    groups = [g for g in compiled.fusion if len(g.ops) >= 5]  # fill, matmul, the folded batch norm's shift, relu6
    assert groups and groups[0].registers and groups[0].inner == (0, 32)  # all 8 rows by 32
    assert "vector.transpose" not in compiled.text and "vector.shuffle" not in compiled.text
    compiled = driver.compile_model(_imported(model, x))
    with torch.no_grad():
        assert driver.compare(compiled.fn(x), model(x)).ok


def test_weight_columns_are_padded_to_whole_vectors():
    torch.manual_seed(0)
    model, x = torch.nn.Linear(64, 1000).eval(), torch.randn(1, 64)
    imported = _imported(model, x)
    with imported.module.context:
        params, padded = pad_weights.pad_weights(imported.module, imported.params)
    assert padded == 1 and any(tuple(p.shape) == (64, 1008) for p in params)
    text = str(imported.module)
    assert "linalg.matmul" in text and "tensor<1x1008xf32> to tensor<1x1000xf32>" in text
    compiled = driver.compile_model(_imported(model, x))
    with torch.no_grad():
        assert driver.compare(compiled.fn(x), model(x)).ok


@pytest.mark.parametrize(
    "n, stored, computed",
    [(512, 528, 512), (1020, 1040, 1024)],  # rows 2 KB apart; 1020 columns: 1024 computed, 4 KB apart
)
def test_weight_rows_are_stored_off_a_multiple_of_1kb_apart(n, stored, computed):
    """The matmul reads a [K, N] slice of a weight stored 16 columns wider: its rows no
    longer fall into the same few L1 sets."""
    torch.manual_seed(0)
    model, x = torch.nn.Linear(64, n).eval(), torch.randn(8, 64)
    imported = _imported(model, x)
    with imported.module.context:
        params, padded = pad_weights.pad_weights(imported.module, imported.params)
    assert padded == 1 and any(tuple(p.shape) == (64, stored) for p in params)
    text = str(imported.module)
    assert f"tensor<64x{stored}xf32> to tensor<64x{computed}xf32>" in text
    assert f"-> tensor<8x{computed}xf32>" in text
    compiled = driver.compile_model(_imported(model, x))
    with torch.no_grad():
        assert driver.compare(compiled.fn(x), model(x)).ok


def test_reshape_sinks_below_an_op_with_inputs_of_another_element_type():
    class Masked(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(16, 16, 1, bias=False)

        def forward(self, x, mask):
            return torch.where(mask, self.conv(x), 0.0)  # an i1 mask beside the f32 GEMM result

    torch.manual_seed(0)
    model, x, mask = Masked().eval(), torch.randn(1, 16, 8, 8), torch.rand(1, 16, 8, 8) > 0.5
    compiled = driver.compile_model(frontend.import_module(model, (x, mask), spec="<test>"))
    with torch.no_grad():
        assert driver.compare(compiled.fn(x, mask), model(x, mask)).ok


def test_tap_chain_fuses_into_one_register_tiled_kernel():
    """A 3×3 layer on 32-wide rows is nine tap matmuls chained through their accumulator:
    fused, one group (the chain and its zero fill) whose accumulator tiles stay in
    registers across the taps, in whole 8-row register tiles (planned for the reference
    machine: a 16-register host's tiles are 6 rows, the rest peeled)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(16, 32, 3, padding=1, bias=False), torch.nn.ReLU()).eval()
    x = torch.randn(1, 16, 32, 32)
    compiled = driver.compile_model(_imported(model, x), target=reference_target())
    chains = [g for g in compiled.fusion if g.registers and len(g.ops) == 10]  # 9 matmuls + their fill
    assert len(chains) == 1 and chains[0].inner[0] == 8
    with torch.no_grad():
        assert driver.compare(compiled.fn(x), model(x)).ok
    unfused = driver.compile_model(_imported(model, x), fuse=False)  # nine GEMMs of their own
    with torch.no_grad():
        assert driver.compare(unfused.fn(x), model(x)).ok


def test_bias_and_activation_writing_nchw_read_the_gemm_rows_transposed():
    """A strided convolution with a bias, its NCHW result read by an upsampling (no inverse
    transpose to cancel against): the bias is read where it is added, not spread over
    [F, OH, OW] first, and the bias + ReLU run over [F, OH·OW], reading the GEMM's
    [OH·OW, F] rows transposed, with one reshape after them."""

    class Down(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(16, 32, 3, stride=2, padding=1)

        def forward(self, x):
            y = torch.relu(self.conv(x))
            return torch.nn.functional.interpolate(y, scale_factor=2.0, mode="nearest")

    torch.manual_seed(0)
    model, x = Down().eval(), torch.randn(1, 16, 32, 32)
    imported = _imported(model, x)
    with imported.module.context:
        driver.convolutions_as_gemms(imported)
    text = str(imported.module)
    assert not re.search(r"ins\(%\w+ : tensor<32xf32>\) outs\(%\w+ : tensor<32x16x16xf32>\)", text)  # no spread bias
    assert "-> tensor<32x256xf32>" in text
    assert "affine_map<(d0, d1) -> (d1, d0)>" in text  # the GEMM's rows read transposed
    compiled = driver.compile_model(_imported(model, x))
    with torch.no_grad():
        assert driver.compare(compiled.fn(x), model(x)).ok
    unfused = driver.compile_model(_imported(model, x), fuse=False)
    with torch.no_grad():
        assert driver.compare(unfused.fn(x), model(x)).ok
