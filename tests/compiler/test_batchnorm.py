"""Inference batch norms: exported whole, folded into the convolution before them, or a
scale and shift (`compiler/batchnorm.py`). Each compiled model matches eager."""

import pytest
import torch
from torch import nn

from tilecraft import batchnorm, driver, frontend


def _randomized(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                if m.affine:
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-1, 1)
    return model.eval()


class Shared(nn.Module):
    """The convolution's output read by the batch norm and by the residual add."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)

    def forward(self, x):
        y = self.conv(x)
        return torch.relu(self.bn(y)) + y


CASES = {
    "conv+bn": (
        lambda: nn.Sequential(nn.Conv2d(3, 16, 3, bias=False), nn.BatchNorm2d(16), nn.ReLU6()),
        (1, 3, 12, 12),
        1,
    ),
    "conv(bias)+bn": (lambda: nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16)), (1, 3, 12, 12), 1),
    "depthwise+bn": (
        lambda: nn.Sequential(nn.Conv2d(16, 16, 3, 2, 1, groups=16), nn.BatchNorm2d(16)),
        (1, 16, 12, 12),
        1,
    ),
    "conv1d+bn": (lambda: nn.Sequential(nn.Conv1d(4, 16, 3), nn.BatchNorm1d(16)), (2, 4, 20), 1),
    "linear+bn1d": (lambda: nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU()), (4, 8), 0),
    "bn alone, no affine": (lambda: nn.BatchNorm2d(6, affine=False), (2, 6, 5, 5), 0),
    "shared conv output": (Shared, (1, 8, 10, 10), 0),
}


@pytest.mark.parametrize("name", list(CASES))
def test_batch_norms_match_eager(name, monkeypatch):
    make, shape, want_folded = CASES[name]
    folded = []
    fold = batchnorm.fold_batch_norms
    monkeypatch.setattr(batchnorm, "fold_batch_norms", lambda graph: folded.append(fold(graph)) or folded[-1])
    model = _randomized(make())
    x = torch.randn(*shape)
    imported = frontend.import_module(model, (x,), spec=name)
    assert folded == [want_folded]
    nodes = [str(n.target) for n in imported.fx.graph.nodes if n.op == "call_function"]
    assert not any("batch_norm" in t for t in nodes)  # none left for the lowering
    compiled = driver.compile_model(imported)
    with torch.no_grad():
        assert driver.compare(compiled.fn(x), model(x)).ok
