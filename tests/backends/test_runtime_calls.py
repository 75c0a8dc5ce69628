"""The compiled function's call path: the fast path (tensors of the signature's shapes and
dtypes) and the checked one agree, from one thread or many."""

import threading

import numpy as np
import pytest
import torch

from tilecraft import driver, frontend
from tilecraft.backends.cpu.runtime import CallError


class TwoOut(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(8, 16))

    def forward(self, x, y):
        h = x @ self.w
        return h + y, torch.relu(h)


@pytest.fixture(scope="module")
def compiled():
    torch.manual_seed(0)
    model = TwoOut().eval()
    inputs = (torch.randn(4, 8), torch.randn(4, 16))
    return model, driver.compile_model(frontend.import_module(model, inputs, spec="two_out"))


def test_fast_and_checked_paths_agree(compiled):
    model, c = compiled
    x, y = torch.randn(4, 8), torch.randn(4, 16)
    transposed = torch.randn(8, 4).t()  # non-contiguous: made contiguous on the fast path

    def close(got, a, b):
        with torch.no_grad():
            want = model(a, b)
        assert isinstance(got, tuple) and len(got) == 2
        for g, w in zip(got, want):
            torch.testing.assert_close(torch.as_tensor(g), w, rtol=1e-5, atol=1e-5)

    fast, again = c.fn(x, y), c.fn(x, y)
    close(fast, x, y)
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(fast, again))  # fresh outputs every call
    close(c.fn.fn._call_checked((x, y)), x, y)
    close(c.fn(x, y.clone().requires_grad_()), x, y)
    close(c.fn(transposed, y), transposed, y)
    got = c.fn(x.numpy(), y.numpy())  # numpy in, numpy out (the checked path)
    assert all(isinstance(g, np.ndarray) for g in got)
    close(got, x, y)


def test_wrong_inputs_still_name_the_problem(compiled):
    _, c = compiled
    with pytest.raises(CallError, match="expected 2 inputs"):
        c.fn(torch.randn(4, 8))
    with pytest.raises(CallError, match="input 1: expected tensor<4x16xf32>, got tensor<4x15xf32>"):
        c.fn(torch.randn(4, 8), torch.randn(4, 15))
    with pytest.raises(CallError, match="input 0: expected tensor<4x8xf32>, got tensor<4x8xf64>"):
        c.fn(torch.randn(4, 8, dtype=torch.float64), torch.randn(4, 16))


def test_calls_from_many_threads(compiled):
    model, c = compiled
    errors = []

    def work(seed):
        g = torch.Generator().manual_seed(seed)
        for _ in range(50):
            x, y = torch.randn(4, 8, generator=g), torch.randn(4, 16, generator=g)
            with torch.no_grad():
                want = model(x, y)
            got = c.fn(x, y)
            if not all(torch.allclose(a, b, rtol=1e-5, atol=1e-5) for a, b in zip(got, want)):
                errors.append(seed)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_an_entry_point_llvm_could_not_link_is_an_error_not_a_crash():
    # (a module calling a symbol the JIT cannot resolve hands back address 0; calling it
    # took the process down: `__truncsfbf2` on a host without AVX512-BF16)
    from tilecraft.backends.cpu.runtime import CompiledFunction

    with pytest.raises(RuntimeError, match="LLVM could not link"):
        CompiledFunction(0, None, owner=None)


def test_bf16_rounding_without_avx512_bf16_needs_no_runtime_library(monkeypatch):
    # Lowered as if the host lacked AVX512-BF16 (this one may have it): the f32 -> bf16
    # roundings become integer arithmetic, which runs on any host and rounds as eager does.
    import dataclasses

    from tilecraft.backends.cpu import target

    real = target.host()
    monkeypatch.setattr(target, "host", lambda: dataclasses.replace(real, features=("avx2", "fma")))

    class Fn(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(64, 48).bfloat16()

        def forward(self, a, h):
            y = self.linear(a)  # bf16 math too: erf, exp, tanh, sqrt; an f64 rounded to bf16
            math = (torch.nn.functional.gelu(y), y.exp(), torch.tanh(y), torch.sqrt(y.abs() + 1))
            return (
                a.sum(1),
                a.softmax(-1),
                (a * 3).to(torch.float32),
                h.sum() + h.mean(1, keepdim=True),
                *math,
                y.double().var().to(torch.bfloat16),
            )

    a = torch.randn(4, 64).bfloat16()
    a[0, :3] = torch.tensor([float("nan"), float("inf"), 3.0e38])
    inputs = (a, torch.randn(4, 64).half() + 3)
    torch.manual_seed(0)
    model = Fn().eval()
    c = driver.compile_model(frontend.import_module(model, inputs, spec="bf16_roundings"))
    with torch.no_grad():
        got, want = c.fn(*inputs), model(*inputs)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype
        assert torch.allclose(g.float(), w.float(), rtol=2e-2, atol=1e-2, equal_nan=True)
    torch.testing.assert_close(got[2], want[2], rtol=0, atol=0, equal_nan=True)  # one rounding: bit for bit
