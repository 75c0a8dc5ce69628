"""A convolution of a nearest upsampling as one small convolution per output phase
(`passes/subpixel.py`): which layers are rewritten, the phase filters, and the rewritten
model matches eager, fused and unfused."""

import pytest
import torch
import torch.nn.functional as F

from tilecraft import driver, frontend
from tilecraft.passes import subpixel


class _UpConv(torch.nn.Module):
    def __init__(self, c, f, k, pad, scale, bias, mode="nearest"):
        super().__init__()
        self.conv = torch.nn.Conv2d(c, f, k, 1, pad, bias=bias)
        self.scale, self.mode = scale, mode

    def forward(self, x):
        return torch.relu(self.conv(F.interpolate(x, scale_factor=float(self.scale), mode=self.mode)))


def _rewritten(model, x) -> int:
    imported = frontend.import_module(model.eval(), (x,), spec="<test>")
    with imported.module.context:
        _, n = subpixel.rewrite(imported.module, imported.params)
    return n


@pytest.mark.parametrize(
    "c, f, k, pad, scale, bias, hw",
    [
        (16, 16, 3, 1, 2, True, 8),
        (8, 32, 3, 1, 2, False, 7),  # odd sizes, few input channels
        (16, 16, 5, 2, 2, True, 6),  # 5x5: three small taps a phase
        (16, 16, 3, 1, 3, True, 5),  # 3x: nine phases
        (16, 16, 1, 0, 2, True, 8),  # 1x1: the convolution of the small image, repeated
    ],
)
def test_a_convolution_of_a_nearest_upsampling_runs_on_the_small_image(c, f, k, pad, scale, bias, hw):
    torch.manual_seed(0)
    model, x = _UpConv(c, f, k, pad, scale, bias).eval(), torch.randn(1, c, hw, hw)
    assert _rewritten(model, x) == 1
    for fuse in (True, False):
        compiled = driver.compile_model(frontend.import_module(model, (x,), spec="<test>"), fuse=fuse)
        with torch.no_grad():
            assert driver.compare(compiled.fn(x), model(x)).ok


@pytest.mark.parametrize(
    "model, why",
    [
        (_UpConv(16, 16, 3, 1, 2, True, mode="bilinear"), "not a nearest upsampling"),
        (_UpConv(16, 16, 3, 0, 2, True), "the padding does not keep the size"),
        (_UpConv(16, 12, 3, 1, 2, True), "output channels not whole vectors"),
    ],
)
def test_other_layers_are_left_alone(model, why):
    torch.manual_seed(0)
    x = torch.randn(1, 16, 8, 8)
    assert _rewritten(model, x) == 0, why
    compiled = driver.compile_model(frontend.import_module(model.eval(), (x,), spec="<test>"))
    with torch.no_grad():
        assert driver.compare(compiled.fn(x), model(x)).ok


@pytest.mark.parametrize("scale, k, pad", [(2, 3, 1), (2, 5, 2), (3, 3, 1), (2, 1, 0)])
def test_phase_filters_compute_the_upsampled_convolution(scale, k, pad):
    """Each phase's small convolution, on the zero-padded small image, equals the
    convolution of the upsampling at that phase's output pixels."""
    torch.manual_seed(0)
    z, w = torch.randn(1, 4, 5, 6, dtype=torch.float64), torch.randn(3, 4, k, k, dtype=torch.float64)
    want = F.conv2d(F.interpolate(z, scale_factor=float(scale), mode="nearest"), w, padding=pad)
    phases, before, after = subpixel.phase_taps(scale, k, pad)
    taps = subpixel.phase_filters(w, scale, pad)  # [T, C, F]
    zp = F.pad(z, (before, after, before, after))
    t = 0
    for p in range(scale):
        for q in range(scale):
            got = torch.zeros(1, 3, 5, 6, dtype=torch.float64)
            for oy, _ in phases[p]:
                for ox, _ in phases[q]:
                    window = zp[:, :, oy + before : oy + before + 5, ox + before : ox + before + 6]
                    got += torch.einsum("nchw,cf->nfhw", window, taps[t])
                    t += 1
            assert torch.allclose(got, want[:, :, p::scale, q::scale])
    assert t == taps.shape[0]
