"""Evaluation: how well a cost model predicts and ranks on kernels it was not trained on.

On the costmodel floor; behind `tilecraft costmodel eval`. Reads records
(`train.load_records`); returns the scores and writes plots (`predicted_vs_measured.png`,
`tuning_curve.png`). Splits them by kernel, never by row (k-fold over kernel keys), and
leave-one-model-out (train without every kernel of one zoo model, test on them); scores
the analytical model and LightGBM side by side:

- MAPE of predicted latency;
- Spearman correlation of the ranking score with speed, per kernel, averaged;
- pairwise-order accuracy over pairs of decisions of the same kernel whose latencies differ
  by more than the measurement noise (`NOISE`, 5%: the harness's IQR target);
- TenSet-style top-k score: best measured latency / measured latency of the best among the
  model's top k picks, per kernel, averaged.
"""

from __future__ import annotations

import collections
import random
from collections.abc import Callable, Sequence

import numpy as np

from tilecraft.costmodel.model import CostModel, Record
from tilecraft.dialects.irutil import replace_file

NOISE = 0.05
METRICS = ("mape", "spearman", "pairwise", "top1", "top5")


def by_kernel(records: Sequence[Record]) -> dict[str, list[Record]]:
    out: dict[str, list[Record]] = collections.defaultdict(list)
    for r in records:
        out[r.kernel.key].append(r)
    return dict(out)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    if ra.std() == 0 or rb.std() == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def kernel_scores(true: np.ndarray, score: np.ndarray) -> dict[str, float]:
    """Ranking metrics of one kernel's candidates (score: higher = predicted faster)."""
    out = {"spearman": _spearman(score, -true)}
    i, j = np.triu_indices(len(true), 1)
    ratio = np.maximum(true[i], true[j]) / np.minimum(true[i], true[j])
    keep = ratio > 1 + NOISE
    if keep.any():
        right = (true[i] < true[j]) == (score[i] > score[j])
        out["pairwise"] = float(right[keep].mean())
        out["pairs"] = int(keep.sum())
    order = np.argsort(-score, kind="stable")
    best = true.min()
    out["top1"] = float(best / true[order[0]])
    out["top5"] = float(best / true[order[:5]].min())
    return out


def score_model(model: CostModel, groups: dict[str, list[Record]]) -> dict[str, float]:
    """Every metric of `model` over the kernels in `groups` (none of them seen in training)."""
    ape, per_kernel = [], collections.defaultdict(list)
    pair_hits = pair_total = 0
    for rs in groups.values():
        p = model.predict(rs[0].kernel, [r.decision for r in rs])
        true = np.array([r.latency_s for r in rs])
        ape.extend(np.abs(p.latency_s - true) / true)
        if len(rs) < 2:
            continue
        s = kernel_scores(true, p.score)
        for k in ("spearman", "top1", "top5"):
            per_kernel[k].append(s[k])
        if "pairs" in s:
            pair_hits += s["pairwise"] * s["pairs"]
            pair_total += s["pairs"]
    return {
        "mape": float(np.mean(ape)),
        "spearman": float(np.mean(per_kernel["spearman"])),
        "pairwise": pair_hits / max(pair_total, 1),
        "top1": float(np.mean(per_kernel["top1"])),
        "top5": float(np.mean(per_kernel["top5"])),
        "kernels": len(groups),
        "rows": sum(len(rs) for rs in groups.values()),
    }


def kernel_folds(records: Sequence[Record], k: int = 5, *, seed: int = 0) -> list[tuple[list[Record], list[Record]]]:
    """(train, test) splits with every kernel's rows on one side only."""
    keys = sorted(by_kernel(records))
    random.Random(seed).shuffle(keys)
    fold_of = {key: i % k for i, key in enumerate(keys)}
    return [
        ([r for r in records if fold_of[r.kernel.key] != f], [r for r in records if fold_of[r.kernel.key] == f])
        for f in range(k)
    ]


def model_folds(records: Sequence[Record]) -> dict[str, tuple[list[Record], list[Record]]]:
    """Leave one zoo model out: test on every kernel that occurs in it, train on the rest."""
    models = sorted({s for r in records for s in r.source.split(",") if s.startswith("zoo:")})
    out = {}
    for m in models:
        test = [r for r in records if m in r.source.split(",")]
        train = [r for r in records if m not in r.source.split(",")]
        out[m.removeprefix("zoo:")] = (train, test)
    return out


def cross_validate(
    make: dict[str, Callable[[list[Record]], CostModel]], splits: Sequence[tuple[list[Record], list[Record]]]
) -> dict[str, dict[str, float]]:
    """Pooled held-out metrics per model factory: each factory trains on a split's train side."""
    out = {}
    for name, factory in make.items():
        groups = [by_kernel(test) for _, test in splits]
        out[name] = _pooled([(score_model(factory(train), g), len(g)) for (train, _), g in zip(splits, groups)])
    return out


def plot_predictions(model: CostModel, groups: dict[str, list[Record]], path: str, *, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    true, pred, kinds = [], [], []
    for rs in groups.values():
        p = model.predict(rs[0].kernel, [r.decision for r in rs])
        true.extend(r.latency_s for r in rs)
        pred.extend(p.latency_s)
        kinds.extend(r.kernel.kind for r in rs)
    fig, ax = plt.subplots(figsize=(6, 6))
    for kind in sorted(set(kinds)):
        idx = [i for i, k in enumerate(kinds) if k == kind]
        ax.scatter([true[i] for i in idx], [pred[i] for i in idx], s=4, alpha=0.5, label=kind)
    lo, hi = min(true + pred), max(true + pred)
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.set(xscale="log", yscale="log", xlabel="measured latency (s)", ylabel="predicted latency (s)", title=title)
    ax.legend(markerscale=4, fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def plot_tuning_curves(curves: dict[str, np.ndarray], path: str, *, title: str) -> None:
    """curves: name → mean (exhaustive best / best found) after each measurement."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, ys in curves.items():
        ax.plot(np.arange(1, len(ys) + 1), ys, label=name)
    ax.axhline(0.95, color="grey", ls=":", lw=1)
    ax.set(xlabel="measurements", ylabel="exhaustive best / best found", title=title, ylim=(0, 1.02))
    ax.legend()
    fig.tight_layout()
    _save(fig, path)


def _save(fig, path: str) -> None:
    import os

    import matplotlib.pyplot as plt

    tmp = f"{path}.tmp{os.getpid()}.png"
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    replace_file(tmp, path)


# ------------------------------------------------------------------------ search study
def complete_kernels(db_path: str, target, *, min_space: int = 20) -> dict[str, dict]:
    """Kernels whose whole legal space is measured: {key: {decision json: seconds | None}}."""
    from torch_mlir import ir

    from tilecraft.backends.cpu import schedule as tiling
    from tilecraft.corpus.db import CorpusDB
    from tilecraft.corpus.kernels import infos_of

    ctx = ir.Context()
    out = {}
    with CorpusDB(db_path, create=False) as db:
        measured: dict[str, dict[str, float | None]] = collections.defaultdict(dict)
        for r in db.rows(target=target.hash(), status=None):
            if r["kind"].startswith("amx_"):  # AMX contractions: not tiled (costmodel/amx.py models them)
                continue
            measured[r["workload"]][r["decision"]] = r["median_s"] if r["status"] == "ok" else None
        for key, got in measured.items():
            if len(got) < min_space:
                continue
            space = tiling.space(infos_of(db.workload_mlir(key), ctx), target)
            if len(space) >= min_space and all(d.to_json() in got for d in space):
                out[key] = {d.to_json(): got[d.to_json()] for d in space}
    return out


def search_study(
    fold_models: Sequence[tuple[CostModel, dict]], records: Sequence[Record], complete: dict, *, random_seeds: int = 20
) -> dict:
    """Model-guided vs random search on held-out kernels with exhaustive measurements,
    simulated by looking the measurements up (TenSet's protocol)."""
    from tilecraft.backends.cpu.schedule import TileDecision
    from tilecraft.costmodel import search

    kernels = {r.kernel.key: r.kernel for r in records}
    model_of = {key: m for m, groups in fold_models for key in groups}
    rows, curves = [], {"model-guided": [], "random": []}
    for key, table in complete.items():
        if key not in model_of or key not in kernels:
            continue
        space = [TileDecision.from_json(d) for d in table]
        best = min(t for t in table.values() if t is not None)
        lookup = lambda d, table=table: table[d.to_json()]  # noqa: E731
        model = model_of[key].copy() if hasattr(model_of[key], "copy") else model_of[key]
        guided = search.model_guided(kernels[key], space, model, lookup, budget=len(space))
        budget10 = max(1, int(0.10 * len(space)))
        g_curve = best / guided.curve()
        g_curve = np.concatenate([g_curve, np.full(len(space) - len(g_curve), g_curve[-1])])
        r_curves = np.array(
            [
                best / search.random_search(kernels[key], space, lookup, budget=len(space), seed=s).curve()
                for s in range(random_seeds)
            ]
        )
        r_mean = r_curves.mean(axis=0)

        def to95(curve):
            hit = np.nonzero(curve >= 0.95)[0]
            return int(hit[0]) + 1 if len(hit) else len(curve)

        rows.append(
            {
                "kernel": key,
                "kind": kernels[key].kind,
                "space": len(space),
                "guided_at_10pct": float(g_curve[budget10 - 1]),
                "random_at_10pct": float(r_mean[budget10 - 1]),
                "guided_to_95": to95(g_curve),
                "random_to_95": float(np.mean([to95(c) for c in r_curves])),
                "guided_stopped_after": guided.measurements,
                "guided_at_stop": float(g_curve[guided.measurements - 1]),
            }
        )
        curves["model-guided"].append(g_curve[:64])
        curves["random"].append(r_mean[:64])
    if not rows:
        return {"kernels": 0}
    n = min(len(c) for c in curves["model-guided"])
    summary = {
        "kernels": len(rows),
        "guided_at_10pct": float(np.mean([r["guided_at_10pct"] for r in rows])),
        "random_at_10pct": float(np.mean([r["random_at_10pct"] for r in rows])),
        "guided_to_95_frac": float(np.mean([r["guided_to_95"] / r["space"] for r in rows])),
        "random_to_95_frac": float(np.mean([r["random_to_95"] / r["space"] for r in rows])),
        "guided_at_stop": float(np.mean([r["guided_at_stop"] for r in rows])),
        "guided_stop_frac": float(np.mean([r["guided_stopped_after"] / r["space"] for r in rows])),
        "rows": rows,
        "curves": {k: np.mean([c[:n] for c in v], axis=0).tolist() for k, v in curves.items()},
    }
    summary["random_over_guided"] = summary["random_to_95_frac"] / max(summary["guided_to_95_frac"], 1e-9)
    return summary


# ------------------------------------------------------------------------ the report
def report(
    db_path: str,
    *,
    model_path: str | None = None,
    folds: int = 5,
    out_dir: str = ".",
    ablation: bool = True,
    lomo: bool = True,
    progress=None,
) -> dict:
    """Everything `tilecraft costmodel eval` prints: held-out metrics of both models, the
    text-feature ablation, leave-one-model-out, the search study, and two PNGs."""
    import os

    from tilecraft.costmodel.analytical import AnalyticalCostModel
    from tilecraft.costmodel.lightgbm_model import LightGBMCostModel
    from tilecraft.costmodel.model import read_model_file
    from tilecraft.costmodel.train import load_records

    say = progress or (lambda msg: None)
    records, target = load_records(db_path)
    config = {"text": True, "params": None}
    if model_path:
        doc = read_model_file(model_path)
        config = {"text": bool(doc.get("text")), "params": doc.get("params")}

    def lightgbm(text):
        return lambda train: LightGBMCostModel(target, text=text, params=config["params"]).fit(train)

    analytical = AnalyticalCostModel(target)
    splits = kernel_folds(records, folds)
    say(f"{len(records)} records over {len(by_kernel(records))} kernels; {folds}-fold split by kernel")
    fold_models = []
    for i, (train, test) in enumerate(splits):
        say(f"fold {i + 1}/{folds}: training on {len(train)} rows")
        fold_models.append((lightgbm(config["text"])(train), by_kernel(test)))
    out: dict = {"rows": len(records), "kernels": len(by_kernel(records)), "folds": folds}
    out["heldout"] = {
        "analytical": _pooled([(score_model(analytical, g), len(g)) for _, g in fold_models]),
        "lightgbm": _pooled([(score_model(m, g), len(g)) for m, g in fold_models]),
    }
    if ablation:
        say("ablation: the other text-feature setting")
        other = not config["text"]
        out["ablation"] = {
            "text" if other else "no_text": cross_validate({"x": lightgbm(other)}, splits)["x"],
            "text" if config["text"] else "no_text": out["heldout"]["lightgbm"],
        }
    if lomo:
        out["lomo"] = {}
        for name, (train, test) in model_folds(records).items():
            say(f"leave-one-model-out: {name}")
            g = by_kernel(test)
            out["lomo"][name] = {
                "analytical": score_model(analytical, g),
                "lightgbm": score_model(lightgbm(config["text"])(train), g),
            }
    say("search study on kernels with exhaustively measured spaces")
    out["search"] = search_study(fold_models, records, complete_kernels(db_path, target))
    os.makedirs(out_dir, exist_ok=True)
    pooled_model = _Pooled(fold_models)
    plot_predictions(
        pooled_model,
        pooled_model.groups,
        os.path.join(out_dir, "predicted_vs_measured.png"),
        title="LightGBM on held-out kernels",
    )
    out["pngs"] = [os.path.join(out_dir, "predicted_vs_measured.png")]
    if out["search"].get("curves"):
        plot_tuning_curves(
            {k: np.array(v) for k, v in out["search"]["curves"].items()},
            os.path.join(out_dir, "tuning_curve.png"),
            title=f"held-out kernels with exhaustive spaces (n={out['search']['kernels']})",
        )
        out["pngs"].append(os.path.join(out_dir, "tuning_curve.png"))
    return out


def _pooled(rows: list[tuple[dict, int]]) -> dict:
    total = sum(n for _, n in rows)
    out = {m: sum(s[m] * n for s, n in rows) / total for m in METRICS}
    out["kernels"] = total
    return out


class _Pooled:
    """Each held-out kernel predicted by the fold model that did not see it."""

    def __init__(self, fold_models):
        self.model_of = {key: m for m, g in fold_models for key in g}
        self.groups = {key: rs for _, g in fold_models for key, rs in g.items()}

    def predict(self, kernel, decisions):
        return self.model_of[kernel.key].predict(kernel, decisions)


def format_report(r: dict) -> str:
    lines = [f"held-out kernels ({r['folds']}-fold by kernel; {r['rows']} rows, {r['kernels']} kernels)"]
    lines.append(f"{'model':<14}{'MAPE':>8}{'Spearman':>10}{'pairwise':>10}{'top-1':>8}{'top-5':>8}")
    for name, m in r["heldout"].items():
        lines.append(
            f"{name:<14}{m['mape']:>8.3f}{m['spearman']:>10.3f}{m['pairwise']:>10.3f}{m['top1']:>8.3f}{m['top5']:>8.3f}"
        )
    if "ablation" in r:
        lines.append("\ntext-feature ablation (LightGBM, same folds)")
        for name, m in r["ablation"].items():
            lines.append(
                f"{name:<14}{m['mape']:>8.3f}{m['spearman']:>10.3f}{m['pairwise']:>10.3f}{m['top1']:>8.3f}{m['top5']:>8.3f}"
            )
    if r.get("lomo"):
        lines.append("\nleave-one-model-out (train without the model's kernels, test on them)")
        lines.append(f"{'model':<18}{'kernels':>8}{'MAPE a/l':>16}{'pairwise a/l':>16}{'top-1 a/l':>14}")
        for name, v in r["lomo"].items():
            a, lg = v["analytical"], v["lightgbm"]
            lines.append(
                f"{name:<18}{lg['kernels']:>8}{a['mape']:>8.3f}/{lg['mape']:<7.3f}{a['pairwise']:>8.3f}/{lg['pairwise']:<7.3f}"
                f"{a['top1']:>7.3f}/{lg['top1']:<6.3f}"
            )
    s = r.get("search", {})
    if s.get("kernels"):
        lines.append(
            f"\nsearch on {s['kernels']} held-out kernels with exhaustive spaces (best found / exhaustive best)"
        )
        lines.append(
            f"  at 10% of the space: model-guided {s['guided_at_10pct']:.3f}, random {s['random_at_10pct']:.3f}"
        )
        lines.append(
            f"  measurements to reach 95%: model-guided {100 * s['guided_to_95_frac']:.1f}% of the space, random "
            f"{100 * s['random_to_95_frac']:.1f}% ({s['random_over_guided']:.1f}x more)"
        )
        lines.append(
            f"  model-guided stopped (gains stalled) after {100 * s['guided_stop_frac']:.1f}% of the space at "
            f"{s['guided_at_stop']:.3f}"
        )
    lines.append("\n" + "\n".join(f"wrote {p}" for p in r.get("pngs", [])))
    return "\n".join(lines)
