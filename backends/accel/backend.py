"""The accelerator as a `Backend`: its target description, schedule record and space.

On the backends floor. The accelerator's flow does not run MLIR passes after the decided
module: a model's layers are lowered from its exported graph to `accel` programs
(`model.py`), so it registers no passes; its stages are the program forms it emits.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence

from tilecraft.backends.accel import lower as L
from tilecraft.backends.accel.target import AccelTarget
from tilecraft.backends.backend import Backend, BackendOptions


@dataclasses.dataclass(frozen=True)
class AccelOptions(BackendOptions):
    cycle_budget: float = 1.10  # the memory plan's predicted cycles over the fastest's


class AccelBackend(Backend):
    name = "accel"
    stages = ("accel-asm", "accel-bin")
    emits = ("accel-asm", "accel-bin")
    options_type = AccelOptions

    def parse_target(self, text: str) -> AccelTarget:
        text = text.strip()
        return AccelTarget.from_file(text) if text.endswith(".json") else AccelTarget.parse(text)

    def default_decision(self, info: L.ConvLayer, target: AccelTarget) -> L.ConvSchedule:
        """The largest double-buffered tile (the heuristic: no cost model, no plan)."""
        space = self.space(info, target)
        if not space:
            raise L.ScheduleError(f"layer {info.name}: no schedule fits the target's buffers")
        return next((s for s in space if s.double), space[0])

    def space(self, info: L.ConvLayer, target: AccelTarget) -> Sequence[L.ConvSchedule]:
        return L.space(info, target)

    def decision_from_json(self, text: str | dict) -> L.ConvSchedule:
        return L.ConvSchedule.from_json(json.loads(text) if isinstance(text, str) else text)

    def stage_passes(self, options: BackendOptions | None = None) -> list:
        return []

    def pass_types(self) -> list[type]:
        return []
