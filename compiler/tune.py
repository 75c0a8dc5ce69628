"""Tuning a model: model-guided search per kernel, measured, recorded, learned from.

Reads a model spec (zoo name, file.py:factory, .mlir), a cost model and a measurement
budget; runs the driver's steps up to the decided module (so the kernels tuned are the
ones `compile` compiles: after im2col and fusion, keyed as `compile --decisions` pins
them); splits the budget over the model's kernels in proportion to their predicted
latency; runs `search.model_guided` per kernel with the measurement harness as the
callback (each result committed to the corpus database as it lands; pairs already in the
database are looked up, not re-measured); writes the tuned decisions ({kernel key:
decision}, for `tilecraft compile --decisions`) and, if asked, the improved model.
"""

from __future__ import annotations

import json
import os
import sys
import time

from torch_mlir import ir

from tilecraft import driver, frontend
from tilecraft.backends.cpu import schedule as tiling
from tilecraft.backends.cpu.target import Target
from tilecraft.corpus import measure
from tilecraft.corpus.db import CorpusDB
from tilecraft.corpus.kernels import infos_of
from tilecraft.costmodel import model as cm
from tilecraft.costmodel import search


def tune(
    spec: str,
    *,
    budget: int,
    db_path: str,
    cost_model: str = "lightgbm",
    target="cpu",
    decisions_out: str | None = None,
    model_out: str | None = None,
    progress: bool = True,
) -> dict:

    if budget < 1:
        raise cm.CostModelError(f"--budget must be at least 1 (got {budget})")
    target = target if isinstance(target, Target) else Target.parse(target)
    model = cm.create(cost_model, target)
    # the kernels `compile` compiles: the driver's steps up to the decided module
    compiled = driver.compile_model(frontend.import_spec(spec), target=target, emit="decided", cost_model=model)
    choices = list(compiled.choices)
    total = sum(c.predicted_s * len(c.op_ids) for c in choices) or 1.0
    choices.sort(key=lambda c: -c.predicted_s * len(c.op_ids))
    t0 = time.perf_counter()
    ctx = ir.Context()
    rows = []
    with CorpusDB(db_path) as db, measure.MeasureWorker(timeout_s=120) as worker:
        target_hash = db.add_target(target)
        known = {
            (r["workload"], r["decision"]): (r["median_s"] if r["status"] == "ok" else None)
            for r in db.rows(target=target_hash, status=None)
        }
        left = budget
        for i, c in enumerate(choices):
            share = max(1, round(budget * c.predicted_s * len(c.op_ids) / total))
            share = min(share, left) if i < len(choices) - 1 else left
            db.add_workload(c.kernel, source=f"tune:{spec}")
            new = [0]

            def run(d, kernel=c.kernel):
                key = (kernel.key, d.to_json())
                if key not in known:
                    m = worker.measure(kernel, d, target)
                    db.commit_measurement(m, target_hash)
                    known[key] = m.median_s if m.status == "ok" else None
                    new[0] += 1
                return known[key]

            def util(d, t, kernel=c.kernel):
                from tilecraft.costmodel.analytical import roofline_seconds

                return roofline_seconds(kernel, target) / t

            space = tiling.space(infos_of(c.kernel.mlir, ctx), target)
            result = (
                search.model_guided(c.kernel, space, model, run, budget=share, utilization=util)
                if share > 0
                else search.SearchResult(None, float("inf"), [])
            )
            left -= new[0]
            best = result.best if result.best is not None else c.decision
            rows.append(
                {
                    "kernel": c.kernel.key,
                    "kind": c.kernel.kind,
                    "extents": list(c.kernel.extents),
                    "uses": len(c.op_ids),
                    "predicted_ms": c.predicted_s * 1e3,
                    "measured": result.measurements,
                    "best_ms": result.best_s * 1e3 if result.best is not None else None,
                    "decision": json.loads(best.to_json()),
                }
            )
            if progress:
                print(
                    f"\r[{i + 1}/{len(choices)} kernels] {budget - left}/{budget} measurements", end="", file=sys.stderr
                )
    if progress:
        print(file=sys.stderr)
    name = os.path.splitext(os.path.basename(spec.split(":")[0]))[0]
    decisions_out = decisions_out or f"{name}.decisions.json"
    doc = {"model": spec, "target": target.hash(), "decisions": {r["kernel"]: r["decision"] for r in rows}}
    driver.atomic_write(decisions_out, json.dumps(doc, indent=1).encode())
    if model_out and hasattr(model, "save") and model.kind != "analytical":
        model.save(model_out)
    return {
        "model": spec,
        "kernels": rows,
        "measurements": budget - left,
        "seconds": time.perf_counter() - t0,
        "decisions_out": decisions_out,
        "model_out": model_out,
        "fused_groups": len(compiled.fusion or ()),
    }


def format_summary(s: dict) -> str:
    lines = [f"{'kind':<18}{'extents':<28}{'uses':>5}{'pred ms':>10}{'measured':>10}{'best ms':>10}"]
    for r in s["kernels"]:
        best = f"{r['best_ms']:.3f}" if r["best_ms"] is not None else "-"
        ext = "x".join(map(str, r["extents"]))
        lines.append(f"{r['kind']:<18}{ext:<28}{r['uses']:>5}{r['predicted_ms']:>10.3f}{r['measured']:>10}{best:>10}")
    if not s["kernels"]:
        lines.append(
            f"nothing to tune: every kernel runs in one of {s.get('fused_groups', 0)} fused groups, scheduled by the "
            "fusion plan (tune measures the schedules of kernels compiled alone)"
        )
    lines.append(f"{s['measurements']} new measurements in {s['seconds']:.0f} s; decisions -> {s['decisions_out']}")
    if s["model_out"]:
        lines.append(f"improved model -> {s['model_out']}")
    return "\n".join(lines)
