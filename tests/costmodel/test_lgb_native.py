"""Prediction through lib_lightgbm without `import lightgbm` (`costmodel/lgb_native.py`):
the same numbers as the package's Booster, errors as CostModelError, and a compile that
never imports lightgbm (`tests/compiler/test_first_compile.py`)."""

from __future__ import annotations

import gzip
import json
import os

import numpy as np
import pytest

from tilecraft.backends.cpu.target import host
from tilecraft.costmodel import features, lgb_native
from tilecraft.costmodel import model as cm

SHIPPED = os.path.join(cm.SHIPPED_DIR, cm.SHIPPED_MODELS[0].path)


def _doc() -> dict:
    return cm.read_model_file(SHIPPED)


def test_native_predictions_equal_lightgbm_packages():
    lgb = pytest.importorskip("lightgbm")
    rng = np.random.default_rng(0)
    n = len(features.feature_names(text=True))
    for name, text in _doc()["boosters"].items():
        native, package = lgb_native.Booster(text), lgb.Booster(model_str=text)
        for rows in (1, 7, 300):
            x = rng.normal(size=(rows, n)) * rng.choice([0.1, 1.0, 30.0], size=(rows, n))
            x[0, : n // 3] = 0.0  # zero-valued features take the trees' missing-value paths
            for threads in (1, 0):
                got, want = native.predict(x, num_threads=threads), package.predict(x, num_threads=threads)
                assert np.array_equal(got, want), name
        assert native.model_to_string() == text
        assert lgb_native.to_lightgbm(native).num_trees() == package.num_trees()


def test_loaded_model_predicts_natively():
    m = cm.load(SHIPPED, host())
    assert all(isinstance(b, lgb_native.Booster) for b in m.boosters.values())
    assert m.to_doc()["boosters"] == _doc()["boosters"]  # saved again as loaded


def test_damaged_booster_text_is_a_cost_model_error(tmp_path):
    doc = _doc()
    doc["boosters"]["rank"] = "tree\nversion=v4\nnot a model"
    path = tmp_path / "damaged.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump(doc, f)
    with pytest.raises(cm.CostModelError, match="damaged"):
        cm.load(str(path), host())
    with pytest.raises(lgb_native.NativeError, match="features"):
        lgb_native.Booster(_doc()["boosters"]["util"]).predict(np.zeros((2, 3)))
