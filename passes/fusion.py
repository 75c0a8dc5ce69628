"""The fusion pass's analysis: the dataflow graph of a model's structured ops.

Reads a linalg-on-tensors module whose structured ops carry `tc.op_id` tags
(`tiling.tag_ops`); writes nothing to it. `dataflow_graph` returns a networkx DiGraph with
one node per structured op (its `OpInfo`) and an edge producer → consumer for every
tensor one op's result feeds into another op's operand. Fusion partitioning (which groups
become one kernel) builds on this graph; `tilecraft explain` draws it.
"""

from __future__ import annotations

import networkx as nx
from torch_mlir import ir

from tilecraft.passes import tiling


def dataflow_graph(module: ir.Module) -> nx.DiGraph:
    infos = {info.op_id: info for info in tiling.tag_ops(module)}
    graph = nx.DiGraph()
    for op_id, info in infos.items():
        graph.add_node(op_id, info=info)

    def op_id_of(op) -> int | None:
        op = getattr(op, "operation", op)
        if isinstance(op, ir.Operation) and tiling.OP_ID in op.attributes:
            return ir.IntegerAttr(op.attributes[tiling.OP_ID]).value
        return None

    def producers(value, depth: int = 0) -> set[int]:
        """The structured ops a value comes from, looking through reshapes and slices."""
        owner = getattr(value.owner, "operation", value.owner)
        found = op_id_of(owner)
        if found is not None:
            return {found}
        if depth > 8 or not isinstance(owner, ir.Operation) or not owner.name.startswith("tensor."):
            return set()
        return set().union(*(producers(v, depth + 1) for v in owner.operands)) if owner.operands else set()

    def visit(op: ir.Operation) -> None:
        consumer = op_id_of(op)
        if consumer is not None:
            for value in op.operands:
                for producer in producers(value):
                    if producer != consumer:
                        graph.add_edge(producer, consumer)

    tiling.walk_ops(module.operation, visit)
    return graph
