"""`torch.compile(model, backend="tilecraft")` (`compiler/dynamo_backend.py`): found through
its entry point, every graph compiled by the CLI's pipeline and checked against eager, a
graph it cannot compile run eagerly with a warning, compiles kept in the disk cache."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

from tilecraft.corpus import zoo

# Pure torch: the backend name resolves through the `torch_dynamo_backends` entry point.
BRANCH = """
import json, sys, torch
torch.manual_seed(0)
class M(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(32, 64), torch.nn.Linear(64, 16)
    def forward(self, x):
        h = torch.relu(self.a(x))
        if x.sum() > 0:  # a Python branch on tensor data: a graph break
            return self.b(h) * 2
        return torch.tanh(self.b(h)) - 1
m = M().eval()
c = torch.compile(m, backend="tilecraft", options={"check": True})
ok = []
for sign in (1.0, -1.0, 1.0):
    x = sign * (torch.rand(4, 32) + 0.1)
    with torch.no_grad():
        ok.append(torch.allclose(c(x), m(x), rtol=1e-4, atol=1e-5))
stats = sys.modules["tilecraft.dynamo_backend"].stats
print(json.dumps({"ok": ok, "compiles": stats.compiles, "hits": stats.cache_hits, "fallbacks": stats.fallbacks}))
"""

ENCODER = """
import json, sys, torch
torch.manual_seed(0)
class Encoder(torch.nn.Module):
    def __init__(self, d=32, heads=4):
        super().__init__()
        self.h = heads
        self.qkv, self.o = torch.nn.Linear(d, 3 * d), torch.nn.Linear(d, d)
        self.n1, self.n2 = torch.nn.LayerNorm(d), torch.nn.LayerNorm(d)
        self.f1, self.f2 = torch.nn.Linear(d, 2 * d), torch.nn.Linear(2 * d, d)
    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.h, d // self.h).permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-1, -2) / (d // self.h) ** 0.5, -1) @ v
        x = self.n1(x + self.o(a.transpose(1, 2).reshape(b, n, d)))
        return self.n2(x + self.f2(torch.nn.functional.gelu(self.f1(x))))
m = Encoder().eval()
c = torch.compile(m, backend="tilecraft")
ok = []
for n in range(1, int(sys.argv[1]) + 1):
    x = torch.randn(1, n, 32)
    with torch.no_grad():
        ok.append(torch.allclose(c(x), m(x), rtol=1e-4, atol=1e-5))
stats = sys.modules["tilecraft.dynamo_backend"].stats
print(json.dumps({"ok": ok, "compiles": stats.compiles, "hits": stats.cache_hits, "fallbacks": stats.fallbacks}))
"""


def _run(script: str, cache_dir, *args) -> dict:
    env = {**__import__("os").environ, "TILECRAFT_CACHE_DIR": str(cache_dir)}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_data_dependent_branch_takes_both_branches_compiled(tmp_path):
    got = _run(BRANCH, tmp_path)
    assert got["ok"] == [True, True, True]
    assert got["fallbacks"] == 0 and got["compiles"] >= 3  # the graph before the branch and one per branch


def test_sequence_lengths_share_padded_buckets_and_a_second_process_hits_the_disk_cache(tmp_path):
    # 1 is compiled for its exact shape (dynamo's first, static graph); 2..5 fall in the
    # buckets 2, 4 and 8: attention's softmax and context matmul over padded keys masked
    first = _run(ENCODER, tmp_path, 5)
    assert first["ok"] == [True] * 5 and first["fallbacks"] == 0 and first["compiles"] == 4
    second = _run(ENCODER, tmp_path, 5)
    assert second["ok"] == [True] * 5 and second["compiles"] == 0 and second["hits"] == 4


@pytest.mark.slow
def test_an_encoder_at_every_length_from_1_to_128_takes_8_compiles(tmp_path):
    first = _run(ENCODER, tmp_path, 128)
    assert all(first["ok"]) and len(first["ok"]) == 128 and first["compiles"] <= 8
    second = _run(ENCODER, tmp_path, 128)
    assert all(second["ok"]) and second["compiles"] == 0


POOLS = """
import json, sys, torch
torch.manual_seed(0)
lin = torch.nn.Linear(16, 16)
class Pool(torch.nn.Module):  # reductions over the padded length: masked (mean rescaled)
    def __init__(s): super().__init__(); s.l = lin
    def forward(s, x): return s.l(x).mean(1), torch.softmax(s.l(x), 1).amax(1), s.l(x).sum(1)
class Last(torch.nn.Module):  # the last position: not bucketable, compiled per length
    def __init__(s): super().__init__(); s.l = lin
    def forward(s, x): return s.l(x)[:, -1]
class ByLen(torch.nn.Module):  # the length as a value: not bucketable
    def __init__(s): super().__init__(); s.l = lin
    def forward(s, x): return s.l(x).sum(1) / x.shape[1]
class Conv(torch.nn.Module):  # a convolution along the padded length: not bucketable
    def __init__(s): super().__init__(); s.c = torch.nn.Conv1d(16, 16, 3, padding=1)
    def forward(s, x): return s.c(s.c(x.transpose(1, 2)))
class Norm(torch.nn.Module):  # a norm over the padded length (no mask for it): not bucketable
    def __init__(s): super().__init__(); s.l = lin
    def forward(s, x): return s.l(x).norm(dim=1)
out = {}
for M in (Pool, Last, ByLen, Conv, Norm):
    stats = None
    torch._dynamo.reset()
    m = M().eval()
    c = torch.compile(m, backend="tilecraft")
    ok = True
    lengths = (1, 2, 3, 5, 6, 7) if M is Pool else (2, 3)  # (refused: one compile per length)
    with torch.no_grad():
        for n in lengths:
            x = torch.randn(2, n, 16)
            o, r = c(x), m(x)
            o, r = (o, r) if isinstance(o, tuple) else ((o,), (r,))
            ok = ok and all(torch.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(o, r))
    stats = sys.modules["tilecraft.dynamo_backend"].stats
    out[M.__name__] = [ok, stats.compiles]
    stats.reset()
print(json.dumps(out))
"""


def test_reductions_over_the_padded_length_are_masked_and_positional_uses_are_not_bucketed(tmp_path):
    got = _run(POOLS, tmp_path)
    assert got["Pool"] == [True, 4]  # exact 1, then buckets 2, 4, 8
    for name in ("Last", "ByLen", "Conv", "Norm"):
        assert got[name] == [True, 2], name  # right values at 3 (padded to 4 they would be off)


@pytest.mark.parametrize(
    "name",
    [
        "mlp",
        *(
            pytest.param(n, marks=pytest.mark.slow)
            for n in ("conv_autoencoder", "resnet18", "mobilenet_v2", "bert_mini", "gpt2_block")
        ),
    ],
)
def test_zoo_model_through_torch_compile_matches_eager(name, tmp_path, monkeypatch):
    monkeypatch.setenv("TILECRAFT_CACHE_DIR", str(tmp_path))
    torch._dynamo.reset()
    model, inputs = zoo.get(name)
    compiled = torch.compile(model, backend="tilecraft", options={"check": True})
    with torch.no_grad():
        out, ref = compiled(*inputs), model(*inputs)
    assert torch.allclose(out, ref, rtol=1e-4, atol=1e-5)


def test_a_graph_it_cannot_compile_runs_eagerly_with_one_warning(tmp_path, monkeypatch):
    monkeypatch.setenv("TILECRAFT_CACHE_DIR", str(tmp_path))
    torch._dynamo.reset()

    def f(a):
        return torch.linalg.inv(a @ a.mT + torch.eye(4)) * 2

    a = torch.randn(3, 4, 4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = torch.compile(f, backend="tilecraft")(a)
    assert torch.allclose(out, f(a), rtol=1e-4, atol=1e-5)
    lines = [str(w.message) for w in caught if "tilecraft" in str(w.message)]
    assert len(lines) == 1 and "runs eagerly" in lines[0] and "\n" not in lines[0]


def test_an_unknown_option_is_an_error_naming_it():
    torch._dynamo.reset()
    with pytest.raises(Exception, match="unknown option 'treads'"):
        torch.compile(lambda a: a + 1, backend="tilecraft", options={"treads": 2})(torch.randn(3))


def test_threads_option_splits_the_compiled_graph_and_bad_values_are_named(tmp_path, monkeypatch):
    """`options={"threads": 2}` compiles the graph's large kernels for two threads (it was
    refused: "one thread for now"); a value that is no thread count is an error naming it."""
    monkeypatch.setenv("TILECRAFT_CACHE_DIR", str(tmp_path))
    torch._dynamo.reset()
    model, inputs = zoo.get("mlp")
    compiled = torch.compile(model, backend="tilecraft", options={"threads": 2, "check": True})
    with torch.no_grad():
        assert torch.allclose(compiled(*inputs), model(*inputs), rtol=1e-4, atol=1e-5)
    for bad in (0, True, "2", 1000):
        torch._dynamo.reset()
        with pytest.raises(Exception, match=f"threads={bad!r}: a whole number from 1 to 256"):
            torch.compile(lambda a: a + 1, backend="tilecraft", options={"threads": bad})(torch.randn(3))


def test_weights_changed_in_place_are_seen_and_gradients_run_eagerly(tmp_path, monkeypatch):
    monkeypatch.setenv("TILECRAFT_CACHE_DIR", str(tmp_path))
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)).eval()
    compiled = torch.compile(model, backend="tilecraft")
    x = torch.randn(2, 8)
    with torch.no_grad():
        first = compiled(x)
        model[0].weight.mul_(2)  # in place: the compiled graph must not keep the old weights
        assert torch.allclose(compiled(x), model(x), rtol=1e-4, atol=1e-5)
        assert not torch.allclose(first, model(x))
        for rows in (3, 5):  # a dynamic (bucketed) graph too, its weights replaced
            compiled(torch.randn(rows, 8))
        model[2].weight = torch.nn.Parameter(torch.randn(4, 16))
        y = torch.randn(6, 8)
        assert torch.allclose(compiled(y), model(y), rtol=1e-4, atol=1e-5)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        out = compiled(x)  # grad mode on, weights require grad: eager, so backward works
    out.sum().backward()
    assert model[0].weight.grad is not None
