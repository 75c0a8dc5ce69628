"""Cost-model tests read no adapted model from the user's home: an empty model directory."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _private_model_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TILECRAFT_MODEL_DIR", str(tmp_path / "models"))
