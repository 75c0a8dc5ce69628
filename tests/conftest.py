"""Shared test helpers: compile a torch module or a zoo model and compare with eager."""

from __future__ import annotations

import os
import warnings

import pytest
import torch

warnings.filterwarnings("ignore")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("CI") and not os.environ.get("TILECRAFT_RUN_SLOW"):
        skip = pytest.mark.skip(reason="slow test: skipped in CI (set TILECRAFT_RUN_SLOW=1)")
        for item in items:
            if "slow" in item.keywords:
                item.add_marker(skip)


def compile_and_compare(model: torch.nn.Module, inputs, *, spec: str = "<test>"):
    from tilecraft import driver, frontend

    imported = frontend.import_module(model.eval(), tuple(inputs), spec=spec)
    compiled = driver.compile_model(imported)
    with torch.no_grad():
        ref = model(*inputs)
    return driver.compare(compiled.fn(*inputs), ref)
