"""Real client models: the `transformers` architectures of `bench/models.py` (small
configs, random weights, nothing downloaded) compile through the default pipeline and
match eager at rtol 1e-4, atol 1e-5. Llama runs in CI (BERT in the bench's quick mode); the rest are slow."""

from __future__ import annotations

import os
import sys

import pytest
import torch

pytest.importorskip("transformers")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench"))
import models  # noqa: E402  (bench/models.py: the model set and its tolerances)

from tilecraft import driver, frontend  # noqa: E402

FAST = {"llama"}  # (bert: bench/models.py --quick, in tests/test_bench.py)


@pytest.mark.parametrize("name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in models.MODELS])
def test_transformers_model_matches_eager(name):
    model, inputs = models.build(name)
    compiled = driver.compile_model(frontend.import_module(model, inputs, spec=name))
    with torch.no_grad():
        ref = model(*inputs)
    assert driver.compare(compiled.fn(*inputs), ref, rtol=models.RTOL, atol=models.ATOL).ok
