"""What an exported program's placeholders are bound to, for the interpreters that re-run
its graph (`compiler/complex_pairs.py`, `compiler/shape_buckets.py`)."""

from __future__ import annotations


def input_slots(prog) -> list[tuple[str, object]]:
    """Per placeholder of `prog`'s graph, in order: ("arg", k) — its k-th user input — or
    ("value", tensor) — a lifted parameter, buffer or constant."""
    from torch.export.graph_signature import InputKind

    slots: list[tuple[str, object]] = []
    k = 0
    for spec in prog.graph_signature.input_specs:
        if spec.kind == InputKind.USER_INPUT:
            slots.append(("arg", k))
            k += 1
        else:
            value = prog.constants.get(spec.target)
            slots.append(("value", prog.state_dict[spec.target] if value is None else value))
    return slots
