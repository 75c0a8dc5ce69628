"""The accelerator cost model (`costmodel/accel_model.py`) on a tiny simulated corpus.

The corpus is collected here (`corpus/accel_corpus.collect`, timing-only simulation of a
few small layers on two known configs and one held out), so no test depends on the
shipped corpus or model, except the check that the shipped model reads.
"""

from __future__ import annotations

import gzip
import json
import os

import numpy as np
import pytest

from tilecraft.backends.accel import lower as L
from tilecraft.backends.accel.target import AccelTarget
from tilecraft.corpus import accel_corpus
from tilecraft.costmodel import accel_model as M

KNOWN = ("accel", "accel{block=8 inp_kb=8 wgt_kb=32 acc_kb=32 dram_gbs=2 dram_latency=100 alu_ii=4}")
HELD_CONFIG = "accel{block=16 inp_kb=24 wgt_kb=192 acc_kb=96 dram_gbs=6 dram_latency=80 alu_ii=3}"
LAYERS = (
    accel_corpus.LayerSpec("linear", 256, 256, 1, 32),
    accel_corpus.LayerSpec("conv", 32, 32, 16, 16, 3, 1, 1),
    accel_corpus.LayerSpec("conv_res", 32, 64, 8, 8, 3, 1, 1, residual=True),
    accel_corpus.LayerSpec("conv_s2", 16, 64, 16, 16, 3, 2, 1),
    accel_corpus.LayerSpec("dw", 64, 64, 14, 14, 3, 1, 1, depthwise=True),
    accel_corpus.LayerSpec("pw", 64, 128, 14, 14),
)
HELD_LAYERS = {"conv_s2", "pw"}


@pytest.fixture(scope="module")
def corpus():
    rows = accel_corpus.collect((*KNOWN, HELD_CONFIG), LAYERS, per_layer=10, seed=0, workers=1)
    return rows, M.matrix(rows)


def _split(rows, x, keep):
    idx = np.flatnonzero([keep(r) for r in rows])
    return [rows[i] for i in idx], x[idx]


@pytest.fixture(scope="module")
def trained(corpus):
    rows, x = corpus
    train = _split(rows, x, lambda r: r["config"] in KNOWN and r["layer"]["name"] not in HELD_LAYERS)
    return M.AccelCostModel().fit(train[0], x=train[1], rounds=150)


def test_collect_is_deterministic_and_complete(corpus):
    rows, _ = corpus
    again = accel_corpus.collect(KNOWN[:1], LAYERS[:2], per_layer=10, seed=0, workers=1)
    assert again == [r for r in rows if r["config"] == KNOWN[0] and r["layer"]["name"] in ("linear", "conv")]
    assert {r["config"] for r in rows} == {*KNOWN, HELD_CONFIG}
    assert all(r["cycles"] > 0 and 0 < r["utilization"] <= 1 for r in rows)


def test_features_are_deterministic_and_finite():
    t = AccelTarget.parse(KNOWN[1])
    layer = LAYERS[2].layer(t)
    s = L.space(layer, t)[5]
    f = M.features(layer, s, t)
    assert f == M.features(layer, s, t)
    assert tuple(f) == M.FEATURES
    assert all(np.isfinite(v) for v in f.values())


@pytest.mark.parametrize("config", [KNOWN[1], HELD_CONFIG])
@pytest.mark.parametrize("spec", LAYERS, ids=lambda s: s.name)
def test_program_stats_are_the_simulators_counts(spec, config):
    """The closed form counts what the lowering emits and the simulator charges, exactly,
    over a sample of the space (both loop orders, single and double buffering)."""
    t = AccelTarget.parse(config)
    layer = spec.layer(t)
    space = [s for s in L.space(layer, t) if accel_corpus.instructions_bound(layer, s, t) <= 1500]
    for s in space[:2] + space[2 :: max(1, len(space) // 6)]:
        st = M.program_stats(layer, s, t)
        r = accel_corpus.simulate(layer, s, t)
        assert st["inp_bytes"] + st["wgt_bytes"] + st["other_bytes"] == L.traffic(layer, s, t)["read"] == r.dram_read
        assert st["write_bytes"] == r.dram_write
        assert (st["gemm_iters"], st["alu_iters"], st["instructions"]) == (r.gemm_ops, r.alu_ops, r.instructions)
        busy = {m: st[f"{m}_busy"] for m in ("load", "compute", "store")}
        assert busy == r.module_busy, s


def test_fit_ranks_held_out_layers(corpus, trained):
    rows, x = corpus
    test = _split(rows, x, lambda r: r["config"] in KNOWN and r["layer"]["name"] in HELD_LAYERS)
    assert M.pairwise(test[0], trained.predict_rows(test[0], x=test[1])) > 0.8


def test_predict_utilization_matches_the_simulator(trained):
    t = AccelTarget()
    layer = LAYERS[1].layer(t)
    schedules = L.space(layer, t)[:4]
    util = trained.predict_utilization(layer, schedules, t)
    true = np.array([accel_corpus.simulate(layer, s, t).utilization for s in schedules])
    np.testing.assert_allclose(util, true, rtol=0.25)


def test_adapt_keeps_ranking_on_an_unseen_config(corpus, trained):
    rows, x = corpus
    target = AccelTarget.parse(HELD_CONFIG)
    test = _split(rows, x, lambda r: r["config"] == HELD_CONFIG and r["layer"]["name"] in HELD_LAYERS)
    shots = _split(rows, x, lambda r: r["config"] == HELD_CONFIG and r["layer"]["name"] not in HELD_LAYERS)
    pick = np.random.default_rng(0).choice(len(shots[0]), 10, replace=False)
    known = _split(rows, x, lambda r: r["config"] == KNOWN[0])
    before = trained.predict_rows(test[0], x=test[1])
    known_before = trained.predict_rows(known[0], x=known[1])
    model = M.AccelCostModel(trained.booster)
    model.adapt([shots[0][i] for i in pick], target, x=shots[1][pick])
    assert model.adapted[target.hash()]["kind"] in ("none", "offset", "residual")
    after = model.predict_rows(test[0], x=test[1])
    assert M.pairwise(test[0], after) >= M.pairwise(test[0], before) - 0.01
    np.testing.assert_array_equal(model.predict_rows(known[0], x=known[1]), known_before)  # other configs untouched


def test_adapt_with_one_sample_changes_nothing(corpus, trained):
    rows, x = corpus
    model = M.AccelCostModel(trained.booster)
    one = [r for r in rows if r["config"] == HELD_CONFIG][:1]
    model.adapt(one, AccelTarget.parse(HELD_CONFIG))
    np.testing.assert_array_equal(model.predict_rows(rows, x=x), trained.predict_rows(rows, x=x))
    with pytest.raises(M.AccelModelError):
        model.adapt([], AccelTarget())


def test_save_load_round_trip(corpus, trained, tmp_path):
    rows, x = corpus
    model = M.AccelCostModel(trained.booster, configs=trained.configs)
    held = [r for r in rows if r["config"] == HELD_CONFIG]
    model.adapt(held[:10], AccelTarget.parse(HELD_CONFIG))
    path = str(tmp_path / "m.json.gz")
    model.save(path)
    loaded = M.AccelCostModel.load(path)
    np.testing.assert_array_equal(loaded.predict_rows(rows, x=x), model.predict_rows(rows, x=x))
    t = AccelTarget.parse(HELD_CONFIG)
    layer = LAYERS[0].layer(t)
    schedules = L.space(layer, t)[:5]
    np.testing.assert_array_equal(loaded.predict(layer, schedules, t), model.predict(layer, schedules, t))
    assert loaded.configs == model.configs == tuple(sorted(KNOWN))
    assert loaded.predict(layer, [], t).shape == (0,)


def test_load_refuses_another_feature_schema(trained, tmp_path):
    path = str(tmp_path / "m.json.gz")
    trained.save(path)
    with gzip.open(path, "rt") as f:
        doc = json.load(f)
    doc["features"] = doc["features"][:-1]
    with gzip.open(path, "wt") as f:
        json.dump(doc, f)
    with pytest.raises(M.AccelModelError, match="retrain"):
        M.AccelCostModel.load(path)


@pytest.mark.skipif(not os.path.exists(M.MODEL_PATH), reason="no shipped accelerator model")
def test_shipped_model_reads_and_predicts():
    t = AccelTarget.parse(accel_corpus.UNSEEN)
    layer = LAYERS[1].layer(t)
    cycles = M.AccelCostModel.load(M.MODEL_PATH).predict(layer, L.space(layer, t)[:3], t)
    assert np.all(np.isfinite(cycles)) and np.all(cycles > 0)
