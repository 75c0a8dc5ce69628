"""Accelerator cost-model benchmark: ranking and error held out by layer, and transfer.

Reads the accelerator corpus (`corpus/data/accel-corpus.jsonl.gz`, written by
`python -m tilecraft.corpus.accel_corpus`), splits its layer shapes into folds (a conv and
its residual twin share a fold) and, per fold, trains `AccelCostModel` on the other folds'
layers on the known configs (`accel_corpus.CONFIGS`). It reports, on the held-out layers:

- known configs: pairwise ranking accuracy (same layer and config, simulated ties
  skipped), MAPE of cycles and of utilization — the model and the analytical estimate;
- the unseen config (`accel_corpus.UNSEEN`, in no training fold): the same without
  adaptation, and after `adapt` with 10 samples of that config drawn from the training
  folds' layers (several draws of the samples; mean and worst).

`--quick` collects a tiny corpus in process (small layers, three configs and the unseen
one) and writes under bench/results/quick/.

    python bench/accel_costmodel.py [--corpus PATH] [--folds 5] [--draws 5] [--json bench/results/accel_costmodel.json]
    python bench/accel_costmodel.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from tilecraft.backends.accel.target import AccelTarget
from tilecraft.corpus import accel_corpus
from tilecraft.costmodel import accel_model as M

SAMPLES = 10  # few-shot budget on the unseen config
QUICK_LAYERS = (
    accel_corpus.LayerSpec("q/linear", 256, 256, 1, 32),
    accel_corpus.LayerSpec("q/linear_wide", 256, 768, 1, 32),
    accel_corpus.LayerSpec("q/conv", 32, 32, 16, 16, 3, 1, 1),
    accel_corpus.LayerSpec("q/conv_res", 32, 32, 16, 16, 3, 1, 1, residual=True),
    accel_corpus.LayerSpec("q/conv_s2", 16, 64, 16, 16, 3, 2, 1),
    accel_corpus.LayerSpec("q/dw", 64, 64, 14, 14, 3, 1, 1, depthwise=True),
    accel_corpus.LayerSpec("q/pw", 64, 128, 14, 14),
    accel_corpus.LayerSpec("q/head", 128, 16, 8, 8),
)


def group(row: dict) -> str:
    """A row's fold group: its layer shape, a residual conv counted with its plain twin."""
    return accel_corpus.LayerSpec(**row["layer"]).shape.removesuffix("_res")


def evaluate(rows: list[dict], *, folds: int, draws: int, seed: int = 0) -> dict:
    t0 = time.perf_counter()
    x = M.matrix(rows)
    t_features = time.perf_counter() - t0
    groups = sorted({group(r) for r in rows})
    np.random.default_rng(seed).shuffle(groups)
    fold_of = {g: i % folds for i, g in enumerate(groups)}
    fold = np.array([fold_of[group(r)] for r in rows])
    config = np.array([r["config"] for r in rows])
    known, unseen = np.isin(config, accel_corpus.CONFIGS), config == accel_corpus.UNSEEN
    target = AccelTarget.parse(accel_corpus.UNSEEN)
    pred = np.zeros(len(rows))
    adapted = np.zeros((draws, len(rows)))  # per draw of samples: the unseen rows' predictions
    kinds: dict[str, int] = {}
    for k in range(folds):
        train, test = np.flatnonzero((fold != k) & known), np.flatnonzero(fold == k)
        model = M.AccelCostModel().fit([rows[i] for i in train], x=x[train])
        pred[test] = model.predict_rows([rows[i] for i in test], x=x[test])
        pool, held = np.flatnonzero((fold != k) & unseen), np.flatnonzero((fold == k) & unseen)
        for d in range(draws):
            shots = np.random.default_rng([seed, k, d]).choice(pool, min(SAMPLES, len(pool)), replace=False)
            model.adapt([rows[i] for i in shots], target, x=x[shots])
            kind = model.adapted[target.hash()]["kind"]
            kinds[kind] = kinds.get(kind, 0) + 1
            adapted[d, held] = model.predict_rows([rows[i] for i in held], x=x[held])
    analytical = np.exp2(x[:, M.FEATURES.index("log_analytical")])

    def scores(mask: np.ndarray, p: np.ndarray) -> dict:
        idx = np.flatnonzero(mask)
        sub = [rows[i] for i in idx]
        util = np.array([r["utilization"] for r in sub])
        return {
            "pairwise": M.pairwise(sub, p[idx]),
            "mape": M.mape(sub, p[idx]),
            "util_mape": float(np.mean(np.abs(M.gemm_ops(x[idx]) / p[idx] - util) / util)),
        }

    per_draw = [scores(unseen, p) for p in adapted]
    return {
        "rows": len(rows),
        "layers": len({accel_corpus.LayerSpec(**r["layer"]).shape for r in rows}),
        "configs": len(set(config[known])),
        "folds": folds,
        "draws": draws,
        "feature_seconds": t_features,
        "known": scores(known, pred),
        "known_analytical": scores(known, analytical),
        "known_per_config": {c: scores(config == c, pred)["pairwise"] for c in sorted(set(config[known]))},
        "unseen": scores(unseen, pred),
        "unseen_analytical": scores(unseen, analytical),
        "unseen_adapted": {key: float(np.mean([d[key] for d in per_draw])) for key in per_draw[0]},
        "unseen_adapted_worst_draw_pairwise": float(min(d["pairwise"] for d in per_draw)),
        "adapt_choices": kinds,
        "seconds": time.perf_counter() - t0,
    }


def report(res: dict) -> None:
    print(
        f"accelerator cost model: {res['rows']} rows, {res['layers']} layer shapes, {res['configs']} known configs"
        f" + 1 unseen; held out by layer ({res['folds']} folds)"
    )
    print(f"{'':38s}{'pairwise':>9s}{'MAPE':>8s}{'util MAPE':>11s}")
    for name, key in [
        ("known configs: lightgbm", "known"),
        ("known configs: analytical", "known_analytical"),
        ("unseen config: no adaptation", "unseen"),
        (f"unseen config: adapted ({SAMPLES} samples)", "unseen_adapted"),
        ("unseen config: analytical", "unseen_analytical"),
    ]:
        s = res[key]
        print(f"{name:38s}{s['pairwise']:9.3f}{100 * s['mape']:7.1f}%{100 * s['util_mape']:10.1f}%")
    print(
        f"adapted, worst of {res['draws']} draws: pairwise {res['unseen_adapted_worst_draw_pairwise']:.3f};"
        f" corrections kept: {res['adapt_choices']}"
    )
    for c, pw in res["known_per_config"].items():
        print(f"  known {c}: pairwise {pw:.3f}")
    print(f"features {res['feature_seconds']:.1f} s, all {res['seconds']:.1f} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--corpus", default=accel_corpus.CORPUS_PATH)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--draws", type=int, default=5, help="adaptation sample draws per fold")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if args.quick:
        configs = (*accel_corpus.CONFIGS[:3], accel_corpus.UNSEEN)
        rows = accel_corpus.collect(configs, QUICK_LAYERS, per_layer=12, workers=2)
        res = evaluate(rows, folds=4, draws=2)
        out = args.json or os.path.join(os.path.dirname(__file__), "results", "quick", "accel_costmodel.json")
    else:
        res = evaluate(accel_corpus.read(args.corpus), folds=args.folds, draws=args.draws)
        out = args.json or os.path.join(os.path.dirname(__file__), "results", "accel_costmodel.json")
    report(res)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump({"date": time.strftime("%Y-%m-%d"), **res}, f, indent=1)


if __name__ == "__main__":
    main()
