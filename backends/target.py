"""The target protocol: what every backend's target description offers, and the one place
a `--target` string is resolved to a backend's description.

On the backends floor (imports dialects and passes only). A target description is a
frozen, validated, hashable, serializable picture of a machine; measurements, cost models
and the compile cache are keyed by its `hash()`.
"""

from __future__ import annotations

import dataclasses
import json
import re
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
    try:
        with open(path) as f:
            doc = json.load(f)
        return str(doc.get("kind", "cpu")) if isinstance(doc, dict) else "cpu"
    except (OSError, ValueError):
        return "cpu"


def from_file(cls, path: str, what: str):
    """A target dataclass `cls` from a JSON file written by its `to_json` (`what` names
    it in errors: "a GPU target")."""
    try:
        with open(path) as f:
            doc = json.load(f)
        return cls(**doc)
    except OSError as exc:
        raise TargetError(f"cannot read target file {path}: {exc.strerror}") from None
    except (ValueError, TypeError) as exc:
        raise TargetError(f"{path} is not {what}: {exc}") from None


def parse_options(cls, kind: str, text: str, example: str) -> dict[str, object]:
    """The `key=value` options of `kind{...}` for target dataclass `cls`, typed by its
    fields (str, int or float); `example` shows the syntax in errors."""
    m = re.fullmatch(rf"\s*{kind}\s*(?:\{{(.*)\}})?\s*", text)
    if not m:
        raise TargetError(f"malformed target {text!r} (expected {kind} or {example})")
    fields = {f.name: f.type for f in dataclasses.fields(cls) if f.name != "kind"}
    changes: dict[str, object] = {}
    for item in (m.group(1) or "").replace(",", " ").split():
        key, sep, value = item.partition("=")
        if not sep:
            raise TargetError(f"target option {item!r} is not key=value")
        if key not in fields:
            raise TargetError(f"unknown {kind} target option {key!r} (known: {', '.join(fields)})")
        if fields[key] == "str":
            changes[key] = value
            continue
        number = float if fields[key] == "float" else int
        try:
            changes[key] = number(value)
        except ValueError:
            raise TargetError(
                f"target option {key}={value!r} is not {'a number' if number is float else 'an integer'}"
            ) from None
    return changes
