"""`tilecraft explain`: every decision the compiler takes for a model, with its predicted cost.

Reads a model spec and a cost model; picks each kernel's schedule exactly as `compile`
does (`costmodel.search.pick`), and reports per kernel the ops it covers, the chosen
schedule and its predicted latency, the runner-up and its predicted latency, and with
`measure=True` both measured by the harness. Also draws the model's dataflow graph
(`passes/fusion.dataflow_graph`), each node labelled with its kernel's predicted latency.
Today every structured op is its own kernel; fusion groups will appear here when the
fusion pass lands.
"""

from __future__ import annotations

import os

from tilecraft import frontend
from tilecraft.passes.tiling import TileDecision
from tilecraft.target import Target


def describe(d: TileDecision | None) -> str:
    """A decision in one short line: tiles per level, loop order, flags."""
    if d is None:
        return "-"
    parts = ["/".join("x".join(map(str, level)) for level in d.tiles)]
    if d.interchange:
        parts.append("order " + ",".join(map(str, d.interchange)))
    parts += [flag for flag, on in (("pack", d.pack), ("1-D", d.decompose), ("scalar", not d.vectorize)) if on]
    return " ".join(parts)


def explain(spec: str, *, cost_model: str = "lightgbm", target: str | Target = "cpu", measure: bool = False) -> dict:
    from tilecraft.corpus import measure as harness
    from tilecraft.costmodel import model as cm
    from tilecraft.costmodel import search
    from tilecraft.passes import fusion

    target = target if isinstance(target, Target) else Target.parse(target)
    imported = frontend.import_spec(spec)
    model = cm.create(cost_model, target)
    with imported.module.context:
        choices = search.pick(imported.module, model, target)
        graph = fusion.dataflow_graph(imported.module)
    rows = []
    worker = harness.MeasureWorker(timeout_s=120) if measure else None
    try:
        for c in choices:
            row = {
                "kernel": c.kernel.key,
                "kind": c.kernel.kind,
                "op": c.kernel.name,
                "extents": list(c.kernel.extents),
                "op_ids": list(c.op_ids),
                "fused_ops": [c.kernel.name],
                "decision": describe(c.decision),
                "predicted_ms": c.predicted_s * 1e3,
                "runner_up": describe(c.runner_up),
                "runner_up_predicted_ms": c.runner_up_s * 1e3 if c.runner_up_s is not None else None,
            }
            if worker is not None:
                for label, d in (("measured_ms", c.decision), ("runner_up_measured_ms", c.runner_up)):
                    m = worker.measure(c.kernel, d, target) if d is not None else None
                    row[label] = m.median_s * 1e3 if m is not None and m.status == "ok" else None
            rows.append(row)
    finally:
        if worker is not None:
            worker.close()
    total = sum(r["predicted_ms"] * len(r["op_ids"]) for r in rows)
    return {"model": spec, "cost_model": cost_model, "kernels": rows, "predicted_total_ms": total, "graph": graph}


def format_table(r: dict) -> str:
    measured = any("measured_ms" in row for row in r["kernels"])
    head = f"{'kind':<17}{'extents':<24}{'uses':>4}  {'chosen schedule':<34}{'pred ms':>9}"
    head += f"{'meas ms':>9}" if measured else ""
    head += f"  {'runner-up':<34}{'pred ms':>9}" + (f"{'meas ms':>9}" if measured else "")
    lines = [f"{r['model']}: {len(r['kernels'])} kernels, schedules by the {r['cost_model']} cost model", head]

    def ms(x):
        return f"{x:>9.4f}" if x is not None else f"{'-':>9}"

    for row in sorted(r["kernels"], key=lambda x: -x["predicted_ms"] * len(x["op_ids"])):
        ext = "x".join(map(str, row["extents"]))
        line = f"{row['kind']:<17}{ext[:23]:<24}{len(row['op_ids']):>4}  {row['decision'][:33]:<34}"
        line += ms(row["predicted_ms"])
        line += ms(row.get("measured_ms")) if measured else ""
        line += f"  {row['runner_up'][:33]:<34}{ms(row['runner_up_predicted_ms'])}"
        line += ms(row.get("runner_up_measured_ms")) if measured else ""
        lines.append(line)
    lines.append(f"predicted total: {r['predicted_total_ms']:.3f} ms (each structured op is one kernel; no fusion yet)")
    return "\n".join(lines)


def draw(r: dict, path: str) -> None:
    """The dataflow graph, one node per structured op, coloured by kind, labelled with
    its kernel's predicted latency (µs), laid out by topological generation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import networkx as nx

    graph = r["graph"]
    predicted = {op: row["predicted_ms"] for row in r["kernels"] for op in row["op_ids"]}
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
        labels={n: f"{predicted[n] * 1e3:.0f}" if n in predicted else "" for n in graph},
    )
    for i, kind in enumerate(kinds):
        ax.scatter([], [], color=cmap(i), label=kind)
    ax.legend(fontsize=7, loc="upper right")
    ax.set_title(f"{r['model']}: structured ops (labels: predicted µs per kernel)")
    ax.axis("off")
    fig.tight_layout()
    tmp = f"{path}.tmp{os.getpid()}.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
