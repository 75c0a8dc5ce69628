"""The GPU as a `Backend`: its target description, schedule record and space, its stages.

On the backends floor. Stages after a decided module (each a registered pass, so
`tilecraft-opt -p gpu-tiled` runs one on a module that carries its decisions):
`gpu-tiled` (every kernel as a forall over thread blocks around a forall over threads,
its members fused in; `lowering.to_tiled`), `gpu-launch` (bufferization, foralls as
`gpu.launch`, outlined into `gpu.module`s; `lowering.to_gpu`) and `gpu-nvvm` (NVVM and the
LLVM dialect in each kernel module). Past them the backend emits LLVM IR, PTX and a cubin
(`backends/gpu/ptx.py`). Schedules are `GpuSchedule`s (`backends/gpu/schedule.py`); the
space and the heuristic are per kernel, a fusion group or one op.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import ClassVar

from torch_mlir import ir

from tilecraft.backends.backend import Backend, BackendOptions
from tilecraft.backends.gpu import lowering
from tilecraft.backends.gpu import schedule as gs
from tilecraft.backends.gpu.target import GpuTarget
from tilecraft.passes.base import ModulePass, Weights


@dataclasses.dataclass(frozen=True)
class GpuOptions(BackendOptions):
    arch: str = "sm_90"


@dataclasses.dataclass(frozen=True)
class GpuTiledPass(ModulePass):
    name: ClassVar[str] = "gpu-tiled"
    summary: ClassVar[str] = (
        "decided → tiled: each kernel's sink tiled over thread blocks and threads by its tc.gpu_schedule "
        "(else the heuristic), its members fused in"
    )

    def apply(self, module: ir.Module, weights: Weights) -> None:
        lowering.to_tiled(module)


@dataclasses.dataclass(frozen=True)
class GpuLaunchPass(ModulePass):
    name: ClassVar[str] = "gpu-launch"
    summary: ClassVar[str] = "tiled → gpu: bufferization, foralls as gpu.launch, kernels outlined into gpu.modules"

    def apply(self, module: ir.Module, weights: Weights) -> None:
        lowering.to_gpu(module)


@dataclasses.dataclass(frozen=True)
class GpuNvvmPass(ModulePass):
    name: ClassVar[str] = "gpu-nvvm"
    summary: ClassVar[str] = "gpu → nvvm: each kernel module in the LLVM dialect with NVVM intrinsics"
    arch: str = "sm_90"

    def apply(self, module: ir.Module, weights: Weights) -> None:
        target = GpuTarget(arch=self.arch)
        lowering.to_nvvm(module, arch=target.arch, features=target.ptx_features)


class GpuBackend(Backend):
    name = "gpu"
    stages = ("tiled", "gpu", "nvvm")
    emits = ("llvm", "ptx", "cubin")
    options_type = GpuOptions

    def parse_target(self, text: str) -> GpuTarget:
        text = text.strip()
        return GpuTarget.from_file(text) if text.endswith(".json") else GpuTarget.parse(text)

    def default_decision(self, info: gs.Kernel, target: GpuTarget) -> gs.GpuSchedule:
        return gs.default(info)

    def space(self, info: gs.Kernel, target: GpuTarget) -> Sequence[gs.GpuSchedule]:
        return gs.space(info)

    def decision_from_json(self, text: str | dict) -> gs.GpuSchedule:
        return gs.GpuSchedule.from_json(text)

    def stage_passes(self, options: BackendOptions | None = None) -> list[ModulePass]:
        o = options if isinstance(options, GpuOptions) else GpuOptions()
        return [GpuTiledPass(), GpuLaunchPass(), GpuNvvmPass(arch=o.arch)]

    def pass_types(self) -> list[type[ModulePass]]:
        return [GpuTiledPass, GpuLaunchPass, GpuNvvmPass]
