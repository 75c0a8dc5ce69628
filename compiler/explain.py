"""`tilecraft explain`: every decision the compiler takes for a model, with its predicted cost.

Reads a model spec and a cost model; runs the driver's own steps (`driver.compile_model`
up to the decided module) with a recording callback, so the decisions reported are the
ones `compile` takes: the fusion partition (`costmodel/fusion_plan.partition`), then each
kernel's schedule (`costmodel.search.pick`). Reports per kernel the ops fused into it, its predicted
latency against the best alternatives (the same ops unfused; the best other group with
the same sink), the chosen schedule and the runner-up with their predicted latencies,
and with `measure=True` the kernel measured (a single op by the harness, a fused group
compiled on its own and checked against naive loops). Also draws the partitioned
dataflow graph (`passes/fusion.dataflow_graph`, one colour per fused kernel).
"""

from __future__ import annotations

import io
import os
import tempfile

from tilecraft import driver, frontend
from tilecraft.backends.cpu.schedule import TileDecision
from tilecraft.backends.cpu.target import Target


def describe(d: TileDecision | None) -> str:
    """A decision in one short line: tiles per level, loop order, flags."""
    if d is None:
        return "-"
    parts = ["/".join("x".join(map(str, level)) for level in d.tiles)]
    if d.interchange:
        parts.append("order " + ",".join(map(str, d.interchange)))
    parts += [flag for flag, on in (("pack", d.pack), ("1-D", d.decompose), ("scalar", not d.vectorize)) if on]
    return " ".join(parts)


def describe_group(g) -> str:
    """`tiles MxN / mxn`; `/ mxn regs`: the matmul's accumulator tiles live in registers."""
    tiles = "x".join(str(t or "*") for t in g.tiles)
    inner = f" / {'x'.join(str(t or '*') for t in g.inner)}" if g.inner else ""
    return f"tiles {tiles}{inner}" + (" regs" if g.registers else "")


def explain(
    spec: str,
    *,
    cost_model: str = "lightgbm",
    target: str | Target = "cpu",
    measure: bool = False,
    precision: str = "f32",
    error_budget: float | None = None,
    threads: int = 1,
) -> dict:
    """The kernels `compile` would make (with `precision`, the layers lowered first, and
    each layer's precision, sensitivity and predicted saving under "precision"); with
    `threads` > 1, each kernel's split ("split": the chunks and the loop, or None: one
    thread). A fused kernel, or one op split across threads, is measured compiled on its
    own with `threads` (split as the compile splits it); another op alone on one thread
    (the corpus harness, with the chosen schedule and the runner-up)."""
    from torch_mlir import ir

    from tilecraft.backends.cpu import schedule as tiling
    from tilecraft.corpus import measure as harness
    from tilecraft.costmodel import search
    from tilecraft.passes import fusion

    target = target if isinstance(target, Target) else Target.parse(target)
    imported = frontend.import_spec(spec)
    seen: dict = {}

    def record(step: str, module, compiled) -> None:
        """What the report needs of the module between the steps `compile` runs."""
        if step == "plan-fusion":  # the module as partitioned, before the groups are fused
            seen["graph"] = fusion.dataflow_graph(module)
            seen["nodes"] = nodes = fusion.analyze(module)
            state = ir.AsmState(module.operation)
            seen["texts"] = {g.sink: fusion.outline_group(nodes, g.ops, state, views=True) for g in compiled.fusion}
            if measure and threads > 1:  # (an op alone, measured split: outlined as it is here)
                grouped = {op for g in compiled.fusion for op in g.ops}
                seen["texts"].update(
                    {op: fusion.outline_group(nodes, (op,), state) for op in nodes if op not in grouped}
                )
        elif step == "fuse":  # the op id each op had before fusion, in walk order
            before = seen["before"] = []
            tiling.walk_ops(
                module.operation,
                lambda op: (
                    before.append(ir.IntegerAttr(op.attributes[tiling.OP_ID]).value)
                    if tiling.OP_ID in op.attributes
                    else None
                ),
            )

    compiled = driver.compile_model(
        imported,
        target=target,
        emit="decided",
        cost_model=cost_model,
        precision=precision if precision != "f32" else None,
        error_budget=error_budget,
        threads=threads,
        on_step=record,
    )
    split = {d.sink: d for d in compiled.parallel or ()}
    plan, groups, report, choices = compiled.precision, compiled.fusion, compiled.fusion_report, compiled.choices
    if report is None:
        raise driver.DriverError(f"explain needs a cost model that plans fusion, not {cost_model!r}")
    graph, nodes, texts, before = seen["graph"], seen["nodes"], seen["texts"], seen["before"]
    singles = report["singles"]
    group_of = {op: g for g in groups for op in g.ops}
    by_sink: dict[int, list] = {}
    for g, cost in report["candidates"]:
        by_sink.setdefault(g.sink, []).append((g, cost))
    choice_of: dict[int, search.Choice] = {}
    for c in choices:
        for op in c.op_ids:
            choice_of[before[op]] = c

    def schedule_of(g) -> search.Choice | None:
        ops = g.ops if g is not None else ()
        heavy = [op for op in ops if nodes[op].info.kind in fusion.CONTRACTIONS]
        return choice_of.get(heavy[0]) if heavy else None

    rows = []
    worker = harness.MeasureWorker(timeout_s=120) if measure else None
    try:
        kernels = [("group", g) for g in groups] + [("op", op) for op in sorted(nodes) if op not in group_of]
        for what, x in kernels:
            if what == "group":
                g, ops = x, list(x.ops)
                # (a group the thread plan cut to fit its chunks has other tiles than its candidate)
                predicted = next(c for cand, c in by_sink[g.sink] if cand.ops == g.ops)
                others = sorted(((c, cand) for cand, c in by_sink[g.sink] if cand.ops != g.ops), key=lambda t: t[0])
                alternatives = [
                    {"grouping": "unfused", "ops": ops, "predicted_ms": sum(singles.get(o, 0.0) for o in ops) * 1e3}
                ]
                if others:
                    c, cand = others[0]
                    alternatives.append({"grouping": "other group", "ops": list(cand.ops), "predicted_ms": c * 1e3})
                choice, fusion_text = schedule_of(g), describe_group(g)
            else:
                g, ops, choice = None, [x], choice_of.get(x)
                predicted = singles.get(x, 0.0)
                containing = sorted(
                    (
                        (c - sum(singles.get(o, 0.0) for o in cand.ops), c, cand)
                        for cands in by_sink.values()
                        for cand, c in cands
                        if x in cand.ops
                    ),
                    key=lambda t: t[0],
                )
                alternatives = []
                if containing:
                    _, c, cand = containing[0]
                    alternatives.append(
                        {
                            "grouping": "fused",
                            "ops": list(cand.ops),
                            "predicted_ms": c * 1e3,
                            "unfused_ms": sum(singles.get(o, 0.0) for o in cand.ops) * 1e3,
                        }
                    )
                fusion_text = "-"
            sink = nodes[ops[0]].info
            row = {
                "ops": ops,
                "fused_ops": [nodes[o].info.kind if nodes[o].info.name != "linalg.fill" else "fill" for o in ops],
                "kind": sink.kind if len(ops) == 1 else f"fused:{sink.kind}",
                "op": sink.name,
                "extents": list(sink.extents),
                "fusion": fusion_text,
                "predicted_ms": predicted * 1e3,
                "alternatives": alternatives,
                "decision": describe(choice.decision) if choice else ("register tiles" if g else "-"),
                "decision_predicted_ms": choice.predicted_s * 1e3 if choice else None,
                "runner_up": describe(choice.runner_up) if choice else "-",
                "runner_up_predicted_ms": choice.runner_up_s * 1e3
                if choice and choice.runner_up_s is not None
                else None,
                "kernel": choice.kernel.key if choice else None,
                "split": _split_of(split.get(ops[0] if g is None else g.sink)),
            }
            if worker is not None:
                if g is not None:
                    row["measured_ms"] = measure_group(texts[g.sink], g, target, threads=threads)
                elif row["split"] is not None and ops[0] in texts:  # (split: measured on its threads)
                    row["measured_ms"] = measure_group(texts[ops[0]], None, target, fused=False, threads=threads)
                elif choice is not None:
                    for label, d in (("measured_ms", choice.decision), ("runner_up_measured_ms", choice.runner_up)):
                        m = worker.measure(choice.kernel, d, target) if d is not None else None
                        row[label] = m.median_s * 1e3 if m is not None and m.status == "ok" else None
            rows.append(row)
    finally:
        if worker is not None:
            worker.close()
    measured = [row for row in rows if row.get("measured_ms") is not None]
    contraction = [row for row in measured if any(k in fusion.CONTRACTIONS for k in row["fused_ops"])]
    return {
        "model": spec,
        "cost_model": cost_model,
        "threads": threads,
        "kernels": rows,
        # each kernel alone, warm: the sum is a floor for the model, not its time
        "measured_total_ms": sum(row["measured_ms"] for row in measured) if measured else None,
        "measured_contraction_ms": sum(row["measured_ms"] for row in contraction) if measured else None,
        "unmeasured_kernels": sum(1 for row in rows if row.get("measured_ms") is None) if measure else None,
        "predicted_total_ms": report["fused_s"] * 1e3,
        "predicted_unfused_ms": report["unfused_s"] * 1e3,
        "groups": [g.to_json() for g in groups],
        "graph": graph,
        "precision": plan.to_json() if plan else None,
        "precision_table": plan.table() if plan else None,
    }


def _split_of(d) -> dict | None:
    """A kernel's thread split for the report: its chunks and the loop cut, or None."""
    return {"chunks": d.chunks, "loop": d.loop} if d is not None else None


def measure_group(text: str, group, target: Target, *, fused: bool = True, threads: int = 1) -> float | None:
    """A fused group compiled on its own (as `compile` fuses it; `fused=False`: its ops
    each their own kernel, `group` unused) for `threads` threads, checked against the same
    function lowered naively to loops (normwise, as the corpus harness checks; NaN where
    the reference has NaN is a match: inputs are random), median milliseconds; None if it
    fails the check."""
    from tilecraft import driver
    from tilecraft.corpus.measure import mismatch
    from tilecraft.passes import fusion

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "group.mlir")
        with open(path, "w") as f:
            f.write(f"module {{\n{text}}}\n")
        imported = frontend.import_spec(path)
        pinned = []
        if fused:
            with imported.module.context:
                pinned = [fusion.as_outlined(fusion.analyze(imported.module), group)]
        compiled = driver.compile_model(imported, target=target, fusion=pinned, threads=threads)
        outs = driver.flatten(compiled.fn(*imported.inputs))
        refs, _ = driver.reference_outputs(frontend.import_spec(path), imported.inputs, f"module {{\n{text}}}\n")
        for o, r in zip(outs, driver.flatten(refs)):
            if mismatch(o, r, rtol=driver.RTOL, atol=driver.ATOL):  # normwise: a tap chain sums 576 terms
                return None
        run, _ = compiled.fn.prepare(*imported.inputs)  # as the corpus harness times a single op
        return driver.median_seconds(run, budget=0.3) * 1e3


def format_table(r: dict) -> str:
    measured = any("measured_ms" in row for row in r["kernels"])
    threaded = r.get("threads", 1) > 1
    head = f"{'kernel (ops fused)':<34}{'fusion':<22}{'pred ms':>9}" + (f"{'meas ms':>9}" if measured else "")
    head += f"  {'split':<10}" if threaded else ""
    head += f"  {'best alternative':<30}{'pred ms':>9}"
    head += f"  {'chosen schedule':<30}{'pred ms':>9}  {'runner-up':<30}{'pred ms':>9}"
    lines = [
        f"{r['model']}: {len(r['kernels'])} kernels ({len(r['groups'])} fused), by the {r['cost_model']} cost model"
        + (f", {r['threads']} threads (split: chunks x loop; '-': one thread)" if threaded else ""),
        head,
    ]

    def ms(x):
        return f"{x:>9.4f}" if x is not None else f"{'-':>9}"

    for row in sorted(r["kernels"], key=lambda x: -x["predicted_ms"]):
        kinds = "+".join(k[:5] for k in row["fused_ops"] if k != "fill") or "fill"
        ext = "x".join(map(str, row["extents"]))
        name = f"{kinds} {ext}"
        line = f"{name[:33]:<34}{row['fusion'][:21]:<22}{ms(row['predicted_ms'])}"
        line += ms(row.get("measured_ms")) if measured else ""
        if threaded:
            sp = row.get("split")
            line += f"  {(str(sp['chunks']) + ' x d' + str(sp['loop'])) if sp else '-':<10}"
        alt = row["alternatives"][0] if row["alternatives"] else None
        alt_text = f"{alt['grouping']} ({len(alt['ops'])} ops)" if alt else "-"
        line += f"  {alt_text[:29]:<30}{ms(alt['predicted_ms'] if alt else None)}"
        line += f"  {row['decision'][:29]:<30}{ms(row['decision_predicted_ms'])}"
        line += f"  {row['runner_up'][:29]:<30}{ms(row['runner_up_predicted_ms'])}"
        lines.append(line)
    lines.append(
        f"predicted total: {r['predicted_total_ms']:.3f} ms fused, {r['predicted_unfused_ms']:.3f} ms unfused "
        "(a fused kernel's schedule is its contraction's, predicted per tile; 'register tiles': elementwise only)"
    )
    if r.get("measured_total_ms") is not None:
        lines.append(
            f"measured total: {r['measured_total_ms']:.3f} ms, {r['measured_contraction_ms']:.3f} in kernels with a"
            f" contraction ({r['unmeasured_kernels']} kernels not measured; each kernel alone, warm)"
        )
    if r.get("precision_table"):
        lines += ["", "layers (the AMX contractions are not kernels above):", r["precision_table"]]
    return "\n".join(lines)


def draw(r: dict, path: str) -> None:
    """The partitioned dataflow graph: one node per structured op, coloured by kind; edges
    inside a fused kernel thick and red; each kernel labelled (at its sink) with its
    predicted latency (µs); laid out by topological generation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import networkx as nx

    graph = r["graph"]
    predicted = {row["ops"][0]: row["predicted_ms"] for row in r["kernels"]}
    kernel_of = {op: i for i, row in enumerate(r["kernels"]) for op in row["ops"]}
    fused = [e for e in graph.edges() if kernel_of.get(e[0], -1) == kernel_of.get(e[1], -2)]
    for layer, nodes in enumerate(nx.topological_generations(graph)):
        for n in nodes:
            graph.nodes[n]["layer"] = layer
    pos = {n: (x, -y) for n, (x, y) in nx.multipartite_layout(graph, subset_key="layer", align="horizontal").items()}
    kinds = sorted({graph.nodes[n]["info"].kind for n in graph})
    cmap = plt.get_cmap("tab10")
    colors = [cmap(kinds.index(graph.nodes[n]["info"].kind)) for n in graph]
    height = max(4, 0.35 * (1 + max((graph.nodes[n]["layer"] for n in graph), default=0)))
    fig, ax = plt.subplots(figsize=(10, min(height, 60)))
    nx.draw_networkx(
        graph,
        pos,
        ax=ax,
        node_color=colors,
        node_size=120,
        font_size=5,
        arrowsize=6,
        edge_color="0.6",
        labels={n: f"{predicted[n] * 1e3:.0f}" if n in predicted else "" for n in graph},
    )
    nx.draw_networkx_edges(graph, pos, edgelist=fused, ax=ax, edge_color="crimson", width=2.5, arrowsize=6)
    for i, kind in enumerate(kinds):
        ax.scatter([], [], color=cmap(i), label=kind)
    ax.legend(fontsize=7, loc="upper right")
    ax.set_title(f"{r['model']}: {len(r['kernels'])} kernels, {len(r['groups'])} fused (red); labels: predicted µs")
    ax.axis("off")
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, dpi=110, format="png")
    plt.close(fig)
    driver.atomic_write(path, png.getvalue())  # (a bad path: one line naming it, nothing left behind)
