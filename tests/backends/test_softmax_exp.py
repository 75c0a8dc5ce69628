"""Softmax and exp: the frontend drops torch-mlir's unused arg-max, and the polynomial exp
is accurate, vectorized, and never produces subnormals (masked softmax)."""

from __future__ import annotations

import torch

from tilecraft import driver, frontend


class _Ops(torch.nn.Module):
    def forward(self, x, mask):
        scores = x.masked_fill(mask, float("-inf"))
        return torch.exp(x), torch.softmax(scores, -1), torch.nn.functional.gelu(x), torch.nn.functional.silu(x)


def _inputs():
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(63, 256, generator=gen) * 10, torch.linspace(-100, 88, 256)[None]])
    mask = torch.triu(torch.ones(64, 256, dtype=torch.bool), diagonal=1)
    return x, mask


def test_softmax_imports_without_the_unused_argmax():
    imp = frontend.import_module(_Ops(), _inputs(), spec="ops")
    text = str(imp.module)
    assert "xi64>" not in text  # the arg-max reduction (and its i64 init) are gone
    assert "arith.maximumf" in text


def test_polynomial_exp_matches_eager_and_flushes_tiny_results():
    imp = frontend.import_module(_Ops(), _inputs(), spec="ops")
    compiled = driver.compile_model(imp, cost_model="heuristic")
    outs, refs = compiled.fn(*imp.inputs), imp.reference()
    # GELU: the rational erf is within 4e-7 (eager's within 6e-8), times |x| / 2
    for out, ref, atol in zip(outs, refs, (1e-6, 1e-6, 3e-6, 1e-6)):
        assert torch.allclose(out, ref, rtol=1e-5, atol=atol, equal_nan=True)
    exp = outs[0]
    tiny = exp[(exp != 0) & (exp.abs() < torch.finfo(torch.float32).tiny)]
    assert tiny.numel() == 0  # no subnormal results
    assert (outs[1][_inputs()[1]] == 0).all()  # masked softmax entries are exactly 0


def test_rational_erf_is_accurate_over_the_whole_range():
    class Erf(torch.nn.Module):
        def forward(self, x):
            return torch.erf(x)

    x = torch.cat([torch.linspace(-6, 6, 4096), torch.tensor([0.0, -0.0, 3.9, 4.0, 4.1, 1e-7, -1e-7])])[None]
    compiled = driver.compile_model(frontend.import_module(Erf(), (x,), spec="erf"), cost_model="heuristic")
    err = (compiled.fn(x).double() - torch.erf(x.double())).abs()
    assert err.max().item() < 5e-7


def test_division_by_a_constant_becomes_a_multiplication():
    from torch_mlir import ir

    from tilecraft.backends.cpu import math_approx

    class Div(torch.nn.Module):
        def forward(self, x):
            return x / 1.41421356, x / 0.0

    imp = frontend.import_module(Div(), (torch.randn(4, 16),), spec="div")
    with imp.module.context:
        assert math_approx.reciprocal_constants(imp.module) == 1  # ÷ 0 stays a division
    text = str(imp.module)
    assert text.count("arith.divf") == 1 and "arith.mulf" in text
    del ir


class _Causal(torch.nn.Module):
    def forward(self, x):
        mask = torch.triu(torch.ones(x.shape[-2], x.shape[-1], dtype=torch.bool), diagonal=1)
        return torch.softmax(x.masked_fill(mask, float("-inf")), -1)


def test_causal_mask_is_folded_into_a_byte_weight_and_fused_with_the_softmax():
    x = torch.randn(4, 64, 64)
    imp = frontend.import_module(_Causal(), (x,), spec="causal")
    text = str(imp.module)
    assert "xi1>" not in text.split("{")[0] and "64x64xi8>" in text  # a bound byte mask, no arange
    assert "linalg.index" not in text
    assert [tuple(p.shape) for p in imp.params if p.dtype == torch.int8] == [(64, 64)]
    compiled = driver.compile_model(imp)
    assert [len(g.ops) for g in compiled.fusion] and max(len(g.ops) for g in compiled.fusion) >= 6
    assert torch.equal(compiled.fn(x).isnan(), torch.zeros(4, 64, 64, dtype=torch.bool))
    assert driver.compare(compiled.fn(x), _Causal()(x)).ok
