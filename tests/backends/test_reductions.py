"""Row reductions are split into register-wide partial reductions (`backends/cpu/reductions.py`)."""

import torch
from torch import nn

from tilecraft import driver, frontend


class Softmax(nn.Module):
    def forward(self, x):
        return torch.softmax(x * 0.5, dim=-1)


def _compiled(model, x, emit="jit"):
    return driver.compile_model(frontend.import_module(model, (x,), spec="<test>"), emit=emit)


def test_fused_row_reductions_are_vector_trees_not_scalar_chains():
    model, x = Softmax(), torch.randn(4, 8, 128)
    text = _compiled(model, x, emit="vector").text
    assert text.count("vector.reduction <maxnumf>") + text.count("vector.reduction <maximumf>") >= 1
    assert "fastmath<reassoc> : vector<16xf32> into f32" in text
    assert text.count("vector.extract ") < 64  # a 128-wide row: 8 registers, not 128 lanes
    compiled = _compiled(model, x)
    assert driver.compare(compiled.fn(x), model(x)).ok


def test_layer_norm_with_f64_variance_matches_eager():
    torch.manual_seed(0)
    model = nn.LayerNorm(256).eval()
    x = torch.randn(1, 16, 256) * 3 + 1
    compiled = _compiled(model, x)
    with torch.no_grad():
        assert driver.compare(compiled.fn(x), model(x)).ok
