"""The `Backend` interface: what a target family plugs into the compiler.

On the backends floor. A backend declares its target description (and how a `--target`
string becomes one), its schedule record and the legal schedule space per kernel, its
ordered stages (each a registered pass, so `tilecraft-opt -p` runs any of them), the
emit kinds it can produce, its runtime, and frozen options with a `hash()` that keys the
compile cache. `create(kind)` is the one place a backend is resolved by name: `cpu`
(`backends/cpu/backend.py`), `gpu` (`backends/gpu/backend.py`) and `accel` (`backends/accel/backend.py`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from typing import ClassVar

from tilecraft.backends.target import TargetError


@dataclasses.dataclass(frozen=True)
class BackendOptions:
    """A backend's code-generation options (frozen; fields are JSON values)."""

    def hash(self) -> str:
        payload = json.dumps({"kind": type(self).__name__, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


class Backend:
    """A target family. Subclasses fill in the class attributes and the methods."""

    name: ClassVar[str] = ""
    stages: ClassVar[tuple[str, ...]] = ()  # IR stages after the decided module, in order
    emits: ClassVar[tuple[str, ...]] = ()  # what `--emit` may ask for beyond the stages
    options_type: ClassVar[type[BackendOptions]] = BackendOptions

    def parse_target(self, text: str):
        raise NotImplementedError

    def default_decision(self, info, target):
        """The documented heuristic schedule for one op (the fallback of planning)."""
        raise NotImplementedError

    def space(self, info, target) -> Sequence:
        """The legal schedules for one op, heuristic first."""
        raise NotImplementedError

    def decision_from_json(self, text: str | dict):
        raise NotImplementedError

    def stage_passes(self, options: BackendOptions | None = None) -> list:
        """The stages as passes (each a `ModulePass` with a kebab-case name), in order."""
        raise NotImplementedError

    def pass_types(self) -> list[type]:
        """Every pass this backend registers (its stages and the rewrites they run)."""
        raise NotImplementedError


BACKENDS = ("cpu", "gpu", "accel")


def create(kind: str) -> Backend:
    """The backend of a target family by name."""
    if kind == "cpu":
        from tilecraft.backends.cpu.backend import CpuBackend

        return CpuBackend()
    if kind == "gpu":
        from tilecraft.backends.gpu.backend import GpuBackend

        return GpuBackend()
    if kind == "accel":
        from tilecraft.backends.accel.backend import AccelBackend

        return AccelBackend()
    raise TargetError(f"unknown backend {kind!r} (one of: {', '.join(BACKENDS)})")
