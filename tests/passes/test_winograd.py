"""Winograd F(2×2, 3×3) (`passes/winograd.py`, through `passes/im2col.py`'s rewrite): the
filter transform, which layers it takes, and the rewritten model against eager (batch
norm and ReLU after it, a bias as the accumulator's init, layers in sequence)."""

import dataclasses

import pytest
import torch

from tilecraft import driver, frontend
from tilecraft.passes import im2col, winograd


def _imported(model, x):
    return frontend.import_module(model.eval(), (x,), spec="<test>")


def _layer(**kw):
    base = dict(index=0, n=1, c=64, f=64, kh=3, kw=3, oh=28, ow=28, strides=(1, 1), weight=0)
    return im2col.ConvLayer(**{**base, **kw})


def test_filter_transform_is_g_g_gt():
    torch.manual_seed(0)
    w = torch.randn(5, 3, 3, 3, dtype=torch.float64)
    u = winograd.transform_filter(w)
    assert u.shape == (16, 3, 5)
    g = torch.tensor(winograd.G, dtype=torch.float64)
    for f in range(5):
        for c in range(3):
            assert torch.allclose(u[:, c, f].reshape(4, 4), g @ w[f, c] @ g.T)


def test_the_transforms_compute_a_convolution():
    """Bᵀ, G and Aᵀ as the pass spells them give the 2×2 outputs of a 3×3 window on a
    4×4 input block."""
    torch.manual_seed(0)
    d, g = torch.randn(4, 4, dtype=torch.float64), torch.randn(3, 3, dtype=torch.float64)
    bt, at = torch.zeros(4, 4, dtype=torch.float64), torch.zeros(2, 4, dtype=torch.float64)
    for r, row in enumerate(winograd.BT_ROWS):
        for col, sign in row:
            bt[r, col] = sign
    for r, row in enumerate(winograd.AT_ROWS):
        for col, sign in row:
            at[r, col] = sign
    gm = torch.tensor(winograd.G, dtype=torch.float64)
    y = at @ ((gm @ g @ gm.T) * (bt @ d @ bt.T)) @ at.T
    direct = torch.nn.functional.conv2d(d[None, None], g[None, None])[0, 0]
    assert torch.allclose(y, direct)


@pytest.mark.parametrize(
    "change, chosen",
    [
        ({}, True),
        ({"oh": 7, "ow": 7}, False),  # odd: 2×2 blocks do not tile it
        ({"strides": (2, 2)}, False),
        ({"kh": 5, "kw": 5}, False),
        ({"n": 2}, False),
        ({"c": 24}, False),  # channels not whole vectors
        ({"c": 32, "f": 32}, False),  # few channels: the transforms cost what the GEMM saves
        ({"oh": 4, "ow": 4}, False),  # 4 blocks: too few GEMM rows
    ],
)
def test_which_layers_are_chosen(change, chosen):
    assert winograd.chosen(_layer(**change)) == chosen


def test_disabled_leaves_the_gemm_paths(monkeypatch):
    monkeypatch.setattr(winograd, "ENABLED", False)
    assert not winograd.chosen(_layer())


def test_the_pass_option_turns_it_off():
    """`conv-im2col{winograd=false}` (the GPU pipeline's) takes the GEMM paths."""
    torch.manual_seed(0)
    model, x = torch.nn.Conv2d(64, 64, 3, padding=1), torch.randn(1, 64, 28, 28)
    for on in (True, False):
        imported = _imported(model, x)
        weights = list(imported.params)
        with imported.module.context:
            im2col.Im2colPass(winograd=on).apply(imported.module, weights)
        assert ("linalg.batch_matmul" in str(imported.module)) == on


class _Block(torch.nn.Module):
    """Two 3×3 layers as in a ResNet basic block: conv, batch norm, ReLU, conv (with a
    bias: a non-zero accumulator init), batch norm, residual add, ReLU."""

    def __init__(self, c):
        super().__init__()
        self.c1 = torch.nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.b1 = torch.nn.BatchNorm2d(c)
        self.c2 = torch.nn.Conv2d(c, c, 3, padding=1, bias=True)
        self.b2 = torch.nn.BatchNorm2d(c)
        for bn in (self.b1, self.b2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        y = torch.relu(self.b1(self.c1(x)))
        return torch.relu(self.b2(self.c2(y)) + x)


@pytest.mark.parametrize("c, h", [(64, 14), (64, 8)])
def test_rewritten_block_matches_eager(c, h, monkeypatch):
    monkeypatch.setattr(winograd, "MIN_BLOCKS", 16)
    torch.manual_seed(0)
    model, x = _Block(c).eval(), torch.randn(1, c, h, h)
    imported = _imported(model, x)
    with imported.module.context:
        params, done = im2col.rewrite(imported.module, imported.params)
    assert len(done) == 2 and all(layer.winograd and winograd.chosen(layer) for layer in done)
    text = str(imported.module)
    assert im2col.CONV not in text and text.count("linalg.batch_matmul") == 2
    assert sum(tuple(p.shape) == (16, c, c) for p in params) == 2  # the filters, transformed
    compiled = driver.compile_model(_imported(model, x))  # default: rewritten, fused, tiled
    with torch.no_grad():
        assert driver.compare(compiled.fn(x), model(x)).ok


def test_odd_layers_keep_the_gemm_paths():
    torch.manual_seed(0)
    model, x = torch.nn.Conv2d(64, 64, 3, padding=1), torch.randn(1, 64, 15, 15)
    imported = _imported(model, x)
    with imported.module.context:
        _, done = im2col.rewrite(imported.module, imported.params)
    assert len(done) == 1 and not winograd.chosen(done[0])
    assert "linalg.batch_matmul" not in str(imported.module)
    assert winograd.eligible(dataclasses.replace(done[0], oh=14, ow=14))
