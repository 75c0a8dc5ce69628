"""The target protocol: what every backend's target description offers, and the one place
a `--target` string is resolved to a backend's description.

On the backends floor (imports dialects and passes only). A target description is a
frozen, validated, hashable, serializable picture of a machine; measurements, cost models
and the compile cache are keyed by its `hash()`.
"""

from __future__ import annotations

from typing import Protocol


class TargetError(ValueError):
    """A `--target` the user gave cannot be parsed or names no backend."""


class Target(Protocol):
    kind: str  # the backend family: "cpu", "gpu", "accel"

    def hash(self) -> str: ...

    def to_json(self) -> str: ...


KINDS = ("cpu", "gpu", "accel")


def parse_target(text: str) -> Target:
    """`cpu`, `cpu{avx512=false cores=1}` or a JSON file written by `to_json`: the
    description of the backend family the text names."""
    kind = text.strip().split("{", 1)[0].strip()
    if text.endswith(".json"):
        kind = json_kind(text)
    if kind == "accel":
        from tilecraft.backends.accel.target import AccelTarget

        if text.endswith(".json"):
            return AccelTarget.from_file(text)
        return AccelTarget.parse(text)
    if kind == "gpu":
        from tilecraft.backends.gpu.target import GpuTarget

        return GpuTarget.from_file(text) if text.endswith(".json") else GpuTarget.parse(text)
    if kind in ("cpu", "") or text.endswith(".json"):
        from tilecraft.backends.cpu.target import Target as CpuTarget

        return CpuTarget.parse(text)
    raise TargetError(f"unknown target {text!r} (one of: {', '.join(KINDS)})")


def json_kind(path: str) -> str:
    """The `kind` a target JSON file names (cpu when it names none or cannot be read: the
    CPU parser then says what is wrong with it)."""
    import json

    try:
        with open(path) as f:
            doc = json.load(f)
        return str(doc.get("kind", "cpu")) if isinstance(doc, dict) else "cpu"
    except (OSError, ValueError):
        return "cpu"
