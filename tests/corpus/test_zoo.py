"""Differential tests: every zoo model compiled by Tilecraft matches PyTorch eager."""

import pytest
import torch

from tilecraft import driver
from tilecraft.corpus import zoo


@pytest.mark.parametrize("name", list(zoo.ZOO))
def test_zoo_model_matches_eager(name):
    compiled = driver.compile_model(name)
    imported = compiled.imported
    out = compiled.fn(*imported.inputs)
    cmp = driver.compare(out, imported.reference())
    assert cmp.ok, f"{name}: max abs {cmp.max_abs:.3e}, max rel {cmp.max_rel:.3e}"


def test_zoo_is_deterministic():
    a, ia = zoo.get("mlp")
    b, ib = zoo.get("mlp")
    assert torch.equal(ia[0], ib[0])
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_unknown_zoo_model():
    with pytest.raises(KeyError, match="unknown zoo model"):
        zoo.get("nope")
