"""Property tests: random shapes of matmul, conv, elementwise and reductions match eager."""

import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import compile_and_compare
from tilecraft import driver, frontend

SETTINGS = settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


class Fn(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *xs):
        return self.fn(*xs)


def _check(model, inputs):
    cmp = compile_and_compare(model, inputs)
    assert cmp.ok, f"max abs {cmp.max_abs:.3e}, max rel {cmp.max_rel:.3e}"


@SETTINGS
@given(m=st.integers(1, 70), k=st.integers(1, 70), n=st.integers(1, 70), batch=st.sampled_from([0, 3]))
def test_matmul(m, k, n, batch):
    torch.manual_seed(0)
    lead = (batch,) if batch else ()
    _check(Fn(torch.matmul), (torch.randn(*lead, m, k), torch.randn(*lead, k, n)))


@SETTINGS
@given(
    cin=st.integers(1, 12),
    cout=st.integers(1, 20),
    k=st.sampled_from([1, 3, 5]),
    stride=st.sampled_from([1, 2]),
    hw=st.integers(5, 20),
    depthwise=st.booleans(),
)
def test_conv2d(cin, cout, k, stride, hw, depthwise):
    torch.manual_seed(0)
    groups = cin if depthwise else 1
    cout = cin if depthwise else cout
    conv = torch.nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups)
    _check(conv, (torch.randn(1, cin, hw, hw),))


@SETTINGS
@given(
    shape=st.lists(st.integers(1, 40), min_size=1, max_size=3),
    start=st.integers(0, 3),
    step=st.integers(2, 5),
)
def test_strided_last_dim_slice(shape, start, step):
    """Reads through a stride on the last dimension (`backends/cpu/strided.py`)."""
    torch.manual_seed(0)
    shape[-1] += start + 1
    _check(Fn(lambda x: x[..., start::step] * 2.0 + 1.0), (torch.randn(*shape),))


ELEMENTWISE = {
    "add_relu": lambda a, b: torch.relu(a + b),
    "gelu_mul": lambda a, b: torch.nn.functional.gelu(a) * b,
    "sigmoid_sub": lambda a, b: torch.sigmoid(a) - b,
    "tanh_div": lambda a, b: torch.tanh(a) / (b.abs() + 1),
}


@SETTINGS
@given(shape=st.lists(st.integers(1, 40), min_size=1, max_size=4), op=st.sampled_from(sorted(ELEMENTWISE)))
def test_elementwise(shape, op):
    torch.manual_seed(0)
    _check(Fn(ELEMENTWISE[op]), (torch.randn(*shape), torch.randn(*shape)))


REDUCTIONS = {
    "sum": lambda x, d: x.sum(d),
    "mean": lambda x, d: x.mean(d, keepdim=True),
    "amax": lambda x, d: x.amax(d),
    "softmax": lambda x, d: torch.softmax(x, d),
    "layer_norm": lambda x, d: torch.nn.functional.layer_norm(x, x.shape[-1:]),
}


@SETTINGS
@given(
    shape=st.lists(st.integers(1, 50), min_size=1, max_size=3),
    op=st.sampled_from(sorted(REDUCTIONS)),
    dim_seed=st.integers(0, 10),
)
def test_reduction(shape, op, dim_seed):
    torch.manual_seed(0)
    d = dim_seed % len(shape)
    _check(Fn(lambda x: REDUCTIONS[op](x, d)), (torch.randn(*shape),))


@pytest.mark.parametrize(
    "shapes", [((1, 32, 64), (1, 64, 64)), ((4, 128, 64), (4, 64, 128)), ((3, 100, 40), (3, 40, 48))]
)
def test_batched_matmul_tiles_run_as_matmuls(shapes):
    """A batched matmul's cache tile is restated as a matmul (its unit batch dim folded), so
    the register tile's k loop carries the accumulator in vectors; one that fits a single
    tile (no loop to restate it in) stays batched. Both match eager."""
    torch.manual_seed(0)
    a, b = (torch.randn(*s) for s in shapes)
    _check(Fn(torch.matmul), (a, b))
    text = driver.compile_model(frontend.import_module(Fn(torch.matmul), (a, b)), emit="vector").text
    if shapes[0][0] > 1:  # the accumulator, hoisted out of the k loop
        assert re.search(r"iter_args\(.*\) -> \(vector<\d+x\d+xf32>\)", text)
