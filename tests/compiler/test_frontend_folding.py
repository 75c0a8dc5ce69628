"""Weight-only folding in the frontend (`frontend.fold_weight_only`): only the folded
nodes are evaluated, unless one of them reads a value computed from the inputs."""

from __future__ import annotations

import pytest
import torch

from conftest import compile_and_compare
from tilecraft import frontend


class _Scaled(torch.nn.Module):
    """A linear layer whose weight is transposed and scaled before use (weight-only ops)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(16, 8))
        self.s = torch.nn.Parameter(torch.rand(8) + 0.5)

    def forward(self, x):
        return torch.relu(x @ (self.w * self.s).t().t())


class _ShapedByActivation(torch.nn.Module):
    """A `ones_like` of an intermediate: folded, but its input comes from the model's input."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(8, 8))

    def forward(self, x):
        h = x @ self.w
        return h + torch.ones_like(h) * 2.0


@pytest.fixture
def folded_paths(monkeypatch) -> list[bool]:
    """What each `_run_folded` call answered (True: only the folded nodes evaluated)."""
    calls: list[bool] = []
    real = frontend._run_folded

    def spy(*args):
        calls.append(real(*args))
        return calls[-1]

    monkeypatch.setattr(frontend, "_run_folded", spy)
    return calls


def test_only_the_folded_nodes_are_evaluated(folded_paths):
    assert compile_and_compare(_Scaled(), [torch.randn(4, 16)]).ok
    assert folded_paths == [True]


def test_a_folded_node_reading_an_activation_runs_the_whole_graph(folded_paths):
    assert compile_and_compare(_ShapedByActivation(), [torch.randn(4, 8)]).ok
    assert folded_paths == [False]
